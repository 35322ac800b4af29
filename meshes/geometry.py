"""Meshes and cameras without OpenGL: load an .obj, turn its up axis to +Y and centre it in the unit sphere, the
ring of view cameras."""
import math
from pathlib import Path

import numpy as np


class MeshError(Exception):
    """A model that cannot be loaded or rendered; str(e) is the human-readable reason."""


MAX_COORD = 1e12  # larger coordinates are garbage, not a model (and 1e308 overflows any maths on them)
DEGENERATE = 1e-10  # a face whose area is below this times its longest edge squared is a line or a point
UP_AXES = ("y", "z", "-y", "-z")  # --up: the model axis pointing up; the renderer's up is +Y


def load_model(obj_path):
    """Load an .obj (with its .mtl and textures) as a trimesh.Scene; MeshError for unusable files.

    Loaded unprocessed: trimesh's processing silently drops faces with NaN vertices and overflows on huge
    coordinates, and neither should pass unnoticed. Rendering needs no merged vertices.
    """
    import trimesh

    obj_path = Path(obj_path)
    if not obj_path.is_file():
        raise MeshError("file not found")
    if obj_path.stat().st_size == 0:
        raise MeshError("empty file")
    try:
        scene = trimesh.load(str(obj_path), force="scene", process=False)
    except Exception as e:  # trimesh raises many kinds of errors on malformed input
        raise MeshError(f"cannot parse: {type(e).__name__}: {e}") from None
    if not scene.geometry:
        raise MeshError("no geometry parsed (not an OBJ file?)")
    # Drop point clouds / paths an OBJ may also hold: only triangles are rendered.
    for name, geom in list(scene.geometry.items()):
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            scene.delete_geometry(name)
    if not scene.geometry:
        raise MeshError("no faces")
    used = np.concatenate([g.vertices[np.unique(g.faces)] for g in scene.geometry.values()])
    if not np.all(np.isfinite(used)):
        raise MeshError("vertices are not finite (NaN or inf)")
    if np.abs(used).max() > MAX_COORD:
        raise MeshError(f"absurd coordinates: up to {np.abs(used).max():.3g}, beyond {MAX_COORD:g}")
    if sum(g.area for g in scene.geometry.values()) == 0:
        raise MeshError("all faces have zero area")
    return scene


def scene_vertices(scene):
    """The vertices that frame the model, in world coordinates (scene graph transforms applied): those of
    faces with an area. Stray unreferenced vertices and degenerate faces, which some exported OBJs carry
    far away from the model, would otherwise shrink it to a dot."""
    import trimesh

    parts, fallback = [], []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        tris = geom.vertices[geom.faces]
        edges = np.stack([tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 1], tris[:, 0] - tris[:, 2]], axis=1)
        twice_area = np.linalg.norm(np.cross(edges[:, 0], edges[:, 1]), axis=1)
        solid = twice_area > 2 * DEGENERATE * (edges ** 2).sum(axis=2).max(axis=1)
        parts.append(trimesh.transform_points(geom.vertices[np.unique(geom.faces[solid])], transform))
        fallback.append(trimesh.transform_points(geom.vertices[np.unique(geom.faces)], transform))
    verts = np.concatenate(parts)
    return verts if len(verts) else np.concatenate(fallback)  # all slivers: frame them anyway


def up_rotation(up="y"):
    """4x4 rotation turning the model's `up` axis (one of UP_AXES) into +Y. It turns about +X, so a Z-up
    model's front (-Y, as Blender models it) ends up facing +Z, where azimuth 0 looks from."""
    if up not in UP_AXES:
        raise ValueError(f"up={up!r}: expected one of {', '.join(UP_AXES)}")
    angle = {"y": 0.0, "z": -90.0, "-y": 180.0, "-z": 90.0}[up]
    c, s = np.rint(math.cos(math.radians(angle))), np.rint(math.sin(math.radians(angle)))  # exact 0 / +-1
    matrix = np.eye(4)
    matrix[1:3, 1:3] = [[c, -s], [s, c]]
    return matrix


def normalize_scene(scene, up="y"):
    """Copy of `scene` turned so `up` points to +Y, centred at its bounding-box centre and scaled so it fits
    in the unit sphere (framed by scene_vertices)."""
    scene = scene.copy()
    scene.apply_transform(up_rotation(up))
    verts = scene_vertices(scene)
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
