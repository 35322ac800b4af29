"""Composed retrieval on a split: the shortcut baselines, stage 1 and the Combiners in one table.

    python eval_composed.py --clip_model tiny --split test                       # the zero-shot rows only
    python eval_composed.py --stage1 weights/<stage 1 run>/best.pt --combiner weights/<stage 2 run>/best.pt \
        --moe_combiner weights/<stage 2 moe run>/best.pt                          # every row
    python eval_composed.py --dataset cirr --data_root data/cirr_dataset --split val --combiner ...
    python eval_composed.py --dataset cirr --data_root data/cirr_dataset --split test1 --combiner ...  # server files

Rows (each holds composed_metrics' keys, metrics/composed.py: R@1/5/10/50 without the query's reference, and
Rsubset@1/2/3 where pairs have groups; FashionIQ: <garment>/R@k and their means):
    image_only      the reference's own embedding as the query (zero-shot CLIP): what the reference alone finds
    text_only       the caption's embedding (zero-shot CLIP)
    sum_zero_shot   element_wise_sum(reference, caption) under the zero-shot CLIP
    stage1_sum      element_wise_sum under the stage-1 CLIP (--stage1)
    combiner        CLIP4Cir's Combiner on its frozen CLIP (--combiner, a stage-2 checkpoint)
    moe_combiner    the MoE Combiner (--moe_combiner)
and "chance", a random ranking. The zero-shot CLIP is --clip_model (default: the checkpoints'); for "tiny" it is
the untrained random init of --seed (default the checkpoints' seed: the model stage 1 started from), and
results.json's "models" says so.

Writes <out_dir>/results.json ({"rows": {row: metrics}, "chance", "n_queries", "n_gallery", "models", ...}),
TensorBoard scalars <split>/<row>/<key> and composed_gallery.png (queries, i.e. the reference and the caption,
beside the top-5 results of the last row, the target framed green). CIRR's test1 has no public targets: each row
writes recall_submission_<row>.json (top 50) and recall_subset_submission_<row>.json (top 3 of the group) for
CIRR's evaluation server instead. The demo calls composed_report(data_root, ...) and reads result["rows"].
"""
import argparse
import textwrap
from pathlib import Path

import torch

from composed_dataset import DATASETS, SPLITS, answer_ids, composed_queries, encode_composed, load_composed, score_set
from metrics.composed import COLUMNS, benchmark_metrics, chance_metrics, cirr_submission, query_means, ranked_ids
from metrics.composed import ROWS  # noqa: F401  (eval_composed.ROWS: the rows the module docstring lists)
from metrics.plots import plot_gallery
from models.clip_wrapper import CLIPWrapper, load_checkpoint, load_clip, model_label
from models.combiner import element_wise_sum
from multiview_dataset import load_image
from tasks.composed import load_stage2
from utils import get_device, write_json


def _config_of(path):
    """The training config a checkpoint records (memory-mapped: only its small entries are read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{path}: not readable as a checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"{path}: not a checkpoint of train.py or train_composed.py (no config)")
    return ckpt["config"], "combiner_args" in ckpt


def _models(clip_model, clip_weights, seed, stage1, combiners, device):
    """({encoder key: (wrapper, preprocess)}, {row: (encoder key, combine, label)}): each CLIP once, and how each
    row makes its queries from that CLIP's reference and caption embeddings."""
    model, preprocess = load_clip(clip_model, device, weights=clip_weights or None, seed=seed)
    encoders = {"zero_shot": (CLIPWrapper(model, "zero_shot").eval(), preprocess)}
    zero_shot = (f"tiny, random init of seed {seed} (untrained)" if clip_model == "tiny"
                 else f"{model_label(clip_model)}, zero-shot")
    rows = {"image_only": ("zero_shot", lambda i, t: i, zero_shot),
            "text_only": ("zero_shot", lambda i, t: t, zero_shot),
            "sum_zero_shot": ("zero_shot", element_wise_sum, zero_shot)}
    if stage1:
        if _config_of(stage1)[1]:
            raise ValueError(f"--stage1={stage1}: a stage-2 checkpoint; pass it as --combiner or --moe_combiner")
        wrapper, preprocess, _ = load_checkpoint(stage1, device)
        encoders[str(Path(stage1).resolve())] = (wrapper, preprocess)
        rows["stage1_sum"] = (str(Path(stage1).resolve()), element_wise_sum, f"stage 1 CLIP ({stage1})")
    for row, path in combiners.items():
        cfg, is_stage2 = _config_of(path)
        if not is_stage2 or cfg.get("combiner") != row:
            what = f"a stage-2 run of --combiner={cfg.get('combiner')}" if is_stage2 else "not a stage-2 checkpoint"
            raise ValueError(f"--{row}={path}: {what}; --{row} takes a stage-2 run of --combiner={row}")
        combiner, wrapper, preprocess, label = load_stage2(path, device)
        if cfg.get("init_from"):
            key = str(Path(cfg["init_from"]).resolve())
        elif (cfg["clip_model"], cfg.get("clip_weights", ""), cfg.get("seed", 0)) == (clip_model, clip_weights, seed):
            key = "zero_shot"  # the base CLIP the zero-shot rows use
        else:
            key = f"base:{path}"
        encoders.setdefault(key, (wrapper, preprocess))

        def combine(image, text, m=combiner):
            return m(image.to(device), torch.nn.functional.normalize(text, dim=-1).to(device)).float().cpu()
        rows[row] = (key, combine, f"{label} ({path})")
    return encoders, rows


