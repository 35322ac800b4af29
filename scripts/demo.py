"""The whole pipeline, end to end, on the embedded toy dataset with the tiny model (what `make demo` runs), and the
same training stages over several seeds with bootstrap intervals (what `make demo-seeds` runs).

    .venv/bin/python scripts/demo.py              # one seed (0): logs/demo/results.json, results.md
    .venv/bin/python scripts/demo.py --seeds 3    # seeds 0, 1, 2: logs/demo-seeds/results.json, results.md

Steps: build data/pix3d_toy (Pix3D's format) and composed retrieval's data/pix3d_toy_composed (the same generator,
every base model with edit variants) -> render 12 views per model -> usable_samples.jsonl ->
random init (the untrained model) -> linear probe -> full fine-tune -> Recall@K and caption metrics on the test
split -> generative captioner -> photo -> shape retrieval (untrained, stage 2 image tower, stage 3 joint) ->
composed retrieval (stage 1 from the full model, Combiner, MoE Combiner; eval_composed's rows).
Writes logs/demo/results.json, logs/demo/results.md (metrics/tables.py) and the pictures beside them; every table
holds the shortcut baselines (metrics/baselines.py, composed retrieval's image_only / text_only / sum_zero_shot:
no text-image learning) and the chance level beside the models. Every step that already finished is kept (data,
renders, feature cache); the training runs start fresh each time.
The tiny model is random-init and trained from scratch here: its numbers show the pipeline works, not what
CLIP does. For real Pix3D and ViT-B/32, see the README.

--seeds N keeps the data, renders and splits and trains, for each seed s in 0..N-1 with seed s: the linear probe,
full fine-tuning, the generative captioner, photo -> shape stage 2, stage 2 without its identity cross-entropy
(ce_weight 0), stage 3 and the composed stages (every composed row: for the tiny model the zero-shot rows are
seed s's random init). Each seed's reports and per-query values go to logs/demo-seeds/seed_<s>/; results.json
holds, for every run and metric, the per-seed values, their mean and sd and a 95% bootstrap interval over test
models, and the paired comparisons of COMPARISONS with a verdict (metrics/bootstrap.py).
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval_shape_retrieval  # noqa: E402
import train  # noqa: E402
import train_clip_full  # noqa: E402
import train_clip_linear  # noqa: E402
import train_captioner  # noqa: E402
import train_composed  # noqa: E402
import train_shape_stage2  # noqa: E402
import train_shape_stage3  # noqa: E402
from eval_composed import composed_report  # noqa: E402
from eval_recall import retrieval_report  # noqa: E402
from evaluate_caption import caption_report  # noqa: E402
from features import encode_photo_split, encode_split  # noqa: E402
from metrics.baselines import nearest_captions, split_dataset  # noqa: E402
from metrics.bootstrap import N_RESAMPLES, aggregate_seeds  # noqa: E402
from metrics.caption import caption_scores, java_available  # noqa: E402
from metrics.composed import COLUMNS  # noqa: E402
from metrics.per_query import (caption_records, colour_category_records, composed_records,  # noqa: E402
                               photo2shape_records, text2shape_records)
from metrics.tables import SHAPE_ONLY_KEYS, results_markdown, seeds_markdown  # noqa: E402
from models.caption_decoder import load_captioner, make_captioner  # noqa: E402
from models.clip_wrapper import TINY, CLIPWrapper, load_checkpoint, load_clip, model_label  # noqa: E402
from scripts.demo_data import prepare_data, shown, step  # noqa: E402
from utils import get_device, write_json  # noqa: E402

# ----------------------------------------------------------------------------- config
DATA = ROOT / "data/pix3d_toy"
# Composed retrieval's own toy set: the same generator with every base model given edit variants, which doubles
# the training pairs (data/pix3d_toy's 35% share gives 180, on which the Combiner stays below image_only); seed 1,
# so none of its shapes is one the full fine-tune (stage 1's start) trained on; one photo per model (unused here)
COMPOSED_DATA = ROOT / "data/pix3d_toy_composed"
OUT = ROOT / "logs/demo"
SEEDS_OUT = ROOT / "logs/demo-seeds"
# generate_jsonl's --split_fractions (splits.json keeps old splits: make clean-data). A test split of 30% of the
# models holds enough shapes of each colour and category that colour + category alone cannot reach the top 5.
SPLIT_FRACTIONS = "0.6,0.1,0.3"
# extra arguments for make_toy_pix3d.main (built once: make clean-data); the generator puts the held-out attribute
# combinations into the test split, so it has to know the split generate_jsonl will draw
TOY_ARGS = ["--split_fractions", SPLIT_FRACTIONS]
COMPOSED_TOY_ARGS = ["--split_fractions", SPLIT_FRACTIONS, "--seed", "1", "--edited_share", "1.0",
                     "--models_per_category", "24", "--photos_per_model", "1"]
CLIP_MODEL = "tiny"
# the untrained model's row is named for what it is: a random network for tiny, zero-shot CLIP for real weights
UNTRAINED = "random_init" if CLIP_MODEL == TINY else "zero_shot"
COMPOSED_JSONL = str(COMPOSED_DATA / "usable_samples.jsonl")
COMMON = dict(clip_model=CLIP_MODEL, data_jsonl=str(DATA / "usable_samples.jsonl"), logs_dir=str(ROOT / "logs"),
              weights_dir=str(ROOT / "weights"), cache_dir=str(ROOT / "data/cache"), seed=0)
LINEAR = dict(train_clip_linear.PRESET, **COMMON, run_name="demo-linear")
# From scratch the tiny model needs a far larger step than pretrained CLIP's 1e-5, and 16 epochs: at 8 its val
# mean_recall was still rising (0.791 at the last epoch; 0.843 at epoch 14 of 16, seed 0).
FULL = dict(train_clip_full.PRESET, **COMMON, run_name="demo-full", lr=5e-4, weight_decay=0.1, epochs=16,
            draws_per_model=6, warmup_steps=20, patience=4)
# Photo -> shape: stage 2 (image tower: triplet + center + ce), stage 3 (both towers: SupCon, from stage 2).
SHAPE_STAGE2 = dict(train_shape_stage2.PRESET, **COMMON, run_name="demo-shape-stage2", lr=5e-4, epochs=8)
SHAPE_STAGE3 = dict(train_shape_stage3.PRESET, **COMMON, run_name="demo-shape-stage3", lr=2e-4, epochs=6,
                    init_from=str(ROOT / "weights/demo-shape-stage2/best.pt"))
# --seeds only: stage 2 with the identity cross-entropy weighted 0 (same parameters and batches, no ce gradient)
SHAPE_STAGE2_NO_CE = dict(SHAPE_STAGE2, run_name="demo-shape-stage2-no-ce", ce_weight=0.0)
RUNS = {"linear": LINEAR, "full": FULL, "stage2": SHAPE_STAGE2, "stage2_no_ce": SHAPE_STAGE2_NO_CE,
        "stage3": SHAPE_STAGE3}
# Composed retrieval (train_composed.py's keys; runs demo-composed-<stage1 | combiner | moe_combiner>) on
# COMPOSED_DATA. Stage 1 starts from the full fine-tune (init_from, which stage 1 supports): its towers already match
# colour and category words to shapes, which the sum of reference and text builds on, so ten epochs over the ~380
# training pairs at a lower rate than FULL's 5e-4 suffice (val still rose a little at epoch 9), where the random
# init would need FULL's whole schedule again.
COMPOSED_STAGE1 = dict(stage=1, lr=2e-4, epochs=10, batch_size=32, draws_per_pair=2, warmup_steps=5, patience=3)
# Stage 2 (Combiner, MoE Combiner) on that stage-1 CLIP's cached features: an epoch takes about a second, and the
# few toy pairs want small batches and a far higher rate than CLIP4Cir's 2e-5 over batches of thousands. Patience
# 10 (the stage-2 preset's): val mean_R@5_Rsubset@1 over 76 pairs moves by a few hundredths from epoch to epoch,
# and with patience 5 the Combiner stopped at epoch 7 on a peak at epoch 2 (test R@1 0.221) where epoch 8 led
# (0.308).
COMPOSED_STAGE2 = dict(stage=2, lr=1e-3, epochs=30, batch_size=32, draws_per_pair=4, warmup_steps=10, patience=10)
COMPOSED = {"stage1": COMPOSED_STAGE1, "combiner": dict(COMPOSED_STAGE2, combiner="combiner"),
            "moe_combiner": dict(COMPOSED_STAGE2, combiner="moe_combiner")}
COMPOSED_COMPARED = ["R@1", "R@5"]  # --seeds: composed metrics with intervals and paired comparisons
BOOTSTRAP_SEED = 0                # resamples of the test models: N_RESAMPLES (1000) of them, drawn with this seed
TEXT2SHAPE_COMPARED = ["text2image_R@1", "text2image_R@5", "text2image_R@10", "text2image_mAP"] + SHAPE_ONLY_KEYS
# (family, A, B, metrics): the paired bootstrap of A - B that --seeds reports
COMPARISONS = [("text2shape", "linear", "full", TEXT2SHAPE_COMPARED),
               ("text2shape", "full", "colour_category", TEXT2SHAPE_COMPARED),
               ("photo2shape", "stage2", "stage3", ["photo2shape_R@1", "photo2shape_mAP"]),
               ("photo2shape", "stage2", "stage2_no_ce", ["photo2shape_R@1", "photo2shape_mAP"]),
               ("captions", "generative", "retrieval", ["CIDEr", "METEOR"]),
               ("captions", "generative", "nearest_caption", ["CIDEr", "METEOR"]),
               ("captions", "retrieval", "nearest_caption", ["CIDEr", "METEOR"]),
               ("composed", "combiner", "image_only", COMPOSED_COMPARED),
               ("composed", "combiner", "stage1_sum", COMPOSED_COMPARED)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="The pipeline on the toy dataset with the tiny model.")
    ap.add_argument("--seeds", type=int, default=None,
                    help="train every stage with seeds 0..N-1 and write logs/demo-seeds/ with bootstrap intervals "
                         "(default: the one-seed demo, seed 0, logs/demo/)")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: at least 1")
    t_start = time.time()
    device = get_device("auto")
    out = OUT if args.seeds is None else SEEDS_OUT
    out.mkdir(parents=True, exist_ok=True)
    prepare_data([(DATA, TOY_ARGS), (COMPOSED_DATA, COMPOSED_TOY_ARGS)], SPLIT_FRACTIONS, out)
    if args.seeds is None:
        one_seed(device)
    else:
        several_seeds(args.seeds, device)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}; demo took {(time.time() - t_start) / 60:.1f} min")


def clear_run(cfg, run_name):
    """Remove a run's earlier logs and weights: each demo run starts fresh."""
    for d in (Path(cfg["logs_dir"]) / run_name, Path(cfg["weights_dir"]) / run_name):
        shutil.rmtree(d, ignore_errors=True)


