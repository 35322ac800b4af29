"""The one training loop: CLIP on (render, caption) pairs from usable_samples.jsonl, or on photos and renders of
each 3D model for photo -> shape retrieval (--task=photo2shape).

    python train.py                                   # the defaults below
    python train.py --train_mode=linear --lr=1e-3     # any constant below can be overridden as --key=value
    python train_clip_linear.py / python train_clip_full.py   # presets that call this loop
    python train_shape_stage2.py / python train_shape_stage3.py --init_from=weights/<stage 2 run>/best.pt
    python train.py --resume=latest                   # continue the newest run exactly where it stopped
    torchrun --nproc_per_node=2 train_clip_full.py    # DistributedDataParallel (NCCL on GPUs, gloo on CPU)

Each run writes logs/<run>/ (TensorBoard events, config.json) and weights/<run>/{last,best}.pt.
"""
import glob
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from eval_recall import evaluate_retrieval
from eval_shape_retrieval import evaluate_photo2shape
from features import cached_features, encode_dataset
from models.clip_wrapper import CLIPWrapper, load_clip, model_label, tokenize
from models.losses import ShapeLoss, build_loss, parse_shape_loss
from multiview_dataset import MultiViewDataset, PKSampler, ShapeImageDataset
from utils import apply_overrides, atomic_torch_save, get_device, set_seed, write_json

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
run_name = ""               # default: <timestamp>-<train_mode>-<clip_model>
resume = ""                 # a last.pt path, or "latest"
stop_after_epochs = 0       # stop (resumably) after this many epochs in this process, e.g. for time-limited jobs
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
SCALE_MAX = math.log(100.0)  # CLIP's temperature clamp: logit scale <= 100
TASKS = ("text2shape", "photo2shape")
SELECT_DEFAULT = {"text2shape": "mean_recall", "photo2shape": "photo2shape_mAP"}


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------- distributed
def setup_distributed(cfg):
    """(rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = get_device(cfg["device"])
    if world == 1:
        return 0, 1, dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev == "cuda":
        torch.cuda.set_device(local_rank)
        dev = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def autocast_dtype(dev, enabled):
    """The AMP dtype for this hardware, or None (fp32)."""
    if not enabled:
        return None
    if dev.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


# ----------------------------------------------------------------------------- checkpoints
def rng_state():
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def load_init(model, cfg):
    """Load the model weights of `init_from` (a train.py checkpoint) over the base weights; nothing else of that
    run (optimizer, step, config) comes along: this starts a new run. Returns the loaded tensors."""
    path = Path(cfg["init_from"])
    if not path.exists():
        raise FileNotFoundError(f"--init_from={path}: not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in ckpt:
        raise ValueError(f"--init_from={path}: not a train.py checkpoint (no 'model' entry)")
    src = ckpt.get("config", {})
    for key in ("clip_model", "clip_weights"):
        if src.get(key, cfg[key]) != cfg[key]:
            raise ValueError(f"--init_from={path}: trained with {key}={src[key]!r}, this run has {cfg[key]!r}")
    unknown = set(ckpt["model"]) - set(model.state_dict())
    if unknown:
        raise ValueError(f"--init_from={path}: tensors this {cfg['clip_model']} model lacks: {sorted(unknown)[:5]}")
    model.load_state_dict(ckpt["model"], strict=False)
    return ckpt["model"]


def find_latest(weights_root):
    found = glob.glob(os.path.join(weights_root, "*", "last.pt"))
    if not found:
        raise FileNotFoundError(f"--resume=latest: no {weights_root}/*/last.pt found")
    return max(found, key=os.path.getmtime)


# ----------------------------------------------------------------------------- linear probing: cached features
def linear_cache(wrapper, cfg, split, preprocess, dev):
    identity = {k: cfg[k] for k in ("clip_model", "clip_weights", "init_from")}
    identity["seed"] = cfg["seed"] if cfg["clip_model"] == "tiny" else ""  # a random init depends on it
    return cached_features(wrapper, preprocess, cfg["data_jsonl"], split, dev, cfg["cache_dir"], identity,
                           cfg["num_workers"])


def linear_batches(feats, n_models, cfg, rank, world):
    """Index batches (view row, text row) for one epoch: draws_per_model random pairs per model."""
    views_of = [torch.nonzero(feats["image_model"] == m).flatten() for m in range(n_models)]
    texts_of = [torch.nonzero(feats["text_model"] == m).flatten() for m in range(n_models)]
    models = torch.arange(n_models).repeat(cfg["draws_per_model"])
    models = models[torch.randperm(len(models))]
    v = torch.stack([views_of[m][torch.randint(len(views_of[m]), ())] for m in models.tolist()])
    t = torch.stack([texts_of[m][torch.randint(len(texts_of[m]), ())] for m in models.tolist()])
    step = cfg["batch_size"] * world
    for i in range(0, len(models) - step + 1, step):  # drop the ragged last batch: tiny batches hurt contrastive
        sl = slice(i + rank * cfg["batch_size"], i + (rank + 1) * cfg["batch_size"])
        yield v[sl], t[sl], models[sl]


# ----------------------------------------------------------------------------- photo2shape
class PhotoShapeNet(torch.nn.Module):
    """CLIP and the metric loss in one module, so that DDP synchronises the loss's own parameters too."""

    def __init__(self, wrapper, shape_loss):
        super().__init__()
        self.wrapper, self.shape_loss = wrapper, shape_loss

    def forward(self, images, ids, tokens=None, text_ids=None):
        img = self.wrapper.encode_image(images).float()
        txt = self.wrapper.encode_text(tokens).float() if tokens is not None else None
        return self.shape_loss(img, ids, txt, text_ids, self.wrapper.logit_scale.exp())


