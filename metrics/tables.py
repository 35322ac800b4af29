"""The demo's results.md: its results as markdown tables, each with the baselines and chance beside the models.

    results_markdown(summary, "random_init")   # scripts/demo.py's one-seed results.json -> results.md
    seeds_markdown(results)                    # demo.py --seeds: metrics/bootstrap.aggregate_seeds' dict + seeds

Numbers print with three decimals, a missing value as "-" (a random ranking has no mAP).
"""
from metrics.composed import COLUMNS, ROWS

TEXT2SHAPE_KEYS = ["text2image_R@1", "text2image_R@5", "text2image_R@10", "image2text_R@1", "image2text_R@5",
                   "image2text_R@10", "text2image_mAP", "image2text_mAP"]
SHAPE_ONLY_KEYS = ["shape_only/text2image_R@1", "shape_only/text2image_R@5", "shape_only/text2image_R@10",
                   "shape_only/text2image_mAP"]
PHOTO2SHAPE_KEYS = ["photo2shape_R@1", "photo2shape_R@5", "photo2shape_R@10", "photo2shape_mAP",
                    "category/photo2shape_R@1"]


def _ci(ci):
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def seeds_markdown(r):
    """results.md of --seeds: each run's metrics over seeds, then the paired comparisons."""
    lines = [f"Seeds {', '.join(map(str, r['seeds']))}; test split: {r['n_test_models']} models; model: {r['model']}.",
             f"Intervals: {r['level']:.0%} percentile intervals over {r['n_resamples']} bootstrap resamples of the "
             f"test models (seed {r['bootstrap_seed']}); the gallery is always the whole test split. Baselines do "
             f"not train: their value is the same every seed.", ""]
    for family, runs in r["runs"].items():
        lines += [f"{family}:", ""]
        if family == "composed" and "n_composed_test_models" in r:
            lines += [(f"On its own data ({r['composed_data']}): intervals resample its "
                       f"{r['n_composed_test_models']} test models."), ""]
        lines += ["| run | metric | per seed | mean | sd | 95% interval of the mean |", "|---|---|---|---|---|---|"]
        for run, metrics in runs.items():
            for metric, m in metrics.items():
                sd = "-" if m["sd"] is None else f"{m['sd']:.3f}"
                lines.append(f"| {run} | {metric} | {' '.join(f'{v:.3f}' for v in m['per_seed'])} | {m['mean']:.3f} "
                             f"| {sd} | {_ci(m['ci95'])} |")
        lines.append("")
    lines += ["Paired comparisons: A - B on the same resamples of test models, the seeds' differences averaged in "
              "each resample; \"not separable\" when the interval holds 0.", "",
              "| A | B | metric | A - B | 95% interval | verdict | per seed A - B |", "|---|---|---|---|---|---|---|"]
    for c in r["comparisons"]:
        per_seed = " ".join(f"{s['diff']:+.3f}" for s in c["per_seed"])
        lines.append(f"| {c['a']} | {c['b']} | {c['metric']} | {c['diff']:+.3f} | {_ci(c['ci95'])} | {c['verdict']} "
                     f"| {per_seed} |")
    return "\n".join(lines) + "\n"


def _row(name, metrics, keys):
    return f"| {name} | " + " | ".join("-" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in keys) + " |"


def _chance(metrics):
    """The chance row of a table: each R@k key's `_chance_R@k` twin in `metrics` (a random ranking has no mAP)."""
    return {k: metrics.get(k.replace("_R@", "_chance_R@")) for k in metrics if "_R@" in k and "_chance_" not in k}


