"""Cross-modal retrieval metrics (Recall@K, mean/median rank, mAP) for image <-> text, instance and category level.

    from eval_recall import compute_recall_at_k, retrieval_metrics, aggregate_views, evaluate_retrieval
    compute_recall_at_k(image_feats, text_feats, image_ids=model_ids, text_ids=caption_model_ids)
    # -> {'image2text_R@1': ..., 'text2image_R@1': ..., ...}

The command line is below `# --- CLI ---` (written separately).

Matching is by id: image i and text j match when their ids are equal (the model id for instance retrieval, the
category for category retrieval). A model with several captions therefore has several correct texts, and an
image query is a hit at k when ANY of them is in its top k. The seed's loop assumed text i belongs to image i
only, which undercounts as soon as a model has two captions (tests/test_recall.py shows a case).

Ties are broken in favour of the matching items, everywhere: a match is ranked after the non-matching items
with a strictly higher score and before those with an equal score. So the first-hit rank is
1 + (number of gallery items scoring strictly higher than the best match), and in average precision the k-th
best match (k = 1, 2, ...) has rank k + (non-matching items scoring strictly higher than it). This equals
sklearn's average_precision_score whenever there are no exact ties between a match and a non-match.

Nothing of size queries x gallery is held: queries are processed in blocks of `chunk_size` rows (fewer when the
gallery is large, so one block of similarities stays around 512 MB), which is what lets 100k x 100k run.
"""
import math
import operator

import torch
import torch.nn.functional as F

# ============================================================================ retrieval metrics (importable)

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


def _rank_by_comparison(sims, pos_scores, valid, scratch):
    """Few matches per query: one `sims > score` pass per match. Returns (first-hit rank, AP) per row.

    scratch: a bool tensor shaped like sims, reused for every comparison.
    """
    pos_scores = pos_scores.masked_fill(~valid, -math.inf).sort(dim=1, descending=True).values
    # items scoring strictly higher than the t-th best match (an int32 sum is ~2x faster than the default int64)
    above = torch.empty(valid.shape, dtype=torch.long, device=sims.device)
    for t in range(valid.shape[1]):
        above[:, t] = torch.gt(sims, pos_scores[:, t : t + 1], out=scratch).sum(1, dtype=torch.int32)
    matches_above = (pos_scores[:, None, :] > pos_scores[:, :, None]).sum(2)
    neg_above = above - matches_above
    k = torch.arange(1, pos_scores.shape[1] + 1, device=sims.device, dtype=torch.float64)
    precision = k / (k + neg_above)
    ap = (precision * valid).sum(1) / valid.sum(1)
    return 1 + neg_above[:, 0], ap


def _rank_by_sorting(sims, pos):
    """Many matches per query (category level): sort each row once. Same conventions as _rank_by_comparison."""
    values, order = sims.sort(dim=1, descending=True)
    is_match = pos.gather(1, order)
    del order
    new_value = torch.ones_like(is_match)
    new_value[:, 1:] = values[:, 1:] != values[:, :-1]
    del values
    # position of the first item of each tie group = number of items scoring strictly higher
    positions = torch.arange(sims.shape[1], device=sims.device).expand_as(sims)
    n_above = torch.where(new_value, positions, 0).cummax(dim=1).values
    n_matches = is_match.cumsum(1)  # k for the k-th match in this order
    neg_above = n_above - (n_matches - is_match.long()).gather(1, n_above)
    precision = torch.where(is_match, n_matches / (n_matches + neg_above).double(), 0.0)
    ap = precision.sum(1) / is_match.sum(1)
    first = 1 + torch.where(is_match, neg_above, sims.shape[1]).min(1).values
    return first, ap