def collate_photo2shape(batch, with_text):
    """(images, model indices, tokens, text model indices): one caption per model of the batch (not one per image:
    the K images of a model share it, and the text tower costs about as much per row as the image tower)."""
    images, ids = torch.stack([x[0] for x in batch]), torch.tensor([x[2] for x in batch])
    if not with_text:
        return images, ids, None, None
    first = {}
    for _, caption, m in batch:
        first.setdefault(m, caption)
    return images, ids, tokenize(list(first.values())), torch.tensor(list(first))


def photo2shape_loader(cfg, tf, rank, world):
    """Photos + renders of the training split in P x K batches (see collate_photo2shape)."""
    ds = ShapeImageDataset(cfg["data_jsonl"], "train", tf, keep_hard=cfg["keep_hard_photos"],
                           margin=cfg["photo_margin"], apply_mask=cfg["photo_mask"])
    sampler = PKSampler(ds.labels, ds.is_photo, cfg["pk_models"], cfg["pk_images"], cfg["pk_photos"],
                        seed=cfg["seed"], rank=rank, world_size=world)
    with_text = "supcon" in parse_shape_loss(cfg["shape_loss"])
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=cfg["num_workers"],
                                         collate_fn=lambda b: collate_photo2shape(b, with_text))
    n_photos = sum(ds.is_photo)
    summary = (f"photo2shape train: {n_photos} photos ({ds.n_hard_skipped} truncated/occluded left out) and "
               f"{len(ds) - n_photos} renders of {len(ds.model_ids)} models; P x K = {cfg['pk_models']} x "
               f"{cfg['pk_images']}; {sampler.n_skipped} models skipped (fewer than two images)")
    return loader, sampler, len(ds.model_ids), summary


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(wrapper, cfg, preprocess, dev, val_cache=None):
    if cfg["task"] == "photo2shape":
        return evaluate_photo2shape(wrapper, preprocess, cfg["data_jsonl"], "val", dev, cfg["keep_hard_photos"],
                                    cfg["photo_margin"], cfg["photo_mask"], batch_size=cfg["batch_size"],
                                    num_workers=cfg["num_workers"])
    if val_cache is not None:
        feats, ds = val_cache
        img = wrapper.project_image(feats["image"].to(dev)).float().cpu()
        txt = wrapper.project_text(feats["text"].to(dev)).float().cpu()
        feats = dict(feats, image=img, text=txt)
    else:
        ds = MultiViewDataset(cfg["data_jsonl"], "val", preprocess, mode="eval")
        feats = encode_dataset(wrapper, ds, dev, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"])
    metrics = evaluate_retrieval(feats["image"], feats["image_model"], feats["text"], feats["text_model"])
    recalls = [v for k, v in metrics.items() if "_R@" in k and "/" not in k]
    metrics["mean_recall"] = float(sum(recalls) / len(recalls))
    return metrics


def param_groups(wrapper, weight_decay):
    """AdamW groups: no weight decay on biases, norm gains, embeddings' 1-d params and the temperature."""
    decay, no_decay = [], []
    for name, p in wrapper.model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "ln_" in name or "bn" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup, total):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# ----------------------------------------------------------------------------- main
