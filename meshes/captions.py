"""The one caption vocabulary: colour words, part counts and the captions built from a model's attributes.

The toy generator paints its models with exactly the colours of COLOR_WORDS, so the colour a toy model is
given is the word its captions use (color_word of its material colour gives the same name back). The colour of
a real model is read from its renders (view_colors): a texture paints the model, not the .mtl's diffuse colour.
"""
import re
from collections import Counter
from pathlib import Path

import numpy as np

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


ACHROMATIC = ("white", "gray", "black")
# Shading scales a surface's colour by about 0.45 (sides turned from the lights) to 1.15 (lit from above and
# in front), so a pixel matches a colour word at any brightness in this range (meshes/render.py's light rig).
SHADING = (0.4, 1.2)


def pixel_words(pixels):
    """The colour word of each RGB pixel (N x 3, 0-255) of one model's shaded renders. A chromatic word matches
    at any brightness in SHADING (a yellow side in shadow is dark yellow, not brown). White and gray differ
    only in brightness, and a white side in shadow is darker than a gray face in the light, so the model's
    light achromatic pixels are named together, by the brightness of their lit faces (90th percentile)."""
    p = np.asarray(pixels, dtype=np.float32).reshape(-1, 3)
    chromatic = [w for w in COLOR_WORDS if w not in ACHROMATIC]
    c = np.array([COLOR_WORDS[w] for w in chromatic], dtype=np.float32)
    pp, pc, cc = (p ** 2).sum(1)[:, None], p @ c.T, (c ** 2).sum(1)[None]
    s = np.clip(pc / cc, *SHADING)
    brightness = p.mean(1)
    d2 = np.c_[pp - 2 * s * pc + s ** 2 * cc, pp[:, 0] - 3 * brightness ** 2]  # last column: the gray axis
    words = np.array(chromatic + ["light"])[d2.argmin(1)]
    words[(words == "light") & (brightness < 45) | (p.max(1) < 35)] = "black"  # too dark to tell a hue
    light = words == "light"
    if light.any():
        words[light] = "white" if np.percentile(brightness[light], 90) >= 185 else "gray"
    return words


def object_pixels(image):
    """The object's pixels of one render (H x W x 3 uint8): everything but the background, which is the most
    common colour of the image border (white unless rendered with --bg). The outermost object pixels, blended
    with the background, are left out when enough remain."""
    a = np.asarray(image)[..., :3]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.int32)
    values, counts = np.unique((border[:, 0] << 16) | (border[:, 1] << 8) | border[:, 2], return_counts=True)
    top = int(values[counts.argmax()])
    bg = np.array([top >> 16, (top >> 8) & 255, top & 255], np.int16)
    fg = np.abs(a.astype(np.int16) - bg).max(-1) > 8
    inner = fg.copy()
    inner[1:] &= fg[:-1]
    inner[:-1] &= fg[1:]
    inner[:, 1:] &= fg[:, :-1]
    inner[:, :-1] &= fg[:, 1:]
    return a[inner] if inner.sum() >= 0.5 * fg.sum() else a[fg]


