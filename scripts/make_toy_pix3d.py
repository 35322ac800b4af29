"""Generate a small synthetic dataset in exactly Pix3D's on-disk format, so the pipeline runs before
downloading the real one (3.6 GB).

    PYOPENGL_PLATFORM=egl .venv/bin/python scripts/make_toy_pix3d.py --out data/pix3d_toy --seed 0
        [--models_per_category 35] [--photos_per_model 2] [--photo_size 256] [--categories chair,table]

Defaults: 315 models and 630 photos of 256 px, about 40 s of CPU on 2 cores. A previous toy dataset in
--out is replaced; a folder holding anything else (e.g. the real Pix3D) is refused.

Writes, for all 9 Pix3D categories:
    model/<category>/TOY_<CATEGORY>_NNNN/model.obj, model.mtl   furniture built from boxes and cylinders,
                                                                 one `o <part>_<i>` object per part
        attributes.json     (toy only) colour, part counts, size, style: ground truth for the captions
        3d_keypoints.txt    the model vertices nearest the 8 corners of its bounding box, "x y z" per line
        voxel.mat           32^3 solid occupancy grid (key "voxel") over the cube around the model's bounding
                            box, indexed [x, y, z]; written only when scipy is installed (pix3d.json names the
                            path either way, and nothing in this repo reads it)
    img/<category>/NNNN.png   "photos": the model rendered at a random pose over a procedural background
    mask/<category>/NNNN.png  0/255 mask of the visible object (an occluder is cut out of it)
    pix3d.json                one entry per photo with every field of the real file

Model frame: metres, +y up, the front of the furniture faces +z (render_objs.py's azimuth 0 is a front
view), bounding box centred at the origin.
Camera (Pix3D's convention, github.com/xingyuansun/pix3d issue #2): X_cam = rot_mat @ X_model + trans_mat,
camera +x points left, +y up, +z forward (into the scene), and a point projects to pixels as
    f = focal_length / 32 * img_width          (focal_length in mm on a 32 mm wide sensor)
    u = img_width / 2 - f * X_cam / Z_cam,  v = img_height / 2 - f * Y_cam / Z_cam
rot_mat includes the in-plane rotation (inplane_rotation is the camera roll in radians, for reference);
cam_position is the camera centre in the model frame (-rot_mat^T @ trans_mat). 2d_keypoints holds one
"annotator": the projected 3D keypoints, [-1, -1] for those outside the photo.
Same seed -> byte-identical pix3d.json, models, keypoints, voxels and masks (each model and photo draws
from its own seeded generator, so --categories or counts do not change the other models). Photos can differ
in a pixel or two: pyrender draws meshes in set order, which decides ties between equally deep faces.
"""
import argparse
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# A toy model is painted only with COLOR_WORDS colours, so the colour it is given is the word its captions use.
from meshes.captions import COLOR_WORDS  # noqa: E402
from utils import atomic_save_image, atomic_write, write_json  # noqa: E402

CATEGORIES = ["bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe"]
# Part kinds that are counted in attributes["parts"] -> the key they are counted under. The OBJ holds
# exactly attributes["parts"][key] objects named <kind>_<i> for each (tests rely on that).
COUNTED = {"leg": "legs", "arm": "arms", "slat": "slats", "shelf": "shelves", "drawer": "drawers",
           "door": "doors", "pillow": "pillows", "cushion": "cushions", "footboard": "footboards"}
VOXEL_RES = 32        # real Pix3D ships 128^3; 32^3 keeps the toy files small
P_TRUNCATED = 0.10    # share of photos whose camera is shifted so the object leaves the frame
P_OCCLUDED = 0.12     # share of photos with a rectangle painted over part of the object
FOCAL_MM = (28.0, 50.0)


# ----------------------------------------------------------------------------- geometry helpers
def _box(size, center):
    mesh = trimesh.creation.box(extents=size)
    mesh.apply_translation(center)
    return mesh


def _cyl(radius, y0, y1, x=0.0, z=0.0, sections=16):
    """Vertical cylinder from height y0 to y1."""
    return trimesh.creation.cylinder(radius=radius, segment=[[x, y0, z], [x, y1, z]], sections=sections)


def _lathe(profile, sections=24):
    """Solid of revolution about +y from a [(radius, height), ...] profile that starts and ends on the axis."""
    mesh = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))  # z -> y
    return mesh