def main(argv=None, preset=None):
    cfg = dict(DEFAULTS, **(preset or {}))
    cfg = apply_overrides(cfg, argv)
    ckpt = None
    if cfg["resume"]:
        path = find_latest(cfg["weights_dir"]) if cfg["resume"] == "latest" else cfg["resume"]
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        # the stored config, with what this command line says on top (e.g. more --epochs)
        cfg = apply_overrides(dict(ckpt["config"], resume=path), argv)
        cfg["resume"] = path
    if cfg["task"] not in TASKS:
        raise ValueError(f"unknown task {cfg['task']!r}; expected one of {TASKS}")
    photo2shape = cfg["task"] == "photo2shape"
    if photo2shape:
        parse_shape_loss(cfg["shape_loss"])  # a typo fails now, not after loading the data
        if cfg["train_mode"] not in ("zero_shot", "image", "full"):
            raise ValueError(f"task=photo2shape trains train_mode=image or full (or evaluates zero_shot), "
                             f"not {cfg['train_mode']!r}")
    cfg["select_metric"] = cfg["select_metric"] or SELECT_DEFAULT[cfg["task"]]
    rank, world, dev = setup_distributed(cfg)
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)
    if not cfg["run_name"]:
        cfg["run_name"] = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg['train_mode']}-{cfg['clip_model'].replace('/', '-')}"
    log_dir = Path(cfg["logs_dir"]) / cfg["run_name"]
    ckpt_dir = Path(cfg["weights_dir"]) / cfg["run_name"]

    set_seed(cfg["seed"] + rank)
    model, preprocess = load_clip(cfg["clip_model"], dev, weights=cfg["clip_weights"] or None, seed=cfg["seed"])
    wrapper = CLIPWrapper(model, cfg["train_mode"]).to(dev)
    label = model_label(cfg["clip_model"])
    init_state = {}  # tensors from init_from: saved with every checkpoint, so a checkpoint stands on its own
    if ckpt is not None:
        model.load_state_dict(ckpt["model"], strict=False)
        init_state = ckpt["model"]
    elif cfg["init_from"]:
        init_state = load_init(model, cfg)
        say(f"init_from {cfg['init_from']}: loaded {len(init_state)} tensors (model weights only)")
    shape_loss = None
    if photo2shape and "supcon" not in parse_shape_loss(cfg["shape_loss"]):
        # triplet, center and ce never use the temperature: freeze it, so the summary (and DDP) sees what trains
        wrapper.logit_scale.requires_grad_(False)
    say(f"model: {label}; {wrapper.summary()}")
    amp_dtype = autocast_dtype(dev, cfg["amp"])
    say(f"device: {dev}, world size {world}, amp: {amp_dtype or 'off (fp32; this hardware has no fast bf16)'}")

    linear = cfg["train_mode"] == "linear"
    train_cache = val_cache = None
    if photo2shape and cfg["train_mode"] == "zero_shot":
        steps_per_epoch = 0
    elif linear:
        if is_main:  # rank 0 computes the cache; the others read it
            train_cache = linear_cache(wrapper, cfg, "train", preprocess, dev)
            val_cache = linear_cache(wrapper, cfg, "val", preprocess, dev)
        if world > 1:
            dist.barrier()
            if not is_main:
                train_cache = linear_cache(wrapper, cfg, "train", preprocess, dev)
                val_cache = linear_cache(wrapper, cfg, "val", preprocess, dev)
        n_models = len(train_cache[1].model_ids)
        steps_per_epoch = (n_models * cfg["draws_per_model"]) // (cfg["batch_size"] * world)
        # Computing the cache draws from the RNG (DataLoader workers' seeds) and a cache hit does not: seed again so
        # that the run is the same either way.
        set_seed(cfg["seed"] + rank)
    else:
        tf = preprocess
        if cfg["augment"]:
            from torchvision import transforms as T
            n_px = preprocess.transforms[1].size
            tf = T.Compose([T.RandomResizedCrop(n_px, scale=(0.7, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                            T.RandomHorizontalFlip(), *preprocess.transforms[2:]])
        if photo2shape:
            loader, sampler, n_classes, summary = photo2shape_loader(cfg, tf, rank, world)
            say(summary)
            shape_loss = ShapeLoss(cfg["shape_loss"], n_classes, model.text_projection.shape[1], cfg["triplet_margin"],
                                   cfg["center_weight"], cfg["ce_weight"]).to(dev)
        else:
            train_ds = MultiViewDataset(cfg["data_jsonl"], "train", tf, mode="train", draws_per_model=cfg["draws_per_model"])
            sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, seed=cfg["seed"]) if world > 1 else None
            loader = torch.utils.data.DataLoader(
                train_ds, batch_size=cfg["batch_size"], shuffle=sampler is None, sampler=sampler, drop_last=True,
                num_workers=cfg["num_workers"], persistent_workers=False,
                collate_fn=lambda b: (torch.stack([x[0] for x in b]), tokenize([x[1] for x in b]),
                                      torch.tensor([x[2] for x in b])))
        steps_per_epoch = len(loader)
    if steps_per_epoch == 0 and cfg["train_mode"] != "zero_shot":
        raise ValueError(f"{cfg['data_jsonl']}: too few training pairs for one batch of {cfg['batch_size']}")

    loss_fn = build_loss(cfg["loss"])
    trainable = [p for p in wrapper.parameters() if p.requires_grad]
    if shape_loss is not None:
        trainable += [p for p in shape_loss.parameters() if p.requires_grad]
    if cfg["train_mode"] == "zero_shot" or not trainable:
        metrics = validate(wrapper, cfg, preprocess, dev, val_cache)
        if is_main:
            write_json(log_dir / "config.json", cfg)
            write_json(log_dir / "results.json", {"model": label, "val": metrics})
            say(format_metrics("val (zero-shot)", metrics))
        return {"run_dir": str(log_dir), "val": metrics}

    ddp = world > 1 and not linear
    module = PhotoShapeNet(wrapper, shape_loss) if photo2shape else wrapper
    net = torch.nn.parallel.DistributedDataParallel(module, device_ids=[dev] if dev.startswith("cuda") else None) if ddp else module
    groups = param_groups(wrapper, cfg["weight_decay"])
    if shape_loss is not None and list(shape_loss.parameters()):  # the identity classifier: no decay on prototypes
        groups.append({"params": list(shape_loss.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)
    opt_steps = math.ceil(steps_per_epoch / cfg["grad_accum"]) * cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg["warmup_steps"], opt_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_epoch, step, best, best_epoch, stale = 0, 0, -float("inf"), -1, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        best, best_epoch, stale = ckpt["best_metric"], ckpt["best_epoch"], ckpt["epochs_without_improvement"]
        if shape_loss is not None:
            shape_loss.load_state_dict(ckpt["shape_loss"])
        set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        say(f"resumed from {cfg['resume']} at epoch {start_epoch}, step {step}")

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        log_dir.mkdir(parents=True, exist_ok=True)
        write_json(log_dir / "config.json", cfg)
        writer = SummaryWriter(str(log_dir))
        say(f"run: {log_dir}  checkpoints: {ckpt_dir}")

    def save(name, epoch, metrics, rng=None):
        if not is_main:
            return
        extra = {"shape_loss": shape_loss.state_dict()} if shape_loss is not None else {}
        atomic_torch_save({
            **extra, "model": dict(init_state, **wrapper.trainable_state_dict()), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
            "config": cfg, "best_metric": best, "best_epoch": best_epoch, "epochs_without_improvement": stale,
            "metrics": metrics, "rng": rng or rng_state(), "model_label": label,
        }, ckpt_dir / name)

    def train_step(images_or_feats, tokens_or_feats, ids):
        with torch.autocast(dev.split(":")[0], dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if photo2shape:
                loss, parts = net(images_or_feats, ids, *tokens_or_feats)
                if writer:
                    for k, v in parts.items():
                        writer.add_scalar(f"train/loss_{k}", v.item(), step + 1)
                return loss
            if linear:
                img = wrapper.project_image(images_or_feats)
                txt = wrapper.project_text(tokens_or_feats)
            else:
                img, txt = net(images_or_feats, tokens_or_feats)
            return loss_fn(img.float(), txt.float(), wrapper.logit_scale.exp(), ids=ids)

    epoch, metrics = start_epoch, {}
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            module.train()
            if linear:
                feats = train_cache[0]
                batches = ((feats["image"][v].to(dev), feats["text"][t].to(dev), ids.to(dev))
                           for v, t, ids in linear_batches(feats, n_models, cfg, rank, world))
            else:
                if sampler is not None:
                    sampler.set_epoch(epoch)
                if photo2shape:  # (images, ids, (tokens, text ids)); tokens and text ids are None without supcon
                    batches = ((x.to(dev, non_blocking=True), tuple(v if v is None else v.to(dev) for v in (t, tm)),
                                ids.to(dev)) for x, ids, t, tm in loader)
                else:
                    batches = ((x.to(dev, non_blocking=True), t.to(dev), ids.to(dev)) for x, t, ids in loader)
            t0, total, count = time.time(), 0.0, 0
            for i, (a, b, ids) in enumerate(batches):
                loss = train_step(a, b, ids)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {step}, epoch {epoch}; "
                                        f"the last good checkpoint in {ckpt_dir} is left as it was")
                scaler.scale(loss / cfg["grad_accum"]).backward()
                if (i + 1) % cfg["grad_accum"] == 0 or i + 1 == steps_per_epoch:
                    if world > 1 and not ddp:  # linear probe: no DDP wrapper, so average the gradients here
                        for p in trainable:
                            if p.grad is not None:
                                dist.all_reduce(p.grad)
                                p.grad /= world
                    if cfg["grad_clip"] > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(trainable, cfg["grad_clip"])
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    with torch.no_grad():
                        wrapper.logit_scale.clamp_(0, SCALE_MAX)
                step += 1
                total, count = total + loss.item(), count + 1
                if writer:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    writer.add_scalar("train/logit_scale", wrapper.logit_scale.exp().item(), step)
            metrics = validate(wrapper, cfg, preprocess, dev, val_cache)
            improved = metrics[cfg["select_metric"]] > best
            if improved:
                best, best_epoch, stale = metrics[cfg["select_metric"]], epoch, 0
            else:
                stale += 1
            if writer:
                for k, v in metrics.items():
                    writer.add_scalar(f"val/{k}", v, step)
                writer.add_scalar("train/epoch_loss", total / max(count, 1), step)
                writer.flush()
            say(f"epoch {epoch + 1}/{cfg['epochs']}  loss {total / max(count, 1):.4f}  "
                f"val {cfg['select_metric']} {metrics[cfg['select_metric']]:.4f}  ({time.time() - t0:.1f}s)")
            rng = rng_state()
            if world > 1:  # every rank's RNG, so that a resumed DDP run continues each rank's stream
                states = [None] * world
                dist.all_gather_object(states, rng)
                rng = states
            save("last.pt", epoch + 1, metrics, rng)
            if improved:
                save("best.pt", epoch + 1, metrics, rng)
            if stale >= cfg["patience"]:
                say(f"early stopping: no better {cfg['select_metric']} for {stale} epochs")
                break
            if cfg["stop_after_epochs"] and epoch + 1 - start_epoch >= cfg["stop_after_epochs"]:
                say(f"stopping after {cfg['stop_after_epochs']} epochs as asked; continue with --resume={ckpt_dir / 'last.pt'}")
                break
    except KeyboardInterrupt:
        save("last.pt", epoch, metrics)  # this epoch did not finish: a resume runs it again
        say(f"\ninterrupted: saved {ckpt_dir / 'last.pt'}; continue with --resume={ckpt_dir / 'last.pt'}")
        raise SystemExit(130)
    finally:
        if writer:
            writer.close()
    if is_main:
        say(f"best {cfg['select_metric']} {best:.4f} at epoch {best_epoch + 1}; {label}")
        write_json(log_dir / "results.json", {"model": label, "best_epoch": best_epoch + 1, "val": metrics,
                                              "best_" + cfg["select_metric"]: best})
    return {"run_dir": str(log_dir), "weights_dir": str(ckpt_dir), "val": metrics, "best": best}


def format_metrics(title, metrics):
    keys = [k for k in metrics if "_R@" in k and "/" not in k]
    return title + ": " + "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)


if __name__ == "__main__":
    main()
