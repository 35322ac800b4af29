"""Procedural toy furniture for the 9 Pix3D categories, built from boxes, cylinders and lathed profiles: one
builder per category. meshes/toy_design.py draws the colours, calls these and records the attributes:

    from meshes.toy_design import build_model
    parts, attributes = build_model("chair", np.random.default_rng(0))

Builder frame: metres, +y up, the front of the furniture faces +z, the floor at y=0. Parts are painted only
with COLOR_WORDS colours, so a colour recorded in the attributes is the word its captions use. Everything is
drawn from the rng passed in, every draw made whatever its value is used for: the same rng state gives the same
model, and an override (_Parts.choose) changes one attribute and nothing else.
"""
import math

import numpy as np
import trimesh


CATEGORIES = ["bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe"]
# Part kinds that are counted in attributes["parts"] -> the key they are counted under. The OBJ holds
# exactly attributes["parts"][key] objects named <kind>_<i> for each (tests rely on that).
COUNTED = {"leg": "legs", "arm": "arms", "slat": "slats", "shelf": "shelves", "drawer": "drawers",
           "door": "doors", "pillow": "pillows", "cushion": "cushions", "footboard": "footboards"}


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

    def __init__(self, trim, overrides=None):
        self.items, self.counts, self.overrides = [], {}, dict(overrides or {})
        self.trim = trim  # handles, metal parts, feet: a third colour, small in area

    def choose(self, key, drawn):
        """`drawn` unless the overrides set `key`. Builders draw every value first, so an override changes
        that one attribute and leaves every other draw of the model as it was (edit pairs rely on it)."""
        return self.overrides.get(key, drawn)

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


def _corner_legs(m, color, width, depth, height, inset, side=.05):
    """Four square legs from the floor up to `height`, their centres `inset` in from the corners of a
    width x depth footprint."""
    for x in (-1, 1):
        for z in (-1, 1):
            center = (x * (width / 2 - inset), height / 2, z * (depth / 2 - inset))
            m.add("leg", color, _box((side, height, side), center))


# ----------------------------------------------------------------------------- one builder per category
# Each builder fills `m` in a frame with the floor at y=0 and the front at +z; returns (parts dict, style).
def _chair(m, rng, main, accent):
    style = m.choose("style", _pick(rng, ["dining", "office", "armchair"]))
    if style == "dining":
        w, d, seat_h, back_h = _u(rng, .40, .52), _u(rng, .42, .55), _u(rng, .43, .48), _u(rng, .38, .55)
        st, lt = .04, _u(rng, .03, .045)
        xs, zs = w / 2 - lt / 2, d / 2 - lt / 2
        n_legs = m.choose("legs", _pick(rng, [3, 4], [.25, .75]))
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
        n_arms = m.choose("arms", _pick(rng, [0, 2], [.7, .3]))
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
        st, base_c = .07, m.trim
        spokes = []
        for k in range(5):  # star base: five spokes around a gas-lift column
            spoke = _box((.05, .03, .3), (0, .05, .15))
            spoke.apply_transform(trimesh.transformations.rotation_matrix(2 * math.pi * k / 5, [0, 1, 0]))
            spokes.append(spoke)
        m.add("base", base_c, *spokes, _cyl(.025, .05, seat_h - st))
        m.add("seat", main, _box((w, st, d), (0, seat_h - st / 2, 0)))
        m.add("back", main, _box((w * .92, back_h, .06), (0, seat_h + .06 + back_h / 2, -d / 2 + .03)),
              _box((.06, .1, .03), (0, seat_h + .03, -d / 2 + .015)))
        n_arms = m.choose("arms", _pick(rng, [0, 2], [.45, .55]))
        for s in ([-1, 1] if n_arms else []):
            m.add("arm", base_c, _box((.03, .2, .04), (s * (w / 2 + .02), seat_h + .1, 0)),
                  _box((.06, .03, d * .55), (s * (w / 2 + .02), seat_h + .215, .02)))
        return {"arms": n_arms}, style
    # armchair: upholstered block with a thick back, usually arms, short dark feet
    w, d, leg_h = _u(rng, .7, .9), _u(rng, .72, .88), _u(rng, .06, .14)
    seat_h, h, back_t, cush_t = _u(rng, .38, .45), _u(rng, .75, .95), _u(rng, .14, .2), .1
    n_arms = m.choose("arms", _pick(rng, [0, 2], [.2, .8]))
    arm_w, arm_h = _u(rng, .1, .16) * bool(n_arms), seat_h + _u(rng, .15, .22)
    y_base = seat_h - cush_t
    m.add("base", main, _box((w, y_base - leg_h, d), (0, (leg_h + y_base) / 2, 0)))
    m.add("seat_cushion", main if rng.random() < .7 else accent,
          _box((w - 2 * arm_w - .01, cush_t, d - back_t - .01), (0, seat_h - cush_t / 2, back_t / 2)))
    m.add("back", main, _box((w, h - y_base, back_t), (0, (y_base + h) / 2, -d / 2 + back_t / 2)))
    for s in ([-1, 1] if n_arms else []):
        m.add("arm", main, _box((arm_w, arm_h - y_base, d - back_t),
                                (s * (w / 2 - arm_w / 2), (y_base + arm_h) / 2, back_t / 2)))
    _corner_legs(m, m.trim, w, d, leg_h, .04)
    return {"legs": 4, "arms": n_arms}, style