def train_fresh(preset, device):
    """Train one preset from scratch (its earlier logs and weights removed): (wrapper, preprocess, best.pt)."""
    clear_run(preset, preset["run_name"])
    best = Path(train.main([], preset=preset)["weights_dir"]) / "best.pt"
    wrapper, preprocess, _ = load_checkpoint(best, device)
    return wrapper, preprocess, best


def presets_for(common=COMMON, extra=None, seed=None):
    """{run: config} of RUNS with `common` and `extra` (tests: short runs) on top; with a seed, that seed and the run
    names demo-seeds-s<seed>-<run>. Stage 3 starts from the stage 2 of the same set."""
    presets = {}
    for name, preset in RUNS.items():
        presets[name] = {**preset, **common, **(extra or {})}
        if seed is not None:
            presets[name].update(seed=seed, run_name=f"demo-seeds-s{seed}-{name}")
    presets["stage3"]["init_from"] = str(Path(common["weights_dir"]) / presets["stage2"]["run_name"] / "best.pt")
    return presets


def one_seed(device, common=COMMON, out=OUT, extra=None, captioner_argv=(), composed_jsonl=COMPOSED_JSONL):
    """Steps 4-10 with seed 0: out/results.json and results.md (extra, captioner_argv: tests' short runs;
    composed_jsonl: composed retrieval's data)."""
    results, label, presets, jsonl = {}, model_label(CLIP_MODEL), presets_for(common, extra), common["data_jsonl"]
    t = step(f"4/10 {UNTRAINED} (the untrained model)")
    model, preprocess = load_clip(CLIP_MODEL, device, seed=common["seed"])
    untrained = CLIPWrapper(model, "zero_shot").eval()
    results[UNTRAINED] = retrieval_report(untrained, preprocess, jsonl, "test", out / UNTRAINED, f"{label}, untrained",
                                          device=device)
    print(f"({time.time() - t:.0f}s)")

    for name, n in (("linear", 5), ("full", 6)):
        t = step(f"{n}/10 {name} training")
        wrapper, preprocess, best = train_fresh(presets[name], device)
        feats = encode_split(wrapper, preprocess, jsonl, "test", device)
        results[name] = retrieval_report(wrapper, preprocess, jsonl, "test", out / name, f"{label}, {name}",
                                         device=device, feats=feats)
        print(f"({time.time() - t:.0f}s)")

    t = step("7/10 captions of the full model (retrieval captioning vs baselines)")
    meteor = java_available()
    if not meteor:
        print("note: Java not found, METEOR skipped (apt-get install default-jre-headless)")
    captions = caption_report(wrapper, preprocess, jsonl, "test", device, meteor=meteor, feats=feats)
    print(f"({time.time() - t:.0f}s)")

    t = step("8/10 generative captioner on the frozen full model")
    generative = generative_captions(best, device, feats, "demo-captioner", common["seed"], common, captioner_argv)
    print(f"({time.time() - t:.0f}s)")

    t = step(f"9/10 photo -> shape retrieval: {UNTRAINED}, stage 2, stage 3")
    shape = shape_retrieval(device, presets, common, out)
    print(f"({time.time() - t:.0f}s)")

    t = step("10/10 composed retrieval: stage 1 from the full model, Combiner, MoE Combiner")
    composed = composed_retrieval(best, device, composed_jsonl, common, out, extra)
    print(f"({time.time() - t:.0f}s)")

    summary = {name: {k: r["metrics"][k] for k in r["metrics"] if not k.endswith("n_no_match")}
               for name, r in results.items()}
    summary["captions"] = captions["captioners"]["retrieval"]
    summary["captions_baselines"] = {k: v for k, v in captions["captioners"].items()
                                     if k not in ("retrieval", "nearest_caption")}
    summary["captions_generative"] = generative["captioners"]["generative"]
    summary["shape_retrieval"], colour_histogram = shape
    # the shortcut baselines, with the keys of the entries they sit beside (text <-> shape, captions, photo -> shape)
    summary["baselines"] = {
        "colour_category": {k: v for k, v in results["full"]["baselines"]["colour_category"].items()
                            if not k.endswith("n_no_match")},
        "nearest_caption": captions["captioners"]["nearest_caption"],
        "colour_histogram": colour_histogram}
    # eval_composed's six rows side by side with chance (each composed_metrics' keys) and the test split's size
    summary["composed"] = {row: {k: m[k] for k in COLUMNS} for row, m in composed["rows"].items()}
    summary["composed"].update(chance={k: composed["chance"][k] for k in COLUMNS}, n_queries=composed["n_queries"],
                               n_gallery=composed["n_gallery"], data=shown(composed_jsonl))
    summary["model"] = label
    summary["n_test_models"] = results["full"]["n_models"]
    write_json(out / "results.json", summary)
    write_json(out / "caption_examples.json", captions["examples"])
    (out / "results.md").write_text(results_markdown(summary, UNTRAINED))
    print("\n" + results_markdown(summary, UNTRAINED))


