"""What an .obj asks for that did not load: a missing .mtl, material or texture, a texture without UVs.

Such a model still renders, in flat colours (grey where no colour is left), so these are warnings, not
failures: scripts/render_objs.py lists them in warnings.jsonl. The checks follow trimesh's own rules, so they
name exactly what trimesh did not load: it reads the first `mtllib` of the file only, and looks for a file
as its FilePathResolver does (the name, the name without a leading /, then the base name, all inside the
.obj's folder).
"""
import os
import re
from pathlib import Path

import numpy as np

_USEMTL = re.compile(rb"usemtl[ \t]+([^\r\n]*)")


def find_like_trimesh(folder, name):
    """The file trimesh reads for `name` (an mtllib or map_Kd value) next to an .obj in `folder`, as
    folder / what it found, or None. trimesh does not look outside the folder (../textures/x.png)."""
    root = Path(folder).resolve()
    name = name.strip()
    for candidate in (name, name.lstrip("/"), os.path.split(name)[-1]):
        path = (root / candidate).resolve()
        if candidate and path.is_relative_to(root) and path.is_file():
            return Path(folder) / candidate
    return None


def mtl_textures(data):
    """{material name: its map_Kd value or None} of an .mtl file's bytes."""
    textures, current = {}, None
    for line in data.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        key, value = parts[0].lower(), os.fsdecode(parts[1].strip())  # file names are bytes on disk
        if key == b"newmtl":
            current = " ".join(value.split())
            textures[current] = None
        elif key == b"map_kd" and current is not None:
            textures[current] = value
    return textures


def _image_opens(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:
        return False


def material_warnings(obj_path, scene):
    """[{"kind", "file", ...}] for what obj_path refers to but `scene` (load_model's) lacks. Kinds, each with
    the file it is about:
      mtl_missing         the mtllib file is not there (or outside the .obj's folder): every part is grey;
      material_missing    a `usemtl` name the .mtl does not define (file: the .mtl; "material": the name);
      texture_missing     a map_Kd file is not there (the same): its parts get the material's Kd colour;
      texture_unreadable  a map_Kd file that is not an image PIL can open: the same;
      texture_without_uv  a textured part whose faces have no texture coordinates: drawn in the texture's
                          mean colour.
    """
    obj_path = Path(obj_path)
    folder = obj_path.parent
    data = obj_path.read_bytes()
    start = data.find(b"mtllib")  # trimesh takes the first occurrence, wherever it is
    if start < 0:
        return []  # the file asks for no materials: flat grey is what it means
    end = data.find(b"\n", start)
    mtllib = os.fsdecode(data[start + 6: end if end >= 0 else len(data)].strip())
    mtl = find_like_trimesh(folder, mtllib)
    if mtl is None:
        return [{"kind": "mtl_missing", "file": str(folder / mtllib)}]
    textures = mtl_textures(mtl.read_bytes())
    used = sorted({" ".join(os.fsdecode(m).split()) for m in _USEMTL.findall(data)} - {""})
    warnings = [{"kind": "material_missing", "file": str(mtl), "material": name}
                for name in used if name not in textures]
    for name in sorted({textures[m] for m in used if textures.get(m)}):
        path = find_like_trimesh(folder, name)
        if path is None:
            warnings.append({"kind": "texture_missing", "file": str(folder / name)})
        elif not _image_opens(path):
            warnings.append({"kind": "texture_unreadable", "file": str(path)})
    for name in sorted({texture_name(g) for g in scene.geometry.values()
                        if texture_name(g) and not has_usable_texture(g)}):
        warnings.append({"kind": "texture_without_uv", "file": str(folder / name)})
    return warnings


def texture_name(geom):
    """The texture file of a part as its .mtl names it, or None for an untextured part."""
    image = getattr(getattr(geom.visual, "material", None), "image", None)
    return None if image is None else image.info.get("file_path") or "(unnamed texture)"


def has_usable_texture(geom):
    """True when a part has a texture and one finite UV per vertex, so the texture can be drawn."""
    visual = geom.visual
    uv = getattr(visual, "uv", None)
    return (visual.kind == "texture" and texture_name(geom) is not None and uv is not None
            and len(uv) == len(geom.vertices) and bool(np.all(np.isfinite(uv))))
