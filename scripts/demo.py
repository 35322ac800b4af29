"""The whole pipeline, end to end, on the embedded toy dataset with the tiny model (what `make demo` runs).

    .venv/bin/python scripts/demo.py

Steps: build data/pix3d_toy (Pix3D's format) -> render 12 views per model -> usable_samples.jsonl ->
zero-shot -> linear probe -> full fine-tune -> Recall@K and caption metrics on the test split ->
generative captioner -> photo -> shape retrieval (zero-shot, stage 2 image tower, stage 3 joint).
Writes logs/demo/results.json, logs/demo/results.md and the pictures beside them; every table holds the shortcut
baselines of metrics/baselines.py (no text-image learning) and the chance level beside the models. Every step
that already finished is kept (data, renders, feature cache); the two training runs start fresh each time.
The tiny model is random-init and trained from scratch here: its numbers show the pipeline works, not what
CLIP does. For real Pix3D and ViT-B/32, see the README.
"""
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
import train_shape_stage2  # noqa: E402
import train_shape_stage3  # noqa: E402
from eval_recall import retrieval_report  # noqa: E402
from evaluate_caption import caption_report  # noqa: E402
from features import encode_split  # noqa: E402
from metrics.caption import java_available  # noqa: E402
from models.caption_decoder import load_captioner, make_captioner  # noqa: E402
from models.clip_wrapper import CLIPWrapper, load_checkpoint, load_clip, model_label  # noqa: E402
from scripts import generate_jsonl, make_toy_pix3d, render_objs  # noqa: E402
from utils import get_device, read_jsonl, write_json  # noqa: E402

# ----------------------------------------------------------------------------- config
DATA = ROOT / "data/pix3d_toy"
OUT = ROOT / "logs/demo"
CLIP_MODEL = "tiny"
COMMON = dict(clip_model=CLIP_MODEL, data_jsonl=str(DATA / "usable_samples.jsonl"), logs_dir=str(ROOT / "logs"),
              weights_dir=str(ROOT / "weights"), cache_dir=str(ROOT / "data/cache"), seed=0)
LINEAR = dict(train_clip_linear.PRESET, **COMMON, run_name="demo-linear")
# From scratch the tiny model needs a far larger step than pretrained CLIP's 1e-5.
FULL = dict(train_clip_full.PRESET, **COMMON, run_name="demo-full", lr=5e-4, weight_decay=0.1, epochs=8,
            draws_per_model=6, warmup_steps=20, patience=3)
# Photo -> shape: stage 2 (image tower: triplet + center + ce), stage 3 (both towers: SupCon, from stage 2).
SHAPE_STAGE2 = dict(train_shape_stage2.PRESET, **COMMON, run_name="demo-shape-stage2", lr=5e-4, epochs=8)
SHAPE_STAGE3 = dict(train_shape_stage3.PRESET, **COMMON, run_name="demo-shape-stage3", lr=2e-4, epochs=6,
                    init_from=str(ROOT / "weights/demo-shape-stage2/best.pt"))
SHAPE_KEYS = ["photo2shape_R@1", "photo2shape_R@5", "photo2shape_R@10", "photo2shape_mAP", "category/photo2shape_R@1"]
KEYS = ["text2image_R@1", "text2image_R@5", "text2image_R@10", "image2text_R@1", "image2text_R@5",
        "image2text_R@10", "text2image_mAP", "image2text_mAP"]
SHAPE_ONLY_KEYS = ["shape_only/text2image_R@1", "shape_only/text2image_R@5", "shape_only/text2image_R@10",
                   "shape_only/text2image_mAP"]


def step(title):
    print(f"\n=== {title}", flush=True)
    return time.time()


