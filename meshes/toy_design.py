"""The toy dataset's design: two-colour models from shared palettes, attribute combinations that training never
sees, and edit variants (the same draw with one or two attributes changed) for composed retrieval.

    parts, attrs = build_model("chair", rng)                          # one model
    parts, attrs = build_model("chair", rng, {"arms": 2})             # the same draw, with arms
    parts, attrs = build_model("chair", rng, scale=(1, 1.3, 1))       # the same draw, taller

Why it is built so: colour + category alone must not find a model. Eight palettes are shared by every category,
so many models of a category carry the same two colours; models differ within a category in style, part counts
(arms, legs, shelves, drawers, ...) and proportions, which the captions name; some captions name no colour; and
each category has a colour and a part count that only the test split holds (HELD_OUT_COLOURS, HELD_OUT_PARTS),
so the test split measures composition of seen words, not memory of seen combinations.
"""
import numpy as np

from meshes.toy_furniture import BUILDERS, CATEGORIES, _Parts

# (colour, colour): each model draws one; which of the two covers more of the model is recorded as "color".
PALETTES = [("white", "black"), ("brown", "beige"), ("blue", "white"), ("red", "gray"), ("green", "brown"),
            ("yellow", "gray"), ("purple", "white"), ("pink", "black")]
TRIMS = ("black", "gray")   # handles, metal, feet: black, or gray on a palette that has black
MIN_SECOND = 0.2            # the second colour covers at least this share of the surface, so renders show it
SHOWN = 0.05                # a palette colour on less of the surface (a one-part vase) is not said or counted

# Each category's combinations that only the test split holds; every colour is in one palette and every count is
# seen in other categories' training models ("three legs": stools, round tables), so the words are all known.
HELD_OUT_COLOURS = {"bed": "green", "bookcase": "blue", "chair": "red", "desk": "yellow", "misc": "pink",
                    "sofa": "purple", "table": "beige", "tool": "blue", "wardrobe": "red"}
# category -> (part, held-out count, count used instead in train/val, overrides a test model needs to show it)
HELD_OUT_PARTS = {"chair": ("legs", 3, 4, {"style": "dining"}), "table": ("legs", 3, 4, {"style": "round"}),
                  "desk": ("drawers", 4, 3, {}), "bookcase": ("shelves", 6, 5, {}), "wardrobe": ("drawers", 2, 1, {}),
                  "bed": ("footboards", 1, 0, {"style": "double"}), "sofa": ("cushions", 1, 2, {}),
                  "misc": ("legs", 3, 4, {"style": "stool"})}


def _trim(colours):
    return TRIMS[1] if TRIMS[0] in colours else TRIMS[0]


def color_areas(parts):
    """{colour: surface area} over a list of (mesh, colour)."""
    areas = {}
    for mesh, color in parts:
        areas[color] = areas.get(color, 0.0) + float(mesh.area)
    return areas


def _kind(mesh):
    return mesh.metadata["part"].rsplit("_", 1)[0]


def balance_colours(parts, main, second):
    """Repaint whole part kinds (all legs, all arms, ...) from `main` to `second`, smallest kinds first and never
    the kind of the largest part, until `second` covers MIN_SECOND of the surface. Depends on the geometry alone,
    so a variant that changes only colours is painted in the same pattern."""
    def share(color):
        areas = color_areas(parts)
        return areas.get(color, 0.0) / sum(areas.values())

    kinds = {}
    for i, (mesh, color) in enumerate(parts):
        if color == main:
            kinds.setdefault(_kind(mesh), []).append(i)
    largest = _kind(max(parts, key=lambda p: p[0].area)[0])
    order = sorted((k for k in kinds if k != largest), key=lambda k: sum(parts[i][0].area for i in kinds[k]))
    for kind in order:
        if share(second) >= MIN_SECOND:
            break
        for i in kinds[kind]:
            parts[i][1] = second