def retrieval_metrics(query_features, gallery_features, query_ids, gallery_ids, ks=(1, 5, 10), chunk_size=4096):
    """One retrieval direction: rank the whole gallery for every query (cosine similarity).

    Returns {"R@k": ..., "mean_rank", "median_rank", "mAP", "n_no_match", "ranks", "matched"}:
    R@k is the fraction of queries with a match in the top k; ranks are the 1-based ranks of each query's
    FIRST match; mAP averages over queries the average precision over all of that query's matches.
    Queries without any match in the gallery are left out of every average and counted in "n_no_match";
    "ranks" (LongTensor, CPU) holds the ranked queries only, in query order, and "matched" (BoolTensor, one
    per query) says which queries those are. With no ranked query the averages are NaN.
    Runs on the device of query_features; memory is O(chunk x gallery), never queries x gallery.
    """
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
    n_gallery = g.shape[0]
    qcode, gcode = _encode_ids(query_ids, gallery_ids, q.shape[0], n_gallery, q.device)

    # Gallery sorted by id: the matches of a query with code c are order[start[c] : start[c] + count[c]].
    count = torch.bincount(gcode, minlength=int(qcode.max()) + 1)
    start = count.cumsum(0) - count
    order = torch.argsort(gcode, stable=True)
    n_pos = count[qcode]
    matched = n_pos > 0
    ranked = matched.nonzero().squeeze(1)

    rows_cmp = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // n_gallery))
    rows_sort = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // (8 * n_gallery)))  # the sort path needs ~8x more
    first_ranks, aps = [], []
    # Reused for every block: a fresh 512 MB tensor per block costs page faults (~30% of the CPU time at 100k).
    sims_buf = gt_buf = None
    blocks = ranked.split(rows_cmp)
    show = len(ranked) * n_gallery > 2**31  # a progress bar only for runs that take more than a few seconds
    if show:
        from tqdm import tqdm

        blocks = tqdm(blocks, desc=f"ranking {len(ranked)} x {n_gallery}", unit="block", leave=False)
    for block in blocks:
        n_block = n_pos[block]
        if len(block) == 0:  # split() of an empty tensor still yields one empty piece
            continue
        if int(n_block.max()) > _SORT_ABOVE_N_POS:
            for sub in block.split(rows_sort):
                sims = q[sub] @ g.T
                pos = gcode[None, :] == qcode[sub][:, None]
                first, ap = _rank_by_sorting(sims, pos)
                first_ranks.append(first)
                aps.append(ap)
            continue
        if sims_buf is None:
            sims_buf = torch.empty(min(rows_cmp, len(ranked)), n_gallery, device=q.device)
            gt_buf = torch.empty(sims_buf.shape, dtype=torch.bool, device=q.device)
        sims = torch.mm(q[block], g.T, out=sims_buf[: len(block)])
        slot = torch.arange(int(n_block.max()), device=q.device)
        valid = slot[None, :] < n_block[:, None]
        gidx = order[torch.where(valid, start[qcode[block]][:, None] + slot[None, :], 0)]
        first, ap = _rank_by_comparison(sims, sims.gather(1, gidx), valid, gt_buf[: len(block)])
        first_ranks.append(first)
        aps.append(ap)
    del sims_buf, gt_buf

    ranks = torch.cat(first_ranks).cpu() if first_ranks else torch.zeros(0, dtype=torch.long)
    ap = torch.cat(aps).cpu() if aps else torch.zeros(0, dtype=torch.float64)
    out = {f"R@{k}": (ranks <= k).double().mean().item() if len(ranks) else math.nan for k in ks}
    if len(ranks):
        s = ranks.sort().values.double()
        out["mean_rank"] = s.mean().item()
        out["median_rank"] = ((s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2).item()
        out["mAP"] = ap.mean().item()
    else:
        out.update(mean_rank=math.nan, median_rank=math.nan, mAP=math.nan)
    out["n_no_match"] = int((~matched).sum())
    out["ranks"] = ranks
    out["matched"] = matched.cpu()
    return out


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


# ============================================================================ --- CLI ---
CURVE_KS = tuple(range(1, 51))


def encode_split(wrapper, preprocess, jsonl, split, device, batch_size=64, num_workers=2):
    """Every view and caption of a split, encoded: (features dict, eval-mode dataset)."""
    from features import encode_split as encode

    return encode(wrapper, preprocess, jsonl, split, device, batch_size, num_workers)


def shape_level(feats, ds, views="mean"):
    """(shape embeddings, their model indices): views pooled per model, or every view with views='per_view'."""
    if views == "per_view":
        return F.normalize(feats["image"], dim=-1), feats["image_model"].tolist()
    return aggregate_views(feats["image"], feats["image_model"], how=views)


def run_eval(wrapper, preprocess, jsonl, split, out_dir, label, views="mean", device="cpu", feats=None,
             n_gallery=4, num_workers=2, tb_prefix=None):
    """Evaluate one model on one split; writes results.json, recall_curve.png and retrieval_gallery.png to out_dir."""
    from pathlib import Path

    from utils import write_json

    if feats is None:
        feats, ds = encode_split(wrapper, preprocess, jsonl, split, device, num_workers=num_workers)
    else:
        feats, ds = feats
    cats = [ds.categories[m] for m in feats["image_model"].tolist()]
    text_cats = [ds.categories[m] for m in feats["text_model"].tolist()]
    metrics = evaluate_retrieval(feats["image"], feats["image_model"], feats["text"], feats["text_model"],
                                 image_categories=cats, text_categories=text_cats, views=views)
    shapes, shape_models = shape_level(feats, ds, views)
    curves = {name: retrieval_metrics(q, g, qi, gi, ks=CURVE_KS) for name, (q, g, qi, gi) in {
        "image2text": (shapes, feats["text"], shape_models, feats["text_model"]),
        "text2image": (feats["text"], shapes, feats["text_model"], shape_models)}.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"model": label, "split": split, "views": views, "data_jsonl": str(jsonl),
              "n_models": len(ds.model_ids), "n_views": len(feats["image"]), "n_captions": len(feats["text"]),
              "metrics": metrics,
              "recall_curve": {name: [c[f"R@{k}"] for k in CURVE_KS] for name, c in curves.items()}}
    write_json(out_dir / "results.json", result)
    plot_recall_curves(result["recall_curve"], out_dir / "recall_curve.png", f"{label}, {split} split")
    plot_gallery(shapes, shape_models, feats, ds, out_dir / "retrieval_gallery.png", n_gallery)
    if tb_prefix:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir)) as w:
            for k, v in metrics.items():
                w.add_scalar(f"{tb_prefix}/{k}", v, 0)
    return result