def view_colors(images, max_pixels=20_000):
    """[(colour word, fraction of the object's area)], largest first, over a model's rendered views (arrays or
    PIL images), or [] when no view shows the object. Area is counted in pixels over all views."""
    pixels = [object_pixels(im) for im in images]
    pixels = np.concatenate(pixels) if pixels else np.zeros((0, 3), np.uint8)
    if len(pixels) == 0:
        return []
    pixels = pixels[:: -(-len(pixels) // max_pixels)]  # an even sample: the fractions, not every pixel
    words, counts = np.unique(pixel_words(pixels), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(str(words[i]), float(counts[i]) / len(pixels)) for i in order]


def readable_name(model_id):
    """'bed/IKEA_MALM_2' -> 'IKEA MALM'. Names that carry no meaning (toy or scan ids) give None."""
    name = Path(model_id).name
    if not name.startswith("IKEA_"):
        return None
    return re.sub(r"_\d+$", "", name).replace("_", " ")


def measure_mesh(obj_path, up="y"):
    """Attributes measured from the mesh itself: dominant material colour (by face area; what the .mtl says,
    the fallback when there are no renders), proportions (`up`: the model axis pointing up, as rendered) and
    the number of parts its .obj names."""
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
    out = {"color": area.most_common(1)[0][0] if area else None, "n_parts": obj_part_count(obj_path)}
    if scene.extents is not None:
        x, y, z = (float(v) for v in scene.extents)
        w, h, d = (x, z, y) if up.endswith("z") else (x, y, z)
        out["size"] = {"width": w, "height": h, "depth": d}
    return out


def obj_part_count(obj_path):
    """How many parts an .obj names: its distinct `o` objects, else its distinct `g` groups (0 for none)."""
    data = Path(obj_path).read_bytes()
    for key in (rb"o", rb"g"):
        names = set(re.findall(rb"^" + key + rb"[ \t]+(\S[^\r\n]*)", data, re.M))
        if names:
            return len(names)
    return 0


def size_classes(sizes):
    """{model_id: 'small' | 'large'} of {model_id: size dict} of one category: small below 0.8 times the
    category's median diagonal, large above 1.25 times. Nothing when the models vary less than that (meshes
    normalised to one size say nothing about size)."""
    diag = {m: float(np.linalg.norm([s["width"], s["height"], s["depth"]])) for m, s in sizes.items()
            if isinstance(s, dict) and all(isinstance(s.get(k), (int, float)) for k in ("width", "height", "depth"))}
    if len(diag) < 3:
        return {}
    median = float(np.median(list(diag.values())))
    if median <= 0 or max(diag.values()) < 1.25 * min(diag.values()):
        return {}
    return {m: "small" if d < 0.8 * median else "large" for m, d in diag.items()
            if d < 0.8 * median or d > 1.25 * median}


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


def number_word(n):
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def singular(noun):
    for plural, single in (("shelves", "shelf"), ("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("s", "")):
        if noun.endswith(plural):
            return noun[: -len(plural)] + single
    return noun


def parts_phrase(parts):
    """{'shelves': 5, 'drawers': 2, 'arms': 0} -> 'no arms, two drawers and five shelves' (singular for one): a
    count of 0 is said too, because "no arms" tells a model apart as much as "two arms"."""
    items = []
    for part, n in sorted((parts or {}).items()):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            continue
        items.append(f"no {part}" if n == 0 else f"{number_word(n)} {part if n > 1 else singular(part)}")
    if not items:
        return None
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_noun(category, attributes):
    """What a caption calls the model: its style ('armchair'), else its category's noun."""
    noun = attributes.get("style") or CATEGORY_NOUNS.get(category, category)
    if attributes.get("style") and category not in noun and category not in ("misc", "tool"):
        noun = f"{attributes['style']} {category}"
    return noun


def build_captions(category, attributes, name=None):
    """True captions of one model from what is known: category, name, colours, proportions, parts. Some name no
    colour, so that a model is also found by its shape. A model known only by its category gets the one caption
    that says so ("a chair")."""
    noun = caption_noun(category, attributes)
    color, second, shape = attributes.get("color"), attributes.get("second_color"), attributes.get("shape")
    colors = f"{color} and {second}" if color and second else color
    parts = parts_phrase(attributes.get("parts"))

    def art(*words):
        return with_article(" ".join(w for w in words if w))

    caps = [art(shape, color, noun)]
    if colors:
        caps.append(f"{art(noun)} in {colors}")
    if parts:
        caps.append(f"{art(shape, colors, noun)} with {parts}")
        caps.append(f"{art(shape, noun)} with {parts}")
        caps.append(f"{art(noun)} with {parts}")
    if shape and color:
        caps.append(f"{art(color, noun)} that is {shape}")
    if name:
        caps.append(f"the {name} {noun}" + (f" in {colors}" if colors else ""))
    return list(dict.fromkeys(caps))  # unique, order kept


def proportions_phrase(size):
    """'1.5 times as tall as it is wide and 0.8 times as deep', from the bounding box (one decimal)."""
    w, h, d = size["width"], size["height"], size["depth"]
    if w <= 0:
        return None
    return f"{h / w:.1f} times as tall as it is wide and {d / w:.1f} times as deep"


def detail_captions(category, attributes):
    """More specific true captions, for a model whose captions all belong to another model too; the plainer
    first: a second colour, a size class, the number of parts of its .obj, then all of them, then its
    measured proportions."""
    noun = caption_noun(category, attributes)
    color, second = attributes.get("color"), attributes.get("second_color")
    colors = f"{color} and {second}" if color and second else color
    size_class, shape = attributes.get("size_class"), attributes.get("shape")
    n = attributes.get("n_parts") or 0
    made_of = f"made of {number_word(n)} parts" if n > 1 else None
    words = lambda *ws: " ".join(w for w in ws if w)  # noqa: E731
    caps = []
    if second:
        caps.append(with_article(words(shape, colors, noun)))
    if size_class:
        caps.append(with_article(words(size_class, shape, color, noun)))
    if made_of:
        caps.append(words(with_article(words(shape, color, noun)), made_of))
    everything = words(with_article(words(size_class, shape, colors, noun)), made_of)
    caps.append(everything)
    if attributes.get("size") and proportions_phrase(attributes["size"]):
        caps.append(f"{everything} that is {proportions_phrase(attributes['size'])}")
    return list(dict.fromkeys(caps))


def own_caption(captions, owners):
    """True when one of `captions` belongs to this model alone (owners: caption -> number of models)."""
    return any(owners[c] == 1 for c in captions)


def make_distinct(captions, candidates):
    """Give each model whose captions all belong to other models too the first of its candidate captions
    (detail_captions) that no other model has or could be given: a caption true of two identical models
    must not tell one of them apart. captions: [list of a model's captions], extended in place; candidates:
    the same order. Returns the indices of the models still without a caption of their own (identical
    models: what is measured cannot tell them apart)."""
    owners = Counter(c for caps in captions for c in set(caps))
    claims = Counter(c for cands in candidates for c in set(cands))
    for caps, cands in zip(captions, candidates):
        if own_caption(caps, owners):
            continue
        new = next((c for c in cands if owners[c] == 0 and claims[c] == 1), None)
        if new is not None:
            caps.append(new)
            owners[new] += 1
    return [i for i, caps in enumerate(captions) if not own_caption(caps, owners)]