def generative_captions(full_checkpoint, device, feats, run_name="demo-captioner", seed=0, common=COMMON,
                        extra_argv=(), meteor=None, per_model=False):
    """Train the generative captioner on the frozen full model's shape embeddings and score it on the test split
    beside retrieval captioning and the baselines (caption_report's dict). extra_argv: more train_captioner
    overrides (tests: a short run)."""
    clear_run(common, run_name)
    out = train_captioner.main([f"--clip_checkpoint={full_checkpoint}", f"--run_name={run_name}",
                                f"--logs_dir={common['logs_dir']}", f"--weights_dir={common['weights_dir']}",
                                f"--cache_dir={common['cache_dir']}", f"--seed={seed}", *extra_argv])
    dec, ckpt = load_captioner(Path(out["weights_dir"]) / "best.pt", device)
    wrapper, preprocess, _ = load_checkpoint(full_checkpoint, device)
    meteor = java_available() if meteor is None else meteor
    return caption_report(wrapper, preprocess, common["data_jsonl"], "test", device, meteor=meteor, feats=feats,
                          captioners={"generative": make_captioner(dec, ckpt, device)}, baselines=False,
                          per_model=per_model)


def shape_retrieval(device, presets, common, out):
    """Photo -> shape on the toy photos (test split) for each stage: ({stage: {metric: value}} plus counts, the
    colour_histogram baseline's metrics on the same photos)."""
    label, jsonl = model_label(CLIP_MODEL), common["data_jsonl"]
    model, preprocess = load_clip(CLIP_MODEL, device, seed=common["seed"])
    r = eval_shape_retrieval.photo2shape_report(CLIPWrapper(model, "zero_shot").eval(), preprocess, jsonl, "test",
                                                out / f"shape_{UNTRAINED}", f"{label}, untrained", device=device)
    results, baseline = {UNTRAINED: r["metrics"]}, r["baselines"]["colour_histogram"]
    for name in ("stage2", "stage3"):
        wrapper, preprocess, _ = train_fresh(presets[name], device)
        r = eval_shape_retrieval.photo2shape_report(wrapper, preprocess, jsonl, "test", out / f"shape_{name}",
                                                    f"{label}, {name}", device=device, baselines=False)
        results[name] = r["metrics"]
    results.update(n_photos=r["n_photos"], n_photos_left_out=r["n_photos_left_out"], n_models=r["n_models"])
    return results, baseline