def plot_recall_curves(curves, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    names = {"image2text": "shape -> text (image2text)", "text2image": "text -> shape (text2image)"}
    for name, ys in curves.items():
        ax.plot(CURVE_KS[: len(ys)], ys, label=names.get(name, name))
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gallery(shapes, shape_models, feats, ds, path, n_queries=4, top=5):
    """A few text queries (one caption of evenly spaced models), each with its top-5 shapes; hits framed green."""
    from PIL import Image, ImageDraw

    from multiview_dataset import load_image

    thumb, pad, text_h = 112, 6, 22
    picks = sorted({int(i) for i in torch.linspace(0, len(ds.model_ids) - 1, n_queries)})
    sheet = Image.new("RGB", (pad + (top + 1) * (thumb + pad), len(picks) * (thumb + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    g = F.normalize(shapes, dim=-1)
    for row, m in enumerate(picks):
        t = next(i for i, (_, mi) in enumerate(ds.texts) if mi == m)
        caption = ds.texts[t][0]
        scores = g @ F.normalize(feats["text"][t], dim=-1)
        y = pad + row * (thumb + text_h + pad)
        draw.text((pad, y), f"\"{caption}\"", fill="black")
        for col, idx in enumerate(scores.topk(min(top, len(scores))).indices.tolist()):
            model = shape_models[idx]
            views = ds.views[model]
            im = load_image(views[len(views) // 2]).resize((thumb - 6, thumb - 6))
            x = pad + (col + 1) * (thumb + pad)
            color = (30, 170, 60) if model == m else (200, 200, 200)
            draw.rectangle([x, y + text_h, x + thumb - 1, y + text_h + thumb - 1], outline=color, width=3)
            sheet.paste(im, (x + 3, y + text_h + 3))
        truth = load_image(ds.views[m][len(ds.views[m]) // 2]).resize((thumb - 6, thumb - 6))
        sheet.paste(truth, (pad + 3, y + text_h + 3))
        draw.text((pad, y + text_h + thumb - 14), "target", fill="blue")
    sheet.save(path)


def main(argv=None):
    import argparse
    from pathlib import Path

    from models.clip_wrapper import add_model_args, check_model_args, load_for_eval
    from utils import get_device

    ap = argparse.ArgumentParser(description="Recall@K of text <-> shape retrieval on a split.")
    add_model_args(ap)
    ap.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ap.add_argument("--views", default="mean", choices=VIEW_MODES, help="how a shape's views are pooled")
    ap.add_argument("--out_dir", default=None, help="default: the checkpoint's run directory under logs/")
    ap.add_argument("--num_workers", type=int, default=2)
    args = ap.parse_args(argv)
    check_model_args(ap, args)
    device = get_device(args.device)
    wrapper, preprocess, label, run = load_for_eval(args.checkpoint, args.clip_model, args.clip_weights, device)
    jsonl = args.data_jsonl or run["data_jsonl"]
    out_dir = args.out_dir or run["run_dir"] / f"eval_{args.split}"
    result = run_eval(wrapper, preprocess, jsonl, args.split, out_dir, label, views=args.views, device=device,
                      num_workers=args.num_workers, tb_prefix=args.split)
    print(format_table(result))
    print(f"wrote {Path(out_dir) / 'results.json'}, recall_curve.png, retrieval_gallery.png")
    return 0


def format_table(result):
    m = result["metrics"]
    lines = [f"{result['model']} on {result['split']} ({result['n_models']} models, {result['n_views']} views, "
             f"{result['n_captions']} captions; views pooled by {result['views']})",
             f"{'':<26}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'mAP':>7}{'medR':>7}"]
    for prefix, level in (("", "same model"), ("category/", "same category")):
        for d in ("text2image", "image2text"):
            k = f"{prefix}{d}"
            lines.append(f"{d + ' (' + level + ')':<26}{m[k + '_R@1']:7.3f}{m[k + '_R@5']:7.3f}"
                         f"{m[k + '_R@10']:7.3f}{m[k + '_mAP']:7.3f}{m[k + '_median_rank']:7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
