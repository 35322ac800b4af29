"""Photo -> shape retrieval: which 3D model is in this photo? Rank-1/5/10 and mAP over a split's models.

    python eval_shape_retrieval.py --checkpoint weights/<run>/best.pt --split test
    python eval_shape_retrieval.py --clip_model tiny --split test             # zero-shot, no checkpoint
    python eval_shape_retrieval.py --checkpoint ... --mask --keep_hard       # background removed; hard photos kept

Queries: the split's real photos (usable_samples.jsonl `photos`), cropped to their bbox with a margin; truncated
and occluded photos are left out unless --keep_hard, as in Pix3D's own evaluation. Gallery: every model of the
split, its rendered views pooled into one shape embedding (eval_recall.aggregate_views; --views max|per_view for
the others). A photo matches the shape it names; a model with several photos is several queries. Ranking and
mAP are eval_recall.retrieval_metrics (the same chunked code as text <-> shape): with one shape per model, a
photo's AP is 1 / rank. `category/photo2shape_*` counts any shape of the photo's category as a hit (did it at
least find a chair).

Writes <out_dir>/results.json and photo2shape_gallery.png (photos beside their top-5 shapes, the right one framed
green). Keys read the same in code, JSON and TensorBoard: photo2shape_R@1, photo2shape_mAP, category/photo2shape_R@1.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from eval_recall import VIEW_MODES, aggregate_views, retrieval_metrics

KS = (1, 5, 10)


# ============================================================================ metrics (importable)
def photo2shape_metrics(photo_features, photo_models, view_features, view_models, categories=None, views="mean",
                        ks=KS):
    """Flat dict: photo2shape_{R@k, mAP, mean_rank, median_rank}, and category/photo2shape_* when `categories`
    (one per model index) is given. photo_models / view_models: model indices (ints) of each row."""
    shapes, shape_models = shape_gallery(view_features, view_models, views)
    photo_models = torch.as_tensor(photo_models).tolist()
    levels = [("", photo_models, shape_models)]
    if categories is not None:
        levels.append(("category/", [categories[m] for m in photo_models], [categories[m] for m in shape_models]))
    out = {}
    for prefix, q_ids, g_ids in levels:
        m = retrieval_metrics(photo_features, shapes, q_ids, g_ids, ks=ks)
        for key in [f"R@{k}" for k in ks] + ["mAP", "mean_rank", "median_rank"]:
            out[f"{prefix}photo2shape_{key}"] = m[key]
    return out


def shape_gallery(view_features, view_models, views="mean"):
    """(gallery embeddings, their model indices): views pooled per model, or every view with views='per_view'."""
    if views not in VIEW_MODES:
        raise ValueError(f"unknown views={views!r}; choose one of {', '.join(VIEW_MODES)}")
    view_models = torch.as_tensor(view_models).tolist()
    if views == "per_view":
        return F.normalize(torch.as_tensor(view_features).float(), dim=-1), view_models
    return aggregate_views(view_features, view_models, how=views)


# ============================================================================ encoding
@torch.no_grad()
def encode_images(wrapper, dataset, device, batch_size=64, num_workers=0):
    """(features [n, D] on the CPU, model indices [n]) of an eval-mode dataset of (image, model index) items."""
    from torch.utils.data import DataLoader

    was_training = wrapper.training
    wrapper.eval()
    feats, models = [], []
    for x, m in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        feats.append(wrapper.encode_image(x.to(device)).float().cpu())
        models.append(m)
    wrapper.train(was_training)
    return torch.cat(feats), torch.cat(models)


def encode_split(wrapper, preprocess, jsonl, split, device, keep_hard=False, margin=0.1, apply_mask=False,
                 batch_size=64, num_workers=0):
    """Photo queries and render gallery of a split, encoded: (feats dict, photo dataset, render dataset)."""
    from multiview_dataset import ShapeImageDataset

    photos = ShapeImageDataset(jsonl, split, preprocess, views=False, keep_hard=keep_hard, margin=margin,
                               apply_mask=apply_mask, mode="eval")
    renders = ShapeImageDataset(jsonl, split, preprocess, photos=False, mode="eval")
    p, pm = encode_images(wrapper, photos, device, batch_size, num_workers)
    v, vm = encode_images(wrapper, renders, device, batch_size, num_workers)
    return {"photo": p, "photo_model": pm, "view": v, "view_model": vm}, photos, renders


def evaluate_photo2shape(wrapper, preprocess, jsonl, split, device, keep_hard=False, margin=0.1, apply_mask=False,
                         views="mean", batch_size=64, num_workers=0):
    """The metrics dict of one model on one split (what train.py validates with)."""
    feats, photos, _ = encode_split(wrapper, preprocess, jsonl, split, device, keep_hard, margin, apply_mask,
                                    batch_size, num_workers)
    return photo2shape_metrics(feats["photo"], feats["photo_model"], feats["view"], feats["view_model"],
                               photos.categories, views)


# ============================================================================ --- CLI ---
def run_eval(wrapper, preprocess, jsonl, split, out_dir, label, device="cpu", keep_hard=False, margin=0.1,
             apply_mask=False, views="mean", n_gallery=6, num_workers=2, tb_prefix=None):
    """Evaluate one model on one split; writes results.json and photo2shape_gallery.png to out_dir."""
    from utils import write_json

    feats, photos, renders = encode_split(wrapper, preprocess, jsonl, split, device, keep_hard, margin, apply_mask,
                                          num_workers=num_workers)
    metrics = photo2shape_metrics(feats["photo"], feats["photo_model"], feats["view"], feats["view_model"],
                                  photos.categories, views)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"model": label, "split": split, "views": views, "data_jsonl": str(jsonl),
              "n_models": len(photos.model_ids), "n_photos": len(photos), "n_photos_left_out": photos.n_hard_skipped,
              "n_models_with_photos": len(set(photos.labels)), "keep_hard": keep_hard, "mask": apply_mask,
              "margin": margin, "metrics": metrics}
    write_json(out_dir / "results.json", result)
    shapes, shape_models = shape_gallery(feats["view"], feats["view_model"], "mean")
    plot_photo_gallery(feats["photo"], shapes, shape_models, photos, out_dir / "photo2shape_gallery.png", n_gallery)
    if tb_prefix:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir)) as w:
            for k, v in metrics.items():
                w.add_scalar(f"{tb_prefix}/{k}", v, 0)
    return result


def plot_photo_gallery(photo_feats, shapes, shape_models, photos, path, n_queries=6, top=5):
    """Evenly spaced photo queries, each beside its top-5 shapes (one render each); the right shape framed green."""
    from PIL import Image, ImageDraw

    from multiview_dataset import load_image

    thumb, pad, text_h = 112, 6, 16
    picks = sorted({int(i) for i in torch.linspace(0, len(photos) - 1, min(n_queries, len(photos)))})
    sheet = Image.new("RGB", (pad + (top + 1) * (thumb + pad) + pad, len(picks) * (thumb + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    scores = F.normalize(photo_feats.float(), dim=-1) @ F.normalize(shapes, dim=-1).T
    for row, i in enumerate(picks):
        m = photos.labels[i]
        y = pad + row * (thumb + text_h + pad)
        rank = 1 + int((scores[i] > scores[i][shape_models.index(m)]).sum())
        draw.text((pad, y), f"{photos.model_ids[m]}  (right shape at rank {rank})", fill="black")
        sheet.paste(photos.image(i).resize((thumb, thumb)), (pad, y + text_h))
        for col, idx in enumerate(scores[i].topk(min(top, len(shape_models))).indices.tolist()):
            views = photos.views[shape_models[idx]]
            x = pad + (col + 1) * (thumb + pad) + pad
            color = (30, 170, 60) if shape_models[idx] == m else (200, 200, 200)
            draw.rectangle([x, y + text_h, x + thumb - 1, y + text_h + thumb - 1], outline=color, width=3)
            sheet.paste(load_image(views[len(views) // 2]).resize((thumb - 6, thumb - 6)), (x + 3, y + text_h + 3))
    sheet.save(path)


def format_table(result):
    m = result["metrics"]
    lines = [f"{result['model']} on {result['split']}: {result['n_photos']} photos of {result['n_models_with_photos']} "
             f"models ({result['n_photos_left_out']} truncated/occluded left out) against {result['n_models']} shapes",
             f"{'':<28}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'mAP':>7}{'medR':>7}"]
    for prefix, level in (("", "same model"), ("category/", "same category")):
        k = f"{prefix}photo2shape"
        lines.append(f"{'photo2shape (' + level + ')':<28}{m[k + '_R@1']:7.3f}{m[k + '_R@5']:7.3f}"
                     f"{m[k + '_R@10']:7.3f}{m[k + '_mAP']:7.3f}{m[k + '_median_rank']:7.1f}")
    return "\n".join(lines)


def main(argv=None):
    import argparse

    from models.clip_wrapper import add_model_args, check_model_args, load_for_eval
    from utils import get_device

    ap = argparse.ArgumentParser(description="Photo -> shape retrieval (Rank-k, mAP) on a split.")
    add_model_args(ap)
    ap.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ap.add_argument("--views", default="mean", choices=VIEW_MODES, help="how a shape's views are pooled")
    ap.add_argument("--keep_hard", action="store_true", help="keep truncated and occluded photos")
    ap.add_argument("--mask", action="store_true", help="remove the photo background with its mask "
                    "(on by default for a checkpoint trained with --photo_mask=True)")
    ap.add_argument("--margin", type=float, default=None, help="bbox crop margin (default: the checkpoint's, else 0.1)")
    ap.add_argument("--out_dir", default=None, help="default: the checkpoint's run directory under logs/")
    ap.add_argument("--num_workers", type=int, default=2)
    args = ap.parse_args(argv)
    check_model_args(ap, args)
    device = get_device(args.device)
    wrapper, preprocess, label, run = load_for_eval(args.checkpoint, args.clip_model, args.clip_weights, device)
    cfg = run["config"] or {}
    jsonl = args.data_jsonl or run["data_jsonl"]
    margin = args.margin if args.margin is not None else cfg.get("photo_margin", 0.1)
    args.mask = args.mask or cfg.get("photo_mask", False)  # a model trained on masked photos is shown masked ones
    out_dir = args.out_dir or run["run_dir"] / f"photo2shape_{args.split}"
    result = run_eval(wrapper, preprocess, jsonl, args.split, out_dir, label, device=device, keep_hard=args.keep_hard,
                      margin=margin, apply_mask=args.mask, views=args.views, num_workers=args.num_workers,
                      tb_prefix=args.split)
    print(format_table(result))
    print(f"wrote {Path(out_dir) / 'results.json'}, photo2shape_gallery.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
