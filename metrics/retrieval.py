"""Cross-modal retrieval metrics (Recall@K, mean/median rank, mAP), instance and category level.

    from metrics.retrieval import compute_recall_at_k, retrieval_metrics, evaluate_retrieval, photo2shape_metrics
    compute_recall_at_k(image_feats, text_feats, image_ids=model_ids, text_ids=caption_model_ids)
    # -> {'image2text_R@1': ..., 'text2image_R@1': ..., ...}

Matching is by id: query i and gallery item j match when their ids are equal (the model id for instance
retrieval, the category for category retrieval). A model with several captions therefore has several correct
texts, and an image query is a hit at k when ANY of them is in its top k (counting only text i as the answer to
image i undercounts as soon as a model has two captions; tests/test_recall.py shows a case).

Ties are broken at random, in expectation: every number is its expected value when each group of gallery items
with exactly the same score (float32 cosines, bit-equal) is put in a uniformly random order. A collapsed model,
all scores equal, therefore scores chance: R@k = k / N with one match among N. For a query whose best-scoring
tie group holds m matches and t non-matches below `a` items that score strictly higher, the number X of the
group's non-matches placed before its first match has P(X = x) = C(t + m - 1 - x, m - 1) / C(t + m, m).
R@k is P(a + 1 + X <= k), the probability that the first match lands in the top k (averaged over queries: the
expected Recall@K); the first-hit rank is its expectation a + 1 + t / (m + 1) (mean_rank and median_rank are
the mean and median of those); AP is the expected average precision (McSherry & Najork 2008, "Computing
information retrieval performance measures efficiently in the presence of tied scores"). Without ties these
are the plain values, and AP is sklearn's average_precision_score.

Nothing of size queries x gallery is held: queries are processed in blocks of `chunk_size` rows (fewer when the
gallery is large, so one block of similarities stays around 512 MB), which is what lets 100k x 100k run.
"""
import math
import operator

import torch
import torch.nn.functional as F

from metrics.ties import rank_by_comparison, rank_by_sorting

# One block of similarities holds at most this many float32 entries (2**27 -> 512 MB).
_MAX_CHUNK_ELEMENTS = 2**27
# A query with this many matches or fewer is ranked by one comparison pass per match; above it the block's rows
# are sorted instead (one sort costs about as much as ~20 passes, and category-level queries have thousands).
_SORT_ABOVE_N_POS = 32
AGGREGATIONS = ("mean", "max")
VIEW_MODES = ("mean", "max", "per_view")


def _normalise(features, name, device=None):
    if not torch.is_tensor(features):
        features = torch.as_tensor(features)
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D (items x dim) tensor, got shape {tuple(features.shape)}")
    features = features.to(device=device, dtype=torch.float32)  # fp16 CLIP outputs: fp32 for exact ranking
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return F.normalize(features, dim=-1)


def _id_list(ids, n, name):
    """Ids as a python list of hashable values (ints, strings, ...), checked against the number of rows."""
    if torch.is_tensor(ids) or hasattr(ids, "tolist"):  # torch tensor or numpy array
        ids = ids.tolist()
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{name}: {len(ids)} ids for {n} feature rows")
    return [tuple(i) if isinstance(i, list) else i for i in ids]


def _encode_ids(query_ids, gallery_ids, nq, ng, device):
    """Map both id lists onto shared integer codes 0..K-1 (equal ids -> equal codes)."""
    both_int = all(torch.is_tensor(x) and not x.is_floating_point() and x.dim() == 1 for x in (query_ids, gallery_ids))
    if both_int:  # fast path for large integer id tensors: no python loop
        for ids, n, name in ((query_ids, nq, "query_ids"), (gallery_ids, ng, "gallery_ids")):
            if len(ids) != n:
                raise ValueError(f"{name}: {len(ids)} ids for {n} feature rows")
        codes = torch.unique(torch.cat([query_ids.cpu(), gallery_ids.cpu()]), return_inverse=True)[1]
    else:
        table = {}
        try:
            codes = [table.setdefault(i, len(table)) for i in _id_list(query_ids, nq, "query_ids")]
            codes += [table.setdefault(i, len(table)) for i in _id_list(gallery_ids, ng, "gallery_ids")]
        except TypeError as e:
            raise TypeError(f"ids must be hashable (ints, strings, tuples): {e}") from None
        codes = torch.tensor(codes, dtype=torch.long)
    codes = codes.to(device)
    return codes[:nq], codes[nq:]


