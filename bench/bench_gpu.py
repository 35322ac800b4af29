"""GPU smoke run: ViT-B/32 with random weights in OpenAI's state-dict form, on every visible GPU through torchrun.

    make gpu-smoke                                    # = .venv/bin/python bench/bench_gpu.py
    .venv/bin/python bench/bench_gpu.py --steps 50 --batch_size 64 --out_dir logs/gpu_smoke/try1

Steps: a synthetic (render, caption) set (96 models x 4 views at 224 px, drawn here: no renderer needed) ->
full fine-tuning, stopped at 60% of --steps and resumed inside the epoch up to --steps -> a linear probe (feature
cache + --steps steps) -> Recall@K of the full model on the test split. Prints images/s per GPU, peak GPU memory
and the AMP dtype chosen; checks that the loss fell and that the resumed run went on from the step it stopped at.
Writes <out_dir>/gpu_smoke.json. Sized to finish in a few minutes on one H100 (the goal is under 8).
Without CUDA it stops at once; --cpu_check runs the same orchestration on the CPU with the tiny model (a few
steps) to check the script itself.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SHAPES = ("square", "circle", "triangle", "cross")
COLORS = {"red": (200, 30, 30), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
          "black": (20, 20, 20), "purple": (130, 50, 160), "orange": (230, 120, 30), "gray": (128, 128, 128)}


def make_data(root, n_models=96, views=4, size=224):
    """usable_samples.jsonl of coloured shapes drawn at a few offsets; 80 / 8 / 8 models train / val / test."""
    from PIL import Image, ImageDraw

    rows = []
    for i in range(n_models):
        shape, color = SHAPES[i % len(SHAPES)], list(COLORS)[(i // len(SHAPES)) % len(COLORS)]
        paths = []
        for v in range(views):
            im = Image.new("RGB", (size, size), "white")
            d, o, s = ImageDraw.Draw(im), 20 + 15 * v + i % 7, size // 2 + (i % 5) * 8
            box = (o, o, o + s, o + s)
            if shape == "square":
                d.rectangle(box, fill=COLORS[color])
            elif shape == "circle":
                d.ellipse(box, fill=COLORS[color])
            elif shape == "triangle":
                d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLORS[color])
            else:
                d.rectangle((box[0], o + s // 3, box[2], o + 2 * s // 3), fill=COLORS[color])
                d.rectangle((o + s // 3, box[1], o + 2 * s // 3, box[3]), fill=COLORS[color])
            path = root / "renders" / f"m{i:03d}" / f"view_{v:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path)
            paths.append(str(path.relative_to(root)))
        split = "train" if i < n_models * 10 // 12 else "val" if i < n_models * 11 // 12 else "test"
        rows.append({"model_id": f"{shape}/m{i:03d}", "category": shape, "split": split, "name": None,
                     "captions": [f"a {color} {shape}", f"{shape} in {color}"], "views": paths, "photos": []})
    (root / "usable_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "usable_samples.jsonl", sum(r["split"] == "train" for r in rows)


def run(cmd, log):
    """Run a command, echo and keep its output; stop the smoke run on failure."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.time()
    res = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
    log.write_text(res.stdout + res.stderr)
    print(res.stdout[-1500:], flush=True)
    if res.returncode != 0:
        raise SystemExit(f"failed (exit {res.returncode}), output in {log}:\n{res.stderr[-3000:]}")
    return res.stdout, time.time() - t0


