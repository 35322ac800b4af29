"""The training loop end to end on the tiny model and a synthetic dataset: resume, caching, failures, DDP."""
import os
from pathlib import Path

import pytest
import torch

import features
import train
from conftest import run_train, torchrun
from tasks import text2shape
from models.clip_wrapper import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, jsonl, *extra, preset=None):
    return run_train(tmp_path, jsonl, *extra, preset=preset)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_continues_exactly(tmp_path, synthetic_jsonl):
    run(tmp_path / "a", synthetic_jsonl, "--epochs=4", "--augment=True")
    run(tmp_path / "b", synthetic_jsonl, "--epochs=4", "--augment=True", "--stop_after_epochs=2")
    stopped = torch.load(tmp_path / "b/weights/run/last.pt", weights_only=True)
    assert stopped["epoch"] == 2
    run(tmp_path / "b", synthetic_jsonl, f"--resume={tmp_path}/b/weights/run/last.pt")
    a, b = weights(tmp_path / "a/weights/run/last.pt"), weights(tmp_path / "b/weights/run/last.pt")
    assert a.keys() == b.keys() and len(a) > 50  # full mode: every tensor
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_checkpoint_contents_and_safe_loading(tmp_path, synthetic_jsonl):
    out = run(tmp_path, synthetic_jsonl, "--epochs=1", "--train_mode=linear", "--lr=1e-3")
    ckpt = torch.load(Path(out["weights_dir"]) / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config", "best_metric"):
        assert key in ckpt
    assert set(ckpt["model"]) == {"visual.proj", "text_projection", "logit_scale"}  # linear: projections only
    assert ckpt["config"]["train_mode"] == "linear" and ckpt["config"]["seed"] == 0
    wrapper, _, _ = load_checkpoint(Path(out["weights_dir"]) / "best.pt")
    assert torch.equal(wrapper.model.visual.proj, torch.load(Path(out["weights_dir"]) / "best.pt",
                                                              weights_only=True)["model"]["visual.proj"])
    assert (Path(out["run_dir"]) / "config.json").exists()
    events = list(Path(out["run_dir"]).glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(out["run_dir"])))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/logit_scale", "val/text2image_R@1", "val/image2text_R@5"} <= tags


def test_linear_probe_caches_features_and_invalidates(tmp_path, synthetic_jsonl, monkeypatch):
    calls = []
    real = features.encode_dataset
    monkeypatch.setattr(features, "encode_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(tmp_path, synthetic_jsonl, "--epochs=2", "--train_mode=linear")
    assert len(calls) == 2  # train + val, once for two epochs
    run(tmp_path, synthetic_jsonl, "--epochs=2", "--train_mode=linear", "--run_name=again")
    assert len(calls) == 2  # cache hit: no encoder pass at all
    view = next((synthetic_jsonl.parent / "renders").rglob("view_00.png"))
    os.utime(view, ns=(view.stat().st_atime_ns, view.stat().st_mtime_ns + 10**9))  # a render changed
    run(tmp_path, synthetic_jsonl, "--epochs=1", "--train_mode=linear", "--run_name=third")
    assert len(calls) >= 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic_jsonl, monkeypatch):
    run(tmp_path, synthetic_jsonl, "--epochs=1")
    good = (tmp_path / "weights/run/last.pt").read_bytes()
    real = text2shape.build_loss

    def poisoned(name):
        loss, n = real(name), [0]

        def f(*a, **k):
            n[0] += 1
            return loss(*a, **k) * (float("nan") if n[0] == 2 else 1.0)
        return f
    monkeypatch.setattr(text2shape, "build_loss", poisoned)
    with pytest.raises(train.NonFiniteLoss, match="after 4 optimizer steps"):
        run(tmp_path, synthetic_jsonl, f"--resume={tmp_path}/weights/run/last.pt", "--epochs=3")
    assert (tmp_path / "weights/run/last.pt").read_bytes() == good


def test_ctrl_c_saves_last(tmp_path, synthetic_jsonl, monkeypatch):
    real = text2shape.build_loss

    def interrupted(name):
        loss, n = real(name), [0]

        def f(*a, **k):
            n[0] += 1
            if n[0] == 5:
                raise KeyboardInterrupt
            return loss(*a, **k)
        return f
    monkeypatch.setattr(text2shape, "build_loss", interrupted)
    with pytest.raises(SystemExit) as err:
        run(tmp_path, synthetic_jsonl, "--epochs=3")
    assert err.value.code == 130
    ckpt = torch.load(tmp_path / "weights/run/last.pt", weights_only=True)
    assert ckpt["epoch"] == 1  # epoch 2 was interrupted; resuming runs it again


def test_config_overrides_are_type_checked(tmp_path, synthetic_jsonl):
    with pytest.raises(ValueError, match="unknown config key --lerning_rate"):
        run(tmp_path, synthetic_jsonl, "--lerning_rate=1e-3")
    with pytest.raises(ValueError, match="epochs"):
        run(tmp_path, synthetic_jsonl, "--epochs=many")
    with pytest.raises(ValueError, match="train_mode"):
        run(tmp_path, synthetic_jsonl, "--train_mode=lora")


def test_zero_shot_only_evaluates(tmp_path, synthetic_jsonl):
    out = run(tmp_path, synthetic_jsonl, "--train_mode=zero_shot")
    assert 0 <= out["val"]["text2image_R@1"] <= 1 and not (tmp_path / "weights/run").exists()


def test_ddp_two_cpu_processes(tmp_path, synthetic_jsonl):
    """torchrun with gloo: both ranks train, rank 0 alone writes logs and checkpoints."""
    res = torchrun("train_clip_full.py", f"--data_jsonl={synthetic_jsonl}", "--clip_model=tiny", "--num_workers=0",
                   "--batch_size=4", "--draws_per_model=2", "--epochs=1", "--warmup_steps=1",
                   f"--logs_dir={tmp_path}/logs", f"--weights_dir={tmp_path}/weights", "--run_name=ddp", port=29517)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in res.stdout and res.stdout.count("epoch 1/1") == 1
    assert (tmp_path / "weights/ddp/last.pt").exists()


def test_linear_probe_is_the_same_with_or_without_a_cache_hit(tmp_path, synthetic_jsonl):
    run(tmp_path, synthetic_jsonl, "--epochs=2", "--train_mode=linear", "--num_workers=1", "--run_name=miss")
    run(tmp_path, synthetic_jsonl, "--epochs=2", "--train_mode=linear", "--num_workers=1", "--run_name=hit")
    a, b = weights(tmp_path / "weights/miss/last.pt"), weights(tmp_path / "weights/hit/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
