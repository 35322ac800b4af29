"""The one training loop, fit(), and its main use: CLIP on (render, caption) pairs from usable_samples.jsonl, or on
photos and renders of each 3D model for photo -> shape retrieval (--task=photo2shape).

    python train.py                                   # the defaults below
    python train.py --train_mode=linear --lr=1e-3     # any constant below can be overridden as --key=value
    python train_clip_linear.py / python train_clip_full.py   # presets that call this loop
    python train_shape_stage2.py / python train_shape_stage3.py --init_from=weights/<stage 2 run>/best.pt
    python train.py --resume=latest                   # continue the newest CLIP run exactly where it stopped
    .venv/bin/torchrun --nproc_per_node=2 train_clip_full.py   # DistributedDataParallel (NCCL on GPUs, gloo on CPU)

Each run writes logs/<run>/ (TensorBoard events, config.json, results.json) and weights/<run>/{last,best}.pt.
fit(cfg, task) owns everything a training run shares (resume, gradient accumulation, clipping, AMP, DDP, the
non-finite guard, TensorBoard, validation, early stopping, atomic checkpoints, Ctrl-C / SIGTERM); a task
(tasks/) supplies the model, the batches, one step's losses and the validation metrics. train_captioner.py runs
the captioner task through the same fit().
"""
import contextlib
import math
import secrets
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from checkpoints import find_latest, load_resume
from tasks.photo2shape import Photo2Shape
from tasks.text2shape import Text2Shape
from utils import (apply_overrides, atomic_torch_save, autocast_dtype, rng_state, set_rng_state, set_seed,
                   setup_distributed, warmup_cosine, write_json)

# ----------------------------------------------------------------------------- config (edit, or --key=value)
data_jsonl = "data/pix3d_toy/usable_samples.jsonl"  # written by scripts/generate_jsonl.py
clip_model = "ViT-B/32"     # any of clip.available_models(), or "tiny" (random init; tests and offline demo)
clip_weights = ""           # a local OpenAI checkpoint file, for machines without network
task = "text2shape"         # text2shape: (render, caption) pairs | photo2shape: photos + renders, P x K batches
train_mode = "full"         # zero_shot | linear (projections + temperature) | full | image | text (one tower)
loss = "clip"               # text2shape: clip (symmetric contrastive, same-model pairs positive) | cosine | cosine_no_negatives
init_from = ""              # weights/<run>/best.pt: start from its model weights only (a new run; `resume` continues one)
epochs = 10
batch_size = 64             # per process; the contrastive loss sees the global batch under DDP
draws_per_model = 12        # (view, caption) pairs drawn per model per epoch
lr = 1e-5                   # peak learning rate (linear probing wants ~1e-3)
weight_decay = 0.2          # AdamW; not applied to biases, norms, embeddings' gains or the temperature
warmup_steps = 50           # linear warmup, then cosine decay to 0 over the run
grad_clip = 1.0             # max gradient norm (0 = off)
grad_accum = 1              # optimizer step every N batches
augment = False             # random resized crop + flip (no colour jitter: captions name colours)
amp = True                  # bf16 autocast where the hardware has it (fp16 + grad scaling on older GPUs)
patience = 5                # early stopping: epochs without a better select_metric
select_metric = ""          # val metric for best.pt and early stopping; "" = the task's: mean_recall (mean of
                            # R@1/5/10 both ways) for text2shape, photo2shape_mAP for photo2shape
num_workers = 2             # DataLoader workers
device = "auto"             # auto = cuda when present, else cpu
seed = 0
run_name = ""               # default: <timestamp>-<train_mode>-<clip_model>-<random suffix>
resume = ""                 # a last.pt path, or "latest"
stop_after_epochs = 0       # stop (resumably) after this many epochs in this process, e.g. for time-limited jobs
max_steps = 0               # stop after this many optimizer steps (0 = no limit) as an epoch end would (validation,
                            # last.pt, best.pt); the learning-rate schedule stays the epochs', so a resume with a
                            # larger max_steps continues exactly; for a quick try of a real-size model