def composed_retrieval(full_checkpoint, device, data_jsonl=COMPOSED_JSONL, common=COMMON, out=OUT, extra=None,
                       seed=None, per_query=False):
    """Composed stage 1 from the full fine-tune's checkpoint, then the Combiner and the MoE Combiner on that
    stage-1 CLIP, each trained fresh on data_jsonl's composed pairs; then every row of eval_composed on its test
    split, written to out/composed.
    Returns composed_report's dict (with per_query, each query's values). extra: tests' short runs (the keys
    train_composed knows are taken); seed: --seeds' seed and run names demo-seeds-s<seed>-composed-<run>."""
    best = {}
    for name, preset in COMPOSED.items():
        cfg = dict(preset, clip_model=common["clip_model"], data_root=str(data_jsonl),
                   seed=common["seed"] if seed is None else seed,
                   run_name=f"demo-composed-{name}" if seed is None else f"demo-seeds-s{seed}-composed-{name}",
                   **{k: common[k] for k in ("logs_dir", "weights_dir", "cache_dir")},
                   **{k: v for k, v in (extra or {}).items() if k in train_composed.DEFAULTS})
        cfg["init_from"] = str(full_checkpoint if name == "stage1" else best["stage1"])
        clear_run(cfg, cfg["run_name"])
        best[name] = str(Path(train_composed.main([f"--{k}={v}" for k, v in cfg.items()])["weights_dir"]) / "best.pt")
    return composed_report(str(data_jsonl), "toy", "test", stage1=best["stage1"], combiner=best["combiner"],
                           moe_combiner=best["moe_combiner"], out_dir=Path(out) / "composed", device=device,
                           tb_prefix="test", per_query=per_query)


