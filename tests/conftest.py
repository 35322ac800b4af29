import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import json  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

COLORS = {"red": (200, 30, 30), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
          "black": (20, 20, 20), "purple": (130, 50, 160)}
SHAPES = ("square", "circle", "triangle")


def make_synthetic_dataset(root, views_per_model=4, size=48):
    """A small (render, caption) dataset in usable_samples.jsonl form without rendering meshes: each "model"
    is a coloured shape drawn at a few offsets. 18 models: 12 train, 3 val, 3 test."""
    rows = []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for i, (color, shape) in enumerate(combos):
        mid = f"{shape}/M{i:02d}"
        views = []
        for v in range(views_per_model):
            im = Image.new("RGB", (size, size), (255, 255, 255))
            d = ImageDraw.Draw(im)
            o = 4 + 3 * v
            box = (o, o, o + size // 2, o + size // 2)
            {"square": d.rectangle, "circle": d.ellipse}.get(shape, lambda b, fill: d.polygon(
                [(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])], fill=fill))(box, fill=COLORS[color])
            path = root / "renders" / mid / f"view_{v:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path)
            views.append(str(path.relative_to(root)))
        split = "val" if i % 6 == 1 else "test" if i % 6 == 4 else "train"
        rows.append({"model_id": mid, "category": shape, "split": split, "name": None,
                     "captions": [f"a {color} {shape}", f"a {shape} in {color}"], "views": views, "photos": []})
    path = root / "usable_samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def synthetic_jsonl(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


def run_train(root, jsonl, *extra, preset=None, batch_size=8):
    """train.main on the tiny model with small, fast settings; folders under `root`, run name "run"."""
    import train

    argv = [f"--data_jsonl={jsonl}", "--clip_model=tiny", "--num_workers=0", f"--batch_size={batch_size}",
            "--draws_per_model=2", "--warmup_steps=2", "--lr=5e-4", f"--logs_dir={root}/logs",
            f"--weights_dir={root}/weights", f"--cache_dir={root}/cache", "--run_name=run", *extra]
    return train.main(argv, preset=preset)


def torchrun(script, *args, port):
    """`torchrun --nproc_per_node=2 script args` on the CPU (gloo), one thread per process; the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
