"""Render every .obj under a folder from a fixed ring of cameras, headless (EGL / OSMesa).

    PYOPENGL_PLATFORM=egl .venv/bin/python scripts/render_objs.py \
        --obj_dir data/pix3d/model --output_dir data/pix3d/renders [--workers 2] [--shard 0/4]

Writes <output_dir>/<model folder relative to obj_dir>/view_XX.png and views.json (camera pose and
intrinsics per view). A folder holding several .obj files gets one sub-folder per file stem. Finished
models are skipped, so an interrupted run just restarts; bad meshes go to failures.jsonl and never stop
the run. One OpenGL context per worker is reused for every view and model: creating one per image
(what the first version did) costs more than the rendering itself.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

# PyOpenGL picks its platform when first imported, so this has to run before any `import pyrender`.
# Mesa's EGL needs the surfaceless platform when there is no X/Wayland display and no /dev/dri.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
if os.environ["PYOPENGL_PLATFORM"] == "egl":
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils import atomic_save_image, write_json, write_jsonl  # noqa: E402

# Fixed light rig, in the camera frame so every view is lit the same way: (direction the light shines
# along, weight). The shader below adds weight * max(n.l, 0) per light to the ambient term, so a surface
# facing the camera comes out at about its material colour.
LIGHT_RIG = [
    ((0.5, -0.6, -1.0), 0.6),   # key: from the upper left, behind the camera
    ((-0.7, -0.2, -1.0), 0.25),  # fill: from the right
    ((0.0, -1.0, 0.3), 0.3),    # top light, slightly from behind: tops read brighter than sides
]
AMBIENT = 0.3
FALLBACK_GRAY = (0.7, 0.7, 0.7, 1.0)  # meshes without any colour information
_GL_USED = False  # set once this process has made a GL context: forking it afterwards is unsafe

# Lambert shading instead of pyrender's PBR shader: on Mesa's llvmpipe (software) the PBR fragment shader
# and a 4x4 inverse per vertex are most of the render time, and diffuse light is all a CLIP image needs.
# Light is computed per vertex: every mesh is drawn with flat face normals (3 vertices per face sharing
# its normal), so this is exactly per-face shading at a fraction of the cost. Same inputs, uniforms and
# #defines as pyrender's mesh.vert/mesh.frag, which these replace.
MESH_VERT = """#version 330 core
struct DirectionalLight { vec3 color; float intensity; vec3 direction; };
layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef TEXCOORD_0_LOC
layout(location = TEXCOORD_0_LOC) in vec2 texcoord_0;
out vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;
uniform mat4 M;
uniform mat4 V;
uniform mat4 P;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform vec3 cam_pos;
uniform vec3 ambient_light;
out vec4 shade;  // light x vertex colour
void main() {
    mat4 model = M * inst_m;
    vec4 world = model * vec4(position, 1.0);
    gl_Position = P * V * world;
    vec3 to_cam = cam_pos - world.xyz;
    vec3 n = to_cam;
#ifdef NORMAL_LOC
    vec3 nm = mat3(model) * normal;  // model transforms are rotation + uniform scale here
    if (dot(nm, nm) > 0.0) n = nm;   // degenerate faces have no normal: light them head-on
#endif
    n = normalize(dot(n, to_cam) < 0.0 ? -n : n);  // two-sided: OBJ panels are often one-sided or flipped
    vec3 light = ambient_light;
    for (int i = 0; i < n_directional_lights; i++) {
        light += directional_lights[i].intensity * directional_lights[i].color
                 * max(dot(n, -directional_lights[i].direction), 0.0);
    }
    shade = vec4(light, 1.0);
#ifdef COLOR_0_LOC
    shade *= color_0;
#endif
#ifdef TEXCOORD_0_LOC
    uv_0 = texcoord_0;
#endif
}
"""
MESH_FRAG = """#version 330 core
struct Material {
    vec4 base_color_factor;
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
};
uniform Material material;
in vec4 shade;
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
out vec4 frag_color;
void main() {
    vec4 color = material.base_color_factor * shade;
#ifdef HAS_BASE_COLOR_TEX
    color *= texture(material.base_color_texture, uv_0);
#endif
    // Shading applied to sRGB colours directly: no gamma round trip (two pow per pixel) on llvmpipe.
    frag_color = clamp(color, 0.0, 1.0);
}
"""
SHADER_SOURCES = {"mesh.vert": MESH_VERT, "mesh.frag": MESH_FRAG}


def _lambert_program_cache():
    """A pyrender ShaderProgramCache whose mesh programs compile our sources instead of pyrender's files."""
    import re

    from pyrender.shader_program import ShaderProgram, ShaderProgramCache

    class SourceProgram(ShaderProgram):
        def _load(self, shader_filename):
            text = SHADER_SOURCES.get(os.path.basename(shader_filename))
            if text is None:
                return super()._load(shader_filename)
            # pyrender's preprocessing: #ifdef X -> #if 1/0, then each define name -> its value
            text = re.sub(r"#ifdef\s+(\w+)\s*$", lambda m: "#if 1" if m.group(1) in self.defines else "#if 0",
                          text, flags=re.MULTILINE)
            for name, value in self.defines.items():
                text = text.replace(name, str(value))
            return text

    class LambertCache(ShaderProgramCache):
        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            program = super().get_program(vertex_shader, fragment_shader, geometry_shader, defines)
            if vertex_shader == "mesh.vert" and type(program) is ShaderProgram:
                program.__class__ = SourceProgram  # not compiled yet: compiling happens on first use
            return program

    return LambertCache()


