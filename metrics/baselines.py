"""Shortcut baselines: how far the benchmark goes with no text-image learning at all, scored by the same code as
the models; and what every retrieval number is read beside: the chance level and the shape-only subset.

    colour_category(jsonl, "test")     # text <-> shape: the keys of text2shape_metrics
    colour_histogram(jsonl, "test")    # photo -> shape: the keys of photo2shape_with_chance
    nearest_captions(jsonl, "test")    # captioning: one training caption per model, for metrics.caption

A shape is seen only through its renders, and only the TRAIN split's jsonl fields are read (never the category of
an evaluated model): its colours are the colour words (meshes.captions.pixel_words, which allows for shading) that
cover at least COLOUR_SHARE of its views' object pixels, or the most common one; its category is the vote of its
views' nearest TRAIN views (16x16 grey thumbnails).
A caption is the colour words and category nouns a regex finds in it. The score of (caption, shape) is the number
of agreements (colour, category), given to metrics.retrieval as embeddings whose cosine is that count: the many
ties are then ranked by retrieval's own tie rule, as a model's would be.

Chance: the expected R@k of a uniformly random ranking, 1 - C(N - m, k) / C(N, k) for a query with m matches
among N gallery items, averaged over the queries that have a match (as retrieval_metrics averages). Keys:
`text2image_chance_R@1`, `category/image2text_chance_R@5`, `photo2shape_chance_R@10`, ...
Shape-only subset: the captions that name no colour (`shape_only/text2image_R@1`, `shape_only/n_captions`):
there, colour cannot be what finds the shape.
"""
import functools
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from meshes.captions import CATEGORY_NOUNS, COLOR_WORDS, object_pixels, pixel_words
from metrics.retrieval import evaluate_retrieval, photo2shape_metrics, retrieval_metrics, shape_gallery
from multiview_dataset import MultiViewDataset, ShapeImageDataset

THUMB = 16        # side of the grey thumbnails the category and the nearest training model are judged by
HIST_BINS = 4     # colour histogram: 4 x 4 x 4 bins
COLOUR_SHARE = 0.15  # a colour word on this share of a shape's object pixels counts as one of its colours
KS = (1, 5, 10)


# ============================================================================ captions: the regex
def _word_regex(words):
    # longest first, so that a word is never cut to a shorter one that starts it; a plural 's' is allowed
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")s?\b", re.I)


_COLOUR_RE = _word_regex(COLOR_WORDS)


def colour_words(caption):
    """The COLOR_WORDS a caption names (lower case, in order)."""
    return [w.lower() for w in _COLOUR_RE.findall(caption)]


def category_nouns(categories):
    """{noun: category} a caption may name a category by: the category names, and CATEGORY_NOUNS' nouns."""
    nouns = {c.lower(): c for c in categories}
    nouns.update({n: c for c, n in CATEGORY_NOUNS.items() if c in categories})
    return nouns


def caption_tokens(caption, nouns):
    """{("colour", word), ("category", name)} of what a caption says, by regex; nouns: category_nouns()."""
    found = {("colour", w) for w in colour_words(caption)}
    found |= {("category", nouns[n.lower()]) for n in _word_regex(nouns).findall(caption)} if nouns else set()
    return found


def shape_only(captions):
    """Indices of the captions that name no colour word."""
    return [i for i, c in enumerate(captions) if not colour_words(c)]


# ============================================================================ chance and the shared metric sets
def chance_recall(query_ids, gallery_ids, ks=KS):
    """{"R@k": expected R@k of a uniformly random ranking of the gallery}, over the queries with a match."""
    count, n = Counter(gallery_ids), len(gallery_ids)
    matches = [count[q] for q in query_ids if count[q] > 0]
    if not matches:
        return {f"R@{k}": math.nan for k in ks}
    out = {}
    for k in ks:
        kk = min(k, n)  # a top k at least as long as the gallery holds every item
        out[f"R@{k}"] = sum(1 - math.comb(n - m, kk) / math.comb(n, kk) for m in matches) / len(matches)
    return out


