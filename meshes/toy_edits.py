"""Edit variants of toy models and their relative captions, for composed retrieval: a variant is its base's draw
with one or two attributes changed (a colour, a part count, a proportion), so the two differ in exactly what the
caption says.

    edits = draw_edits(rng, "chair", attrs, split)       # [("part", "arms", 0, 2), ("scale", "taller")]
    overrides, scale = edit_overrides(attrs, base_overrides, edits)
    caption = relative_caption(rng, edits)                # "the same but with arms, and taller"
    caption = relative_caption(rng, invert(edits))        # the way back: "without arms, and shorter"
"""
from meshes.captions import number_word, singular
from meshes.toy_design import HELD_OUT_COLOURS, HELD_OUT_PARTS, PALETTES

PALETTE_COLOURS = sorted({c for p in PALETTES for c in p})
# (category, part) -> (counts a variant may have, styles that have that part count as a free choice; None: all)
EDITABLE = {("chair", "arms"): ((0, 2), None), ("chair", "legs"): ((3, 4), ("dining",)),
            ("table", "legs"): ((1, 3, 4), ("round",)), ("table", "shelves"): ((0, 1), ("coffee",)),
            ("desk", "drawers"): ((1, 2, 3, 4), None), ("bookcase", "shelves"): ((2, 3, 4, 5, 6), None),
            ("wardrobe", "drawers"): ((0, 1, 2), None), ("bed", "footboards"): ((0, 1), ("single", "double")),
            ("bed", "pillows"): ((1, 2), ("double",)), ("sofa", "cushions"): ((1, 2, 3), None),
            ("sofa", "arms"): ((0, 2), None), ("misc", "legs"): ((3, 4), ("stool",))}
SCALES = {"taller": (1.0, 1.3, 1.0), "shorter": (1.0, 1 / 1.3, 1.0), "wider": (1.3, 1.0, 1.0),
          "narrower": (1 / 1.3, 1.0, 1.0)}
OPPOSITE = {"taller": "shorter", "shorter": "taller", "wider": "narrower", "narrower": "wider"}


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def edit_options(category, attrs, split):
    """Every single edit a model allows: ("colour", old, new), ("part", name, old, new), ("scale", word). Train and
    val variants never show their category's held-out colour or count."""
    held_colour = HELD_OUT_COLOURS.get(category) if split != "test" else None
    held_part = HELD_OUT_PARTS.get(category) if split != "test" else None
    options = []
    used = set(attrs["palette"]) | {attrs["trim"]}
    for old in [c for c in (attrs["color"], attrs["second_color"]) if c]:  # a colour the renders show
        options += [("colour", old, new) for new in PALETTE_COLOURS if new not in used and new != held_colour]
    for (cat, part), (counts, styles) in EDITABLE.items():
        if cat != category or attrs["parts"].get(part) not in counts or (styles and attrs.get("style") not in styles):
            continue  # (a desk's first drawer brings a pedestal instead of two legs: not a one-word edit)
        old = attrs["parts"][part]
        options += [("part", part, old, n) for n in counts
                    if n != old and not (held_part and held_part[0] == part and held_part[1] == n)]
    options += [("scale", word) for word in SCALES]
    return options


def draw_edits(rng, category, attrs, split, p_two=0.3):
    """One edit, or two of different kinds (p_two), drawn from edit_options."""
    options = edit_options(category, attrs, split)
    first = _choice(rng, options)
    if rng.random() < p_two:
        others = [o for o in options if o[0] != first[0]]
        if others:
            return [first, _choice(rng, others)]
    return [first]


def edit_overrides(attrs, base_overrides, edits):
    """(overrides, scale) that build_model needs to draw the variant from its base's rng seed."""
    overrides = dict(base_overrides, trim=attrs["trim"])
    overrides["colors"] = tuple(attrs["palette"])
    scale = None
    for edit in edits:
        if edit[0] == "colour":
            overrides["colors"] = tuple(edit[2] if c == edit[1] else c for c in overrides["colors"])
        elif edit[0] == "part":
            overrides[edit[1]] = edit[3]
        else:
            scale = SCALES[edit[1]]
    return overrides, scale


def invert(edits):
    """The edits that lead from the variant back to its base."""
    out = []
    for edit in edits:
        if edit[0] == "colour":
            out.append(("colour", edit[2], edit[1]))
        elif edit[0] == "part":
            out.append(("part", edit[1], edit[3], edit[2]))
        else:
            out.append(("scale", OPPOSITE[edit[1]]))
    return out


def _count(n, part):
    return f"{number_word(n)} {part if n != 1 else singular(part)}"


def edit_phrases(edit):
    """Ways to say one edit, the shortest first."""
    if edit[0] == "colour":
        _, old, new = edit
        return [f"{new} instead of {old}", f"make the {old} parts {new}", f"change the {old} to {new}"]
    if edit[0] == "scale":
        return [edit[1], f"make it {edit[1]}", f"a bit {edit[1]}"]
    _, part, old, new = edit
    if new == 0:
        return [f"without {part}", f"remove the {part}", f"no {part}"]
    if old == 0:
        return [f"with {part}" if part == "arms" else f"with {_count(new, part)}", f"add {_count(new, part)}"]
    return [f"with {_count(new, part)}", f"{_count(new, part)} instead of {number_word(old)}",
            f"change to {_count(new, part)}"]


def relative_caption(rng, edits):
    """A relative caption naming every edit: "with arms", "the same but taller, and blue instead of white"."""
    phrases = [_choice(rng, edit_phrases(e)) for e in edits]
    text = ", and ".join(phrases)
    return f"the same but {text}" if rng.random() < 0.3 else text