def build_model(category, rng, overrides=None, scale=None):
    """One random model of `category`: (list of (trimesh part mesh, colour name), attributes dict).

    overrides: {"colors": (c1, c2), "trim": colour, "style": ..., "<part>": count} replace what the draw gives
    (every other draw stays the same); scale: (x, y, z) factors applied after building (a taller variant).
    Each part mesh carries its name (<kind>_<i>) in mesh.metadata['part']; the model is centred on its bounding
    box. attributes: category, color and second_color (the palette's two colours, the larger first), colors (area
    fractions), parts (counts), size (metres), style (when the category has one), palette, trim. second_color is
    None when that colour covers under SHOWN of the surface (a vase is one part).
    """
    if category not in BUILDERS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    overrides = dict(overrides or {})
    palette = tuple(overrides.pop("colors", PALETTES[int(rng.integers(len(PALETTES)))]))
    trim = overrides.pop("trim", _trim(palette))
    m = _Parts(trim, overrides)
    counts, style = BUILDERS[category](m, rng, *palette)
    parts = m.items
    balance_colours(parts, *palette)
    if scale is not None:
        for mesh, _ in parts:
            mesh.apply_transform(np.diag([*map(float, scale), 1.0]))
    lo = np.min([mesh.bounds[0] for mesh, _ in parts], axis=0)
    hi = np.max([mesh.bounds[1] for mesh, _ in parts], axis=0)
    for mesh, _ in parts:
        mesh.apply_translation(-(lo + hi) / 2)
    areas = color_areas(parts)
    total = sum(areas.values())
    first, second = sorted(palette, key=lambda c: -areas.get(c, 0.0))
    attrs = {
        "category": category, "color": first,
        "second_color": second if areas.get(second, 0.0) >= SHOWN * total else None,
        "colors": {c: round(a / total, 4) for c, a in sorted(areas.items(), key=lambda kv: -kv[1])},
        "parts": {k: int(v) for k, v in counts.items()},
        "size": {k: round(float(v), 3) for k, v in zip(("width", "height", "depth"), hi - lo)},
        "palette": list(palette), "trim": trim,
    }
    if style:
        attrs["style"] = style
    return [(mesh, color) for mesh, color in parts], attrs


def held_out_in(category, attrs):
    """The held-out combinations a model shows: ["colour:red", "legs:3"] (empty for most models)."""
    found = []
    if HELD_OUT_COLOURS.get(category) in (attrs["color"], attrs["second_color"]):
        found.append(f"colour:{HELD_OUT_COLOURS[category]}")
    if category in HELD_OUT_PARTS:
        part, count, _, _ = HELD_OUT_PARTS[category]
        if attrs["parts"].get(part) == count:
            found.append(f"{part}:{count}")
    return found


def avoid_held_out(category, attrs):
    """Overrides that take a train/val draw away from its category's held-out combinations: another palette (the
    next one in PALETTES without the colour), the train count instead of the held-out one."""
    overrides = {}
    colour = HELD_OUT_COLOURS.get(category)
    if colour in attrs["palette"]:
        start = PALETTES.index(tuple(attrs["palette"]))
        overrides["colors"] = next(PALETTES[(start + k) % len(PALETTES)] for k in range(1, len(PALETTES))
                                   if colour not in PALETTES[(start + k) % len(PALETTES)])
    if category in HELD_OUT_PARTS:
        part, count, instead, _ = HELD_OUT_PARTS[category]
        if attrs["parts"].get(part) == count:
            overrides[part] = instead
    return overrides


def show_held_out(category, which, attrs):
    """Overrides that give a test draw its category's held-out colour (which="colour") or part count ("part")."""
    if which == "colour" and category in HELD_OUT_COLOURS:
        colour = HELD_OUT_COLOURS[category]
        return {"colors": next(p for p in PALETTES if colour in p)}
    if which == "part" and category in HELD_OUT_PARTS:
        part, count, _, needs = HELD_OUT_PARTS[category]
        return {**needs, part: count}
    return {}


def draw_model(category, seed, split, forced=None):
    """The model a (category, seed) draw gives in `split`: (parts, attrs, overrides used). Train and val models
    never show a held-out combination; a test model shows the one `forced` names ("colour" or "part")."""
    def draw(overrides):
        return build_model(category, np.random.default_rng(seed), overrides)

    parts, attrs = draw({})
    overrides = {}
    if split == "test" and forced:
        overrides = show_held_out(category, forced, attrs)
    elif split != "test":
        overrides = avoid_held_out(category, attrs)
    if overrides:
        parts, attrs = draw(overrides)
    attrs["held_out"] = held_out_in(category, attrs)
    return parts, attrs, overrides

