"""Photo -> shape retrieval: which 3D model is in this photo? Rank-1/5/10 and mAP over a split's models.

    python eval_shape_retrieval.py --checkpoint weights/<run>/best.pt --split test
    python eval_shape_retrieval.py --clip_model tiny --split test                        # zero-shot, no checkpoint
    python eval_shape_retrieval.py --checkpoint ... --photo_mask --keep_hard_photos     # background removed; hard kept

Queries: the split's real photos (usable_samples.jsonl `photos`), cropped to their bbox grown by --photo_margin;
truncated and occluded photos are left out unless --keep_hard_photos, as in Pix3D's own evaluation. --photo_mask
and --photo_margin default to the checkpoint's training config, so a model sees photos prepared as in training
(without a checkpoint: no mask, margin 0.1). Gallery: every model of the split, its rendered views pooled into one shape
embedding (metrics.retrieval.shape_gallery; --views max|per_view for the others). A photo matches the shape it
names; a model with several photos is several queries. `category/photo2shape_*` counts any shape of the photo's
category as a hit (did it at least find a chair).

Writes logs/<run>/photo2shape_<split>/ (or --out_dir): results.json, TensorBoard scalars <split>/<key> and
photo2shape_gallery.png (photos beside their top-5 shapes, the right one framed green). Keys read the same in code,
JSON and TensorBoard: photo2shape_R@1, photo2shape_mAP, category/photo2shape_R@1, and the chance level of a random
ranking, photo2shape_chance_R@1. Unless --no_baselines, the colour_histogram shortcut baseline (metrics/baselines.py)
is scored on the same photos (results.json "baselines") and printed under the model's rows.
"""
import argparse

import torch

from features import encode_photo_split
from metrics.evaluate import add_bool_arg, add_eval_args, load_eval_model, metric_table, save_results
# re-exported for tasks/photo2shape.py, which validates with it
from metrics.evaluate import evaluate_photo2shape  # noqa: F401
from metrics.baselines import colour_histogram, photo2shape_with_chance
from metrics.plots import plot_gallery
from metrics.retrieval import VIEW_MODES, shape_gallery


def photo2shape_report(wrapper, preprocess, jsonl, split, out_dir, label, device="cpu", keep_hard_photos=False,
                       photo_margin=0.1, photo_mask=False, views="mean", n_gallery=6, num_workers=2, tb_prefix=None,
                       baselines=True):
    """Evaluate one model on one split; writes results.json and photo2shape_gallery.png to out_dir (and TensorBoard
    scalars <tb_prefix>/<key>). baselines: also score colour_histogram on the same photos (result["baselines"])."""
    feats, photos = encode_photo_split(wrapper, preprocess, jsonl, split, device, keep_hard_photos, photo_margin,
                                       photo_mask, num_workers=num_workers)
    metrics = photo2shape_with_chance(feats["photo"], feats["photo_model"], feats["view"], feats["view_model"],
                                      photos.categories, views)
    result = {"model": label, "split": split, "views": views, "data_jsonl": str(jsonl),
              "n_models": len(photos.model_ids), "n_photos": len(photos), "n_photos_left_out": photos.n_hard_skipped,
              "n_models_with_photos": len(set(photos.labels)), "keep_hard_photos": keep_hard_photos,
              "photo_mask": photo_mask, "photo_margin": photo_margin, "metrics": metrics}
    if baselines:
        result["baselines"] = {"colour_histogram": colour_histogram(jsonl, split, keep_hard_photos, photo_margin,
                                                                    photo_mask)}
    path = save_results(out_dir, result, tb_prefix)
    shapes, shape_models = shape_gallery(feats["view"], feats["view_model"], views)
    picks = sorted({int(i) for i in torch.linspace(0, len(photos) - 1, min(n_gallery, len(photos)))})
    queries = [(photos.model_ids[photos.labels[i]], feats["photo"][i], photos.labels[i], photos.image(i))
               for i in picks]
    plot_gallery(queries, shapes, shape_models, photos.views, path.parent / "photo2shape_gallery.png")
    return result


def format_table(result):
    lines = [f"{result['model']} on {result['split']}: {result['n_photos']} photos of {result['n_models_with_photos']} "
             f"models ({result['n_photos_left_out']} truncated/occluded left out) against {result['n_models']} shapes"]
    return "\n".join(lines + metric_table(result["metrics"], ("photo2shape",), result.get("baselines")))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Photo -> shape retrieval (Rank-k, mAP) on a split.")
    add_eval_args(ap, out_dir_help="default: logs/<run>/photo2shape_<split>")
    ap.add_argument("--views", default="mean", choices=VIEW_MODES, help="how a shape's views are pooled")
    add_bool_arg(ap, "photo_mask", "paint the photo background white with its mask (default: the checkpoint's)")
    add_bool_arg(ap, "keep_hard_photos", "keep truncated and occluded photos (default: left out, as in Pix3D)")
    ap.add_argument("--photo_margin", type=float, default=None,
                    help="bbox crop margin, a fraction of the box's longer side (default: the checkpoint's)")
    args = ap.parse_args(argv)
    run = load_eval_model(ap, args, f"photo2shape_{args.split}")
    # the photos are prepared as the model was trained (mask, margin); which photos count is the benchmark's rule
    photo = {"keep_hard_photos": bool(args.keep_hard_photos)}
    for key in ("photo_mask", "photo_margin"):
        value = getattr(args, key) if getattr(args, key) is not None else run.config.get(key)
        if value is not None:
            photo[key] = value
    result = photo2shape_report(run.wrapper, run.preprocess, run.jsonl, args.split, run.out_dir, run.label,
                                device=run.device, views=args.views, num_workers=args.num_workers,
                                tb_prefix=args.split, baselines=args.baselines, **photo)
    print(format_table(result))
    print(f"wrote {run.out_dir / 'results.json'}, photo2shape_gallery.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