class MeshError(Exception):
    """A model that cannot be loaded or rendered; str(e) is the human-readable reason."""


# ----------------------------------------------------------------------------- loading / geometry
def load_model(obj_path):
    """Load an .obj (with its .mtl and textures) as a trimesh.Scene; MeshError for unusable files."""
    import trimesh

    obj_path = Path(obj_path)
    if not obj_path.is_file():
        raise MeshError("file not found")
    if obj_path.stat().st_size == 0:
        raise MeshError("empty file")
    try:
        scene = trimesh.load(str(obj_path), force="scene")
    except Exception as e:  # trimesh raises many kinds of errors on malformed input
        raise MeshError(f"cannot parse: {type(e).__name__}: {e}") from None
    meshes = [g for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh)]
    if not scene.geometry:
        raise MeshError("no geometry parsed (not an OBJ file?)")
    if not meshes or sum(len(m.faces) for m in meshes) == 0:
        raise MeshError("no faces")
    if sum(m.area for m in meshes) == 0:
        raise MeshError("all faces have zero area")
    # Drop point clouds / paths an OBJ may also hold: only triangles are rendered.
    for name, geom in list(scene.geometry.items()):
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            scene.delete_geometry(name)
    if not np.all(np.isfinite(scene.bounds)):
        raise MeshError("vertices are not finite")
    return scene


def _scene_vertices(scene):
    """Vertices used by some face, in world coordinates (scene graph transforms applied). Stray
    unreferenced vertices, which some exported OBJs carry, would otherwise shrink the model."""
    import trimesh

    parts = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        parts.append(trimesh.transform_points(geom.vertices[np.unique(geom.faces)], transform))
    return np.concatenate(parts)


def normalize_scene(scene):
    """Copy of `scene` centred at its bounding-box centre and scaled so it fits in the unit sphere."""
    scene = scene.copy()
    verts = _scene_vertices(scene)
    centre = (verts.min(0) + verts.max(0)) / 2
    radius = np.linalg.norm(verts - centre, axis=1).max()
    scale = 1.0 / radius if radius > 0 else 1.0
    matrix = np.eye(4)
    matrix[:3, :3] *= scale
    matrix[:3, 3] = -centre * scale
    scene.apply_transform(matrix)
    return scene


def look_at(eye, target=(0, 0, 0), up=(0, 1, 0)):
    """4x4 camera-to-world pose, OpenGL convention: the camera looks down its -Z axis, +Y is up."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = eye - target
    if np.linalg.norm(z) == 0:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-8:  # looking straight along `up`: any perpendicular will do
        x = np.cross((0.0, 0.0, 1.0) if abs(z[2]) < 0.9 else (1.0, 0.0, 0.0), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def view_cameras(n_views=12, elevations=(15.0, 40.0), distance=3.0, yfov_deg=40.0):
    """n_views cameras on rings around the origin: n_views / len(elevations) azimuths per elevation.

    Angles are in degrees (yfov too). Azimuth 0 looks at the model from +Z. distance 3.0: the unit
    sphere spans 2*asin(1/3) = 39 degrees, so a normalized model never leaves a 40-degree view (2.5 clipped
    long tables and shelves at the image border).
    """
    elevations = list(elevations)
    if not elevations or n_views % len(elevations):
        raise ValueError(f"n_views={n_views} must split evenly over {len(elevations)} elevation(s)")
    per_ring = n_views // len(elevations)
    cameras = []
    for elev in elevations:
        for k in range(per_ring):
            azim = 360.0 * k / per_ring
            a, e = math.radians(azim), math.radians(elev)
            eye = distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
            cameras.append({"azimuth": azim, "elevation": float(elev), "distance": float(distance),
                            "yfov": float(yfov_deg), "pose": look_at(eye).tolist()})
    return cameras


def intrinsics(yfov_deg, width, height):
    """Pinhole intrinsics in pixels (origin top-left, v down) of pyrender's camera with this yfov."""
    fy = (height / 2) / math.tan(math.radians(yfov_deg) / 2)
    return {"fx": fy, "fy": fy, "cx": width / 2, "cy": height / 2, "width": width, "height": height}