# ----------------------------------------------------------------------------- --seeds N
def run_seed(seed, out, device, common=COMMON, extra=None, captioner_argv=(), meteor=True,
             composed_jsonl=COMPOSED_JSONL):
    """Every training stage with `seed`, each scored on the test split: {family: {run: {metric: record}}} of
    metrics/per_query.py (also written to out/per_query.json), with each run's reports under `out`."""
    presets, jsonl, label = presets_for(common, extra, seed), common["data_jsonl"], model_label(CLIP_MODEL)
    records = {"text2shape": {}, "photo2shape": {}, "captions": {}}
    for name in ("linear", "full"):
        t = step(f"seed {seed}: {name} training")
        wrapper, preprocess, best = train_fresh(presets[name], device)
        feats = encode_split(wrapper, preprocess, jsonl, "test", device)
        retrieval_report(wrapper, preprocess, jsonl, "test", out / name, f"{label}, {name}, seed {seed}",
                         device=device, feats=feats, baselines=False)
        f, ds = feats
        records["text2shape"][name] = text2shape_records(f["image"], f["image_model"], f["text"], f["text_model"],
                                                         [c for c, _ in ds.texts], ds.model_ids)
        print(f"({time.time() - t:.0f}s)")
    t = step(f"seed {seed}: generative captioner; captions of the full model")
    report = generative_captions(best, device, feats, f"demo-seeds-s{seed}-captioner", seed, common, captioner_argv,
                                 meteor, per_model=True)
    for name in ("retrieval", "generative"):
        records["captions"][name] = caption_records(report["model_ids"], report["per_model"][name])
    print(f"({time.time() - t:.0f}s)")
    t = step(f"seed {seed}: composed retrieval (stage 1 from the full model, Combiner, MoE Combiner)")
    report = composed_retrieval(best, device, composed_jsonl, common, out, extra, seed, per_query=True)
    records["composed"] = {row: composed_records(values, report["target_ids"], COMPOSED_COMPARED)
                           for row, values in report["per_query"].items()}
    print(f"({time.time() - t:.0f}s)")
    for name in ("stage2", "stage2_no_ce", "stage3"):
        t = step(f"seed {seed}: photo -> shape {name}")
        wrapper, preprocess, _ = train_fresh(presets[name], device)
        cfg = dict(train.DEFAULTS, **presets[name])
        f, photos = encode_photo_split(wrapper, preprocess, jsonl, "test", device, cfg["keep_hard_photos"],
                                       cfg["photo_margin"], cfg["photo_mask"])
        records["photo2shape"][name] = photo2shape_records(f["photo"], f["photo_model"], f["view"], f["view_model"],
                                                           photos.model_ids)
        print(f"({time.time() - t:.0f}s)")
    write_json(Path(out) / "per_query.json", records)
    return records


