"""Headless rendering of meshes: load and normalize an .obj, render it from a ring of cameras, contact sheets.

    from meshes.render import render_views
    images = render_views("model/chair/IKEA_POANG_1/model.obj")   # the 12 training views, PIL images

The renders of the training data (scripts/render_objs.py) and of one mesh (render_views, caption.py) come
from the same functions here. pyrender is imported lazily, after configure_gl() has chosen the OpenGL
platform, so importing this module changes nothing in the process.
"""
import hashlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from meshes.geometry import MeshError, intrinsics, load_model, look_at, normalize_scene, view_cameras
from meshes.lambert import lambert_program_cache
from meshes.materials import has_usable_texture, material_warnings, texture_name
from utils import atomic_save_image, atomic_write, write_json

# Fixed light rig, in the camera frame so every view is lit the same way: (direction the light shines
# along, weight). The Lambert shader adds weight * max(n.l, 0) per light to the ambient term, so a surface
# facing the camera comes out at about its material colour.
LIGHT_RIG = [
    ((0.5, -0.6, -1.0), 0.6),   # key: from the upper left, behind the camera
    ((-0.7, -0.2, -1.0), 0.25),  # fill: from the right
    ((0.0, -1.0, 0.3), 0.3),    # top light, slightly from behind: tops read brighter than sides
]
AMBIENT = 0.3
FALLBACK_GRAY = (0.7, 0.7, 0.7, 1.0)  # meshes without any colour information
# A view with fewer object pixels than this fraction of the image (and at least 4) is blank: the model
# is a dot in its own frame (a far-away part) or off-screen. A thin pole still covers ~1% of a view.
MIN_OBJECT_FRACTION = 0.001
NO_GL = "cannot create an OpenGL context"
INSTALL_GL = ("headless rendering needs Mesa's EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri "
              "libgl1) or OSMesa (apt-get install libosmesa6, then PYOPENGL_PLATFORM=osmesa); "
              "scripts/check_system.sh checks what is there")
_gl_used = False  # set once this process has made a GL context: forking it afterwards is unsafe


def configure_gl():
    """Default PyOpenGL to EGL, the headless platform, unless the environment already chose one.

    PyOpenGL reads PYOPENGL_PLATFORM once, when first imported, so this runs before every pyrender import
    here. Mesa's EGL needs the surfaceless platform when there is no X/Wayland display and no /dev/dri.
    """
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if os.environ["PYOPENGL_PLATFORM"] == "egl":
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")


def _pyrender():
    configure_gl()
    import pyrender

    return pyrender


def gl_context_made():
    """True once this process has created an OpenGL context (a process holding one must not fork)."""
    return _gl_used


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


def _primitives(scene, flat=False):
    """pyrender primitives for a scene, transforms baked in, flat normals (3 vertices per face).

    One primitive per textured geometry and ONE for everything else (per-face colours): pyrender spends
    ~1.5 ms of Python per primitive per view, and Pix3D models hold many small untextured parts.
    flat=True draws textured parts in their texture's mean colour too.
    """
    import trimesh

    pyrender = _pyrender()

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
        if not flat and has_usable_texture(geom):
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
        global _gl_used
        pyrender = _pyrender()
        _gl_used = True
        self.width, self.height = int(width), int(height)
        bg = [c / 255.0 for c in bg_color] + [1.0]
        try:
            self._renderer = pyrender.OffscreenRenderer(self.width, self.height)
        except Exception as e:  # EGL / OSMesa missing or broken: say what to install, not a GL traceback
            detail = " ".join(str(e).split())[:200]  # EGL errors print over many lines
            raise OSError(f"{NO_GL} (PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}): "
                          f"{type(e).__name__}: {detail}; {INSTALL_GL}") from None
        self._renderer._renderer._program_cache = lambert_program_cache()
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
        pyrender = _pyrender()

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
        pyrender = _pyrender()

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


def views_record(cameras, width, height, up="y"):
    """What views.json holds, less each PNG's size and hash: one entry per view, camera + intrinsics +
    image file name + the model axis that was turned up (--up)."""
    return [{"image": view_name(i), **cam, "intrinsics": intrinsics(cam["yfov"], width, height), "up": up}
            for i, cam in enumerate(cameras)]


def render_scene(renderer, scene, cameras):
    """PIL images of a normalized trimesh.Scene, one per camera, from an OffscreenRenderer. MeshError when a
    view is (almost) blank: a white image is no training view."""
    from PIL import Image

    renderer.set_model(scene)
    images = []
    for i, cam in enumerate(cameras):
        rgb, depth = renderer.render(cam["pose"], cam["yfov"])
        least = max(4, round(MIN_OBJECT_FRACTION * depth.size))
        if np.count_nonzero(depth) < least:
            raise MeshError(f"view {i} is blank: {np.count_nonzero(depth)} object pixels of {depth.size}, fewer "
                            f"than {least} (a far-away part shrinking the model to a dot?)")
        images.append(Image.fromarray(rgb))
    return images


