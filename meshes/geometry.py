"""Meshes and cameras without OpenGL: load an .obj, centre it in the unit sphere, the ring of view cameras."""
import math
from pathlib import Path

import numpy as np


class MeshError(Exception):
    """A model that cannot be loaded or rendered; str(e) is the human-readable reason."""


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


def scene_vertices(scene):
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