class _Parts:
    """Collects (mesh, colour) parts, naming each mesh <kind>_<i> in mesh.metadata['part']."""

    def __init__(self):
        self.items, self.counts = [], {}

    def add(self, kind, color, *meshes):
        mesh = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(list(meshes))
        i = self.counts.get(kind, 0)
        self.counts[kind] = i + 1
        mesh.metadata["part"] = f"{kind}_{i}"
        self.items.append([mesh, color])


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _pick(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _contrast(color):
    """A colour that stands out against `color` (handles, metal parts, feet)."""
    return "gray" if color == "black" else "black"


# ----------------------------------------------------------------------------- one builder per category
# Each builder fills `m` in a frame with the floor at y=0 and the front at +z; returns (parts dict, style).
def _chair(m, rng, main, accent):
    style = _pick(rng, ["dining", "office", "armchair"])
    if style == "dining":
        w, d, seat_h, back_h = _u(rng, .40, .52), _u(rng, .42, .55), _u(rng, .43, .48), _u(rng, .38, .55)
        st, lt = .04, _u(rng, .03, .045)
        xs, zs = w / 2 - lt / 2, d / 2 - lt / 2
        n_legs = _pick(rng, [3, 4], [.25, .75])
        feet = [(-xs, zs), (xs, zs), (-xs, -zs), (xs, -zs)] if n_legs == 4 else [(-xs, zs), (xs, zs), (0, -zs)]
        for x, z in feet:
            m.add("leg", main, _box((lt, seat_h - st, lt), (x, (seat_h - st) / 2, z)))
        m.add("seat", main, _box((w, st, d), (0, seat_h - st / 2, 0)))
        n_slats, zb, yb = _pick(rng, [0, 3, 4, 5], [.4, .2, .2, .2]), -d / 2 + .015, seat_h + back_h / 2
        if n_slats == 0:
            m.add("back", main, _box((w, back_h, .03), (0, yb, zb)))
        else:  # two posts and a top rail, with vertical slats in between
            rail = .06
            m.add("back", main, _box((lt, back_h, .03), (-xs, yb, zb)), _box((lt, back_h, .03), (xs, yb, zb)),
                  _box((w, rail, .03), (0, seat_h + back_h - rail / 2, zb)))
            inner = w - 2 * lt
            for i in range(n_slats):
                x = -inner / 2 + inner * (i + 1) / (n_slats + 1)
                m.add("slat", main, _box((.025, back_h - rail, .02), (x, seat_h + (back_h - rail) / 2, zb)))
        n_arms = _pick(rng, [0, 2], [.7, .3])
        for s in ([-1, 1] if n_arms else []):
            m.add("arm", main, _box((.04, .03, d * .85), (s * (w / 2 - .02), seat_h + .22, .075 * d)),
                  _box((.03, .22, .03), (s * (w / 2 - .02), seat_h + .11, d / 2 - .05)))
        if rng.random() < .5:
            m.add("seat_pad", accent, _box((w - .08, .03, d - .08), (0, seat_h + .015, .01)))
        parts = {"legs": n_legs, "arms": n_arms}
        if n_slats:
            parts["slats"] = n_slats
        return parts, style
    if style == "office":
        w, d, seat_h, back_h = _u(rng, .46, .56), _u(rng, .45, .52), _u(rng, .45, .52), _u(rng, .45, .7)
        st, base_c = .07, _contrast(main)
        spokes = []
        for k in range(5):  # star base: five spokes around a gas-lift column
            spoke = _box((.05, .03, .3), (0, .05, .15))
            spoke.apply_transform(trimesh.transformations.rotation_matrix(2 * math.pi * k / 5, [0, 1, 0]))
            spokes.append(spoke)
        m.add("base", base_c, *spokes, _cyl(.025, .05, seat_h - st))
        m.add("seat", main, _box((w, st, d), (0, seat_h - st / 2, 0)))
        m.add("back", main, _box((w * .92, back_h, .06), (0, seat_h + .06 + back_h / 2, -d / 2 + .03)),
              _box((.06, .1, .03), (0, seat_h + .03, -d / 2 + .015)))
        n_arms = _pick(rng, [0, 2], [.45, .55])
        for s in ([-1, 1] if n_arms else []):
            m.add("arm", base_c, _box((.03, .2, .04), (s * (w / 2 + .02), seat_h + .1, 0)),
                  _box((.06, .03, d * .55), (s * (w / 2 + .02), seat_h + .215, .02)))
        return {"arms": n_arms}, style
    # armchair: upholstered block with a thick back, usually arms, short dark feet
    w, d, leg_h = _u(rng, .7, .9), _u(rng, .72, .88), _u(rng, .06, .14)
    seat_h, h, back_t, cush_t = _u(rng, .38, .45), _u(rng, .75, .95), _u(rng, .14, .2), .1
    n_arms = _pick(rng, [0, 2], [.2, .8])
    arm_w, arm_h = (_u(rng, .1, .16) if n_arms else 0.0), seat_h + _u(rng, .15, .22)
    y_base = seat_h - cush_t
    m.add("base", main, _box((w, y_base - leg_h, d), (0, (leg_h + y_base) / 2, 0)))
    m.add("seat_cushion", main if rng.random() < .7 else accent,
          _box((w - 2 * arm_w - .01, cush_t, d - back_t - .01), (0, seat_h - cush_t / 2, back_t / 2)))
    m.add("back", main, _box((w, h - y_base, back_t), (0, (y_base + h) / 2, -d / 2 + back_t / 2)))
    for s in ([-1, 1] if n_arms else []):
        m.add("arm", main, _box((arm_w, arm_h - y_base, d - back_t),
                                (s * (w / 2 - arm_w / 2), (y_base + arm_h) / 2, back_t / 2)))
    for x in (-1, 1):
        for z in (-1, 1):
            m.add("leg", _contrast(main), _box((.05, leg_h, .05), (x * (w / 2 - .04), leg_h / 2, z * (d / 2 - .04))))
    return {"legs": 4, "arms": n_arms}, style


def _table(m, rng, main, accent):
    style = _pick(rng, ["dining", "round", "coffee"])
    leg_c = main if rng.random() < .6 else accent
    if style == "round":
        r, h, tt = _u(rng, .4, .6), _u(rng, .72, .76), .04
        m.add("top", main, _cyl(r, h - tt, h, sections=32))
        n_legs = _pick(rng, [1, 3, 4])
        if n_legs == 1:  # pedestal: column on a base disc
            m.add("leg", leg_c, _cyl(.05, .03, h - tt), _cyl(.25, 0, .03, sections=24))
        for k in range(n_legs if n_legs > 1 else 0):
            a = 2 * math.pi * k / n_legs + math.pi / 4
            m.add("leg", leg_c, _box((.05, h - tt, .05), (.65 * r * math.cos(a), (h - tt) / 2, .65 * r * math.sin(a))))
        return {"legs": n_legs}, style
    if style == "dining":
        w = _u(rng, 1.0, 2.0)
        d, h, tt, lt = _u(rng, .7, min(1.0, .8 * w)), _u(rng, .72, .78), _u(rng, .03, .05), _u(rng, .05, .08)
    else:  # coffee: low, often with a lower shelf
        w, d, h, tt, lt = _u(rng, .8, 1.3), _u(rng, .5, .7), _u(rng, .35, .48), .04, .05
    m.add("top", main, _box((w, tt, d), (0, h - tt / 2, 0)))
    xs, zs = w / 2 - lt / 2 - .03, d / 2 - lt / 2 - .03
    for x in (-xs, xs):
        for z in (-zs, zs):
            m.add("leg", leg_c, _box((lt, h - tt, lt), (x, (h - tt) / 2, z)))
    if style == "dining":
        return {"legs": 4}, style
    n_shelves = _pick(rng, [0, 1])
    if n_shelves:
        m.add("shelf", main, _box((2 * xs, .02, 2 * zs), (0, .12, 0)))
    return {"legs": 4, "shelves": n_shelves}, style


def _desk(m, rng, main, accent):
    w, d, h, tt = _u(rng, 1.0, 1.6), _u(rng, .55, .8), _u(rng, .72, .77), .03
    under, n_dr, n_legs = h - tt, _pick(rng, [0, 1, 2, 3, 4], [.25, .15, .2, .2, .2]), 0
    m.add("top", main, _box((w, tt, d), (0, h - tt / 2, 0)))
    if n_dr:  # drawer pedestal on the right, accent-coloured fronts with dark handles
        pw = _u(rng, .38, .45)
        px, dh = w / 2 - pw / 2 - .01, (under - .04) / n_dr
        m.add("pedestal", main, _box((pw, under, d - .04), (px, under / 2, -.02)))
        for i in range(n_dr):
            y = .04 + dh * i + dh / 2
            m.add("drawer", accent, _box((pw - .02, dh - .012, .02), (px, y, d / 2 - .03)))
            m.add("handle", _contrast(accent), _box((.1, .015, .02), (px, y + dh * .25, d / 2 - .01)))
        left = [-1]
    else:
        left = [-1, 1]
    use_legs = rng.random() < .6
    for s in left:  # the other supports: legs or a side panel per side
        if use_legs:
            for z in (-1, 1):
                m.add("leg", main, _box((.05, under, .05), (s * (w / 2 - .04), under / 2, z * (d / 2 - .06))))
                n_legs += 1
        else:
            m.add("side", main, _box((.03, under, d - .04), (s * (w / 2 - .025), under / 2, -.02)))
    m.add("modesty_panel", main, _box((w - .1, .3, .015), (0, under - .15, -d / 2 + .04)))
    return {"drawers": n_dr, "legs": n_legs}, None


def _bookcase(m, rng, main, accent):
    n = int(rng.integers(2, 7))  # shelves = levels you can put books on (bottom board included)
    level, plinth, t = _u(rng, .26, .36), _u(rng, .05, .09), _u(rng, .018, .025)
    w, d = _u(rng, .4, 1.2), _u(rng, .25, .4)
    h = plinth + n * level + t
    for s in (-1, 1):
        m.add("side", main, _box((t, h, d), (s * (w / 2 - t / 2), h / 2, 0)))
    m.add("top", main, _box((w - 2 * t, t, d), (0, h - t / 2, 0)))
    for i in range(n):
        m.add("shelf", main, _box((w - 2 * t, t, d - .016), (0, plinth + i * level + t / 2, -.002)))
    m.add("base", main, _box((w - 2 * t, plinth, t), (0, plinth / 2, d / 2 - t / 2 - .01)))
    # The back may be accent-coloured: it stops under the top board and behind the shelves, because
    # coplanar faces of two colours z-fight, and pyrender's draw order (a set) differs between runs.
    m.add("back", accent if rng.random() < .3 else main,
          _box((w - 2 * t, h - t - plinth, .006), (0, (plinth + h - t) / 2, -d / 2 + .003)))
    return {"shelves": n}, None


def _wardrobe(m, rng, main, accent):
    w, h, d, base_h = _u(rng, .6, 1.8), _u(rng, 1.7, 2.2), _u(rng, .5, .62), .08
    n_doors = int(rng.integers(max(1, math.ceil(w / .8)), min(3, int(w / .3)) + 1))  # doors .3-.8 m wide
    n_dr = _pick(rng, [0, 1, 2], [.5, .25, .25])
    handle_c, zf, dh, gap = _contrast(main), d / 2 - .01, .2, .012
    m.add("body", main, _box((w, h - base_h, d - .02), (0, (base_h + h) / 2, -.01)))
    m.add("base", main, _box((w - .04, base_h, d - .06), (0, base_h / 2, -.01)))
    for i in range(n_dr):
        y = base_h + i * dh + dh / 2
        m.add("drawer", main, _box((w - .02, dh - gap, .02), (0, y, zf)))
        m.add("handle", handle_c, _box((min(.25, .3 * w), .02, .02), (0, y, zf + .02)))
    y0 = base_h + n_dr * dh
    door_h, dw = h - y0 - .01, (w - gap * (n_doors + 1)) / n_doors
    for i in range(n_doors):
        x = -w / 2 + gap + dw / 2 + i * (dw + gap)
        m.add("door", main, _box((dw, door_h - gap, .02), (x, y0 + door_h / 2, zf)))
        side = 1 if x <= 0 else -1  # handle on the edge nearest the middle
        m.add("handle", handle_c, _box((.025, min(.35, .25 * door_h), .02),
                                       (x + side * (dw / 2 - .05), y0 + door_h / 2, zf + .02)))
    return {"doors": n_doors, "drawers": n_dr}, None


def _bed_level(m, rng, w, l, y, rail_h, t, main, bedding, n_pillows):
    """Rails around a mattress whose bottom sits at y, with pillows at the head end (-z)."""
    for s in (-1, 1):
        m.add("rail", main, _box((t, rail_h, l), (s * (w / 2 - t / 2), y + rail_h / 2, 0)))
        m.add("rail", main, _box((w - 2 * t, rail_h, t), (0, y + rail_h / 2, s * (l / 2 - t / 2))))
    mh = _u(rng, .14, .2)
    y_mat = y + .4 * rail_h
    m.add("mattress", bedding, _box((w - 2 * t, mh, l - 2 * t), (0, y_mat + mh / 2, 0)))
    pw = min(.55, (w - 2 * t - .1) / n_pillows - .05)
    for i in range(n_pillows):
        x = -(w - 2 * t) / 2 + (w - 2 * t) * (i + .5) / n_pillows
        m.add("pillow", bedding, _box((pw, .1, .32), (x, y_mat + mh + .05, -l / 2 + t + .22)))
    return y_mat + mh


def _bed(m, rng, main, accent):
    style = _pick(rng, ["single", "double", "bunk"], [.4, .4, .2])
    bedding = _pick(rng, [c for c in ("white", "beige", "gray") if c != main])
    t = .05
    if style == "bunk":  # four posts, two levels, guard rails and a ladder at the foot end (+z)
        w, l, h = _u(rng, .9, 1.0), _u(rng, 1.95, 2.05), _u(rng, 1.5, 1.75)
        for x in (-1, 1):
            for z in (-1, 1):
                m.add("leg", main, _box((.07, h, .07), (x * (w / 2 - .03), h / 2, z * (l / 2 - .03))))
        _bed_level(m, rng, w, l, _u(rng, .2, .3), .15, t, main, bedding, 1)
        y_top = _bed_level(m, rng, w, l, _u(rng, .95, 1.1), .15, t, main, bedding, 1)
        for s in (-1, 1):
            m.add("guard_rail", main, _box((t, .06, l - .12), (s * (w / 2 - t / 2), y_top + .2, 0)))
        lx, top = w / 2 - .2, y_top + .2
        rungs = [_box((.3, .025, .025), (lx, top * (k + 1) / 5, l / 2 + .05)) for k in range(4)]
        m.add("ladder", main, _box((.03, top, .03), (lx - .15, top / 2, l / 2 + .05)),
              _box((.03, top, .03), (lx + .15, top / 2, l / 2 + .05)), *rungs)
        return {"pillows": 2, "legs": 4}, style
    w = _u(rng, .9, 1.05) if style == "single" else _u(rng, 1.4, 1.85)
    l, rail_h = _u(rng, 1.95, 2.15), _u(rng, .22, .32)
    n_legs = _pick(rng, [0, 4], [.4, .6])
    leg_h = _u(rng, .08, .18) if n_legs else 0.0
    n_pillows = 1 if style == "single" else _pick(rng, [1, 2], [.3, .7])
    _bed_level(m, rng, w, l, leg_h, rail_h, t, main, bedding, n_pillows)
    hb_h = _u(rng, .8, 1.2)
    m.add("headboard", main, _box((w, hb_h, .06), (0, hb_h / 2, -l / 2 - .03)))
    n_foot = _pick(rng, [0, 1], [.6, .4])
    if n_foot:
        fb_h = _u(rng, .4, .6)
        m.add("footboard", main, _box((w, fb_h, .05), (0, fb_h / 2, l / 2 + .025)))
    for x in (-1, 1):
        for z in (-1, 1):
            if n_legs:
                m.add("leg", main, _box((.06, leg_h, .06), (x * (w / 2 - .03), leg_h / 2, z * (l / 2 - .03))))
    return {"pillows": n_pillows, "legs": n_legs, "footboards": n_foot}, style


def _sofa(m, rng, main, accent):
    n_c, cw = _pick(rng, [1, 2, 3], [.15, .45, .4]), _u(rng, .55, .7)
    n_arms = _pick(rng, [0, 2], [.2, .8])
    arm_w = _u(rng, .12, .22) if n_arms else 0.0
    w, d, h = n_c * cw + n_arms * arm_w, _u(rng, .8, .95), _u(rng, .75, .9)
    seat_h, leg_h, ch, back_t = _u(rng, .4, .46), _u(rng, .05, .12), _u(rng, .1, .15), _u(rng, .15, .22)
    y_base, arm_h = seat_h - ch, seat_h + _u(rng, .15, .22)
    cushion_c = main if rng.random() < .75 else accent
    m.add("base", main, _box((w, y_base - leg_h, d), (0, (leg_h + y_base) / 2, 0)))
    m.add("back", main, _box((w, h - y_base, back_t), (0, (y_base + h) / 2, -d / 2 + back_t / 2)))
    for i in range(n_c):  # gaps between the seat cushions show how many seats there are
        x = -w / 2 + arm_w + cw * (i + .5)
        m.add("cushion", cushion_c, _box((cw - .03, ch, d - back_t - .01), (x, seat_h - ch / 2, back_t / 2)))
        m.add("back_cushion", cushion_c, _box((cw - .03, (h - seat_h) * .8, .1),
                                              (x, seat_h + (h - seat_h) * .4, -d / 2 + back_t + .05)))
    for s in ([-1, 1] if n_arms else []):
        m.add("arm", main, _box((arm_w, arm_h - y_base, d - back_t),
                                (s * (w / 2 - arm_w / 2), (y_base + arm_h) / 2, back_t / 2)))
    for x in (-1, 1):
        for z in (-1, 1):
            m.add("leg", _contrast(main), _box((.05, leg_h, .05), (x * (w / 2 - .05), leg_h / 2, z * (d / 2 - .05))))
    return {"cushions": n_c, "arms": n_arms, "legs": 4}, None


def _misc(m, rng, main, accent):
    style = _pick(rng, ["floor lamp", "table lamp", "vase", "stool"])
    if style.endswith("lamp"):
        floor = style == "floor lamp"
        h = _u(rng, 1.4, 1.8) if floor else _u(rng, .4, .65)
        rb = _u(rng, .18, .25) if floor else _u(rng, .12, .18)
        rt, sh = rb * _u(rng, .55, .8), (_u(rng, .22, .32) if floor else _u(rng, .15, .22))
        m.add("shade", main, _lathe([(0, h - sh), (rb, h - sh), (rt, h), (0, h)]))
        m.add("stand", accent, _cyl(_u(rng, .1, .16) if floor else _u(rng, .07, .1), 0, .03, sections=24),
              _cyl(.012, .03, h - sh / 2, sections=8))
        return {}, style
    if style == "vase":
        h, r0 = _u(rng, .2, .5), _u(rng, .05, .12)
        belly, neck = r0 * _u(rng, 1.1, 1.8), r0 * _u(rng, .4, .8)
        m.add("body", main, _lathe([(0, 0), (r0, 0), (belly, h * _u(rng, .3, .5)), (neck, h * _u(rng, .75, .85)),
                                    (neck * _u(rng, 1.0, 1.4), h), (0, h)]))
        return {}, style
    h, r, st, n_legs = _u(rng, .45, .75), _u(rng, .15, .2), .04, _pick(rng, [3, 4])
    seat = _cyl(r, h - st, h, sections=24) if rng.random() < .6 else _box((2 * r, st, 2 * r), (0, h - st / 2, 0))
    m.add("seat", main, seat)
    leg_c = main if rng.random() < .6 else accent
    for k in range(n_legs):
        a = 2 * math.pi * k / n_legs + math.pi / 4
        m.add("leg", leg_c, _box((.035, h - st, .035), (.7 * r * math.cos(a), (h - st) / 2, .7 * r * math.sin(a))))
    return {"legs": n_legs}, style


def _tool(m, rng, main, accent):
    style, metal = _pick(rng, ["hammer", "wrench", "screwdriver"]), ("gray" if main != "gray" else "black")
    if style == "hammer":  # upright: handle along +y, head across the top
        L, r = _u(rng, .25, .35), _u(rng, .013, .018)
        m.add("handle", main, _cyl(r, 0, L - .01, sections=12))  # ends inside the head: no coplanar caps
        m.add("head", metal, _box((_u(rng, .1, .13), .03, .03), (0, L - .015, 0)))
    elif style == "wrench":  # a flat bar with an open jaw on top and a box end below
        L, t, bw = _u(rng, .15, .3), .008, _u(rng, .018, .025)
        m.add("bar", main, _box((bw, L, t), (0, L / 2, 0)), _box((2 * bw, 2 * bw, t), (0, 0, 0)))
        jaw_w = 2.6 * bw
        m.add("jaw", main, _box((jaw_w, .9 * bw, t), (0, L + .45 * bw, 0)),
              *[_box((.7 * bw, 1.1 * bw, t), (s * (jaw_w / 2 - .35 * bw), L + .9 * bw + .55 * bw, 0)) for s in (-1, 1)])
    else:
        hl, hr, sl = _u(rng, .09, .12), _u(rng, .013, .018), _u(rng, .08, .15)
        m.add("handle", main, _cyl(hr, 0, hl, sections=12))
        m.add("shaft", metal, _cyl(.0035, hl - .005, hl + sl, sections=8),
              _box((.009, .012, .003), (0, hl + sl + .006, 0)))
    return {}, style


BUILDERS = {"bed": _bed, "bookcase": _bookcase, "chair": _chair, "desk": _desk, "misc": _misc,
            "sofa": _sofa, "table": _table, "tool": _tool, "wardrobe": _wardrobe}


def color_areas(parts):
    """{colour: surface area} over a list of (mesh, colour)."""
    areas = {}
    for mesh, color in parts:
        areas[color] = areas.get(color, 0.0) + float(mesh.area)
    return areas


def build_model(category, rng):
    """One random model of `category`: (list of (trimesh part mesh, colour name), attributes dict).

    Each part mesh carries its name (<kind>_<i>) in mesh.metadata['part']. The model is centred on its
    bounding box. attributes: category, color (the area-largest colour, over half the surface), colors
    (area fractions), parts (counts), size (metres), style (when the category has one).
    """
    if category not in BUILDERS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    names = list(COLOR_WORDS)
    main = _pick(rng, names)
    accent = _pick(rng, [c for c in names if c != main])
    m = _Parts()
    counts, style = BUILDERS[category](m, rng, main, accent)
    parts = m.items
    # The recorded colour must be what a render shows: repaint the largest other-coloured part in the
    # main colour until the main colour covers more than half of the surface.
    while True:
        areas = color_areas(parts)
        if areas.get(main, 0.0) > 0.5 * sum(areas.values()):
            break
        others = [i for i, (_, c) in enumerate(parts) if c != main]
        parts[max(others, key=lambda i: parts[i][0].area)][1] = main
    lo = np.min([mesh.bounds[0] for mesh, _ in parts], axis=0)
    hi = np.max([mesh.bounds[1] for mesh, _ in parts], axis=0)
    for mesh, _ in parts:
        mesh.apply_translation(-(lo + hi) / 2)
    total = sum(areas.values())
    attrs = {
        "category": category,
        "color": main,
        "colors": {c: round(a / total, 4) for c, a in sorted(areas.items(), key=lambda kv: -kv[1])},
        "parts": {k: int(v) for k, v in counts.items()},
        "size": {k: round(float(v), 3) for k, v in zip(("width", "height", "depth"), hi - lo)},
    }
    if style:
        attrs["style"] = style
    return [(mesh, color) for mesh, color in parts], attrs


# ----------------------------------------------------------------------------- files of one model
def obj_text(parts):
    """Wavefront OBJ: one `o <part>` object and `usemtl <colour>` per part; vertices rounded to 0.01 mm."""
    lines = ["# toy Pix3D model written by scripts/make_toy_pix3d.py", "mtllib model.mtl"]
    offset = 1
    for mesh, color in parts:
        lines += [f"o {mesh.metadata['part']}", f"usemtl {color}"]
        lines += ["v %.5f %.5f %.5f" % tuple(v) for v in np.round(mesh.vertices, 5) + 0.0]
        lines += ["f %d %d %d" % tuple(f) for f in mesh.faces + offset]
        offset += len(mesh.vertices)
    return "\n".join(lines) + "\n"


def mtl_text(colors):
    blocks = []
    for name in sorted(set(colors)):
        r, g, b = (c / 255 for c in COLOR_WORDS[name])
        blocks.append(f"newmtl {name}\nKa 0.0 0.0 0.0\nKd {r:.4f} {g:.4f} {b:.4f}\nKs 0.0 0.0 0.0\nd 1.0\nillum 1\n")
    return "\n".join(blocks)


def keypoints_3d(vertices):
    """The vertices nearest to the 8 corners of the bounding box (duplicates dropped, order kept)."""
    lo, hi = vertices.min(0), vertices.max(0)
    out = []
    for corner in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T:
        i = int(np.argmin(np.linalg.norm(vertices - corner, axis=1)))
        if i not in out:
            out.append(i)
    return vertices[out]


def voxel_mat(parts, res=VOXEL_RES):
    """MAT-file bytes holding a solid res^3 uint8 grid ('voxel') over the cube around the model, or None
    without scipy. The MAT header normally carries the creation time: it is fixed so files are reproducible."""
    try:
        import scipy.io
        from scipy.ndimage import binary_fill_holes
    except ImportError:
        return None
    verts = np.concatenate([mesh.vertices for mesh, _ in parts])
    lo, hi = verts.min(0), verts.max(0)
    side = float((hi - lo).max())
    origin = (lo + hi) / 2 - side / 2
    total = sum(mesh.area for mesh, _ in parts)
    points = [trimesh.sample.sample_surface(mesh, max(64, int(20000 * mesh.area / total)), seed=0)[0]
              for mesh, _ in parts]
    idx = np.clip(((np.concatenate(points) - origin) / side * res).astype(int), 0, res - 1)
    grid = np.zeros((res, res, res), dtype=bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"voxel": binary_fill_holes(grid).astype(np.uint8)}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, toy Pix3D voxel grid (scripts/make_toy_pix3d.py)".ljust(116)
    return bytes(data)


def write_model(out, category, name, parts, attrs):
    folder = Path(out) / "model" / category / name
    atomic_write(folder / "model.obj", obj_text(parts))
    atomic_write(folder / "model.mtl", mtl_text([c for _, c in parts]))
    write_json(folder / "attributes.json", {"category": category, "name": name,
                                            **{k: v for k, v in attrs.items() if k != "category"}})
    verts = np.concatenate([mesh.vertices for mesh, _ in parts])
    atomic_write(folder / "3d_keypoints.txt", "".join("%.5f %.5f %.5f\n" % tuple(p) for p in keypoints_3d(verts)))
    mat = voxel_mat(parts)
    if mat is not None:
        atomic_write(folder / "voxel.mat", mat)
    return folder


# ----------------------------------------------------------------------------- photos
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


def _camera(rng, radius, size, truncate, look_at):
    """Random camera: (OpenGL cam-to-world pose, yfov degrees, focal_length mm, roll radians)."""
    focal = _u(rng, *FOCAL_MM)
    f_px = focal / 32 * size
    half_fov = math.atan(size / 2 / f_px)
    # Mostly front and side views, as people photograph furniture (doors and drawers stay visible).
    az, el, roll = math.radians(_u(rng, -60, 60)), math.radians(_u(rng, 5, 40)), _u(rng, -.2, .2)
    # The bounding sphere fills that share of the half field of view, so the whole model is in the frame.
    dist = radius / math.sin(_u(rng, .85, 1.0) * half_fov if truncate else _u(rng, .7, .95) * half_fov)
    eye = dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    pose = look_at(eye, (0, 0, 0), (0, 1, 0))
    c, s = math.cos(roll), math.sin(roll)
    pose[:3, :3] = pose[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if truncate:  # slide the camera sideways: part of the object leaves the frame, its centre stays in
        b = rng.uniform(0, 2 * math.pi)
        pose[:3, 3] += radius * _u(rng, .6, 1.0) * (math.cos(b) * pose[:3, 0] + math.sin(b) * pose[:3, 1])
    return pose, math.degrees(2 * half_fov), focal, roll


def _occlude(rng, img, mask):
    """Paint a random rectangle over part of the object; returns (mask of what stays visible, covered share)."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
    scale = (.35, .6) if rng.random() < 2 / 3 else (.1, .25)
    for _ in range(20):
        rw, rh = (x2 - x1 + 1) * _u(rng, *scale), (y2 - y1 + 1) * _u(rng, *scale)
        cx, cy = _u(rng, x1, x2 + 1), _u(rng, y1, y2 + 1)
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


def render_photo(renderer, rng, verts, kps, size, look_at):
    """One photo of the model already set in `renderer`: (rgb, mask, annotation fields)."""
    radius = float(np.linalg.norm(verts, axis=1).max())
    truncate = rng.random() < P_TRUNCATED
    for _ in range(20):  # redraw the rare pose where almost nothing of the object is in view
        pose, yfov, focal, roll = _camera(rng, radius, size, truncate, look_at)
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


# ----------------------------------------------------------------------------- main
def clean_output(out):
    """Remove a previous toy dataset in `out`; refuse to touch anything that is not one."""
    out = Path(out)
    js = out / "pix3d.json"
    if js.exists():
        try:
            entries = json.loads(js.read_text())
        except ValueError:
            raise SystemExit(f"error: {js}: not valid JSON; refusing to overwrite {out} (pick another --out)") from None
        if any(not isinstance(e, dict) or e.get("model_source") != "toy" for e in entries):
            raise SystemExit(f"error: {js} holds non-toy entries (the real Pix3D?); refusing to overwrite {out}")
    model_dir = out / "model"
    if model_dir.is_dir():
        foreign = [p for p in model_dir.glob("*/*") if not p.name.startswith("TOY_")]
        if foreign:
            raise SystemExit(f"error: {foreign[0]} is not a toy model; refusing to overwrite {out}")
    for sub in ("model", "img", "mask"):
        shutil.rmtree(out / sub, ignore_errors=True)
    if js.exists():
        js.unlink()


def generate(out, seed=0, models_per_category=35, photos_per_model=2, photo_size=256, categories=None,
             progress=True):
    """Write the toy dataset into `out`; returns the pix3d.json entries."""
    from PIL import Image
    from tqdm import tqdm

    from meshes.geometry import load_model, look_at
    from meshes.render import OffscreenRenderer

    categories = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; expected a subset of {', '.join(CATEGORIES)}")
    out = Path(out)
    clean_output(out)
    entries = []
    renderer = OffscreenRenderer(photo_size, photo_size, (0, 0, 0))
    bar = tqdm(total=len(categories) * models_per_category, desc="toy pix3d", unit="model", disable=not progress)
    try:
        for category in categories:
            c = CATEGORIES.index(category)
            for i in range(models_per_category):
                name = f"TOY_{category.upper()}_{i + 1:04d}"
                parts, attrs = build_model(category, np.random.default_rng([seed, c, i]))
                folder = write_model(out, category, name, parts, attrs)
                verts = np.concatenate([mesh.vertices for mesh, _ in parts])
                kps = np.loadtxt(folder / "3d_keypoints.txt", ndmin=2)
                renderer.set_model(load_model(folder / "model.obj"))  # render what is on disk
                rel = f"model/{category}/{name}"
                for p in range(photos_per_model):
                    rng = np.random.default_rng([seed, c, i, 1000 + p])
                    img, mask, fields = render_photo(renderer, rng, verts, kps, photo_size, look_at)
                    stem = f"{i * photos_per_model + p + 1:04d}.png"
                    atomic_save_image(Image.fromarray(img), out / "img" / category / stem)
                    atomic_save_image(Image.fromarray(mask.astype(np.uint8) * 255, "L"), out / "mask" / category / stem)
                    entries.append({
                        "img": f"img/{category}/{stem}", "category": category, "img_size": [photo_size, photo_size],
                        "2d_keypoints": fields.pop("2d_keypoints"), "mask": f"mask/{category}/{stem}",
                        "img_source": "toy", "model": f"{rel}/model.obj", "model_raw": f"{rel}/model.obj",
                        "model_source": "toy", "3d_keypoints": f"{rel}/3d_keypoints.txt", "voxel": f"{rel}/voxel.mat",
                        **fields})
                bar.update()
    finally:
        bar.close()
        renderer.close()
    write_json(out / "pix3d.json", entries)  # last: its presence marks a finished dataset
    return entries


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/pix3d_toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models_per_category", type=int, default=35)
    p.add_argument("--photos_per_model", type=int, default=2)
    p.add_argument("--photo_size", type=int, default=256)
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated subset of the 9")
    args = p.parse_args(argv)
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        p.error(f"--categories: unknown {', '.join(bad)} (choose from {', '.join(CATEGORIES)})")
    if args.models_per_category < 1 or args.photos_per_model < 0 or args.photo_size < 32:
        p.error("need --models_per_category >= 1, --photos_per_model >= 0 and --photo_size >= 32")
    entries = generate(args.out, args.seed, args.models_per_category, args.photos_per_model, args.photo_size, cats)
    print(f"wrote {len(cats) * args.models_per_category} models, {len(entries)} photos to {args.out}")


if __name__ == "__main__":
    main()
