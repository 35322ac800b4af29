"""Train the generative captioner (models/caption_decoder.py) on the shape embeddings of a frozen CLIP.

    python train_captioner.py --clip_checkpoint=weights/<clip run>/best.pt      # the defaults below
    python train_captioner.py --w_align=0.1 --w_contrastive=0.05                # add the CLIP-guided terms
    python train_captioner.py --resume=latest                                   # newest weights/*captioner*/last.pt
Any constant below can be overridden as --key=value. Each run writes logs/<run>/ (TensorBoard, config.json,
results.json) and weights/<run>/{last,best}.pt; run names contain "captioner" so that caption.py and
--resume=latest find them. Then:
    python evaluate_caption.py --captioner generative --captioner_checkpoint weights/<run>/best.pt
    python caption.py path/to/model.obj

The CLIP is frozen, so every view of every model is encoded once (train.py's feature cache in data/cache/) and
an epoch only runs the small decoder. A training example is (a train model's shape embedding, one of its
captions); the shape embedding is what evaluation uses: the mean of the L2-normalised view embeddings.
"""
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from evaluate_caption import evaluate_caption
from models.caption_decoder import (PAD, decode_kwargs, newest_captioner, CaptionDecoder, build_vocab, encode_captions, group_views,
                                    soft_text_embedding)
from models.clip_wrapper import CLIPWrapper, load_checkpoint, model_label
from models.losses import ClipLoss
from features import cached_features
from train import NonFiniteLoss, lr_lambda, param_groups, rng_state, set_rng_state
from utils import apply_overrides, atomic_torch_save, get_device, set_seed, write_json

# ----------------------------------------------------------------------------- config (edit, or --key=value)
clip_checkpoint = "weights/demo-full/best.pt"  # a train.py checkpoint: its CLIP (frozen) embeds the shapes
data_jsonl = ""             # default: the CLIP checkpoint's
input_mode = "mean"         # mean: one shape embedding | views: the view embeddings as a sequence (transformer mapper)
mapper = "mlp"              # mlp (ClipCap's MLP) | transformer (K learned queries over the input embeddings)
prefix_len = 4              # K prefix vectors
width = 128                 # decoder width; 2-3 layers of 128-256 are plenty for templated captions
layers = 2
heads = 4
mapper_layers = 2           # transformer mapper only
max_len = 32                # BPE tokens per caption, end token included
dropout = 0.1
view_aug = 0.0              # mean input: probability of a single random view's embedding instead of the shape's
embed_noise = 0.0           # std of Gaussian noise on the unit input embedding (CapDec): bridges train/test shapes
epochs = 40
batch_size = 64
lr = 1e-3
weight_decay = 0.01         # AdamW, not on biases, norms and 1-d parameters
warmup_steps = 50           # linear warmup, then cosine decay to 0
grad_clip = 1.0             # max gradient norm (0 = off)
w_align = 0.0               # CLIP-guided: 1 - cos(CLIP text embedding of the soft teacher-forced caption, shape)
w_contrastive = 0.0         # CLIP-guided: symmetric InfoNCE of those text embeddings against the batch's shapes
align_tau = 1.0             # softmax temperature of the decoder's token distributions fed to CLIP
decode = "greedy"           # greedy | beam | nucleus (validation decodes greedily when this is nucleus); on the toy
                            # val split greedy beat beam with length_penalty 1 (CIDEr 2.18 vs 2.11)
beam_size = 3
length_penalty = 0.0        # beam: score = sum log p / length ** length_penalty (1 chose long, colourless
                            # template captions on the toy val split: CIDEr 2.11 vs 2.27 with 0)
top_p = 0.9                 # nucleus
temperature = 1.0           # nucleus
no_repeat_ngram = 3         # forbid any n-gram twice in a caption (0 = off)
patience = 15               # early stopping: epochs without a better select_metric (CIDEr of 36 val models
                            # jumps +-0.3 between epochs: a small patience stops on a lucky early epoch)
select_metric = "CIDEr"     # val metric (of the decoded val captions) for best.pt and early stopping
num_workers = 2             # DataLoader workers for the one-off feature encoding
device = "auto"
cpu_threads = 1             # torch threads for the training loop on a CPU (0 = torch's default): the decoder's
                            # matrices are tiny and a second thread mostly waits; on 2 shared cores an epoch took
                            # 4 s with 1 thread and 23-36 s with 2