log_every = 10              # optimizer steps between TensorBoard points (each costs a device -> host sync)
logs_dir = "logs"
weights_dir = "weights"
cache_dir = "data/cache"    # frozen features for linear probing
# photo2shape (presets: train_shape_stage2.py, train_shape_stage3.py); a batch is pk_models x pk_images images
shape_loss = "triplet+center+ce"  # '+'-joined: triplet (batch-hard) | center | ce (over model identities) |
                            # supcon (photos, renders and captions of one model are positives)
pk_models = 16              # P: models per batch
pk_images = 4               # K: images per model in a batch
pk_photos = 2               # of the K, up to this many are the model's photos; the rest are renders
triplet_margin = 0.3
center_weight = 0.01        # center loss weight (distances of unit vectors: the loss is at most 2)
ce_weight = 1.0             # identity cross-entropy weight (when shape_loss has "ce")
photo_margin = 0.1          # photo crop: the bbox grown by this fraction of its longer side on each side
photo_mask = False          # paint the photo's background white with its mask (renders have white backgrounds)
keep_hard_photos = False    # keep truncated / occluded photos (Pix3D's evaluation leaves them out)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k != "DEFAULTS"}
TASKS = {"text2shape": Text2Shape, "photo2shape": Photo2Shape}
# Folders come from the command that runs, never from a loaded checkpoint (it must not choose where files go).
OUTPUT_KEYS = ("logs_dir", "weights_dir", "cache_dir", "run_name")
AT_LEAST_ONE = ("epochs", "batch_size", "grad_accum", "draws_per_model", "patience", "log_every", "pk_models",
                "pk_images", "max_len", "width", "layers", "heads", "prefix_len", "draws_per_pair", "projection_mult",
                "hidden_mult", "n_experts", "attention_heads")
NOT_NEGATIVE = ("lr", "weight_decay", "warmup_steps", "grad_clip", "max_steps", "stop_after_epochs", "num_workers",
                "pk_photos", "triplet_margin", "center_weight", "ce_weight", "photo_margin", "w_align",
                "w_contrastive", "dropout", "view_aug", "embed_noise")


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------- configuration and resume
def configure(defaults, argv=None, preset=None, kind="clip"):
    """(cfg, checkpoint to resume or None): the defaults, a preset and the command line; with --resume, the
    resumed run's stored config with this command line on top (e.g. more --epochs)."""
    cfg = apply_overrides(dict(defaults, **(preset or {})), argv)
    ckpt = None
    if cfg["resume"]:
        path = find_latest(cfg["weights_dir"], kind) if cfg["resume"] == "latest" else Path(cfg["resume"])
        ckpt = load_resume(path, kind)
        stored = {k: v for k, v in ckpt["config"].items() if k in defaults and k not in OUTPUT_KEYS}
        outputs = {k: cfg[k] for k in OUTPUT_KEYS}
        cfg = apply_overrides(dict(defaults, **stored, **outputs), argv)
        cfg.update(resume=str(path), weights_dir=str(path.parent.parent), run_name=path.parent.name)
    check_config(cfg)
    return cfg, ckpt


def check_config(cfg):
    """Values no run can use fail before anything loads, naming the key."""
    for key in AT_LEAST_ONE:
        if key in cfg and cfg[key] < 1:
            raise ValueError(f"--{key}={cfg[key]}: must be at least 1")
    for key in NOT_NEGATIVE:
        if key in cfg and cfg[key] < 0:
            raise ValueError(f"--{key}={cfg[key]}: must not be negative")