def _first_hit_within(ks, first):
    """{k: per query, P(a + 1 + X <= k)}: the probability that the first match lands in the top k.

    With s = k - a of the tie group's places inside the top k, it misses when all s go to non-matches:
    P(X >= s) = prod_{i < s} (t - i) / (t + m - i), one for s <= 0 and zero for s > t. One cumulative sum of
    log1p terms per query serves every k, and -expm1 keeps a tiny R@k (k / N in a collapsed gallery of N)
    accurate to a few ulps.
    """
    a, t, m = first.double().unbind(1)
    hit = {k: (k > a + t).double() for k in ks}  # exact wherever the top k does not cut through the group
    tied = ((t > 0) & (a < max(ks))).nonzero().squeeze(1)
    width = int(min(max(ks), t[tied].max())) if len(tied) else 0  # s <= min(k, t): terms i < width
    i = torch.arange(width, dtype=torch.float64, device=a.device)
    for rows in tied.split(max(1, 2**22 // max(width, 1))):  # blocks of at most 4M terms
        a_r, t_r, m_r = a[rows], t[rows], m[rows]
        # log P(X >= i + 1) in column i; columns past t are never read (the clamp only keeps them finite)
        log_miss = torch.log1p(-m_r[:, None] / (t_r[:, None] + m_r[:, None] - i).clamp(min=1)).cumsum(1)
        for k in ks:
            s = k - a_r
            cut = ((s > 0) & (s <= t_r)).nonzero().squeeze(1)
            hit[k][rows[cut]] = -torch.expm1(log_miss[cut, s[cut].long() - 1])
    return hit


def rank_queries(query_features, gallery_features, query_ids, gallery_ids, ks, chunk_size=4096):
    """The checked inputs ranked: (ks as ints, first-hit tie-group counts [Q, 3], expected AP [Q], matched [Q]),
    what retrieval_metrics averages and metrics.per_query keeps per query."""
    try:
        ks_int = tuple(operator.index(k) for k in ks)  # ints, numpy ints; not 1.5
    except TypeError:
        ks_int = ()
    if not ks_int or min(ks_int) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    ks = ks_int
    q = _normalise(query_features, "query_features")
    g = _normalise(gallery_features, "gallery_features", device=q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_features have dim {q.shape[1]} but gallery_features have dim {g.shape[1]}")
    qcode, gcode = _encode_ids(query_ids, gallery_ids, q.shape[0], g.shape[0], q.device)
    first, ap, matched = _rank_all(q, g, qcode, gcode, chunk_size)
    return ks, first, ap, matched


def retrieval_metrics(query_features, gallery_features, query_ids, gallery_ids, ks=(1, 5, 10), chunk_size=4096):
    """One retrieval direction: rank the whole gallery for every query (cosine similarity).

    Returns {"R@k": ..., "mean_rank", "median_rank", "mAP", "n_no_match", "ranks", "matched"}:
    R@k is the fraction of queries with a match in the top k; ranks are the 1-based ranks of each query's
    FIRST match; mAP averages over queries the average precision over all of that query's matches. All are
    expectations under a random order of tied scores (module docstring), so a rank may be fractional.
    Queries without any match in the gallery are left out of every average and counted in "n_no_match";
    "ranks" (float64 tensor, CPU) holds the ranked queries only, in query order, and "matched" (BoolTensor, one
    per query) says which queries those are. With no ranked query the averages are NaN.
    Runs on the device of query_features; memory is O(chunk x gallery), never queries x gallery.
    """
    ks, first, ap, matched = rank_queries(query_features, gallery_features, query_ids, gallery_ids, ks,
                                          chunk_size)
    above, non_matches_at, matches_at = first.double().unbind(1)
    # the expected first-hit rank: on average t / (m + 1) of the group's t non-matches come before its first match
    ranks = above + 1 + non_matches_at / (matches_at + 1)

    hit = _first_hit_within(ks, first)
    out = {f"R@{k}": hit[k].mean().item() if len(ranks) else math.nan for k in ks}
    if len(ranks):
        s = ranks.sort().values
        out["mean_rank"] = s.mean().item()
        out["median_rank"] = ((s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2).item()
        out["mAP"] = ap.mean().item()
    else:
        out.update(mean_rank=math.nan, median_rank=math.nan, mAP=math.nan)
    out["n_no_match"] = int((~matched).sum())
    out["ranks"] = ranks
    out["matched"] = matched.cpu()
    return out


def _rank_all(q, g, qcode, gcode, chunk_size):
    """(first-hit tie groups as rows (items above, non-matches in it, matches in it), APs) of the queries with a
    match, block by block, and the bool mask of those queries."""
    n_gallery = g.shape[0]
    # Gallery sorted by id: the matches of a query with code c are order[start[c] : start[c] + count[c]].
    count = torch.bincount(gcode, minlength=int(qcode.max()) + 1)
    start = count.cumsum(0) - count
    order = torch.argsort(gcode, stable=True)
    n_pos = count[qcode]
    matched = n_pos > 0
    ranked = matched.nonzero().squeeze(1)

    rows_cmp = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // n_gallery))
    rows_sort = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // (8 * n_gallery)))  # the sort path needs ~8x more
    firsts, aps = [], []
    # Reused for every block: a fresh 512 MB tensor per block costs page faults (~30% of the CPU time at 100k).
    sims_buf = cmp_buf = None
    blocks = ranked.split(rows_cmp)
    if len(ranked) * n_gallery > 2**31:  # a progress bar only for runs that take more than a few seconds
        from tqdm import tqdm

        blocks = tqdm(blocks, desc=f"ranking {len(ranked)} x {n_gallery}", unit="block", leave=False)
    for block in blocks:
        n_block = n_pos[block]
        if len(block) == 0:  # split() of an empty tensor still yields one empty piece
            continue
        if int(n_block.max()) > _SORT_ABOVE_N_POS:
            for sub in block.split(rows_sort):
                first, ap = rank_by_sorting(q[sub] @ g.T, gcode[None, :] == qcode[sub][:, None])
                firsts.append(first)
                aps.append(ap)
            continue
        if sims_buf is None:
            sims_buf = torch.empty(min(rows_cmp, len(ranked)), n_gallery, device=q.device)
            cmp_buf = torch.empty(sims_buf.shape, dtype=torch.bool, device=q.device)
        sims = torch.mm(q[block], g.T, out=sims_buf[: len(block)])
        slot = torch.arange(int(n_block.max()), device=q.device)
        valid = slot[None, :] < n_block[:, None]
        gidx = order[torch.where(valid, start[qcode[block]][:, None] + slot[None, :], 0)]
        first, ap = rank_by_comparison(sims, gidx, valid, cmp_buf[: len(block)])
        firsts.append(first)
        aps.append(ap)
    first = torch.cat(firsts).cpu() if firsts else torch.zeros(0, 3, dtype=torch.long)
    ap = torch.cat(aps).cpu() if aps else torch.zeros(0, dtype=torch.float64)
    return first, ap, matched


def _both_directions(image_features, image_ids, text_features, text_ids, ks, prefix=""):
    """Flat `image2text_*` / `text2image_*` metrics (scalars only), the names JSON and TensorBoard show."""
    out = {}
    for name, args in (
        ("image2text", (image_features, text_features, image_ids, text_ids)),
        ("text2image", (text_features, image_features, text_ids, image_ids)),
    ):
        m = retrieval_metrics(*args, ks=ks)
        for key, value in m.items():
            if key not in ("ranks", "matched"):
                out[f"{prefix}{name}_{key}"] = value
    return out


def compute_recall_at_k(image_features, text_features, image_ids=None, text_ids=None, ks=(1, 5, 10)):
    """Recall@k both ways: {"image2text_R@k": float, "text2image_R@k": float} for k in ks.

    Image i and text j match when image_ids[i] == text_ids[j] (ids: ints, strings, lists or tensors).
    Without ids, image i matches text i only (then both must have the same number of rows).
    """
    if (image_ids is None) != (text_ids is None):
        raise ValueError("give both image_ids and text_ids, or neither (then image i matches text i)")
    if image_ids is None:
        if len(image_features) != len(text_features):
            raise ValueError(
                f"without ids, image i matches text i: got {len(image_features)} images and "
                f"{len(text_features)} texts; pass image_ids/text_ids"
            )
        image_ids = text_ids = torch.arange(len(image_features))
    metrics = _both_directions(image_features, image_ids, text_features, text_ids, ks)
    return {key: value for key, value in metrics.items() if "_R@" in key}


def aggregate_views(features, ids, how="mean"):
    """Per-model embeddings from per-view embeddings -> (agg_features (models x dim, unit rows), unique_ids).

    "mean": average of the L2-normalised views, re-normalised; "max": element-wise max of the normalised views,
    re-normalised. unique_ids is a list in order of first appearance; row m of agg_features belongs to it.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation how={how!r}; choose one of {', '.join(AGGREGATIONS)}")
    feats = _normalise(features, "features")
    table = {}
    codes = [table.setdefault(i, len(table)) for i in _id_list(ids, feats.shape[0], "ids")]
    codes = torch.tensor(codes, dtype=torch.long, device=feats.device)
    if how == "mean":
        # the sum has the direction of the mean, and the result is re-normalised anyway
        agg = torch.zeros(len(table), feats.shape[1], device=feats.device).index_add_(0, codes, feats)
    else:
        agg = torch.full((len(table), feats.shape[1]), -math.inf, device=feats.device)
        agg.scatter_reduce_(0, codes[:, None].expand_as(feats), feats, reduce="amax")
    return F.normalize(agg, dim=-1), list(table)


def _category_per_model(ids, categories):
    """One category per model id (first-appearance order); a model whose views disagree is an error."""
    cat_of = {}
    for i, c in zip(_id_list(ids, len(categories), "image_ids"), _id_list(categories, len(categories), "categories")):
        if cat_of.setdefault(i, c) != c:
            raise ValueError(f"image_categories: model {i!r} has views in two categories ({cat_of[i]!r}, {c!r})")
    return list(cat_of.values())


def evaluate_retrieval(
    image_features,
    image_ids,
    text_features,
    text_ids,
    image_categories=None,
    text_categories=None,
    ks=(1, 5, 10),
    views="mean",
):
    """Shape-level retrieval metrics as one flat dict.

    views: "mean" / "max" pool the rendered views of each model into one shape embedding (aggregate_views);
    "per_view" keeps every view as its own item. Instance level (same model id) gives image2text_R@k,
    image2text_mAP, image2text_mean_rank, image2text_median_rank, image2text_n_no_match and the text2image_*
    twins; with categories, the same keys prefixed "category/" (match = same category).
    """
    if views not in VIEW_MODES:
        raise ValueError(f"unknown views={views!r}; choose one of {', '.join(VIEW_MODES)}")
    if (image_categories is None) != (text_categories is None):
        raise ValueError("give both image_categories and text_categories, or neither")
    if views != "per_view":
        if image_categories is not None:
            if len(image_categories) != len(image_features):
                raise ValueError(f"image_categories: {len(image_categories)} for {len(image_features)} images")
            image_categories = _category_per_model(image_ids, image_categories)
        image_features, image_ids = aggregate_views(image_features, image_ids, how=views)
    out = _both_directions(image_features, image_ids, text_features, text_ids, ks)
    if image_categories is not None:
        out.update(_both_directions(image_features, image_categories, text_features, text_categories, ks, "category/"))
    return out


# ============================================================================ photo -> shape
def shape_gallery(view_features, view_models, views="mean"):
    """(shape embeddings, their model ids as a list): the views of each model pooled into one shape (aggregate_views),
    or every view as its own item with views="per_view"."""
    if views not in VIEW_MODES:
        raise ValueError(f"unknown views={views!r}; choose one of {', '.join(VIEW_MODES)}")
    view_models = _id_list(view_models, len(view_features), "view_models")
    if views == "per_view":
        return _normalise(view_features, "view_features"), view_models
    return aggregate_views(view_features, view_models, how=views)


def photo2shape_metrics(photo_features, photo_models, view_features, view_models, categories=None, views="mean",
                        ks=(1, 5, 10)):
    """Flat dict: photo2shape_{R@k, mAP, mean_rank, median_rank}, and category/photo2shape_* when `categories`
    (one per model index) is given. photo_models / view_models: model indices (ints) of each row. With one shape
    per model (views="mean" or "max") a photo's AP is 1 / rank."""
    shapes, shape_models = shape_gallery(view_features, view_models, views)
    photo_models = _id_list(photo_models, len(photo_features), "photo_models")
    levels = [("", photo_models, shape_models)]
    if categories is not None:
        levels.append(("category/", [categories[m] for m in photo_models], [categories[m] for m in shape_models]))
    out = {}
    for prefix, q_ids, g_ids in levels:
        m = retrieval_metrics(photo_features, shapes, q_ids, g_ids, ks=ks)
        for key in [f"R@{k}" for k in ks] + ["mAP", "mean_rank", "median_rank"]:
            out[f"{prefix}photo2shape_{key}"] = m[key]
    return out