def logged_losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps of the full fine-tune and the probe")
    ap.add_argument("--batch_size", type=int, default=64, help="per GPU")
    ap.add_argument("--out_dir", default=str(ROOT / "logs/gpu_smoke" / time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--cpu_check", action="store_true", help="tiny model on the CPU, one process: checks the script")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.cpu_check:
        print("bench_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False); this smoke run needs an "
              "NVIDIA GPU and a CUDA build of torch. Nothing was run. (--cpu_check checks the script on a CPU.)")
        return 2
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: remove it or give another --out_dir")
    out.mkdir(parents=True, exist_ok=True)
    n_proc = 1 if args.cpu_check else torch.cuda.device_count()
    device = "cpu" if args.cpu_check else torch.cuda.get_device_name(0)
    jsonl, n_train = make_data(out / "data", size=64 if args.cpu_check else 224)
    if args.cpu_check:
        model_args = ["--clip_model=tiny"]
    else:
        import clip

        from models.clip_weights import openai_args

        weights = out / "ViT-B-32-random.pt"
        torch.manual_seed(0)
        torch.save(clip.model.CLIP(**openai_args("ViT-B/32")).state_dict(), weights)
        model_args = ["--clip_model=ViT-B/32", f"--clip_weights={weights}"]
    steps, batch = args.steps, args.batch_size
    draws = math.ceil(steps * batch * n_proc / n_train) + 1  # one epoch holds every step: the stop is mid-epoch
    common = [*model_args, f"--data_jsonl={jsonl}", f"--batch_size={batch}", f"--draws_per_model={draws}",
              "--epochs=1", "--warmup_steps=5", "--log_every=5", "--amp=True", f"--logs_dir={out}/logs",
              f"--weights_dir={out}/weights", f"--cache_dir={out}/cache", f"--num_workers={0 if args.cpu_check else 4}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_proc}", "--master_port=29561"]
    first = max(1, int(steps * 0.6))
    full = [*torchrun, ROOT / "train.py", *common, "--train_mode=full", "--lr=1e-4", "--augment=False"]
    text1, _ = run([*full, "--run_name=full", f"--max_steps={first}"], out / "full_1.log")
    last = out / "weights/full/last.pt"
    text2, _ = run([*full, f"--resume={last}", f"--max_steps={steps}"], out / "full_2.log")
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    resumed = re.search(r"resumed from .* step (\d+)", text2)
    results = json.loads((out / "logs/full/results.json").read_text())
    losses = logged_losses(out / "logs/full")
    text3, _ = run([*torchrun, ROOT / "train.py", *common, "--train_mode=linear", "--lr=1e-3", "--run_name=linear",
                    f"--max_steps={steps}"], out / "linear.log")
    linear = json.loads((out / "logs/linear/results.json").read_text())
    run([sys.executable, ROOT / "eval_recall.py", "--checkpoint", out / "weights/full/best.pt", "--split", "test",
         "--data_jsonl", jsonl, "--out_dir", out / "eval_test", *([] if args.cpu_check else ["--clip_weights", weights])],
        out / "eval.log")
    test = json.loads((out / "eval_test/results.json").read_text())["metrics"]
    amp = re.search(r"amp: (\S+)", text1)
    summary = {
        "device": device, "processes": n_proc, "model": "tiny" if args.cpu_check else "ViT-B/32 (random init)",
        "amp": amp.group(1) if amp else None, "batch_size_per_process": batch, "steps": steps,
        "full_images_per_second_per_gpu": results["throughput"]["samples_per_second_per_rank"],
        "full_peak_gpu_memory_gib": results["throughput"].get("peak_gpu_memory_gib"),
        "linear_pairs_per_second_per_gpu": linear["throughput"]["samples_per_second_per_rank"],
        "loss_first": losses[0], "loss_last_3": losses[-3:], "resumed_at_step": int(resumed.group(1)) if resumed else None,
        "final_step": ckpt["step"], "test_text2image_R@5": test.get("text2image_R@5"),
    }
    checks = {"loss fell": sum(losses[-3:]) / len(losses[-3:]) < losses[0], "resume went on from its step": summary["resumed_at_step"] == first,
              "reached --steps": ckpt["step"] == steps}
    summary["checks"] = checks
    (out / "gpu_smoke.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    failed = [k for k, ok in checks.items() if not ok]
    print(f"gpu smoke: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}; wrote {out / 'gpu_smoke.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