# ----------------------------------------------------------------------------- the loop
def fit(cfg, task, ckpt=None):
    """Train `task` as `cfg` says (resuming `ckpt` when given); returns {"run_dir", "weights_dir", "val", "best"}."""
    rank, world, dev = setup_distributed(cfg["device"])
    previous = _on_sigterm_interrupt()
    try:
        return _fit(cfg, task, ckpt, rank, world, dev)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _on_sigterm_interrupt():
    """SIGTERM (what schedulers send before killing a job) interrupts like Ctrl-C: last.pt is saved."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    return signal.signal(signal.SIGTERM, handler)


class _Run:
    """The state fit() checkpoints, and the writing of last.pt / best.pt (rank 0 only)."""

    def __init__(self, cfg, task, rank, log_dir, ckpt_dir):
        self.cfg, self.task, self.rank, self.log_dir, self.ckpt_dir = cfg, task, rank, log_dir, ckpt_dir
        self.epoch, self.step, self.batches_done = 0, 0, 0
        self.best, self.best_epoch, self.stale, self.metrics = -math.inf, -1, 0, {}

    def save(self, name, optimizer=None, scheduler=None, scaler=None, rng=None, epoch_rng=None):
        if self.rank != 0:
            return
        state = {"kind": self.task.kind, **self.task.checkpoint(name == "best.pt"), "config": self.cfg,
                 "epoch": self.epoch, "step": self.step, "metrics": self.metrics, "best_metric": self.best,
                 "best_epoch": self.best_epoch}
        if optimizer is not None:  # last.pt: what an exact resume needs
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                         rng=rng, epoch_rng=epoch_rng, batches_done=self.batches_done,
                         epochs_without_improvement=self.stale)
        atomic_torch_save(state, self.ckpt_dir / name)


def _fit(cfg, task, ckpt, rank, world, dev):
    say = print if rank == 0 else (lambda *a, **k: None)
    if not cfg["run_name"]:
        model = cfg.get("clip_model", "").replace("/", "-")
        cfg["run_name"] = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.get('train_mode', task.kind)}-{model}-{secrets.token_hex(2)}"
    log_dir, ckpt_dir = Path(cfg["logs_dir"]) / cfg["run_name"], Path(cfg["weights_dir"]) / cfg["run_name"]
    if ckpt is None and task.trains() and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise FileExistsError(f"{ckpt_dir} already holds a run: continue it with --resume={ckpt_dir / 'last.pt'}, "
                              f"or choose another --run_name")
    set_seed(cfg["seed"] + rank)
    task.setup(dev, rank, world, ckpt)
    set_seed(cfg["seed"] + rank)  # setup may draw from the RNG (a feature-cache miss does): the run is the same
    amp_dtype = autocast_dtype(dev, cfg["amp"])
    amp_note = "off (fp32; this hardware has no fast bf16)" if cfg["amp"] else "off (--amp=False)"
    say(f"device: {dev}, world size {world}, amp: {amp_dtype or amp_note}")
    if not task.trains():
        metrics = task.validate()
        if rank == 0:
            write_json(log_dir / "config.json", {**cfg, **task.provenance})
            write_json(log_dir / "results.json", {"model": task.label, **task.provenance, "val": metrics,
                                                  **task.extra_results})
            say(format_metrics("val (zero-shot)", metrics))
        return {"run_dir": str(log_dir), "val": metrics}
    steps_per_epoch = task.steps_per_epoch()
    if steps_per_epoch == 0:
        source = cfg.get("data_jsonl") or cfg.get("data_root") or "the training split"
        raise ValueError(f"{source}: too few training examples for one batch of {cfg['batch_size']} per process "
                         "(incomplete batches are dropped); lower --batch_size")

    ddp = world > 1 and task.uses_ddp
    net = (torch.nn.parallel.DistributedDataParallel(task.module, device_ids=[dev] if dev.startswith("cuda") else None)
           if ddp else task.module)
    groups = task.param_groups(cfg["weight_decay"])
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], **getattr(task, "optim_args", {}))
    total = math.ceil(steps_per_epoch / cfg["grad_accum"]) * cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg["warmup_steps"], total))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    run = _Run(cfg, task, rank, log_dir, ckpt_dir)
    resume_rng = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler.is_enabled() and ckpt.get("scaler"):  # a bf16 / fp32 run has no scaler state to bring
            scaler.load_state_dict(ckpt["scaler"])
        run.epoch, run.step, run.batches_done = ckpt["epoch"], ckpt["step"], ckpt.get("batches_done", 0)
        run.best, run.best_epoch, run.stale = ckpt["best_metric"], ckpt["best_epoch"], ckpt["epochs_without_improvement"]
        pick = lambda s: s[rank % len(s)] if isinstance(s, list) else s  # noqa: E731  (one state per rank)
        resume_rng = pick(ckpt["rng"])
        set_rng_state(pick(ckpt["epoch_rng"]) if run.batches_done else resume_rng)
        say(f"resumed from {cfg['resume']} at epoch {run.epoch + 1}, batch {run.batches_done}, step {run.step}")

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        write_json(log_dir / "config.json", {**cfg, **task.provenance})
        writer = SummaryWriter(str(log_dir))
        say(f"run: {log_dir}  checkpoints: {ckpt_dir}")
    loop = dict(net=net, ddp=ddp, params=params, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                amp_dtype=amp_dtype, writer=writer, dev=dev, world=world, steps_per_epoch=steps_per_epoch)
    try:
        _epochs(cfg, task, run, loop, resume_rng, say)
    except KeyboardInterrupt as e:
        run.save("last.pt", optimizer, scheduler, scaler, loop.get("boundary_rng") or rng_state(), loop.get("epoch_rng"))
        say(f"\ninterrupted{' by SIGTERM' if str(e) == 'SIGTERM' else ''} in epoch {run.epoch + 1} after "
            f"{run.batches_done} batches: saved {ckpt_dir / 'last.pt'}; continue with --resume={ckpt_dir / 'last.pt'}")
        raise SystemExit(143 if str(e) == "SIGTERM" else 130)
    finally:
        if writer:
            writer.close()
    datasets = getattr(task, "datasets", [])
    problems = {k: sum(int(getattr(d, k, 0)) for d in datasets) for k in ("n_unreadable", "n_bad_lines")}
    if any(problems.values()):
        say(f"training data: {problems['n_unreadable']} unreadable image reads replaced by another image of the same "
            f"model, {problems['n_bad_lines']} bad jsonl lines left out (see the warnings above)")
    speed = throughput(loop)
    say(f"throughput: {speed['samples_per_second_per_rank']:.1f} training samples/s per process"
        + (f", peak GPU memory {speed['peak_gpu_memory_gib']:.2f} GiB" if "peak_gpu_memory_gib" in speed else ""))
    if rank == 0:
        say(f"best {task.select_metric} {run.best:.4f} at epoch {run.best_epoch + 1}; {task.label}")
        write_json(log_dir / "results.json", {"model": task.label, **task.provenance, "best_epoch": run.best_epoch + 1,
                                              "val": run.metrics, "best_" + task.select_metric: run.best,
                                              "throughput": speed, "data_problems": problems, **task.extra_results})
    return {"run_dir": str(log_dir), "weights_dir": str(ckpt_dir), "val": run.metrics, "best": run.best}


def _epochs(cfg, task, run, loop, resume_rng, say):
    """The epochs from run.epoch on; an epoch interrupted after run.batches_done batches continues where it was."""
    net, optimizer, writer, world = loop["net"], loop["optimizer"], loop["writer"], loop["world"]
    start_epoch = run.epoch
    while run.epoch < cfg["epochs"]:
        net.train()
        t0, sums = time.time(), {}
        skip, run.batches_done = run.batches_done, 0
        loop["epoch_rng"] = loop["boundary_rng"] = rng_state()
        batches = iter(task.batches(run.epoch))
        for _ in range(skip):  # the batches this epoch already trained on, drawn again from the same state
            next(batches)
        if skip:
            set_rng_state(resume_rng)
            run.batches_done = skip
        for i, batch in enumerate(batches, start=skip):
            _train_batch(cfg, task, run, loop, i, batch, sums)
            if cfg["max_steps"] and run.step >= cfg["max_steps"] and run.batches_done == i + 1:
                break
        loop["train_seconds"] = loop.get("train_seconds", 0.0) + time.time() - t0
        run.metrics = task.validate()
        if world > 1:  # rank 0's metrics decide for every rank: all stop together
            box = [run.metrics]
            dist.broadcast_object_list(box, src=0)
            run.metrics = box[0]
        value = run.metrics[task.select_metric]
        improved = value > run.best
        if improved:
            run.best, run.best_epoch, run.stale = value, run.epoch, 0
        else:
            run.stale += 1
        if writer:
            for k, v in run.metrics.items():
                writer.add_scalar(f"val/{k}", v, run.step)
            for k, v in sums.items():
                writer.add_scalar(f"train/epoch_{k}", v.item() / max(1, run.batches_done - skip), run.step)
            writer.flush()
        parts = "  ".join(f"{k} {v.item() / max(1, run.batches_done - skip):.4f}" for k, v in sums.items())
        done = "" if run.batches_done == loop["steps_per_epoch"] else f" ({run.batches_done} of {loop['steps_per_epoch']} batches)"
        say(f"epoch {run.epoch + 1}/{cfg['epochs']}{done}  {parts}  val {task.select_metric} {value:.4f}  "
            f"({time.time() - t0:.1f}s)", flush=True)
        unfinished = run.batches_done < loop["steps_per_epoch"]  # max_steps ended it: a resume goes on inside it
        if not unfinished:
            run.epoch, run.batches_done = run.epoch + 1, 0
        rng, epoch_rng = (loop["boundary_rng"], loop["epoch_rng"]) if unfinished else (rng_state(), None)
        if world > 1:  # every rank's RNG, so that a resumed DDP run continues each rank's stream
            rng, epoch_rng = _gather(rng, world), _gather(epoch_rng, world)
        run.save("last.pt", optimizer, loop["scheduler"], loop["scaler"], rng, epoch_rng)
        if improved:
            run.save("best.pt")
        if run.stale >= cfg["patience"]:
            say(f"early stopping: no better {task.select_metric} for {run.stale} epochs")
            break
        if cfg["max_steps"] and run.step >= cfg["max_steps"]:
            say(f"stopping at max_steps={cfg['max_steps']}")
            break
        if cfg["stop_after_epochs"] and run.epoch - start_epoch >= cfg["stop_after_epochs"]:
            say(f"stopping after {cfg['stop_after_epochs']} epochs as asked; continue with "
                f"--resume={run.ckpt_dir / 'last.pt'}")
            break


def _gather(obj, world):
    states = [None] * world
    dist.all_gather_object(states, obj)
    return states


def _train_batch(cfg, task, run, loop, i, batch, sums):
    """Forward and backward of batch i; an optimizer step at the end of each accumulation group."""
    net, scaler, optimizer, amp_dtype = loop["net"], loop["scaler"], loop["optimizer"], loop["amp_dtype"]
    accum = cfg["grad_accum"]
    boundary = (i + 1) % accum == 0 or i + 1 == loop["steps_per_epoch"]
    no_sync = net.no_sync() if loop["ddp"] and not boundary else contextlib.nullcontext()  # all-reduce once per step
    with no_sync:
        with torch.autocast(loop["dev"].split(":")[0], dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(*batch)
        loss = out["loss"]
        # the finiteness check syncs with the device: every step on a CPU (free), at each log point on a GPU
        if not loop["dev"].startswith("cuda") or (run.step + 1) % cfg["log_every"] == 0:
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) in epoch {run.epoch + 1}, batch {i + 1} "
                                    f"(after {run.step} optimizer steps); the last good checkpoint in "
                                    f"{run.ckpt_dir} is left as it was")
        scaler.scale(loss / accum).backward()
    for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + v.detach().float()
    loop["samples"] = loop.get("samples", 0) + len(batch[0])
    if not boundary:
        return
    if loop["world"] > 1 and not loop["ddp"]:  # no DDP wrapper (linear probe): average the gradients here
        for p in loop["params"]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= loop["world"]
    if cfg["grad_clip"] > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(loop["params"], cfg["grad_clip"])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    loop["scheduler"].step()
    task.after_step()
    run.step += 1
    run.batches_done = i + 1
    loop["boundary_rng"] = rng_state()
    writer = loop["writer"]
    if writer and (run.step == 1 or run.step % cfg["log_every"] == 0):
        for k, v in out.items():
            writer.add_scalar(f"train/{k}", v.item(), run.step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], run.step)


def throughput(loop):
    """Training samples per second of this process (validation excluded) and, on a GPU, its peak memory."""
    out = {"samples_per_second_per_rank": loop.get("samples", 0) / max(loop.get("train_seconds", 0.0), 1e-9)}
    if loop["dev"].startswith("cuda"):
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(loop["dev"]) / 2**30
    return out


def format_metrics(title, metrics):
    keys = [k for k in metrics if "_R@" in k and "/" not in k]
    return title + ": " + "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)


# ----------------------------------------------------------------------------- main
def main(argv=None, preset=None):
    cfg, ckpt = configure(DEFAULTS, argv, preset, kind="clip")
    if cfg["task"] not in TASKS:
        raise ValueError(f"unknown task {cfg['task']!r}; expected one of {tuple(TASKS)}")
    return fit(cfg, TASKS[cfg["task"]](cfg), ckpt)


if __name__ == "__main__":
    main()