# ----------------------------------------------------------------------------- rendering
def _flat_color(geom):
    """One RGBA colour (0-1) standing for a geometry: its texture's mean colour, else its main colour."""
    visual = geom.visual
    if visual.kind in ("vertex", "face"):
        return np.asarray(visual.main_color, dtype=np.float64) / 255.0
    mat = getattr(visual, "material", None)
    if mat is None:
        return np.array(FALLBACK_GRAY)
    factor = getattr(mat, "diffuse", None)
    if factor is None:
        factor = getattr(mat, "baseColorFactor", None)
    factor = np.array(FALLBACK_GRAY) if factor is None else np.asarray(factor, dtype=np.float64).ravel()
    factor = factor / 255.0 if factor.max() > 1.0 else factor
    factor = np.r_[factor[:3], factor[3] if len(factor) > 3 else 1.0]
    image = getattr(mat, "image", None) or getattr(mat, "baseColorTexture", None)
    if image is not None:
        try:  # mean of a thumbnail (a 4k texture's full mean is needlessly slow)
            mean = np.asarray(image.convert("RGB").resize((16, 16))).reshape(-1, 3).mean(0) / 255.0
            return np.r_[mean, factor[3]]  # Kd beside a texture is mostly an exporter default: ignore it
        except Exception:
            pass
    return factor


def _has_usable_texture(geom):
    visual = geom.visual
    uv = getattr(visual, "uv", None)
    image = getattr(getattr(visual, "material", None), "image", None)
    return (visual.kind == "texture" and image is not None and uv is not None
            and len(uv) == len(geom.vertices) and np.all(np.isfinite(uv)))


def _primitives(scene, flat=False):
    """pyrender primitives for a scene, transforms baked in, flat normals (3 vertices per face).

    One primitive per textured geometry and ONE for everything else (per-face colours): pyrender spends
    ~1.5 ms of Python per primitive per view, and Pix3D models hold many small untextured parts.
    flat=True draws textured parts in their texture's mean colour too.
    """
    import pyrender
    import trimesh

    def corners_and_normals(geom, transform):
        tris = trimesh.transform_points(geom.vertices, transform)[geom.faces]  # (F, 3, 3)
        normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
        return tris.reshape(-1, 3).astype(np.float32), np.repeat(normals, 3, axis=0).astype(np.float32)

    prims, coloured = [], []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        positions, normals = corners_and_normals(geom, transform)
        if not flat and _has_usable_texture(geom):
            image = geom.visual.material.image
            image = image if image.mode == "RGB" else image.convert("RGB")
            material = pyrender.MetallicRoughnessMaterial(baseColorTexture=image, metallicFactor=0.0)
            uv = geom.visual.uv[geom.faces].reshape(-1, 2).astype(np.float32)
            prims.append(pyrender.Primitive(positions=positions, normals=normals, texcoord_0=uv,
                                            material=material, mode=pyrender.constants.GLTF.TRIANGLES))
            continue
        if not flat and geom.visual.kind in ("vertex", "face"):
            face_rgba = np.asarray(geom.visual.face_colors, dtype=np.float64) / 255.0
        else:
            face_rgba = np.tile(_flat_color(geom), (len(geom.faces), 1))
        coloured.append((positions, normals, np.repeat(face_rgba, 3, axis=0).astype(np.float32)))
    if coloured:
        positions, normals, colors = (np.concatenate(parts) for parts in zip(*coloured))
        blend = bool((colors[:, 3] < 1).any())
        material = pyrender.MetallicRoughnessMaterial(baseColorFactor=(1.0, 1.0, 1.0, 1.0), metallicFactor=0.0,
                                                      alphaMode="BLEND" if blend else "OPAQUE")
        prims.append(pyrender.Primitive(positions=positions, normals=normals, color_0=colors,
                                        material=material, mode=pyrender.constants.GLTF.TRIANGLES))
    return prims


