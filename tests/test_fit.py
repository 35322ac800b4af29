"""fit() itself: exact resume inside an epoch, SIGTERM, run folders, config checks, max_steps, --resume=latest of
the right kind, and the pieces of the GPU path that a CPU can check (AMP dtype, scaler state, CUDA RNG states,
losses outside autocast, one shared draw for the DDP linear probe)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
import train
from conftest import run_train, torchrun
import utils
from models.clip_wrapper import CLIPWrapper, load_clip
from models.losses import ClipLoss
from tasks import text2shape
from utils import apply_overrides, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, jsonl, *extra, preset=None):
    return run_train(tmp_path, jsonl, *extra, preset=preset, batch_size=4)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def interrupt_at(monkeypatch, call, exc=KeyboardInterrupt):
    """The loss raises `exc` at its `call`-th call (counted across runs of this test)."""
    real, n = text2shape.build_loss, [0]

    def build(name):
        loss = real(name)

        def f(*a, **k):
            n[0] += 1
            if n[0] == call:
                raise exc
            return loss(*a, **k)
        return f
    monkeypatch.setattr(text2shape, "build_loss", build)


@pytest.mark.parametrize("accum", [1, 2])
def test_interrupted_epoch_resumes_exactly(tmp_path, synthetic_jsonl, monkeypatch, accum):
    """6 batches an epoch; Ctrl-C in the middle of epoch 2 (and in the middle of an accumulation group): the
    resumed run skips the batches it trained on and ends with the uninterrupted run's weights."""
    args = ("--epochs=3", "--augment=True", f"--grad_accum={accum}")
    run(tmp_path / "a", synthetic_jsonl, *args)
    interrupt_at(monkeypatch, 10)  # batch 4 of epoch 2
    with pytest.raises(SystemExit) as err:
        run(tmp_path / "b", synthetic_jsonl, *args)
    assert err.value.code == 130
    last = tmp_path / "b/weights/run/last.pt"
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1 and saved["batches_done"] == (3 if accum == 1 else 2)
    monkeypatch.undo()
    run(tmp_path / "b", synthetic_jsonl, f"--resume={last}")
    a, b = weights(tmp_path / "a/weights/run/last.pt"), weights(last)
    assert torch.load(last, weights_only=True)["step"] == torch.load(tmp_path / "a/weights/run/last.pt",
                                                                       weights_only=True)["step"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_sigterm_saves_like_ctrl_c(tmp_path, synthetic_jsonl):
    """A real SIGTERM to a training process: it saves last.pt and exits 143; the run then resumes."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import os, signal, train\n"
            "from tasks import text2shape\n"
            "real = text2shape.build_loss\n"
            "def build(name):\n"
            "    loss, n = real(name), [0]\n"
            "    def f(*a, **k):\n"
            "        n[0] += 1\n"
            "        if n[0] == 8: os.kill(os.getpid(), signal.SIGTERM)\n"
            "        return loss(*a, **k)\n"
            "    return f\n"
            "text2shape.build_loss = build\n"
            f"train.main(sys.argv[1:])\n")
    argv = [f"--data_jsonl={synthetic_jsonl}", "--clip_model=tiny", "--num_workers=0", "--batch_size=4",
            "--draws_per_model=2", "--epochs=3", f"--logs_dir={tmp_path}/logs", f"--weights_dir={tmp_path}/weights",
            f"--cache_dir={tmp_path}/cache", "--run_name=run"]
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 143, res.stderr[-2000:]
    assert "interrupted by SIGTERM" in res.stdout
    saved = torch.load(tmp_path / "weights/run/last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["batches_done"] == 1


def test_run_folders_never_overwrite_another_run(tmp_path, synthetic_jsonl):
    run(tmp_path, synthetic_jsonl, "--epochs=1")
    with pytest.raises(FileExistsError, match="already holds a run"):
        run(tmp_path, synthetic_jsonl, "--epochs=1")
    names = set()
    for _ in range(2):  # the default name: same second, still two folders
        out = run(tmp_path, synthetic_jsonl, "--epochs=1", "--run_name=")
        names.add(Path(out["weights_dir"]).name)
    assert len(names) == 2


@pytest.mark.parametrize("bad, message", [
    ("--epochs=0", "--epochs=0: must be at least 1"), ("--grad_accum=0", "--grad_accum=0: must be at least 1"),
    ("--batch_size=-4", "--batch_size=-4: must be at least 1"), ("--lr=-1e-3", "must not be negative")])
def test_bad_values_fail_before_training(tmp_path, synthetic_jsonl, bad, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, synthetic_jsonl, bad)
    assert not (tmp_path / "logs").exists()


def test_empty_val_split_fails_before_training(tmp_path, synthetic_jsonl):
    rows = read_jsonl(synthetic_jsonl)
    for r in rows:
        r["views"] = [str(synthetic_jsonl.parent / v) for v in r["views"]]
        r["split"] = "train" if r["split"] == "val" else r["split"]
    write_jsonl(tmp_path / "no_val.jsonl", rows)
    with pytest.raises(ValueError, match="no models in split 'val'"):
        run(tmp_path, tmp_path / "no_val.jsonl", "--epochs=1")
    assert not (tmp_path / "weights").exists()


def test_configurator_forms_and_config_file_types(tmp_path):
    cfg = {"epochs": 10, "lr": 1e-5, "augment": False, "run_name": ""}
    assert apply_overrides(cfg, ["--epochs", "20", "--augment", "--lr=1e-3"]) == \
        {"epochs": 20, "lr": 1e-3, "augment": True, "run_name": ""}
    assert apply_overrides(cfg, ["--augment", "False", "--run_name", "x"])["augment"] is False
    with pytest.raises(ValueError, match="expected a value"):
        apply_overrides(cfg, ["--epochs"])
    (tmp_path / "c.json").write_text(json.dumps({"epochs": "20"}))
    with pytest.raises(ValueError, match="epochs='20': expected int, got str"):
        apply_overrides(cfg, [str(tmp_path / "c.json")])
    (tmp_path / "bad.json").write_text('{"epochs": 2,}')
    with pytest.raises(ValueError, match=r"bad.json:1:\d+: not valid JSON"):
        apply_overrides(cfg, [str(tmp_path / "bad.json")])


def test_max_steps_ends_like_an_epoch_end_and_resumes_inside_the_epoch(tmp_path, synthetic_jsonl):
    """max_steps validates and writes last.pt and best.pt; a resume with a larger max_steps goes on inside the
    epoch and ends where an uninterrupted run ends."""
    out = run(tmp_path / "b", synthetic_jsonl, "--epochs=2", "--max_steps=4")
    last = torch.load(Path(out["weights_dir"]) / "last.pt", weights_only=True)
    assert last["step"] == 4 and last["epoch"] == 0 and last["batches_done"] == 4  # 6 batches an epoch
    best = torch.load(Path(out["weights_dir"]) / "best.pt", weights_only=True)
    assert set(best) >= {"model", "config", "metrics"} and "optimizer" not in best
    assert "text2image_R@1" in out["val"]
    run(tmp_path / "b", synthetic_jsonl, f"--resume={Path(out['weights_dir']) / 'last.pt'}", "--max_steps=0")
    run(tmp_path / "a", synthetic_jsonl, "--epochs=2")
    a, b = weights(tmp_path / "a/weights/run/last.pt"), weights(tmp_path / "b/weights/run/last.pt")
    assert torch.load(tmp_path / "b/weights/run/last.pt", weights_only=True)["step"] == 12
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_resume_latest_takes_the_newest_run_of_its_kind(tmp_path, synthetic_jsonl):
    run(tmp_path, synthetic_jsonl, "--epochs=1", "--stop_after_epochs=1", "--run_name=clip-run")
    newer = tmp_path / "weights/zz-captioner/last.pt"  # a newer captioner run must not be picked
    newer.parent.mkdir(parents=True)
    torch.save({"kind": "captioner", "config": {}, "optimizer": {}}, newer)
    broken = tmp_path / "weights/zzz-broken/last.pt"  # nor an unreadable file
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 truncated")
    os.utime(broken)
    with pytest.warns(UserWarning, match="zzz-broken"):
        assert checkpoints.find_latest(str(tmp_path / "weights"), "clip") == tmp_path / "weights/clip-run/last.pt"
    with pytest.raises(ValueError, match="a captioner run, not a clip run"):
        run(tmp_path, synthetic_jsonl, f"--resume={newer}")


def test_loss_is_computed_in_fp32_under_autocast():
    """Under bf16 autocast the towers run in bf16, but the loss of their outputs is the fp32 loss of those same
    outputs (inside autocast its matrix products would run in bf16: ~6% off in the gradient)."""
    model, _ = load_clip("tiny", seed=0)
    wrapper = CLIPWrapper(model, "linear")
    net = text2shape.PairLoss(wrapper, ClipLoss(), linear=True)
    torch.manual_seed(0)
    a, b, ids = torch.randn(64, 128), torch.randn(64, 128), torch.arange(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = wrapper.project_image(a), wrapper.project_text(b)
        got = net(a, b, ids)["loss"]
        inside = ClipLoss()(img.float(), txt.float(), wrapper.logit_scale.exp().float(), ids=ids)
    assert img.dtype == torch.bfloat16  # the model does run in bf16
    want = ClipLoss()(img.float(), txt.float(), wrapper.logit_scale.exp().float(), ids=ids)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert not torch.equal(inside, want)  # what computing it inside autocast would give


def test_amp_dtype_and_scaler_resume(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: calls.append(
        including_emulation) or including_emulation)  # a Turing GPU: bf16 only by emulation
    assert utils.autocast_dtype("cuda:0") == torch.float16 and calls == [False]
    assert utils.autocast_dtype("cuda:0", enabled=False) is None
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # what a bf16 / CPU run saves
    state = scaler.state_dict()
    assert state == {}  # nothing to load: fit() loads a scaler state only when there is one


def test_cuda_rng_states_restored_only_for_present_devices(monkeypatch):
    state = utils.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4  # saved on a 4-GPU node
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: set_calls.append(i))
    utils.set_rng_state(state)
    assert set_calls == [0]


def test_ddp_linear_probe_ranks_split_one_draw():
    """Two ranks' batches are the halves of the single-process draw of twice the batch: every (view, caption)
    draw of the epoch is trained on exactly once."""
    feats = {"image_model": torch.arange(10).repeat_interleave(3), "text_model": torch.arange(10).repeat_interleave(2)}
    cfg = {"seed": 3, "draws_per_model": 4, "batch_size": 4}
    one = list(text2shape.linear_batches(feats, 10, dict(cfg, batch_size=8), epoch=2))
    ranks = [list(text2shape.linear_batches(feats, 10, cfg, epoch=2, rank=r, world=2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for b1, r0, r1 in zip(one, *ranks):
        for part in range(3):
            assert torch.equal(b1[part], torch.cat([r0[part], r1[part]]))
    again = list(text2shape.linear_batches(feats, 10, cfg, epoch=2, rank=0, world=2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(again, ranks[0]))  # the same for the same (seed, epoch)


def test_ddp_cosine_loss_with_accumulation(tmp_path, synthetic_jsonl):
    """torchrun with gloo, --loss=cosine (no temperature: frozen, or DDP fails at step 2) and grad_accum=2
    (no_sync on the first micro-batch); both ranks finish and the process group is torn down."""
    res = torchrun("train.py", f"--data_jsonl={synthetic_jsonl}", "--clip_model=tiny", "--loss=cosine",
                   "--num_workers=0", "--batch_size=2", "--draws_per_model=2", "--epochs=1", "--grad_accum=2",
                   f"--logs_dir={tmp_path}/logs", f"--weights_dir={tmp_path}/weights", f"--cache_dir={tmp_path}/cache",
                   "--run_name=ddp", port=29531)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "destroy_process_group" not in res.stderr
    ckpt = torch.load(tmp_path / "weights/ddp/last.pt", weights_only=True)
    assert ckpt["step"] == 3  # 24 draws / (2 per rank x 2 ranks) = 6 batches, 3 optimizer steps


def _rank_order_worker(rank, world, store_path, log_path):
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    with utils.rank_zero_first(rank, world):
        with open(log_path, "a") as f:
            f.write(f"enter {rank}\n")
            f.flush()
            time.sleep(0.5 if rank == 0 else 0.0)  # rank 1, if it did not wait, would enter meanwhile
            f.write(f"leave {rank}\n")
    dist.destroy_process_group()


def test_rank_zero_loads_first(tmp_path):
    """All ranks loading CLIP at once on a fresh cache corrupt the download: rank 0 goes first, then the rest."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_order_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "log")), nprocs=2)
    assert (tmp_path / "log").read_text().split("\n")[:4] == ["enter 0", "leave 0", "enter 1", "leave 1"]


def test_explicit_cuda_device_under_torchrun_follows_the_local_rank(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    with pytest.warns(UserWarning, match="cuda:0 under torchrun"):
        assert utils.setup_distributed("cuda:0") == (1, 2, "cuda:1")
    assert chosen == [1]


def test_gpu_smoke_stops_at_once_without_a_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench/bench_gpu.py"), "--out_dir", str(tmp_path / "smoke")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no CUDA device is visible" in res.stdout
    assert not (tmp_path / "smoke").exists()


def test_collate_functions_pickle_for_spawned_workers():
    """DataLoader workers started by spawn or forkserver receive collate_fn by pickling: no lambdas."""
    import functools
    import pickle

    from tasks.photo2shape import collate_photo2shape

    for fn in (text2shape.collate_pairs, functools.partial(collate_photo2shape, with_text=True)):
        assert pickle.loads(pickle.dumps(fn))


def test_an_unreadable_render_mid_run_is_replaced_counted_and_reported(tmp_path, synthetic_jsonl):
    rows = read_jsonl(synthetic_jsonl)
    for r in rows:
        r["views"] = [str(synthetic_jsonl.parent / v) for v in r["views"]]
    train_row = next(r for r in rows if r["split"] == "train")
    for view in train_row["views"][:3]:  # 3 of its 4 views cut short after the jsonl was written
        copy = tmp_path / Path(view).name.replace(".png", f"_{train_row['model_id'].replace('/', '_')}.png")
        copy.write_bytes(Path(view).read_bytes()[:40])
        train_row["views"][train_row["views"].index(view)] = str(copy)
    write_jsonl(tmp_path / "damaged.jsonl", rows)
    out = run(tmp_path, tmp_path / "damaged.jsonl", "--epochs=1", "--draws_per_model=4")
    results = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    assert results["data_problems"]["n_unreadable"] >= 1 and results["data_problems"]["n_bad_lines"] == 0


def test_persistent_workers_give_the_same_run_and_resume_exactly(tmp_path, synthetic_jsonl):
    """Every draw (view, caption, augmentation) is seeded by (seed, epoch, index): 2 persistent DataLoader workers
    give the single-process run's weights, and a run stopped after epoch 1 resumes to the same weights."""
    args = ("--epochs=2", "--augment=True")
    run(tmp_path / "main", synthetic_jsonl, *args, "--num_workers=0")
    run(tmp_path / "workers", synthetic_jsonl, *args, "--num_workers=2")
    run(tmp_path / "resumed", synthetic_jsonl, *args, "--num_workers=2", "--stop_after_epochs=1")
    run(tmp_path / "resumed", synthetic_jsonl, f"--resume={tmp_path}/resumed/weights/run/last.pt")
    a = weights(tmp_path / "main/weights/run/last.pt")
    for other in ("workers", "resumed"):
        b = weights(tmp_path / other / "weights/run/last.pt")
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (other, k)


def test_resume_writes_where_the_command_says_not_where_the_checkpoint_says(tmp_path, synthetic_jsonl):
    run(tmp_path, synthetic_jsonl, "--epochs=2", "--stop_after_epochs=1")
    last = tmp_path / "weights/run/last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["config"].update(logs_dir=str(tmp_path / "elsewhere/logs"), weights_dir=str(tmp_path / "elsewhere/w"),
                          cache_dir=str(tmp_path / "elsewhere/cache"), run_name="../../crafted")
    torch.save(ckpt, last)
    out = run(tmp_path, synthetic_jsonl, f"--resume={last}")
    assert not (tmp_path / "elsewhere").exists()
    assert Path(out["run_dir"]) == tmp_path / "logs/run" and Path(out["weights_dir"]) == tmp_path / "weights/run"