def _table(m, rng, main, accent):
    style = m.choose("style", _pick(rng, ["dining", "round", "coffee"]))
    leg_c = main if rng.random() < .6 else accent
    if style == "round":
        r, h, tt = _u(rng, .4, .6), _u(rng, .72, .76), .04
        m.add("top", main, _cyl(r, h - tt, h, sections=32))
        n_legs = m.choose("legs", _pick(rng, [1, 3, 4]))
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
    n_shelves = m.choose("shelves", _pick(rng, [0, 1]))
    if n_shelves:
        m.add("shelf", main, _box((2 * xs, .02, 2 * zs), (0, .12, 0)))
    return {"legs": 4, "shelves": n_shelves}, style


def _desk(m, rng, main, accent):
    w, d, h, tt = _u(rng, 1.0, 1.6), _u(rng, .55, .8), _u(rng, .72, .77), .03
    under, n_dr, n_legs = h - tt, m.choose("drawers", _pick(rng, [0, 1, 2, 3, 4], [.25, .15, .2, .2, .2])), 0
    m.add("top", main, _box((w, tt, d), (0, h - tt / 2, 0)))
    pw = _u(rng, .38, .45)
    if n_dr:  # drawer pedestal on the right, accent-coloured fronts with dark handles
        px, dh = w / 2 - pw / 2 - .01, (under - .04) / n_dr
        m.add("pedestal", main, _box((pw, under, d - .04), (px, under / 2, -.02)))
        for i in range(n_dr):
            y = .04 + dh * i + dh / 2
            m.add("drawer", accent, _box((pw - .02, dh - .012, .02), (px, y, d / 2 - .03)))
            m.add("handle", m.trim, _box((.1, .015, .02), (px, y + dh * .25, d / 2 - .01)))
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
    drawn = int(rng.integers(2, 7))  # shelves = levels you can put books on (bottom board included)
    level, plinth, t = _u(rng, .26, .36), _u(rng, .05, .09), _u(rng, .018, .025)
    n = m.choose("shelves", drawn)
    level *= drawn / n  # another shelf count divides the same height
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
    n_dr = m.choose("drawers", _pick(rng, [0, 1, 2], [.5, .25, .25]))
    handle_c, zf, dh, gap = m.trim, d / 2 - .01, .2, .012
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
    style = m.choose("style", _pick(rng, ["single", "double", "bunk"], [.4, .4, .2]))
    bedding = accent  # mattress and pillows
    t = .05
    if style == "bunk":  # four posts, two levels, guard rails and a ladder at the foot end (+z)
        w, l, h = _u(rng, .9, 1.0), _u(rng, 1.95, 2.05), _u(rng, 1.5, 1.75)
        _corner_legs(m, main, w, l, h, .03, side=.07)
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
    leg_h = _u(rng, .08, .18) * bool(n_legs)
    n_pillows = m.choose("pillows", _pick(rng, [1, 2], [.3, .7]) if style == "double" else 1)
    _bed_level(m, rng, w, l, leg_h, rail_h, t, main, bedding, n_pillows)
    hb_h = _u(rng, .8, 1.2)
    m.add("headboard", main, _box((w, hb_h, .06), (0, hb_h / 2, -l / 2 - .03)))
    n_foot = m.choose("footboards", _pick(rng, [0, 1], [.6, .4]))
    if n_foot:
        fb_h = _u(rng, .4, .6)
        m.add("footboard", main, _box((w, fb_h, .05), (0, fb_h / 2, l / 2 + .025)))
    if n_legs:
        _corner_legs(m, main, w, l, leg_h, .03, side=.06)
    return {"pillows": n_pillows, "legs": n_legs, "footboards": n_foot}, style


def _sofa(m, rng, main, accent):
    n_c, cw = m.choose("cushions", _pick(rng, [1, 2, 3], [.15, .45, .4])), _u(rng, .55, .7)
    n_arms = m.choose("arms", _pick(rng, [0, 2], [.2, .8]))
    arm_w = _u(rng, .12, .22) * bool(n_arms)
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
    _corner_legs(m, m.trim, w, d, leg_h, .05)
    return {"cushions": n_c, "arms": n_arms, "legs": 4}, None


def _misc(m, rng, main, accent):
    style = m.choose("style", _pick(rng, ["floor lamp", "table lamp", "vase", "stool"]))
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
    h, r, st, n_legs = _u(rng, .45, .75), _u(rng, .15, .2), .04, m.choose("legs", _pick(rng, [3, 4]))
    seat = _cyl(r, h - st, h, sections=24) if rng.random() < .6 else _box((2 * r, st, 2 * r), (0, h - st / 2, 0))
    m.add("seat", main, seat)
    leg_c = main if rng.random() < .6 else accent
    for k in range(n_legs):
        a = 2 * math.pi * k / n_legs + math.pi / 4
        m.add("leg", leg_c, _box((.035, h - st, .035), (.7 * r * math.cos(a), (h - st) / 2, .7 * r * math.sin(a))))
    return {"legs": n_legs}, style


def _tool(m, rng, main, accent):
    style, metal = m.choose("style", _pick(rng, ["hammer", "wrench", "screwdriver"])), accent
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