def _ids(ids):
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def text2shape_metrics(image_features, image_ids, text_features, text_ids, image_categories, text_categories,
                       captions, views="mean", ks=KS):
    """evaluate_retrieval's keys (both directions, instance and category level), each direction's chance level
    (`{prefix}{direction}_chance_R@k`) and the shape-only subset: `shape_only/text2image_{R@k, mAP, median_rank,
    chance_R@k}` over the captions without a colour word, and `shape_only/n_captions` (the other shape_only keys
    are left out when it is 0). captions: the text of each text_features row."""
    image_ids, text_ids = _ids(image_ids), _ids(text_ids)
    out = evaluate_retrieval(image_features, image_ids, text_features, text_ids, image_categories=image_categories,
                             text_categories=text_categories, ks=ks, views=views)
    shapes, shape_ids = shape_gallery(image_features, image_ids, views)
    cat_of = dict(zip(image_ids, image_categories))
    shape_cats = [cat_of[i] for i in shape_ids]
    for prefix, s_ids, t_ids in (("", shape_ids, text_ids), ("category/", shape_cats, list(text_categories))):
        for direction, q, g in (("text2image", t_ids, s_ids), ("image2text", s_ids, t_ids)):
            out.update({f"{prefix}{direction}_chance_{k}": v for k, v in chance_recall(q, g, ks).items()})
    subset = shape_only(captions)
    out["shape_only/n_captions"] = len(subset)
    if subset:
        q_ids = [text_ids[i] for i in subset]
        m = retrieval_metrics(torch.as_tensor(text_features)[subset], shapes, q_ids, shape_ids, ks=ks)
        for key in [f"R@{k}" for k in ks] + ["mAP", "median_rank"]:
            out[f"shape_only/text2image_{key}"] = m[key]
        out.update({f"shape_only/text2image_chance_{k}": v for k, v in chance_recall(q_ids, shape_ids, ks).items()})
    return out


def photo2shape_with_chance(photo_features, photo_models, view_features, view_models, categories, views="mean",
                            ks=KS):
    """photo2shape_metrics' keys and their chance levels, `photo2shape_chance_R@k` and
    `category/photo2shape_chance_R@k` (categories: one per model index)."""
    out = photo2shape_metrics(photo_features, photo_models, view_features, view_models, categories, views, ks)
    _, shape_models = shape_gallery(view_features, view_models, views)
    photo_models = _ids(photo_models)
    for prefix, q, g in (("", photo_models, shape_models),
                         ("category/", [categories[m] for m in photo_models], [categories[m] for m in shape_models])):
        out.update({f"{prefix}photo2shape_chance_{k}": v for k, v in chance_recall(q, g, ks).items()})
    return out


# ============================================================================ what the renders show
def thumbnail(image):
    """A view as THUMB x THUMB grey values in [0, 1], flattened."""
    small = image.convert("L").resize((THUMB, THUMB), resample=3)  # 3: PIL's BOX filter, an area average
    return np.asarray(small, dtype=np.float32).ravel() / 255


def colour_set(pixels, share=COLOUR_SHARE):
    """The colour words that name at least `share` of RGB object pixels (N x 3), or the most common word; empty for
    no pixels. Two-colour models are matched on both colours a caption may name."""
    if len(pixels) == 0:
        return set()
    words, counts = np.unique(pixel_words(pixels), return_counts=True)
    keep = {str(w) for w, n in zip(words, counts) if n >= share * counts.sum()}
    return keep or {str(words[counts.argmax()])}


def colour_histogram_of(pixels):
    """HIST_BINS^3 colour histogram of RGB pixels (N x 3), summing to 1 (all zeros for no pixels)."""
    q = np.asarray(pixels, dtype=np.int64).reshape(-1, 3) * HIST_BINS // 256
    hist = np.bincount((q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2], minlength=HIST_BINS ** 3)
    return hist.astype(np.float32) / max(1, hist.sum())