seed = 0
run_name = ""               # default: <timestamp>-captioner-<clip run>
resume = ""                 # a last.pt path, or "latest"
stop_after_epochs = 0       # stop (resumably) after this many epochs in this process
logs_dir = "logs"
weights_dir = "weights"
cache_dir = "data/cache"
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k != "DEFAULTS"}


# ----------------------------------------------------------------------------- data: cached shape embeddings
def shape_data(wrapper, clip_ckpt, cfg, split, preprocess, dev):
    """Per model of a split: unit view embeddings (n_models, V, D), the shape embedding (n_models, D), captions.
    The frozen backbone features come from train.py's cache, keyed by the CLIP checkpoint file and the renders."""
    ccfg = clip_ckpt["config"]
    identity = dict(clip_model=ccfg["clip_model"], clip_weights=ccfg.get("clip_weights", ""), seed=ccfg.get("seed", 0),
                    clip_checkpoint=cfg["clip_checkpoint"])
    feats, ds = cached_features(wrapper, preprocess, cfg["data_jsonl"], split, dev, cfg["cache_dir"], identity,
                                cfg["num_workers"])
    with torch.no_grad():
        img = F.normalize(wrapper.project_image(feats["image"].to(dev)).float().cpu(), dim=-1)
    views = group_views(img, feats["image_model"], len(ds.model_ids))
    return {"views": views, "shapes": F.normalize(views.mean(1), dim=-1), "captions": ds.captions,
            "model_ids": ds.model_ids,
            "cap_model": torch.tensor([m for m, caps in enumerate(ds.captions) for _ in caps]),
            "cap_text": [c for caps in ds.captions for c in caps]}


def model_input(data, models, cfg, train=False):
    """What the decoder sees for these model indices: the shape embedding or the view sequence, augmented."""
    if cfg["input_mode"] == "views":
        x = data["views"][models]
    else:
        x = data["shapes"][models]
        if train and cfg["view_aug"] > 0:
            single = data["views"][models, torch.randint(data["views"].shape[1], (len(models),))]
            swap = torch.rand(len(models)) < cfg["view_aug"]
            x = torch.where(swap[:, None], single, x)
    if train and cfg["embed_noise"] > 0:
        x = F.normalize(x + cfg["embed_noise"] * torch.randn_like(x), dim=-1)
    return x


def losses(dec, clip_model, x, shapes, tokens, ids, cfg):
    """{"ce", optionally "align" and "contrastive", "loss": the weighted sum}."""
    logits = dec(x, tokens[:, :-1])
    target = tokens[:, 1:]
    out = {"ce": F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD)}
    if cfg["w_align"] > 0 or cfg["w_contrastive"] > 0:
        # Differentiable CLIP guidance on the teacher-forced distributions: each position's input to CLIP's text
        # encoder is the expected token embedding under the decoder's softmax (no sampling, no REINFORCE).
        lengths = (target != PAD).sum(1)
        probs = F.softmax(logits[:, : int(lengths.max())].float() / cfg["align_tau"], dim=-1)
        text = soft_text_embedding(clip_model, probs, dec.clip_token_ids, lengths - 1).float()
        if cfg["w_align"] > 0:
            out["align"] = 1 - F.cosine_similarity(text, shapes, dim=-1).mean()
        if cfg["w_contrastive"] > 0:
            out["contrastive"] = ClipLoss()(shapes, text, clip_model.logit_scale.exp(), ids=ids)
    out["loss"] = (out["ce"] + cfg["w_align"] * out.get("align", 0.0)
                   + cfg["w_contrastive"] * out.get("contrastive", 0.0))
    return out


@torch.no_grad()
def validate(dec, data, cfg, dev):
    """Caption metrics (no METEOR: it costs a JVM) of the decoded val captions, and the val cross-entropy."""
    dec.eval()
    tokens = encode_captions(data["cap_text"], dec.clip_ids, cfg["max_len"]).to(dev)
    x = model_input(data, data["cap_model"], cfg).to(dev)
    ce = losses(dec, None, x, None, tokens, None, dict(cfg, w_align=0, w_contrastive=0))["ce"].item()
    kw = decode_kwargs(cfg, decode="greedy" if cfg["decode"] == "nucleus" else None)
    preds = dec.generate(model_input(data, torch.arange(len(data["model_ids"])), cfg).to(dev), **kw)
    metrics = evaluate_caption(data["captions"], preds, meteor=False)
    metrics["ce"] = ce
    return metrics, preds