def composed_report(data_root, dataset="toy", split="test", clip_model=None, clip_weights="", seed=None, stage1="",
                    combiner="", moe_combiner="", out_dir=None, device="cpu", batch_size=64, num_workers=0,
                    n_gallery=6, tb_prefix=None, per_query=False):
    """Every row the given checkpoints allow on one split; writes out_dir (see the module docstring). Returns
    {"rows": {row: metrics}, "chance": metrics, "n_queries", "n_gallery", "models": {row: label}, ...}; on a split
    without targets (CIRR test1) "rows" is empty and "submissions" names the files written. per_query (a benchmark
    of one set: toy, CIRR) adds what the metrics average, left out of results.json: "per_query" {row: {key: each
    query's value}} (metrics/composed.py's composed_per_query) and "target_ids", each query's target."""
    checkpoints = [p for p in (stage1, combiner, moe_combiner) if p]
    config = _config_of(checkpoints[-1])[0] if checkpoints else {}
    clip_model = clip_model or config.get("clip_model")
    if not clip_model:
        raise ValueError("name the zero-shot CLIP (clip_model) or give a checkpoint that records one")
    seed = config.get("seed", 0) if seed is None else seed
    combiners = {k: v for k, v in (("combiner", combiner), ("moe_combiner", moe_combiner)) if v}
    sets = load_composed(dataset, data_root, split)
    if per_query and len(sets) > 1:
        raise ValueError(f"per_query: {dataset}'s metrics are means over its {len(sets)} sets, not over queries")
    encoders, rows = _models(clip_model, clip_weights or config.get("clip_weights", ""), seed, stage1, combiners,
                             device)
    feats = {key: [encode_composed(w, s, pre, device, batch_size, num_workers) for s in sets]
             for key, (w, pre) in encoders.items()}
    out_dir = Path(out_dir or Path("logs") / (Path(checkpoints[-1]).resolve().parent.name if checkpoints else
                                              f"zero_shot-{clip_model.replace('/', '-')}") / f"composed_{split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"dataset": dataset, "split": split, "data_root": str(data_root),
              "n_queries": sum(len(s.pairs) for s in sets), "n_gallery": sum(len(s.item_ids) for s in sets),
              "models": {row: label for row, (_, _, label) in rows.items()}, "rows": {}}
    values = {}
    if all(s.has_targets for s in sets):
        for row, (key, combine, _) in rows.items():
            values[row] = {s.name: score_set(s, f, combine, per_query=True) for s, f in zip(sets, feats[key])}
            result["rows"][row] = benchmark_metrics({name: query_means(v) for name, v in values[row].items()})
        result["chance"] = benchmark_metrics({s.name: chance_metrics(s.item_ids, **answer_ids(s)) for s in sets})
        last = list(rows)[-1]
        _gallery(sets[0], feats[rows[last][0]][0], rows[last][1], last, out_dir / "composed_gallery.png", n_gallery)
    else:
        result["submissions"] = _submissions(sets, feats, rows, out_dir)
    write_json(out_dir / "results.json", result)
    if tb_prefix and result["rows"]:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir)) as w:
            for row, metrics in result["rows"].items():
                for key, value in metrics.items():
                    w.add_scalar(f"{tb_prefix}/{row}/{key}", value, 0)
    result["out_dir"] = str(out_dir)
    if per_query and values:
        result["per_query"] = {row: {k: v.tolist() for k, v in per_set[sets[0].name].items()}
                               for row, per_set in values.items()}
        result["target_ids"] = [p.target for p in sets[0].pairs]
    return result