def shape_markdown(s, untrained, baseline=None):
    """Photo -> shape: the untrained model, stage 2, stage 3, the colour_histogram baseline and chance."""
    lines = [f"Photo -> shape, test split: {s['n_photos']} photos ({s['n_photos_left_out']} truncated/occluded left "
             f"out) against {s['n_models']} shapes.", "",
             "| stage | tuned | loss | " + " | ".join(PHOTO2SHAPE_KEYS) + " |",
             "|---" * (len(PHOTO2SHAPE_KEYS) + 3) + "|"]
    for name, tuned, loss in ((untrained, "none", "-"), ("stage2", "image tower", "triplet + center + ce"),
                              ("stage3", "both towers", "SupCon")):
        lines.append(_row(f"{name} | {tuned} | {loss}", s[name], PHOTO2SHAPE_KEYS))
    if baseline:
        lines.append(_row("colour_histogram baseline | none | -", baseline, PHOTO2SHAPE_KEYS))
    lines.append(_row("chance | - | -", _chance(s["stage3"]), PHOTO2SHAPE_KEYS))
    lines += ["", "Pictures: " + ", ".join(f"[{n}](shape_{n}/photo2shape_gallery.png)"
                                          for n in (untrained, "stage2", "stage3")), ""]
    return "\n".join(lines)


def composed_markdown(c, untrained):
    """Composed retrieval: eval_composed's six rows (the shortcut baselines first) and chance."""
    data = f" of {c['data']}" if "data" in c else ""
    lines = [f"Composed retrieval (a reference shape + a modification text -> the target shape), test split{data}: "
             f"{c['n_queries']} queries against {c['n_gallery']} shapes; the reference is never a candidate, "
             f"Rsubset@k ranks the reference's group (its base model and edit variants). image_only, text_only and "
             f"sum_zero_shot are the untrained model ({untrained}); stage1_sum is the sum under the stage-1 CLIP, "
             f"combiner and moe_combiner are trained on it.", "",
             "| row | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [_row(row, c[row], COLUMNS) for row in ROWS] + [_row("chance", c["chance"], COLUMNS)]
    lines += ["", "Picture: [composed gallery](composed/composed_gallery.png) (the moe_combiner row's top 5)", ""]
    return "\n".join(lines)


def results_markdown(s, untrained):
    """results.md of the one-seed demo; `untrained`: the untrained model's row (random_init or zero_shot)."""
    baselines = s.get("baselines", {})
    runs = [(name, s[name]) for name in (untrained, "linear", "full")]
    if "colour_category" in baselines:
        runs.append(("colour_category baseline", baselines["colour_category"]))
    lines = [f"Test split: {s['n_test_models']} models; model: {s['model']}.", "",
             "| run | " + " | ".join(TEXT2SHAPE_KEYS) + " |", "|---" * (len(TEXT2SHAPE_KEYS) + 1) + "|"]
    lines += [_row(name, metrics, TEXT2SHAPE_KEYS) for name, metrics in runs]
    lines.append(_row("chance", _chance(s["full"]), TEXT2SHAPE_KEYS))
    lines += ["", f"Shape only: the {s['full'].get('shape_only/n_captions', 0)} test captions that name no colour.", "",
              "| run | " + " | ".join(SHAPE_ONLY_KEYS) + " |", "|---" * (len(SHAPE_ONLY_KEYS) + 1) + "|"]
    lines += [_row(name, metrics, SHAPE_ONLY_KEYS) for name, metrics in runs]
    lines.append(_row("chance", _chance(s["full"]), SHAPE_ONLY_KEYS))
    cap_keys = list(s["captions"])
    lines += ["", "| captions | " + " | ".join(cap_keys) + " |", "|---" * (len(cap_keys) + 1) + "|",
              _row("retrieval (full model)", s["captions"], cap_keys)]
    if "captions_generative" in s:
        lines.append(_row("generative (on the full model)", s["captions_generative"], cap_keys))
    captioners = dict(s["captions_baselines"])
    if "nearest_caption" in baselines:
        captioners["nearest_caption"] = baselines["nearest_caption"]
    lines += [_row(f"{name} baseline", scores, cap_keys) for name, scores in captioners.items()]
    lines += ["", "Pictures: [renders](renders_contact_sheet.png), "
              + ", ".join(f"[{n} recall curve]({n}/recall_curve.png), [{n} gallery]({n}/retrieval_gallery.png)"
                          for n in (untrained, "linear", "full")), ""]
    if "shape_retrieval" in s:
        lines += [shape_markdown(s["shape_retrieval"], untrained, baselines.get("colour_histogram"))]
    if "composed" in s:
        lines += [composed_markdown(s["composed"], untrained)]
    return "\n".join(lines)
