"""Wavefront .obj / .mtl text for meshes built in code: one `o <name>` object and one material per part."""
from pathlib import Path

import numpy as np


def obj_text(parts, mtllib="model.mtl", comment=None):
    """parts: [(trimesh.Trimesh, material name)]. Each part is one `o` object, named by
    mesh.metadata['part'] when it has one (else part<k>), drawn in its material. Vertices are rounded to
    5 decimals (0.01 mm for a model in metres), so the same meshes always give the same bytes."""
    lines = ([f"# {comment}"] if comment else []) + [f"mtllib {mtllib}"]
    offset = 1
    for k, (mesh, material) in enumerate(parts):
        lines += [f"o {mesh.metadata.get('part', f'part{k}')}", f"usemtl {material}"]
        lines += ["v %.5f %.5f %.5f" % tuple(v) for v in np.round(mesh.vertices, 5) + 0.0]  # + 0.0: no "-0.0"
        lines += ["f %d %d %d" % tuple(f) for f in mesh.faces + offset]
        offset += len(mesh.vertices)
    return "\n".join(lines) + "\n"


def mtl_text(materials, texture=None):
    """materials: {name: (r, g, b) in 0-255} -> one diffuse material each, sorted by name. texture: an
    image file name that every material maps with map_Kd."""
    blocks = []
    for name in sorted(materials):
        r, g, b = (c / 255 for c in materials[name])
        blocks.append(f"newmtl {name}\nKa 0.0 0.0 0.0\nKd {r:.4f} {g:.4f} {b:.4f}\nKs 0.0 0.0 0.0\nd 1.0\nillum 1\n"
                      + (f"map_Kd {texture}\n" if texture else ""))
    return "\n".join(blocks)


def write_obj(path, parts, texture=None):
    """Write parts [(trimesh.Trimesh, (r, g, b))] to path and <stem>.mtl beside it, one material m<k> per
    part (texture: see mtl_text). Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"m{k}" for k in range(len(parts))]
    path.write_text(obj_text([(mesh, name) for (mesh, _), name in zip(parts, names)], f"{path.stem}.mtl"))
    (path.parent / f"{path.stem}.mtl").write_text(mtl_text({name: rgb for name, (_, rgb) in zip(names, parts)},
                                                           texture))
    return path