def main():
    t_start = time.time()
    device = get_device("auto")
    OUT.mkdir(parents=True, exist_ok=True)

    t = step("1/9 toy Pix3D dataset")
    if (DATA / "pix3d.json").exists():
        print(f"kept {DATA} (delete it to rebuild)")
    else:
        make_toy_pix3d.main(["--out_dir", str(DATA)])
    print(f"({time.time() - t:.0f}s)")

    t = step("2/9 render 12 views per model")
    rc = render_objs.main(["--obj_dir", str(DATA / "model"), "--out_dir", str(DATA / "renders"), "--workers", "2"])
    if rc:
        raise SystemExit(f"rendering failed (exit {rc}); see {DATA / 'renders/failures.jsonl'}")
    print(f"({time.time() - t:.0f}s)")

    t = step("3/9 usable_samples.jsonl")
    generate_jsonl.main(["--json_path", str(DATA / "pix3d.json")])
    rows = read_jsonl(DATA / "usable_samples.jsonl")
    sheet_rows = [next(r for r in rows if r["category"] == c) for c in sorted({r["category"] for r in rows})]
    render_objs.contact_sheet([DATA / v for r in sheet_rows for v in r["views"]], OUT / "renders_contact_sheet.png",
                              ncols=12, thumb=80)
    print(f"contact sheet: {OUT / 'renders_contact_sheet.png'} ({time.time() - t:.0f}s)")

    results, label = {}, model_label(CLIP_MODEL)
    t = step("4/9 zero-shot (untrained tiny model)")
    model, preprocess = load_clip(CLIP_MODEL, device, seed=COMMON["seed"])
    zero = CLIPWrapper(model, "zero_shot").eval()
    results["zero_shot"] = retrieval_report(zero, preprocess, COMMON["data_jsonl"], "test", OUT / "zero_shot",
                                            f"{label}, zero-shot", device=device)
    print(f"({time.time() - t:.0f}s)")

    for name, preset, n in (("linear", LINEAR, 5), ("full", FULL, 6)):
        t = step(f"{n}/9 {name} training")
        for d in (ROOT / "logs" / preset["run_name"], ROOT / "weights" / preset["run_name"]):
            shutil.rmtree(d, ignore_errors=True)
        out = train.main([], preset=preset)
        wrapper, preprocess, _ = load_checkpoint(Path(out["weights_dir"]) / "best.pt", device)
        feats = encode_split(wrapper, preprocess, COMMON["data_jsonl"], "test", device)
        results[name] = retrieval_report(wrapper, preprocess, COMMON["data_jsonl"], "test", OUT / name,
                                         f"{label}, {name}", device=device, feats=feats)
        print(f"({time.time() - t:.0f}s)")

    t = step("7/9 captions of the full model (retrieval captioning vs baselines)")
    meteor = java_available()
    if not meteor:
        print("note: Java not found, METEOR skipped (apt-get install default-jre-headless)")
    captions = caption_report(wrapper, preprocess, COMMON["data_jsonl"], "test", device, meteor=meteor, feats=feats)
    print(f"({time.time() - t:.0f}s)")

    t = step("8/9 generative captioner on the frozen full model")
    generative = generative_captions(ROOT / "weights" / FULL["run_name"] / "best.pt", device, feats)
    print(f"({time.time() - t:.0f}s)")

    t = step("9/9 photo -> shape retrieval: zero-shot, stage 2, stage 3")
    shape = shape_retrieval(device)
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
    summary["model"] = label
    summary["n_test_models"] = results["full"]["n_models"]
    write_json(OUT / "results.json", summary)
    write_json(OUT / "caption_examples.json", captions["examples"])
    (OUT / "results.md").write_text(results_markdown(summary))
    print("\n" + results_markdown(summary))
    print(f"wrote {OUT / 'results.json'} and {OUT / 'results.md'}; demo took {(time.time() - t_start) / 60:.1f} min")


def generative_captions(full_checkpoint, device, feats, run_name="demo-captioner"):
    """Train the generative captioner on the frozen full model's shape embeddings and score it on the test split
    beside retrieval captioning and the baselines (caption_report's dict)."""
    for d in (ROOT / "logs" / run_name, ROOT / "weights" / run_name):
        shutil.rmtree(d, ignore_errors=True)
    out = train_captioner.main([f"--clip_checkpoint={full_checkpoint}", f"--run_name={run_name}",
                                f"--logs_dir={ROOT / 'logs'}", f"--weights_dir={ROOT / 'weights'}",
                                f"--cache_dir={COMMON['cache_dir']}", f"--seed={COMMON['seed']}"])
    dec, ckpt = load_captioner(Path(out["weights_dir"]) / "best.pt", device)
    wrapper, preprocess, _ = load_checkpoint(full_checkpoint, device)
    return caption_report(wrapper, preprocess, COMMON["data_jsonl"], "test", device, meteor=java_available(),
                          feats=feats, captioners={"generative": make_captioner(dec, ckpt, device)}, baselines=False)