def several_seeds(n_seeds, device, common=COMMON, out=SEEDS_OUT, extra=None, captioner_argv=(), meteor=None,
                  n_resamples=N_RESAMPLES, composed_jsonl=COMPOSED_JSONL):
    """run_seed for seeds 0..n_seeds-1, the baselines (which do not train) once, and the bootstrap over test
    models (composed retrieval's over its own data's test models): writes out/results.json and out/results.md and
    returns the results."""
    if meteor is None:
        meteor = java_available()
        if not meteor:
            print("note: Java not found, METEOR skipped (apt-get install default-jre-headless)")
    jsonl = common["data_jsonl"]
    test = split_dataset(jsonl, "test")
    # nearest_caption's captions are in the dataset's model order, as caption_report's models are
    _, nearest = caption_scores(test.captions, nearest_captions(jsonl, "test"), meteor=meteor)
    baselines = {"text2shape": {"colour_category": colour_category_records(jsonl, "test")},
                 "captions": {"nearest_caption": caption_records(test.model_ids, nearest)}}
    per_seed = []
    for seed in range(n_seeds):
        records = run_seed(seed, Path(out) / f"seed_{seed}", device, common, extra, captioner_argv, meteor,
                           composed_jsonl)
        for family, runs in baselines.items():
            records[family].update(runs)
        per_seed.append(records)
    t = step(f"bootstrap: {n_resamples} resamples of {len(test.model_ids)} test models")
    composed_test = split_dataset(composed_jsonl, "test").model_ids
    results = aggregate_seeds(per_seed, test.model_ids, COMPARISONS, n_resamples, BOOTSTRAP_SEED,
                              family_units={"composed": composed_test})
    results.update(model=model_label(CLIP_MODEL), seeds=list(range(n_seeds)), n_composed_test_models=len(composed_test),
                   composed_data=shown(composed_jsonl))
    write_json(Path(out) / "results.json", results)
    (Path(out) / "results.md").write_text(seeds_markdown(results))
    print(f"({time.time() - t:.0f}s)\n\n" + seeds_markdown(results))
    return results


if __name__ == "__main__":
    main()
