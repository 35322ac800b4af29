"""captioner: the generative captioner (models/caption_decoder.py) on the shape embeddings of a frozen CLIP.

The CLIP is frozen, so every view of every model is encoded once (features.cached_features, keyed by the CLIP
checkpoint file and the renders) and an epoch only runs the small decoder. A training example is (a train model's
shape embedding, one of its captions); the shape embedding is what evaluation uses: the mean of the L2-normalised
view embeddings.
"""
import math

import torch
import torch.nn.functional as F

from features import cached_features
from metrics.caption import evaluate_caption
from models.caption_decoder import (PAD, CaptionDecoder, build_vocab, decode_kwargs, encode_captions, group_views,
                                    soft_text_embedding)
from models.clip_wrapper import CLIPWrapper, load_checkpoint, model_label
from models.losses import ClipLoss
from utils import param_groups, rank_zero_first


def shape_data(wrapper, preprocess, clip_ckpt, cfg, split, dev):
    """Per model of a split: unit view embeddings (n_models, V, D), the shape embedding (n_models, D), captions."""
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


class CaptionLoss(torch.nn.Module):
    """The decoder and its losses: {"ce", optionally "align" and "contrastive", "loss": the weighted sum}."""

    def __init__(self, dec, clip_model, cfg):
        super().__init__()
        self.dec, self.clip_model, self.cfg = dec, clip_model, cfg

    def forward(self, x, shapes, tokens, ids):
        cfg, dec = self.cfg, self.dec
        logits = dec(x, tokens[:, :-1])
        target = tokens[:, 1:]
        with torch.autocast(logits.device.type, enabled=False):
            out = {"ce": F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=PAD)}
            if cfg["w_align"] > 0 or cfg["w_contrastive"] > 0:
                # Differentiable CLIP guidance on the teacher-forced distributions: each position's input to CLIP's
                # text encoder is the expected token embedding under the decoder's softmax (no sampling).
                lengths = (target != PAD).sum(1)
                probs = F.softmax(logits[:, : int(lengths.max())].float() / cfg["align_tau"], dim=-1)
                text = soft_text_embedding(self.clip_model, probs, dec.clip_token_ids, lengths - 1).float()
                if cfg["w_align"] > 0:
                    out["align"] = 1 - F.cosine_similarity(text, shapes, dim=-1).mean()
                if cfg["w_contrastive"] > 0:
                    out["contrastive"] = ClipLoss()(shapes, text, self.clip_model.logit_scale.exp(), ids=ids)
        loss = out["ce"] + cfg["w_align"] * out.get("align", 0.0) + cfg["w_contrastive"] * out.get("contrastive", 0.0)
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}