def _jsonl_key(jsonl):
    path = Path(jsonl)
    return str(path.resolve()), hashlib.sha1(path.read_bytes()).hexdigest()


def split_dataset(jsonl, split):
    """The split as the models see it: eval-mode MultiViewDataset (same models, order, views and captions)."""
    return MultiViewDataset(jsonl, split, None, mode="eval")


def _views_of(ds, desc):
    """(model index, PIL image) of every view; an unreadable view is replaced by another view of its model, as for
    the models, and a model none of whose views can be read is an error, as it is for the models."""
    from tqdm import tqdm

    for m, path in tqdm(ds.view_index, desc=desc, unit="view", leave=False, mininterval=2):
        image = ds.view(m, path)
        if image is None:
            raise OSError(f"{ds.jsonl_path}: model {ds.model_ids[m]}: none of its {len(ds.views[m])} views can be read")
        yield m, image


@functools.lru_cache(maxsize=8)
def _thumbnails(path, digest, split):
    """(thumbnails [n_views, THUMB^2], model index per view, dataset) of a split; cached per jsonl content."""
    ds = split_dataset(path, split)
    thumbs, models = [], []
    for m, image in _views_of(ds, f"thumbnails ({split})"):
        thumbs.append(thumbnail(image))
        models.append(m)
    return torch.from_numpy(np.stack(thumbs)), torch.tensor(models), ds


@functools.lru_cache(maxsize=8)
def _colours(path, digest, split):
    """(colour words per model (colour_set), colour histogram per model [n_models, HIST_BINS^3]) over all its
    views."""
    ds = split_dataset(path, split)
    pixels = [[] for _ in ds.model_ids]
    for m, image in _views_of(ds, f"render colours ({split})"):
        pixels[m].append(object_pixels(np.asarray(image)))
    pixels = [np.concatenate(p) if p else np.zeros((0, 3), np.uint8) for p in pixels]
    return [colour_set(p) for p in pixels], torch.from_numpy(np.stack([colour_histogram_of(p) for p in pixels]))


def render_colours(jsonl, split):
    return _colours(*_jsonl_key(jsonl), split)


def _vote(labels, dists):
    """The most frequent label; a tie goes to the label with the nearest single match."""
    best = {}
    for label, d in zip(labels, dists):
        n, nearest = best.get(label, (0, math.inf))
        best[label] = (n + 1, min(nearest, d))
    return max(best, key=lambda label: (best[label][0], -best[label][1]))


def nearest_train_models(jsonl, split):
    """For each model of `split` (in the dataset's order): (predicted category, index of its nearest TRAIN model).
    Each of its views votes with its 1-nearest TRAIN view (L2 between thumbnails), for that view's category and
    model; a model is never its own neighbour (split "all" holds the training models). Reads the categories of the
    TRAIN rows only."""
    key = _jsonl_key(jsonl)
    train_thumbs, train_view_model, train = _thumbnails(*key, "train")
    thumbs, view_model, ds = _thumbnails(*key, split)
    d = torch.cdist(thumbs, train_thumbs)
    train_index = {mid: t for t, mid in enumerate(train.model_ids)}
    own = torch.tensor([train_index.get(mid, -1) for mid in ds.model_ids])[view_model]
    d[own[:, None] == train_view_model[None, :]] = math.inf
    dist, nearest = d.min(1)
    nearest_model = train_view_model[nearest].tolist()
    out = []
    for m in range(len(ds.model_ids)):
        rows = (view_model == m).nonzero().squeeze(1).tolist()
        near, dists = [nearest_model[r] for r in rows], [float(dist[r]) for r in rows]
        out.append((_vote([train.categories[t] for t in near], dists), _vote(near, dists)))
    return out