def _submissions(sets, feats, rows, out_dir):
    """CIRR's two server files per row; {row: [their paths]}."""
    if len(sets) != 1 or not all(p.members is not None for p in sets[0].pairs):
        raise ValueError(f"{sets[0].source}: pairs without targets and without groups; only CIRR's test1 is "
                         f"scored by a server, and its pairs have groups")
    s, out = sets[0], {}
    for row, (key, combine, _) in rows.items():
        queries, items = composed_queries(s, feats[key][0], combine)
        ranked, subset = ranked_ids(queries, items, s.item_ids, [p.reference for p in s.pairs],
                                    subset_ids=[p.members for p in s.pairs])
        pairids = [p.pairid for p in s.pairs]
        out[row] = []
        for metric, lists in (("recall", ranked), ("recall_subset", subset)):
            path = out_dir / f"{metric}_submission_{row}.json"
            write_json(path, cirr_submission(pairids, lists, metric))
            out[row].append(str(path))
    return out


def _query_cell(image, caption, size=112):
    """The reference (top) and its caption (below) in one square cell."""
    from PIL import Image, ImageDraw

    cell = Image.new("RGB", (size, size), "white")
    cell.paste(image.convert("RGB").resize((size * 5 // 8, size * 5 // 8)), (size * 3 // 16, 0))
    ImageDraw.Draw(cell).multiline_text((2, size * 5 // 8 + 2), "\n".join(textwrap.wrap(caption, 18)[:3]),
                                        fill="blue")
    return cell


def _gallery(cset, feats, combine, row, path, n):
    queries, items = composed_queries(cset, feats, combine)
    picks = sorted({int(i) for i in torch.linspace(0, len(cset.pairs) - 1, min(n, len(cset.pairs)))})
    views = dict(zip(cset.item_ids, cset.item_images))
    shown = []
    for i in picks:
        p = cset.pairs[i]
        ref_views = views[p.reference]
        shown.append((f"{row}: {p.reference} + '{p.caption}'", queries[i], p.target,
                      _query_cell(load_image(ref_views[len(ref_views) // 2]), p.caption)))
    plot_gallery(shown, items, cset.item_ids, views, path,
                 exclude=[cset.pairs[i].reference if cset.exclude_reference else None for i in picks])


def format_table(result):
    rows = {**result["rows"], **({"chance": result["chance"]} if "chance" in result else {})}
    if not rows:
        return "\n".join(f"{row}: {', '.join(paths)}" for row, paths in result.get("submissions", {}).items())
    cols = [c for c in COLUMNS if all(c in m for m in rows.values())]
    width = max(len(r) for r in rows) + 2
    lines = [f"{result['dataset']} {result['split']}: {result['n_queries']} queries, "
             f"{result['n_gallery']} gallery items",
             f"{'':<{width}}" + "".join(f"{c:>11}" for c in cols)]
    lines += [f"{row:<{width}}" + "".join(f"{m[c]:11.3f}" for c in cols) for row, m in rows.items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Composed retrieval (reference + text -> target) on a split.")
    ap.add_argument("--dataset", default="toy", choices=DATASETS)
    ap.add_argument("--data_root", default="data/pix3d_toy", help="as train_composed.py's data_root")
    ap.add_argument("--split", default="test", help=f"splits: {SPLITS}")
    ap.add_argument("--clip_model", default=None, help="the zero-shot CLIP (default: the checkpoints')")
    ap.add_argument("--clip_weights", default="", help="its local weights file")
    ap.add_argument("--seed", type=int, default=None, help="the tiny model's random init (default: the checkpoints')")
    ap.add_argument("--stage1", default="", help="a stage-1 run's best.pt: the stage1_sum row")
    ap.add_argument("--combiner", default="", help="a stage-2 run's best.pt (--combiner=combiner): the combiner row")
    ap.add_argument("--moe_combiner", default="", help="a stage-2 run's best.pt (--combiner=moe_combiner)")
    ap.add_argument("--out_dir", default=None, help="default: logs/<the last checkpoint's run>/composed_<split>")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--num_workers", type=int, default=2)
    args = ap.parse_args(argv)
    result = composed_report(args.data_root, args.dataset, args.split, args.clip_model, args.clip_weights, args.seed,
                             args.stage1, args.combiner, args.moe_combiner, args.out_dir, get_device(args.device),
                             args.batch_size, args.num_workers, tb_prefix=args.split)
    print(format_table(result))
    print(f"wrote {result['out_dir']}/results.json" + (", composed_gallery.png" if result["rows"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
