"""The part every CLIP-tuning task shares: loading CLIP with its train mode, warm starts, checkpoint contents."""
from pathlib import Path

import torch

from models.clip_wrapper import (CLIPWrapper, clip_fingerprint, load_clip, model_label, read_checkpoint,
                                 weights_note)
from utils import param_groups, rank_zero_first


class ClipTask:
    kind = "clip"
    uses_ddp = True
    extra_results = {}
    optim_args = {"betas": (0.9, 0.98), "eps": 1e-6}  # CLIP's AdamW settings (its paper), kept for fine-tuning

    def __init__(self, cfg):
        self.cfg = cfg

    def say(self, *a):
        if self.rank == 0:
            print(*a, flush=True)

    def setup_clip(self, dev, rank, world, ckpt):
        """Load CLIP in the run's train mode, with the weights of the resumed checkpoint or of init_from."""
        cfg = self.cfg
        self.dev, self.rank, self.world = dev, rank, world
        with rank_zero_first(rank, world):  # a first use downloads the weights: once, not by every rank at once
            model, self.preprocess = load_clip(cfg["clip_model"], dev, weights=cfg["clip_weights"] or None,
                                               seed=cfg["seed"])
        if ckpt is not None:
            model.load_state_dict(ckpt["model"], strict=False)
        elif cfg["init_from"]:
            n = load_init(model, cfg)
            self.say(f"init_from {cfg['init_from']}: loaded {n} tensors (model weights only)")
        self.wrapper = CLIPWrapper(model, cfg["train_mode"]).to(dev)
        fingerprint = clip_fingerprint(cfg["clip_model"], cfg["clip_weights"] or None)
        self.provenance = {"clip_fingerprint": fingerprint}
        self.label = model_label(cfg["clip_model"]) + weights_note(fingerprint)

    def trains(self):
        return self.cfg["train_mode"] != "zero_shot"

    def param_groups(self, weight_decay):
        return param_groups(self.wrapper.model, weight_decay)

    def after_step(self):
        with torch.no_grad():
            self.wrapper.logit_scale.clamp_(0, SCALE_MAX)

    def checkpoint(self, best):
        """Every tensor of the model, so that the checkpoint loads without its base weights file; a linear probe
        from the base weights stores only what it trains (the base file then comes along)."""
        linear_on_base = self.cfg["train_mode"] == "linear" and not self.cfg["init_from"]
        state = self.wrapper.trainable_state_dict() if linear_on_base else self.wrapper.model.state_dict()
        return {"model": {k: v.detach().clone() for k, v in state.items()}, "model_label": self.label, **self.provenance}


SCALE_MAX = 4.605170185988092  # log(100): CLIP's temperature clamp, logit scale <= 100


def load_init(model, cfg):
    """Load the model weights of `init_from` (a train.py checkpoint) over the base weights; nothing else of that
    run (optimizer, step, config) comes along: this starts a new run. Returns the number of tensors loaded."""
    path = Path(cfg["init_from"])
    if not path.is_file():
        raise FileNotFoundError(f"--init_from={path}: not found")
    ckpt = read_checkpoint(path)  # names the file when it is not a CLIP checkpoint of train.py
    src = ckpt["config"]
    for key in ("clip_model", "clip_weights"):
        if src.get(key, cfg[key]) != cfg[key]:
            raise ValueError(f"--init_from={path}: trained with {key}={src[key]!r}, this run has {cfg[key]!r}")
    unknown = set(ckpt["model"]) - set(model.state_dict())
    if unknown:
        raise ValueError(f"--init_from={path}: tensors this {cfg['clip_model']} model lacks: {sorted(unknown)[:5]}")
    model.load_state_dict(ckpt["model"], strict=False)
    return len(ckpt["model"])