# ============================================================================ the baselines
def agreement_embeddings(query_tokens, gallery_tokens):
    """(query, gallery) float32 embeddings whose dot products count the tokens a query and an item share, and whose
    rows all have one norm, so that cosine similarity ranks by that count. One 0/1 column per token, then padding
    columns of ones (the queries' and the gallery's apart, so they never meet) that bring every row to the same
    squared norm, a power of 4: the normalised entries are then powers of 2, every score is exact in float32, and
    equal counts tie exactly."""
    vocab = {t: i for i, t in enumerate(sorted({t for ts in query_tokens + gallery_tokens for t in ts}))}
    norm2 = 1
    while norm2 < max(len(ts) for ts in query_tokens + gallery_tokens):
        norm2 *= 4
    width = len(vocab) + 2 * norm2

    def rows(token_sets, pad_start):
        x = torch.zeros(len(token_sets), width)
        for r, ts in enumerate(token_sets):
            x[r, [vocab[t] for t in ts]] = 1
            x[r, pad_start: pad_start + norm2 - len(ts)] = 1
        return x

    return rows(query_tokens, len(vocab)), rows(gallery_tokens, len(vocab) + norm2)


def colour_category_embeddings(jsonl, split):
    """(text embeddings, shape embeddings, text model indices, captions, dataset) of the colour_category baseline
    on `split`: the agreement embeddings that colour_category scores (and metrics.per_query resamples)."""
    ds = split_dataset(jsonl, split)
    train = split_dataset(jsonl, "train")
    colours, _ = render_colours(jsonl, split)
    categories = [c for c, _ in nearest_train_models(jsonl, split)]
    shapes = [{("colour", w) for w in ws} | ({("category", c)} if c is not None else set())
              for ws, c in zip(colours, categories)]
    nouns = category_nouns(sorted(set(train.categories)))
    captions = [c for c, _ in ds.texts]
    text, image = agreement_embeddings([caption_tokens(c, nouns) for c in captions], shapes)
    return text, image, [m for _, m in ds.texts], captions, ds


def colour_category(jsonl, split, ks=KS):
    """Text <-> shape by colour and category agreement, no learning: text2shape_metrics' keys on `split`."""
    text, image, text_ids, captions, ds = colour_category_embeddings(jsonl, split)
    return text2shape_metrics(image, list(range(len(ds.model_ids))), text, text_ids, ds.categories,
                              [ds.categories[m] for m in text_ids], captions, views="mean", ks=ks)


def colour_histogram(jsonl, split, keep_hard_photos=False, photo_margin=0.1, photo_mask=False, ks=KS):
    """Photo -> shape by colour histograms: the photo crop's object pixels (its background, white where the mask
    painted it or the crop padded it, left out as meshes.captions.object_pixels leaves out a render's) against
    all of the shape's render pixels. The embeddings are the square roots of the histograms, so that their cosine
    is the Bhattacharyya coefficient: a colour covering much of the object does not drown the others (toy test
    split, no mask: R@1 0.44 against 0.32 for the cosine of the plain histograms). The photos are those a model is
    evaluated on with the same arguments; photo2shape_with_chance's keys."""
    photos = ShapeImageDataset(jsonl, split, None, views=False, keep_hard=keep_hard_photos, margin=photo_margin,
                               apply_mask=photo_mask, mode="eval")
    _, shape_hist = render_colours(jsonl, split)
    photo_hist = torch.from_numpy(np.stack([colour_histogram_of(object_pixels(np.asarray(photos.image(i))))
                                            for i in range(len(photos))]))
    return photo2shape_with_chance(photo_hist.sqrt(), photos.labels, shape_hist.sqrt(),
                                   list(range(len(photos.model_ids))), photos.categories, "mean", ks)


def nearest_captions(jsonl, split):
    """One caption per model of `split` (dataset order): the first caption of its nearest TRAIN model."""
    train = split_dataset(jsonl, "train")
    return [train.captions[t][0] for _, t in nearest_train_models(jsonl, split)]