def shape_retrieval(device):
    """Photo -> shape on the toy photos (test split) for each stage: ({stage: {metric: value}} plus counts, the
    colour_histogram baseline's metrics on the same photos)."""
    label, jsonl = model_label(CLIP_MODEL), COMMON["data_jsonl"]
    model, preprocess = load_clip(CLIP_MODEL, device, seed=COMMON["seed"])
    r = eval_shape_retrieval.photo2shape_report(CLIPWrapper(model, "zero_shot").eval(), preprocess, jsonl, "test",
                                                OUT / "shape_zero_shot", f"{label}, zero-shot", device=device)
    results, baseline = {"zero_shot": r["metrics"]}, r["baselines"]["colour_histogram"]
    for name, preset in (("stage2", SHAPE_STAGE2), ("stage3", SHAPE_STAGE3)):
        for d in (ROOT / "logs" / preset["run_name"], ROOT / "weights" / preset["run_name"]):
            shutil.rmtree(d, ignore_errors=True)
        trained = train.main([], preset=preset)
        wrapper, preprocess, _ = load_checkpoint(Path(trained["weights_dir"]) / "best.pt", device)
        r = eval_shape_retrieval.photo2shape_report(wrapper, preprocess, jsonl, "test", OUT / f"shape_{name}",
                                                    f"{label}, {name}", device=device, baselines=False)
        results[name] = r["metrics"]
    results.update(n_photos=r["n_photos"], n_photos_left_out=r["n_photos_left_out"], n_models=r["n_models"])
    return results, baseline


def _row(name, metrics, keys):
    return f"| {name} | " + " | ".join("-" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in keys) + " |"


def _chance(metrics):
    """The chance row of a table: each R@k key's `_chance_R@k` twin in `metrics` (a random ranking has no mAP)."""
    return {k: metrics.get(k.replace("_R@", "_chance_R@")) for k in metrics if "_R@" in k and "_chance_" not in k}


def shape_markdown(s, baseline=None):
    lines = [f"Photo -> shape, test split: {s['n_photos']} photos ({s['n_photos_left_out']} truncated/occluded left "
             f"out) against {s['n_models']} shapes.", "",
             "| stage | tuned | loss | " + " | ".join(SHAPE_KEYS) + " |", "|---" * (len(SHAPE_KEYS) + 3) + "|"]
    for name, tuned, loss in (("zero_shot", "none", "-"), ("stage2", "image tower", "triplet + center + ce"),
                              ("stage3", "both towers", "SupCon")):
        lines.append(_row(f"{name} | {tuned} | {loss}", s[name], SHAPE_KEYS))
    if baseline:
        lines.append(_row("colour_histogram baseline | none | -", baseline, SHAPE_KEYS))
    lines.append(_row("chance | - | -", _chance(s["stage3"]), SHAPE_KEYS))
    lines += ["", "Pictures: " + ", ".join(f"[{n}](shape_{n}/photo2shape_gallery.png)"
                                          for n in ("zero_shot", "stage2", "stage3")), ""]
    return "\n".join(lines)


def results_markdown(s):
    baselines = s.get("baselines", {})
    runs = [(name, s[name]) for name in ("zero_shot", "linear", "full")]
    if "colour_category" in baselines:
        runs.append(("colour_category baseline", baselines["colour_category"]))
    lines = [f"Test split: {s['n_test_models']} models; model: {s['model']}.", "",
             "| run | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    lines += [_row(name, metrics, KEYS) for name, metrics in runs] + [_row("chance", _chance(s["full"]), KEYS)]
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
                          for n in ("zero_shot", "linear", "full")), ""]
    if "shape_retrieval" in s:
        lines += [shape_markdown(s["shape_retrieval"], baselines.get("colour_histogram"))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