def save_views(images, cameras, out_dir, up="y"):
    """view_XX.png for each image, written atomically, then views.json with each PNG's size and sha256:
    its presence, with every PNG as recorded, is what marks a model's folder as done."""
    out_dir = Path(out_dir)
    records = views_record(cameras, images[0].width, images[0].height, up)
    for record, image in zip(records, images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        atomic_write(out_dir / record["image"], data)
        record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    write_json(out_dir / "views.json", records)


def render_model(renderer, obj_path, out_dir, cameras, up="y"):
    """Render one .obj from every camera into out_dir (view_XX.png, then views.json), `up` being the model
    axis that points up. Returns the material warnings ({"kind", "file"}, meshes/materials.py): what the
    .obj asks for but could not be drawn. MeshError for a file that cannot be loaded or renders blank."""
    scene = load_model(obj_path)
    problems = material_warnings(obj_path, scene)
    images = render_scene(renderer, normalize_scene(scene, up), cameras)
    if renderer.flat_fallback:  # pyrender could not take a texture: every part is drawn flat
        problems += [{"kind": "texture_unusable", "file": str(Path(obj_path).parent / name)}
                     for name in sorted({texture_name(g) for g in scene.geometry.values() if texture_name(g)})]
    save_views(images, cameras, out_dir, up)
    return problems


def render_views(obj_path, size=224, save_dir=None, up="y"):
    """The 12 training-style views of one .obj (as scripts/render_objs.py renders the dataset), as PIL
    images of size x size; with save_dir, also written there as view_XX.png and views.json.

    ValueError names the file when the mesh cannot be loaded or renders blank; OSError says what to install
    when there is no headless OpenGL (EGL or OSMesa). A missing .mtl or texture is a Python warning.
    """
    import warnings

    try:
        scene = load_model(obj_path)
        for problem in material_warnings(obj_path, scene):
            warnings.warn(f"{obj_path}: {problem['kind']}: {problem['file']}", stacklevel=2)
        scene = normalize_scene(scene, up)
        cameras = view_cameras()
        with OffscreenRenderer(size, size) as renderer:
            images = render_scene(renderer, scene, cameras)
    except MeshError as e:
        raise ValueError(f"{obj_path}: {e}") from None
    if save_dir is not None:
        save_views(images, cameras, save_dir, up)
    return images


def _rounded(obj):
    """Floats rounded to 6 decimals, so a views.json from another numpy build still compares equal."""
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _png_as_recorded(path, record):
    """True when the file has the size and sha256 views.json recorded (a truncated PNG has not)."""
    try:
        if path.stat().st_size != record.get("bytes"):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == record.get("sha256")
    except OSError:
        return False


def is_done(out_dir, cameras, width, height, up="y"):
    """True when out_dir holds views.json for this camera set, size and up axis, and every view PNG as
    views.json recorded it (size and sha256)."""
    out_dir = Path(out_dir)
    try:
        saved = json.loads((out_dir / "views.json").read_text())
        settings = [{k: v for k, v in view.items() if k not in ("bytes", "sha256")} for view in saved]
    except (OSError, ValueError, TypeError, AttributeError):  # unreadable, not JSON, not a list of dicts
        return False
    if _rounded(settings) != _rounded(views_record(cameras, width, height, up)):
        return False
    return all(_png_as_recorded(out_dir / view["image"], view) for view in saved)


# ----------------------------------------------------------------------------- contact sheet
def contact_sheet(image_paths, out_path, ncols=12, thumb=96, labels=None):
    """Write a PNG grid of thumbnails, row by row (optionally captioned), so renders can be checked at a
    glance. A None path leaves its cell blank, so callers can start each row at a multiple of ncols."""
    from PIL import Image, ImageDraw

    image_paths = list(image_paths)
    if not any(path is not None for path in image_paths):
        raise ValueError("contact_sheet: no images given")
    label_h = 14 if labels else 0
    ncols = max(1, min(ncols, len(image_paths)))
    nrows = math.ceil(len(image_paths) / ncols)
    sheet = Image.new("RGB", (ncols * thumb, nrows * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, path in enumerate(image_paths):
        if path is None:
            continue
        x, y = (i % ncols) * thumb, (i // ncols) * (thumb + label_h)
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((thumb, thumb))
            sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        if labels:
            draw.text((x + 2, y + thumb), str(labels[i])[: thumb // 6], fill="black")
    atomic_save_image(sheet, out_path)
    return out_path
