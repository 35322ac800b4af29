"""Pix3D-style "photos" of a toy model for scripts/make_toy_pix3d.py: a random camera (mostly front and side views,
some shifted so the object leaves the frame), a procedural background, sometimes an occluding rectangle, and the
annotation fields of Pix3D's pix3d.json in its camera convention (see make_toy_pix3d.py's docstring).

    img, mask, fields = render_photo(renderer, rng, vertices, keypoints, size)   # renderer: meshes.render
    uv = project_pix3d(points, fields["rot_mat"], fields["trans_mat"], fields["focal_length"], (w, h))
"""
import math

import numpy as np

from meshes.geometry import look_at

P_TRUNCATED = 0.10    # share of photos whose camera is shifted so the object leaves the frame
P_OCCLUDED = 0.12     # share of photos with a rectangle painted over part of the object
FOCAL_MM = (28.0, 50.0)


def project_pix3d(points, rot_mat, trans_mat, focal_length, img_size):
    """Model-frame points (N, 3) -> pixel coordinates (N, 2) with Pix3D's camera convention."""
    cam = np.asarray(points, dtype=np.float64) @ np.asarray(rot_mat).T + np.asarray(trans_mat)
    w, h = img_size
    f = focal_length / 32.0 * w
    return np.stack([w / 2 - f * cam[:, 0] / cam[:, 2], h / 2 - f * cam[:, 1] / cam[:, 2]], axis=1)


def background(rng, h, w):
    """Random 'room': colour gradient + stripes or checker + pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2, c3 = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
    a = rng.uniform(0, 2 * math.pi)
    t = (math.cos(a) * xx + math.sin(a) * yy) / (w + h) + .5
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    kind, period = int(rng.integers(3)), rng.uniform(8, 40) * w / 256
    if kind == 0:
        b = rng.uniform(0, math.pi)
        pattern = np.sin(2 * math.pi * (math.cos(b) * xx + math.sin(b) * yy) / period) > 0
    elif kind == 1:
        pattern = ((xx // period + yy // period) % 2) > 0
    else:
        pattern = np.zeros((h, w), dtype=bool)
    alpha = rng.uniform(.15, .4)
    img = np.where(pattern[..., None], (1 - alpha) * img + alpha * c3, img)
    img = img + rng.normal(0, rng.uniform(2, 6), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _camera(rng, radius, size, truncate):
    """Random camera: (OpenGL cam-to-world pose, yfov degrees, focal_length mm, roll radians)."""
    focal = rng.uniform(*FOCAL_MM)
    f_px = focal / 32 * size
    half_fov = math.atan(size / 2 / f_px)
    # Mostly front and side views, as people photograph furniture (doors and drawers stay visible).
    az, el, roll = math.radians(rng.uniform(-60, 60)), math.radians(rng.uniform(5, 40)), rng.uniform(-.2, .2)
    # The bounding sphere fills that share of the half field of view, so the whole model is in the frame.
    dist = radius / math.sin(rng.uniform(.85, 1.0) * half_fov if truncate else rng.uniform(.7, .95) * half_fov)
    eye = dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    pose = look_at(eye, (0, 0, 0), (0, 1, 0))
    c, s = math.cos(roll), math.sin(roll)
    pose[:3, :3] = pose[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if truncate:  # slide the camera sideways: part of the object leaves the frame, its centre stays in
        b = rng.uniform(0, 2 * math.pi)
        pose[:3, 3] += radius * rng.uniform(.6, 1.0) * (math.cos(b) * pose[:3, 0] + math.sin(b) * pose[:3, 1])
    return pose, math.degrees(2 * half_fov), focal, roll


def _occlude(rng, img, mask):
    """Paint a random rectangle over part of the object; returns (mask of what stays visible, covered share)."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
    scale = (.35, .6) if rng.random() < 2 / 3 else (.1, .25)
    for _ in range(20):
        rw, rh = (x2 - x1 + 1) * rng.uniform(*scale), (y2 - y1 + 1) * rng.uniform(*scale)
        cx, cy = rng.uniform(x1, x2 + 1), rng.uniform(y1, y2 + 1)
        r0, r1 = int(max(0, cy - rh / 2)), int(min(mask.shape[0], cy + rh / 2 + 1))
        c0, c1 = int(max(0, cx - rw / 2)), int(min(mask.shape[1], cx + rw / 2 + 1))
        covered = mask[r0:r1, c0:c1].sum() / mask.sum()
        if .01 < covered < .6:
            break
    else:
        return mask, 0.0
    color = rng.uniform(0, 255, 3)
    noise = rng.normal(0, 8, (r1 - r0, c1 - c0, 1))
    img[r0:r1, c0:c1] = np.clip(color + noise, 0, 255).astype(np.uint8)
    mask = mask.copy()
    mask[r0:r1, c0:c1] = False
    return mask, float(covered)


def render_photo(renderer, rng, verts, kps, size):
    """One photo of the model already set in `renderer`: (rgb, mask, annotation fields)."""
    radius = float(np.linalg.norm(verts, axis=1).max())
    truncate = rng.random() < P_TRUNCATED
    for _ in range(20):  # redraw the rare pose where almost nothing of the object is in view
        pose, yfov, focal, roll = _camera(rng, radius, size, truncate)
        rgb, depth = renderer.render(pose, yfov)
        mask = depth > 0
        if mask.sum() >= .005 * size * size:
            break
    world_to_gl = np.linalg.inv(pose)
    flip = np.diag([-1.0, 1.0, -1.0])  # OpenGL camera (x right, looks down -z) -> Pix3D's (x left, +z)
    rot, trans = flip @ world_to_gl[:3, :3], flip @ world_to_gl[:3, 3]
    img = np.where(mask[..., None], rgb, background(rng, size, size))
    covered = 0.0
    if rng.random() < P_OCCLUDED:
        mask, covered = _occlude(rng, img, mask)
    uv = project_pix3d(verts, rot, trans, focal, (size, size))
    truncated = bool((uv < 0).any() or (uv > size).any())
    kp_uv = project_pix3d(kps, rot, trans, focal, (size, size))
    inside = (kp_uv >= 0).all(1) & (kp_uv <= size).all(1)
    ys, xs = np.nonzero(mask)
    fields = {
        "2d_keypoints": [[[round(float(u), 2), round(float(v), 2)] if ok else [-1.0, -1.0]
                          for (u, v), ok in zip(kp_uv, inside)]],
        "rot_mat": np.round(rot, 6).tolist(),
        "trans_mat": np.round(trans, 6).tolist(),
        "focal_length": round(focal, 4),
        "cam_position": np.round(pose[:3, 3], 6).tolist(),
        "inplane_rotation": round(roll, 6),
        "truncated": truncated,
        "occluded": covered >= .1,
        "slightly_occluded": 0 < covered < .1,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
    }
    return img, mask, fields
