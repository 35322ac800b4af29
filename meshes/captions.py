"""The one caption vocabulary: colour words, part counts and the captions built from a model's attributes.

The toy generator paints its models with exactly the colours of COLOR_WORDS, so the colour a toy model is
given is the word its captions use (color_word of its material colour gives the same name back).
"""
import re
from collections import Counter
from pathlib import Path

# Plain colour words and a representative sRGB value for each; nearest neighbour names a material colour.
COLOR_WORDS = {
    "white": (235, 235, 230), "black": (25, 25, 25), "gray": (128, 128, 128), "brown": (110, 70, 40),
    "red": (190, 30, 30), "blue": (40, 70, 180), "green": (50, 140, 60), "yellow": (230, 200, 40),
    "orange": (230, 120, 30), "pink": (235, 150, 180), "beige": (215, 195, 160), "purple": (120, 50, 150),
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]
# The noun a caption uses for each Pix3D category ("misc" and "tool" are too vague to say as such).
CATEGORY_NOUNS = {"misc": "object", "tool": "tool"}


def color_word(rgb):
    """Nearest plain colour word for an RGB triple (0-255)."""
    return min(COLOR_WORDS, key=lambda w: sum((a - b) ** 2 for a, b in zip(COLOR_WORDS[w], rgb)))


def readable_name(model_id):
    """'bed/IKEA_MALM_2' -> 'IKEA MALM'. Names that carry no meaning (toy or scan ids) give None."""
    name = Path(model_id).name
    if not name.startswith("IKEA_"):
        return None
    return re.sub(r"_\d+$", "", name).replace("_", " ")


def measure_mesh(obj_path):
    """Attributes measured from the mesh itself: dominant material colour (by face area) and proportions."""
    import numpy as np
    import trimesh

    scene = trimesh.load(obj_path, force="scene", process=False)
    area = Counter()
    for geom in scene.dump():
        if not hasattr(geom, "area_faces") or len(geom.faces) == 0:
            continue
        rgb = None
        material = getattr(geom.visual, "material", None)
        if material is not None:
            main = getattr(material, "main_color", None)
            if main is not None:
                rgb = tuple(int(c) for c in np.asarray(main)[:3])
        if rgb is None and getattr(geom.visual, "kind", None) == "face":
            rgb = tuple(int(c) for c in np.asarray(geom.visual.face_colors)[:, :3].mean(0))
        if rgb is not None:
            area[color_word(rgb)] += float(geom.area_faces.sum())
    out = {"color": area.most_common(1)[0][0] if area else None}
    if scene.extents is not None:
        w, h, d = (float(x) for x in scene.extents)  # Pix3D models are y-up
        out["size"] = {"width": w, "height": h, "depth": d}
    return out


def shape_word(size):
    """'tall' / 'wide' / 'low' from the bounding box, or None for ordinary proportions."""
    if not size:
        return None
    w, h, d = size["width"], size["height"], size["depth"]
    footprint = max(w, d, 1e-9)
    if h > 1.6 * footprint:
        return "tall"
    if h < 0.45 * footprint:
        return "low"
    if w > 2.0 * max(h, d):
        return "wide"
    return None


def with_article(phrase):
    """'object' -> 'an object', 'chair' -> 'a chair' (by the first letter: the vocabulary here has no 'hour')."""
    return ("an " if phrase[:1].lower() in tuple("aeiou") else "a ") + phrase


def singular(noun):
    for plural, single in (("shelves", "shelf"), ("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("s", "")):
        if noun.endswith(plural):
            return noun[: -len(plural)] + single
    return noun


def parts_phrase(parts):
    """{'shelves': 5, 'drawers': 2} -> 'two drawers and five shelves' (singular for one)."""
    items = []
    for part, n in sorted((parts or {}).items()):
        if not isinstance(n, int) or n <= 0:
            continue
        word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
        noun = part if n > 1 else singular(part)
        items.append(f"{word} {noun}")
    if not items:
        return None
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_captions(category, attributes, name=None):
    """True captions of one model from what is known: category, name, colour, proportions, parts. A model
    known only by its category gets the one caption that says so ("a chair")."""
    noun = attributes.get("style") or CATEGORY_NOUNS.get(category, category)
    if attributes.get("style") and category not in noun and category not in ("misc", "tool"):
        noun = f"{attributes['style']} {category}"
    color, shape = attributes.get("color"), attributes.get("shape")
    parts = parts_phrase(attributes.get("parts"))
    adj = " ".join(w for w in (shape, color) if w)
    art = with_article
    caps = [art(f"{adj} {noun}".strip())]
    if color:
        caps.append(f"{art(noun)} in {color}")
    if parts:
        caps.append(f"{art(f'{adj} {noun}'.strip())} with {parts}")
        caps.append(f"{art(noun)} with {parts}")
    if shape and color:
        caps.append(f"{art(f'{color} {noun}')} that is {shape}")
    if name:
        caps.append(f"the {name} {noun}" + (f" in {color}" if color else ""))
    return list(dict.fromkeys(caps))  # unique, order kept
