"""A model on a split: encode it (features.py), score it (metrics.retrieval), and report where every evaluation
reports, logs/<run>/ (results.json and TensorBoard scalars).

    metrics = evaluate_photo2shape(wrapper, preprocess, jsonl, "val", device, photo_mask=True)  # training validates so
    save_results(out_dir, result, tb_prefix="test")        # result["metrics"] -> TensorBoard tags test/<key>

The evaluation CLIs share their arguments and their model loading through add_eval_args / load_eval_model.
"""
import argparse
from pathlib import Path
from types import SimpleNamespace

from features import encode_photo_split
from metrics.retrieval import photo2shape_metrics
from utils import write_json

SPLITS = ("train", "val", "test", "all")


def evaluate_photo2shape(wrapper, preprocess, jsonl, split, device, keep_hard_photos=False, photo_margin=0.1,
                         photo_mask=False, views="mean", batch_size=64, num_workers=0):
    """photo2shape_metrics of one model on one split: its photos against the shapes of all of its models."""
    feats, photos = encode_photo_split(wrapper, preprocess, jsonl, split, device, keep_hard_photos, photo_margin,
                                       photo_mask, batch_size, num_workers)
    return photo2shape_metrics(feats["photo"], feats["photo_model"], feats["view"], feats["view_model"],
                               photos.categories, views)


def save_results(out_dir, result, tb_prefix=None, name="results.json", tb_sections=("metrics",)):
    """Write result (a dict with a flat "metrics" dict) to out_dir/name, and each value of the flat dicts
    result[section] for section in tb_sections as the TensorBoard scalar <tb_prefix>/<key> in out_dir when tb_prefix
    is given. Returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / name, result)
    if tb_prefix:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir)) as w:
            for section in tb_sections:
                for key, value in result[section].items():
                    w.add_scalar(f"{tb_prefix}/{key}", value, 0)
    return out_dir / name


# ----------------------------------------------------------------------------- the evaluation CLIs' shared part
def metric_table(metrics, directions, baselines=None):
    """Lines of an R@1 / R@5 / R@10 / mAP / median rank table: one row per direction (e.g. "text2image") and level
    (same model, then same category: the "category/" keys; then the captions without a colour word: the
    "shape_only/" keys, when present). Under each row: the same row of each baseline ({name: its metrics}) and the
    chance level of a random ranking (the `_chance_R@k` keys, when present)."""
    levels = (("", "same model"), ("category/", "same category"), ("shape_only/", "shape only"))
    rows = [(f"{d} ({level})", f"{prefix}{d}") for prefix, level in levels for d in directions
            if f"{prefix}{d}_R@1" in metrics]
    width = max(len(label) for label in [r[0] for r in rows] + [f"  {n} baseline" for n in baselines or {}]) + 2
    lines = [f"{'':<{width}}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'mAP':>7}{'medR':>7}"]
    for label, k in rows:
        for name, m in [(label, metrics)] + [(f"  {n} baseline", b) for n, b in (baselines or {}).items()]:
            if f"{k}_R@1" in m:
                lines.append(f"{name:<{width}}{m[k + '_R@1']:7.3f}{m[k + '_R@5']:7.3f}{m[k + '_R@10']:7.3f}"
                             f"{m[k + '_mAP']:7.3f}{m[k + '_median_rank']:7.1f}")
        if f"{k}_chance_R@1" in metrics:
            lines.append(f"{'  chance':<{width}}" + "".join(f"{metrics[f'{k}_chance_R@{n}']:7.3f}" for n in (1, 5, 10))
                         + f"{'-':>7}{'-':>7}")
    return lines


def parse_bool(text):
    """argparse type of a switch that also takes a value, as the training config does: --photo_mask,
    --photo_mask=True, --photo_mask False."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def add_bool_arg(ap, name, help):
    ap.add_argument(f"--{name}", nargs="?", const=True, default=None, type=parse_bool, metavar="True|False", help=help)


def add_eval_args(ap, splits=SPLITS, out_dir_help="default: the run's folder under logs/"):
    """The model (a checkpoint, or a CLIP for zero-shot), --split, --out_dir, --num_workers and
    --baselines / --no_baselines."""
    from models.clip_wrapper import add_model_args

    add_model_args(ap)
    ap.add_argument("--split", default="test", choices=splits)
    ap.add_argument("--out_dir", default=None, help=out_dir_help)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--baselines", dest="baselines", action="store_true", default=True,
                    help="also score the shortcut baselines of metrics/baselines.py on the split (default)")
    ap.add_argument("--no_baselines", dest="baselines", action="store_false", help="skip the shortcut baselines")


def load_eval_model(ap, args, out_name):
    """The model the arguments name, its data and its report folder (--out_dir, else logs/<run>/<out_name>):
    a namespace of wrapper, preprocess, label, config ({} for zero-shot), jsonl, out_dir and device."""
    from models.clip_wrapper import check_model_args, load_for_eval
    from utils import get_device

    check_model_args(ap, args)
    device = get_device(args.device)
    wrapper, preprocess, label, run = load_for_eval(args.checkpoint, args.clip_model, args.clip_weights, device)
    return SimpleNamespace(wrapper=wrapper, preprocess=preprocess, label=label, config=run["config"] or {},
                           jsonl=args.data_jsonl or run["data_jsonl"], device=device,
                           out_dir=Path(args.out_dir or Path(run["run_dir"]) / out_name))