class Captioner:
    kind = "captioner"
    uses_ddp = True

    def __init__(self, cfg):
        if cfg["input_mode"] == "views" and cfg["mapper"] != "transformer":
            raise ValueError("--input_mode=views needs --mapper=transformer (the MLP mapper takes one embedding)")
        self.cfg = cfg
        self.select_metric = cfg["select_metric"]
        self.extra_results = {}
        self.provenance = {}

    def setup(self, dev, rank, world, ckpt=None):
        cfg = self.cfg
        self.dev, self.rank, self.world = dev, rank, world
        with rank_zero_first(rank, world):  # its base weights may download on first use: once
            wrapper, preprocess, clip_ckpt = load_checkpoint(cfg["clip_checkpoint"], dev)
        self.wrapper = CLIPWrapper(wrapper.model, "zero_shot").eval()  # frozen: nothing of CLIP trains here
        self.label = f"{model_label(clip_ckpt['config']['clip_model'])}, {clip_ckpt['config']['train_mode']}"
        self.provenance = {"clip_checkpoint": str(cfg["clip_checkpoint"]),
                           "clip_fingerprint": clip_ckpt.get("clip_fingerprint")}
        with rank_zero_first(rank, world):  # rank 0 writes the feature cache, the others read it
            self.train_data = shape_data(self.wrapper, preprocess, clip_ckpt, cfg, "train", dev)
            self.val_data = shape_data(self.wrapper, preprocess, clip_ckpt, cfg, "val", dev)
        if ckpt is not None:
            dec = CaptionDecoder(**ckpt["decoder_args"])
            dec.load_state_dict(ckpt["model"])
        else:
            clip_ids, detok = build_vocab(self.train_data["cap_text"])
            dec = CaptionDecoder(self.train_data["shapes"].shape[1], clip_ids, detok, prefix_len=cfg["prefix_len"],
                                 width=cfg["width"], layers=cfg["layers"], heads=cfg["heads"], mapper=cfg["mapper"],
                                 mapper_layers=cfg["mapper_layers"], max_len=cfg["max_len"], dropout=cfg["dropout"])
        self.dec = dec.to(dev)
        self.tokens = encode_captions(self.train_data["cap_text"], dec.clip_ids, cfg["max_len"])
        self.module = CaptionLoss(self.dec, self.wrapper.model, cfg)
        if rank == 0:
            print(f"CLIP: {self.label} from {cfg['clip_checkpoint']} (frozen); {self.wrapper.summary()}")
            print(f"captioner: {sum(p.numel() for p in dec.parameters()):,} parameters, vocabulary "
                  f"{len(dec.clip_ids)} BPE tokens; {len(self.train_data['model_ids'])} train models, "
                  f"{len(self.tokens)} (shape, caption) pairs; device {dev}", flush=True)

    def trains(self):
        return True

    def param_groups(self, weight_decay):
        return param_groups(self.dec, weight_decay)

    def steps_per_epoch(self):
        n_batches = math.ceil(len(self.tokens) / self.cfg["batch_size"])
        return n_batches if self.world == 1 else n_batches // self.world  # every rank the same number

    def batches(self, epoch):
        """Batches of (shape, caption) pairs in an order drawn from (seed, epoch), the same on every rank."""
        cfg, data, dev = self.cfg, self.train_data, self.dev
        order = torch.randperm(len(self.tokens), generator=torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + epoch))
        starts = list(range(0, len(order), cfg["batch_size"]))[self.rank::self.world][: self.steps_per_epoch()]
        for i in starts:
            idx = order[i:i + cfg["batch_size"]]
            models = data["cap_model"][idx]
            x = model_input(data, models, cfg, train=True).to(dev)
            yield x, data["shapes"][models].to(dev), self.tokens[idx].to(dev), models.to(dev)

    def after_step(self):
        pass

    @torch.no_grad()
    def validate(self):
        """Caption metrics (no METEOR: it costs a JVM) of the decoded val captions, and the val cross-entropy."""
        cfg, dec, data, dev = self.cfg, self.dec, self.val_data, self.dev
        dec.eval()
        tokens = encode_captions(data["cap_text"], dec.clip_ids, cfg["max_len"]).to(dev)
        x = model_input(data, data["cap_model"], cfg).to(dev)
        ce = F.cross_entropy(dec(x, tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD).item()
        kw = decode_kwargs(cfg, decode="greedy" if cfg["decode"] == "nucleus" else None)
        preds = dec.generate(model_input(data, torch.arange(len(data["model_ids"])), cfg).to(dev), **kw)
        dec.train()
        metrics = evaluate_caption(data["captions"], preds, meteor=False)
        metrics["ce"] = ce
        self.extra_results = {"clip": self.label, "val_examples": [
            {"model_id": m, "caption": p, "references": r}
            for m, p, r in list(zip(data["model_ids"], preds, data["captions"]))[:8]]}
        return metrics

    def checkpoint(self, best):
        return {"model": {k: v.detach().clone() for k, v in self.dec.state_dict().items()},
                "decoder_args": self.dec.args, "clip_checkpoint": self.cfg["clip_checkpoint"], "clip_label": self.label}