# ----------------------------------------------------------------------------- main
def main(argv=None):
    cfg = apply_overrides(DEFAULTS, argv)
    ckpt = None
    if cfg["resume"]:
        path = newest_captioner(cfg["weights_dir"]) if cfg["resume"] == "latest" else cfg["resume"]
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = apply_overrides({**DEFAULTS, **ckpt["config"], "resume": path}, argv)  # stored config + command line
        cfg["resume"] = path
    dev = get_device(cfg["device"])
    if not Path(cfg["clip_checkpoint"]).is_file():
        raise FileNotFoundError(f"--clip_checkpoint={cfg['clip_checkpoint']}: not found (train a CLIP with train.py first)")
    wrapper, preprocess, clip_ckpt = load_checkpoint(cfg["clip_checkpoint"], dev)
    wrapper = CLIPWrapper(wrapper.model, "zero_shot").eval()  # frozen: nothing of CLIP trains here
    cfg["data_jsonl"] = cfg["data_jsonl"] or clip_ckpt["config"]["data_jsonl"]
    if not cfg["run_name"]:
        cfg["run_name"] = f"{time.strftime('%Y%m%d-%H%M%S')}-captioner-{Path(cfg['clip_checkpoint']).parent.name}"
    if cfg["input_mode"] == "views" and cfg["mapper"] != "transformer":
        raise ValueError("--input_mode=views needs --mapper=transformer (the MLP mapper takes one embedding)")
    log_dir, ckpt_dir = Path(cfg["logs_dir"]) / cfg["run_name"], Path(cfg["weights_dir"]) / cfg["run_name"]
    clip_label = f"{model_label(clip_ckpt['config']['clip_model'])}, {clip_ckpt['config']['train_mode']}"

    train_data = shape_data(wrapper, clip_ckpt, cfg, "train", preprocess, dev)
    val_data = shape_data(wrapper, clip_ckpt, cfg, "val", preprocess, dev)
    set_seed(cfg["seed"])  # after the features: encoding them (a cache miss) draws from the RNG, a hit does not
    if ckpt is not None:
        dec = CaptionDecoder(**ckpt["decoder_args"])
        dec.load_state_dict(ckpt["model"])
    else:
        clip_ids, detok = build_vocab(train_data["cap_text"])
        dec = CaptionDecoder(train_data["shapes"].shape[1], clip_ids, detok, prefix_len=cfg["prefix_len"],
                             width=cfg["width"], layers=cfg["layers"], heads=cfg["heads"], mapper=cfg["mapper"],
                             mapper_layers=cfg["mapper_layers"], max_len=cfg["max_len"], dropout=cfg["dropout"])
    dec.to(dev)
    tokens = encode_captions(train_data["cap_text"], dec.clip_ids, cfg["max_len"])
    n_pairs = len(tokens)
    steps_per_epoch = math.ceil(n_pairs / cfg["batch_size"])
    print(f"CLIP: {clip_label} from {cfg['clip_checkpoint']} (frozen); {wrapper.summary()}")
    print(f"captioner: {sum(p.numel() for p in dec.parameters()):,} parameters, vocabulary {len(dec.clip_ids)} BPE "
          f"tokens; {len(train_data['model_ids'])} train models, {n_pairs} (shape, caption) pairs; device {dev}")

    # train.param_groups reads wrapper.model.named_parameters(): the decoder stands in for CLIP there
    optimizer = torch.optim.AdamW(param_groups(SimpleNamespace(model=dec), cfg["weight_decay"]), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg["warmup_steps"], steps_per_epoch * cfg["epochs"]))
    start_epoch, step, best, best_epoch, stale = 0, 0, -float("inf"), -1, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        best, best_epoch, stale = ckpt["best_metric"], ckpt["best_epoch"], ckpt["epochs_without_improvement"]
        set_rng_state(ckpt["rng"])
        print(f"resumed from {cfg['resume']} at epoch {start_epoch}, step {step}")

    from torch.utils.tensorboard import SummaryWriter
    log_dir.mkdir(parents=True, exist_ok=True)
    write_json(log_dir / "config.json", cfg)
    writer = SummaryWriter(str(log_dir))
    print(f"run: {log_dir}  checkpoints: {ckpt_dir}")

    def save(name, epoch, metrics):
        atomic_torch_save({
            "model": dec.state_dict(), "decoder_args": dec.args, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "config": cfg, "best_metric": best,
            "best_epoch": best_epoch, "epochs_without_improvement": stale, "metrics": metrics, "rng": rng_state(),
            "clip_checkpoint": cfg["clip_checkpoint"], "clip_label": clip_label}, ckpt_dir / name)

    epoch, metrics, preds = start_epoch, {}, []
    threads = torch.get_num_threads()
    if dev == "cpu" and cfg["cpu_threads"] > 0:
        torch.set_num_threads(cfg["cpu_threads"])
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            dec.train()
            t0, sums = time.time(), {}
            order = torch.randperm(n_pairs)
            for i in range(0, n_pairs, cfg["batch_size"]):
                idx = order[i:i + cfg["batch_size"]]
                models = train_data["cap_model"][idx]
                x = model_input(train_data, models, cfg, train=True).to(dev)
                out = losses(dec, wrapper.model, x, train_data["shapes"][models].to(dev), tokens[idx].to(dev),
                             models.to(dev), cfg)
                if not torch.isfinite(out["loss"]):
                    raise NonFiniteLoss(f"non-finite loss ({out['loss'].item()}) at step {step}, epoch {epoch}; "
                                        f"the last good checkpoint in {ckpt_dir} is left as it was")
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                if cfg["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(dec.parameters(), cfg["grad_clip"])
                optimizer.step()
                scheduler.step()
                step += 1
                for k, v in out.items():
                    writer.add_scalar(f"train/{k}", v.item(), step)
                    sums[k] = sums.get(k, 0.0) + v.item()
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            metrics, preds = validate(dec, val_data, cfg, dev)
            improved = metrics[cfg["select_metric"]] > best
            if improved:
                best, best_epoch, stale = metrics[cfg["select_metric"]], epoch, 0
            else:
                stale += 1
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
            writer.flush()
            parts = "  ".join(f"{k} {v / steps_per_epoch:.3f}" for k, v in sums.items())
            print(f"epoch {epoch + 1}/{cfg['epochs']}  {parts}  val {cfg['select_metric']} "
                  f"{metrics[cfg['select_metric']]:.3f}  ({time.time() - t0:.1f}s)", flush=True)
            save("last.pt", epoch + 1, metrics)
            if improved:
                save("best.pt", epoch + 1, metrics)
            if stale >= cfg["patience"]:
                print(f"early stopping: no better {cfg['select_metric']} for {stale} epochs")
                break
            if cfg["stop_after_epochs"] and epoch + 1 - start_epoch >= cfg["stop_after_epochs"]:
                print(f"stopping after {cfg['stop_after_epochs']} epochs as asked; continue with --resume={ckpt_dir / 'last.pt'}")
                break
    except KeyboardInterrupt:
        save("last.pt", epoch, metrics)  # this epoch did not finish: a resume runs it again
        print(f"\ninterrupted: saved {ckpt_dir / 'last.pt'}; continue with --resume={ckpt_dir / 'last.pt'}")
        raise SystemExit(130)
    finally:
        writer.close()
        torch.set_num_threads(threads)
    examples = [{"model_id": m, "caption": p, "references": r}
                for m, p, r in list(zip(val_data["model_ids"], preds, val_data["captions"]))[:8]]
    print(f"best val {cfg['select_metric']} {best:.3f} at epoch {best_epoch + 1}; CLIP: {clip_label}")
    for e in examples[:4]:
        print(f"  {e['model_id']}: {e['caption']!r}")
    write_json(log_dir / "results.json", {"clip": clip_label, "best_epoch": best_epoch + 1, "val": metrics,
                                          "best_" + cfg["select_metric"]: best, "val_examples": examples})
    return {"run_dir": str(log_dir), "weights_dir": str(ckpt_dir), "val": metrics, "best": best}


if __name__ == "__main__":
    main()
