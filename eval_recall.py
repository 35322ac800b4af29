"""Recall@K, mAP and ranks of text <-> shape retrieval on a split, instance and category level.

    python eval_recall.py --checkpoint weights/<run>/best.pt --split test
    python eval_recall.py --clip_model tiny --split test                  # zero-shot, no checkpoint
    python eval_recall.py --checkpoint ... --views max --out_dir /tmp/eval

Writes logs/<run>/eval_<split>/ (or --out_dir): results.json, TensorBoard scalars <split>/<key> (keys such as
text2image_R@1 and category/image2text_mAP), recall_curve.png and retrieval_gallery.png. Beside the model's numbers:
the chance level of each row (text2image_chance_R@k, ...), the captions that name no colour
(shape_only/text2image_R@k) and, unless --no_baselines, the colour_category shortcut baseline (results.json
"baselines"; metrics/baselines.py). Text2Shape's protocol beside them: NDCG@k both ways with its chance level
(results.json "ndcg": text2image_NDCG@k, text2image_chance_NDCG@k, ...; metrics/ranking.py); its other number, the
recall rate RR@k, is the R@k above. The metrics themselves live in metrics/retrieval.py and metrics/ranking.py;
`from eval_recall import compute_recall_at_k` keeps working.
"""
import argparse

from features import encode_split
from metrics.baselines import chance_recall, colour_category, text2shape_metrics
from metrics.evaluate import add_eval_args, load_eval_model, metric_table, save_results
from metrics.plots import plot_gallery, plot_recall_curves
from metrics.ranking import ndcg_both_directions
from metrics.retrieval import VIEW_MODES, retrieval_metrics, shape_gallery
# re-exported: users import compute_recall_at_k from here
from metrics.retrieval import compute_recall_at_k, evaluate_retrieval  # noqa: F401

CURVE_KS = tuple(range(1, 51))
NDCG_KS = (1, 5, 10)


def retrieval_report(wrapper, preprocess, jsonl, split, out_dir, label, views="mean", device="cpu", feats=None,
                     n_gallery=4, num_workers=2, tb_prefix=None, baselines=True):
    """Evaluate one model on one split; writes results.json, recall_curve.png and retrieval_gallery.png to out_dir
    (and TensorBoard scalars <tb_prefix>/<key>). feats: encode_split's (features, dataset) when already computed.
    baselines: also score colour_category on the same split (result["baselines"])."""
    feats, ds = feats or encode_split(wrapper, preprocess, jsonl, split, device, num_workers=num_workers)
    cats = [ds.categories[m] for m in feats["image_model"].tolist()]
    text_cats = [ds.categories[m] for m in feats["text_model"].tolist()]
    metrics = text2shape_metrics(feats["image"], feats["image_model"], feats["text"], feats["text_model"], cats,
                                 text_cats, [c for c, _ in ds.texts], views=views)
    shapes, shape_models = shape_gallery(feats["image"], feats["image_model"], views)
    curves = {name: retrieval_metrics(q, g, qi, gi, ks=CURVE_KS) for name, (q, g, qi, gi) in {
        "image2text": (shapes, feats["text"], shape_models, feats["text_model"]),
        "text2image": (feats["text"], shapes, feats["text_model"], shape_models)}.items()}
    result = {"model": label, "split": split, "views": views, "data_jsonl": str(jsonl),
              "n_models": len(ds.model_ids), "n_views": len(feats["image"]), "n_captions": len(feats["text"]),
              "metrics": metrics,
              # beside "metrics", not in it: the baselines' entries hold metrics' keys, and no NDCG of theirs
              "ndcg": ndcg_both_directions(shapes, shape_models, feats["text"], feats["text_model"], NDCG_KS),
              "recall_curve": {name: [c[f"R@{k}"] for k in CURVE_KS] for name, c in curves.items()}}
    chance = {"image2text": chance_recall(shape_models, feats["text_model"].tolist(), CURVE_KS),
              "text2image": chance_recall(feats["text_model"].tolist(), shape_models, CURVE_KS)}
    if baselines:
        result["baselines"] = {"colour_category": colour_category(jsonl, split)}
    path = save_results(out_dir, result, tb_prefix, tb_sections=("metrics", "ndcg"))
    plot_recall_curves(result["recall_curve"], path.parent / "recall_curve.png", f"{label}, {split} split",
                       chance={name: [c[f"R@{k}"] for k in CURVE_KS] for name, c in chance.items()})
    plot_gallery(text_queries(feats, ds, n_gallery), shapes, shape_models, ds.views,
                 path.parent / "retrieval_gallery.png")
    return result


def text_queries(feats, ds, n):
    """Gallery rows: the first caption of n evenly spaced models, as plot_gallery's (title, feature, model, text)."""
    import torch

    picks = sorted({int(i) for i in torch.linspace(0, len(ds.model_ids) - 1, min(n, len(ds.model_ids)))})
    first = {}
    for t, (_, m) in enumerate(ds.texts):
        first.setdefault(m, t)
    return [(ds.model_ids[m], feats["text"][first[m]], m, ds.texts[first[m]][0]) for m in picks]


def format_table(result):
    m = result["metrics"]
    lines = [f"{result['model']} on {result['split']} ({result['n_models']} models, {result['n_views']} views, "
             f"{result['n_captions']} captions; views pooled by {result['views']}); shape only: the "
             f"{m['shape_only/n_captions']} captions without a colour word"]
    lines += metric_table(m, ("text2image", "image2text"), result.get("baselines"))
    # Text2Shape's protocol: NDCG@k; its recall rate RR@k is the R@k above
    rows = [(label, f"{d}_{kind}NDCG") for d in ("text2image", "image2text")
            for label, kind in ((f"{d} (same model)", ""), ("  chance", "chance_"))]
    width = max(len(label) for label, _ in rows) + 2
    lines.append(f"{'':<{width}}" + "".join(f"{f'NDCG@{k}':>9}" for k in NDCG_KS))
    lines += [f"{label:<{width}}" + "".join(f"{result['ndcg'][f'{key}@{k}']:9.3f}" for k in NDCG_KS)
              for label, key in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Recall@K of text <-> shape retrieval on a split.")
    add_eval_args(ap, out_dir_help="default: logs/<run>/eval_<split>")
    ap.add_argument("--views", default="mean", choices=VIEW_MODES, help="how a shape's views are pooled")
    args = ap.parse_args(argv)
    run = load_eval_model(ap, args, f"eval_{args.split}")
    result = retrieval_report(run.wrapper, run.preprocess, run.jsonl, args.split, run.out_dir, run.label,
                              views=args.views, device=run.device, num_workers=args.num_workers, tb_prefix=args.split,
                              baselines=args.baselines)
    print(format_table(result))
    print(f"wrote {run.out_dir / 'results.json'}, recall_curve.png, retrieval_gallery.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