class OffscreenRenderer:
    """One GL context + one pyrender scene (camera, light rig) reused for every model and view."""

    def __init__(self, width=224, height=224, bg_color=(255, 255, 255)):
        import pyrender

        global _GL_USED
        _GL_USED = True
        self.width, self.height = int(width), int(height)
        bg = [c / 255.0 for c in bg_color] + [1.0]
        self._renderer = pyrender.OffscreenRenderer(self.width, self.height)
        self._renderer._renderer._program_cache = _lambert_program_cache()
        self._scene = pyrender.Scene(bg_color=bg, ambient_light=[AMBIENT] * 3)
        self._camera = pyrender.PerspectiveCamera(yfov=math.radians(40.0), znear=0.05, zfar=100.0,
                                                  aspectRatio=self.width / self.height)
        self._camera_node = self._scene.add(self._camera, pose=np.eye(4))
        for direction, intensity in LIGHT_RIG:
            # Children of the camera node, so they move with it. A directional light shines along -Z of
            # its node: aim that axis along `direction` (given in the camera frame).
            local = look_at(-np.asarray(direction, dtype=np.float64), (0, 0, 0))
            local[:3, 3] = 0
            self._scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=intensity), pose=local,
                            parent_node=self._camera_node)
        self._mesh_node = None
        self._trimesh_scene = None
        self.flat_fallback = False  # True when the current model is drawn in flat colours

    def set_model(self, scene, flat=False):
        """Replace the model by `scene` (a normalized trimesh.Scene); camera and lights stay.

        A texture pyrender cannot take (odd image, no UVs) makes the whole model fall back to flat colours.
        """
        import pyrender

        if self._mesh_node is not None:
            self._scene.remove_node(self._mesh_node)  # pyrender frees its GL buffers on the next render
            self._mesh_node = None
        self._trimesh_scene, self.flat_fallback = scene, flat
        try:
            mesh = pyrender.Mesh(primitives=_primitives(scene, flat))
        except Exception:
            if flat:
                raise
            return self.set_model(scene, flat=True)
        self._mesh_node = self._scene.add(mesh)

    def render(self, camera_pose, yfov, intrinsics_out=False):
        """Render the current model. yfov in degrees. Returns (rgb uint8 HxWx3, depth float32 HxW, 0 =
        background), plus the intrinsics dict when intrinsics_out=True."""
        import pyrender

        pose = np.asarray(camera_pose, dtype=np.float64)
        self._camera.yfov = math.radians(yfov)
        self._scene.set_pose(self._camera_node, pose)
        # Culling off: many furniture OBJs have single-sided panels with inconsistent winding.
        flags = pyrender.RenderFlags.SKIP_CULL_FACES
        try:
            rgb, depth = self._renderer.render(self._scene, flags=flags)
        except Exception:
            # A texture pyrender cannot use makes the shader fail to compile: redo this model flat.
            if self.flat_fallback or self._trimesh_scene is None:
                raise
            self.set_model(self._trimesh_scene, flat=True)
            rgb, depth = self._renderer.render(self._scene, flags=flags)
        rgb, depth = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), depth.astype(np.float32)
        if intrinsics_out:
            return rgb, depth, intrinsics(yfov, self.width, self.height)
        return rgb, depth

    def close(self):
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def view_name(i):
    return f"view_{i:02d}.png"


def views_record(cameras, width, height):
    """What views.json holds: one entry per view, camera + intrinsics + image file name."""
    return [{"image": view_name(i), **cam, "intrinsics": intrinsics(cam["yfov"], width, height)}
            for i, cam in enumerate(cameras)]


def render_model(renderer, obj_path, out_dir, cameras):
    """Render one .obj from every camera into out_dir (view_XX.png, then views.json). Returns #views."""
    from PIL import Image

    scene = normalize_scene(load_model(obj_path))
    renderer.set_model(scene)
    out_dir = Path(out_dir)
    for i, cam in enumerate(cameras):
        rgb, _ = renderer.render(cam["pose"], cam["yfov"])
        atomic_save_image(Image.fromarray(rgb), out_dir / view_name(i))
    # views.json last: its presence (with all PNGs) is what marks a model as done.
    write_json(out_dir / "views.json", views_record(cameras, renderer.width, renderer.height))
    return len(cameras)


def _rounded(obj):
    """Floats rounded to 6 decimals, so a views.json from another numpy build still compares equal."""
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def is_done(out_dir, cameras, width, height):
    """True when out_dir holds views.json for this camera set and size, and every view PNG."""
    out_dir = Path(out_dir)
    try:
        saved = json.loads((out_dir / "views.json").read_text())
    except (OSError, ValueError):
        return False
    same = _rounded(saved) == _rounded(views_record(cameras, width, height))
    return same and all((out_dir / view_name(i)).is_file() for i in range(len(cameras)))


# ----------------------------------------------------------------------------- contact sheet
def contact_sheet(image_paths, out_path, ncols=12, thumb=96, labels=None):
    """Write a PNG grid of thumbnails (optionally captioned) so renders can be checked at a glance."""
    from PIL import Image, ImageDraw

    image_paths = list(image_paths)
    if not image_paths:
        raise ValueError("contact_sheet: no images given")
    label_h = 14 if labels else 0
    ncols = max(1, min(ncols, len(image_paths)))
    nrows = math.ceil(len(image_paths) / ncols)
    sheet = Image.new("RGB", (ncols * thumb, nrows * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, path in enumerate(image_paths):
        x, y = (i % ncols) * thumb, (i // ncols) * (thumb + label_h)
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((thumb, thumb))
            sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        if labels:
            draw.text((x + 2, y + thumb), str(labels[i])[: thumb // 6], fill="black")
    atomic_save_image(sheet, out_path)
    return out_path


# ----------------------------------------------------------------------------- CLI
def find_models(obj_dir, output_dir):
    """Sorted [(obj path, output folder)]. One .obj in a folder -> the folder's mirror; several ->
    one sub-folder per stem (Pix3D mostly has model/<category>/<NAME>/model.obj)."""
    obj_dir, output_dir = Path(obj_dir), Path(output_dir)
    objs = sorted(p for p in obj_dir.rglob("*") if p.suffix.lower() == ".obj" and p.is_file())
    per_folder = {}
    for p in objs:
        per_folder[p.parent] = per_folder.get(p.parent, 0) + 1
    models = []
    for p in objs:
        rel = p.parent.relative_to(obj_dir)
        alone = per_folder[p.parent] == 1 and rel != Path(".")
        models.append((p, output_dir / rel if alone else output_dir / rel / p.stem))
    return models


_WORKER = {}  # per-process state: the renderer lives here, created once by the pool initializer


NO_GL = "cannot create an OpenGL context"


def _init_worker(size, bg, cameras, lp_threads):
    """Pool initializer (also run in-process for 1 worker). Never raises: an exception here would make
    multiprocessing restart the worker forever, so the error is kept and every job reports it."""
    if lp_threads is not None:  # several workers: llvmpipe draws in the worker's own thread, no helpers
        os.environ.setdefault("LP_NUM_THREADS", str(lp_threads))  # read when the GL context is made
    _WORKER.update(cameras=cameras, size=size, bg=bg)
    try:
        _WORKER["renderer"] = OffscreenRenderer(size, size, bg)
    except Exception as e:
        platform = os.environ.get("PYOPENGL_PLATFORM")
        detail = " ".join(str(e).split())[:200]  # EGL errors print over many lines
        _WORKER["init_error"] = (f"{NO_GL} (PYOPENGL_PLATFORM={platform}): {type(e).__name__}: {detail}. Headless "
                                 f"rendering needs Mesa's EGL or OSMesa: see scripts/check_system.sh")


def _render_job(job):
    """(obj path, out dir, rel name) -> (rel name, None or failure reason). Never raises."""
    obj_path, out_dir, rel = job
    if "init_error" in _WORKER:
        return rel, _WORKER["init_error"]
    try:
        render_model(_WORKER["renderer"], obj_path, out_dir, _WORKER["cameras"])
        return rel, None
    except MeshError as e:
        return rel, str(e)
    except Exception as e:
        # The GL context may be unusable after an error deep in the renderer: start a fresh one.
        try:
            _WORKER["renderer"].close()
        except Exception:
            pass
        _WORKER["renderer"] = OffscreenRenderer(_WORKER["size"], _WORKER["size"], _WORKER["bg"])
        return rel, f"render error: {type(e).__name__}: {e}"


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--obj_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--n_views", type=int, default=12)
    p.add_argument("--size", type=int, default=224, help="square image side in pixels")
    p.add_argument("--elevations", default="15,40", help="comma-separated camera elevations in degrees")
    p.add_argument("--distance", type=float, default=3.0, help="camera distance (model fits the unit sphere)")
    p.add_argument("--yfov", type=float, default=40.0, help="vertical field of view in degrees")
    p.add_argument("--bg", default="255,255,255", help="background colour R,G,B")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="i/n: render the models whose sorted index %% n == i")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any model failed")
    p.add_argument("--platform", choices=["egl", "osmesa"], default=os.environ.get("PYOPENGL_PLATFORM", "egl"))
    args = p.parse_args(argv)
    try:
        args.elevations = [float(e) for e in args.elevations.split(",")]
        args.bg = tuple(int(c) for c in args.bg.split(","))
        shard_i, shard_n = (int(s) for s in args.shard.split("/"))
    except ValueError:
        p.error("--elevations, --bg and --shard take comma-separated numbers and i/n")
    if len(args.bg) != 3 or not all(0 <= c <= 255 for c in args.bg):
        p.error(f"--bg {args.bg}: expected R,G,B in 0..255")
    if not 0 <= shard_i < shard_n:
        p.error(f"--shard {args.shard}: expected 0 <= i < n")
    args.shard = (shard_i, shard_n)
    return args


def main(argv=None):
    args = _parse_args(argv)
    os.environ["PYOPENGL_PLATFORM"] = args.platform  # before anything imports pyrender
    if args.platform == "egl":
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    from tqdm import tqdm

    obj_dir, output_dir = Path(args.obj_dir), Path(args.output_dir)
    if not obj_dir.is_dir():
        print(f"error: --obj_dir {obj_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        cameras = view_cameras(args.n_views, args.elevations, args.distance, args.yfov)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models = find_models(obj_dir, output_dir)
    if not models:
        print(f"error: no .obj files under {obj_dir}", file=sys.stderr)
        return 1
    owner = {}
    for obj_path, out_dir in models:  # e.g. a/x.obj next to a/y.obj claims a/x/, as does a/x/model.obj
        if out_dir in owner:
            print(f"error: {obj_path} and {owner[out_dir]} would both render into {out_dir}", file=sys.stderr)
            return 2
        owner[out_dir] = obj_path
    shard_i, shard_n = args.shard
    models = [m for k, m in enumerate(models) if k % shard_n == shard_i]

    jobs, skipped = [], 0
    for obj_path, out_dir in models:
        if is_done(out_dir, cameras, args.size, args.size):
            skipped += 1
        else:
            jobs.append((str(obj_path), str(out_dir), obj_path.relative_to(obj_dir).as_posix()))

    failures, rendered, pool = [], 0, None
    bar = tqdm(total=len(jobs), desc="render", unit="model", disable=not jobs)
    try:
        if not jobs:
            results = []
        elif args.workers <= 1:
            _init_worker(args.size, args.bg, cameras, None)
            results = map(_render_job, jobs)
        else:
            import multiprocessing as mp

            import pyrender  # noqa: F401  imported once here, forked workers inherit it (no GL context yet)
            import trimesh  # noqa: F401

            # fork starts much faster than spawn, but is only safe while this process holds no GL context.
            fork_ok = "fork" in mp.get_all_start_methods() and not _GL_USED
            pool = mp.get_context("fork" if fork_ok else "spawn").Pool(
                min(args.workers, len(jobs)), _init_worker, (args.size, args.bg, cameras, 0))
            results = pool.imap_unordered(_render_job, jobs)
        for rel, reason in results:
            if reason is not None and reason.startswith(NO_GL):
                bar.close()
                print(f"error: {reason}", file=sys.stderr)
                return 1
            if reason is None:
                rendered += 1
            else:
                failures.append({"model": rel, "reason": reason})
                tqdm.write(f"failed: {rel}: {reason}")
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        if "renderer" in _WORKER:
            _WORKER.pop("renderer").close()
        # This run's failures (a shard writes its own file so parallel shards do not overwrite each other).
        name = "failures.jsonl" if shard_n == 1 else f"failures_shard{shard_i}of{shard_n}.jsonl"
        write_jsonl(output_dir / name, failures)

    print(f"rendered {rendered}, skipped {skipped}, failed {len(failures)}")
    if models and rendered == 0 and skipped == 0:
        return 1
    return 1 if args.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
