"""composed: composed retrieval (a reference and a modification text -> the target) in CLIP4Cir's two stages.

Stage 1 (ComposedStage1): fine-tune CLIP, both towers or one (train_mode full | image | text, CLIP4Cir's
--encoder), so that element_wise_sum(f_img(reference), f_txt(caption)) finds f_img(target): the symmetric
contrastive loss over the batch (models.losses.ClipLoss; two draws with the same target are both positives) at
CLIP's learnable temperature. Each draw takes a random view of each shape (composed_dataset.ComposedDraws).
Stage 2 (ComposedStage2): that CLIP frozen (init_from = the stage-1 run's best.pt), every image and caption of the
train and val splits encoded once and cached (features.feature_cache), and a Combiner or MoE Combiner
(models/combiner.py) trained from scratch on the cached features with the same loss at CLIP4Cir's fixed
temperature 100; an epoch never runs CLIP.
Validation: composed_metrics on the val pairs (metrics/composed.py); best.pt by mean_R@5_Rsubset@1 (toy, CIRR)
or mean_R@10_R@50 (FashionIQ), CLIP4Cir's choices.
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from composed_dataset import ComposedDraws, encode_composed, load_composed, merge_sets, score_set
from features import feature_cache
from metrics.composed import KS, SUBSET_KS, benchmark_metrics
from models.clip_weights import safe_load, weights_fingerprint
from models.clip_wrapper import CLIPWrapper, load_checkpoint, load_clip, model_label, tokenize
from models.combiner import LOGIT_SCALE, build_combiner, element_wise_sum
from models.losses import ClipLoss
from multiview_dataset import EpochSampler, SeededDraws
from tasks.clip_task import ClipTask
from utils import param_groups, rank_zero_first

SELECT_DEFAULT = {"toy": "mean_R@5_Rsubset@1", "cirr": "mean_R@5_Rsubset@1", "fashioniq": "mean_R@10_R@50"}
STAGE1_MODES = ("zero_shot", "full", "image", "text")


def metric_names(dataset):
    """The validation metrics a dataset's runs report (what select_metric may name)."""
    names = [f"R@{k}" for k in KS] + ["mean_R@10_R@50"]
    if dataset == "fashioniq":
        return names + [f"{g}/R@{k}" for g in ("dress", "shirt", "toptee") for k in KS]
    return names + [f"Rsubset@{k}" for k in SUBSET_KS] + ["mean_R@5_Rsubset@1"]


def collate_draws(batch):
    """(reference images, target images, tokens, target item indices) of ComposedDraws items."""
    return (torch.stack([x[0] for x in batch]), torch.stack([x[1] for x in batch]), tokenize([x[2] for x in batch]),
            torch.tensor([x[3] for x in batch]))


class SumLoss(torch.nn.Module):
    """CLIP and the stage-1 loss: forward(reference images, target images, tokens, target ids)."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper, self.loss_fn = wrapper, ClipLoss()

    def forward(self, reference, target, tokens, ids):
        w = self.wrapper
        img = w.encode_image(torch.cat([reference, target]))  # one pass of the image tower for both
        txt = w.encode_text(tokens)
        with torch.autocast(img.device.type, enabled=False):  # the loss in fp32: bf16 logits skew its gradient
            query = element_wise_sum(img[: len(reference)].float(), txt.float())
            loss = self.loss_fn(query, img[len(reference):].float(), w.logit_scale.exp().float(), ids=ids)
        return {"loss": loss, "logit_scale": w.logit_scale.exp().detach()}


class CombinerLoss(torch.nn.Module):
    """A Combiner and the stage-2 loss: forward(reference features, caption features, target features, target ids,
    group features [batch, M, D], group mask [batch, M]) -> CLIP4Cir's contrastive loss over the batch, plus
    group_weight x the group loss when group features come: a cross-entropy of each query over its own target and
    the other members of its group (the reference among them), at the same temperature.

    Why the group term: in-batch negatives are other groups' shapes, which colour and category already tell apart,
    so the batch loss alone rewards leaning on the text; the gallery's hard candidates are the reference's own
    variants, which only the edit separates (CIRR's Rsubset task)."""

    def __init__(self, combiner, group_weight=0.0):
        super().__init__()
        self.combiner, self.loss_fn, self.group_weight = combiner, ClipLoss(), group_weight

    def forward(self, reference, text, target, ids, group=None, group_mask=None):
        query = self.combiner(F.normalize(reference, dim=-1), F.normalize(text, dim=-1))
        with torch.autocast(query.device.type, enabled=False):
            query, target = query.float(), target.float()
            out = {"loss": self.loss_fn(query, target, LOGIT_SCALE, ids=ids)}
            if group is not None and self.group_weight:
                candidates = F.normalize(torch.cat([target[:, None], group.float()], 1), dim=-1)  # target first
                logits = LOGIT_SCALE * torch.einsum("bd,bmd->bm", query, candidates)
                keep = torch.cat([torch.ones_like(group_mask[:, :1]), group_mask], 1)
                out["group"] = F.cross_entropy(logits.masked_fill(~keep, float("-inf")),
                                               torch.zeros(len(query), dtype=torch.long, device=query.device))
                out["contrastive"] = out["loss"]
                out["loss"] = out["loss"] + self.group_weight * out["group"]
            return out


class _Composed(ClipTask):
    kind = "composed"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.select_metric = cfg["select_metric"] or SELECT_DEFAULT.get(cfg["dataset"], "")
        if cfg["select_metric"] and cfg["select_metric"] not in metric_names(cfg["dataset"]):
            raise ValueError(f"--select_metric={cfg['select_metric']}: {cfg['dataset']} runs report "
                             f"{', '.join(metric_names(cfg['dataset']))}")

    def _val_sets(self):
        sets = load_composed(self.cfg["dataset"], self.cfg["data_root"], "val")
        for s in sets:
            if not s.has_targets:
                raise ValueError(f"{s.source}: val pairs without targets cannot validate")
        return sets


class ComposedStage1(_Composed):
    """CLIP fine-tuned on element_wise_sum(reference, caption) -> target."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg["train_mode"] not in STAGE1_MODES:
            raise ValueError(f"stage 1 trains train_mode full, image or text (or evaluates zero_shot), "
                             f"not {cfg['train_mode']!r}")

    def setup(self, dev, rank, world, ckpt=None):
        cfg = self.cfg
        self.setup_clip(dev, rank, world, ckpt)
        self.say(f"model: {self.label}; {self.wrapper.summary()}")
        self.val_sets = self._val_sets()  # fails now, not after an epoch
        self.module = SumLoss(self.wrapper)
        if not self.trains():
            return
        train = merge_sets(load_composed(cfg["dataset"], cfg["data_root"], "train"))
        ds = ComposedDraws(train, self.preprocess, cfg["draws_per_pair"])
        self.datasets = [ds]  # fit() reports their unreadable files at the end
        self.sampler = EpochSampler(torch.utils.data.DistributedSampler(ds, world, rank, seed=cfg["seed"]))
        self.loader = torch.utils.data.DataLoader(
            SeededDraws(ds, cfg["seed"]), batch_size=cfg["batch_size"], sampler=self.sampler, drop_last=True,
            num_workers=cfg["num_workers"], persistent_workers=cfg["num_workers"] > 0,
            pin_memory=dev.startswith("cuda"), collate_fn=collate_draws)
        self.say(f"composed train: {len(train.pairs)} pairs over {len(train.item_ids)} items; val: "
                 f"{sum(len(s.pairs) for s in self.val_sets)} pairs")

    def steps_per_epoch(self):
        return len(self.loader)

    def batches(self, epoch):
        self.sampler.set_epoch(epoch)
        dev = self.dev
        for batch in self.loader:
            yield tuple(x.to(dev, non_blocking=True) for x in batch)

    @torch.no_grad()
    def validate(self):
        cfg = self.cfg
        per_set = {s.name: score_set(s, encode_composed(self.wrapper, s, self.preprocess, self.dev, cfg["batch_size"],
                                                        cfg["num_workers"]), element_wise_sum)
                   for s in self.val_sets}
        return benchmark_metrics(per_set)


class ComposedStage2(_Composed):
    """A Combiner on the cached features of a frozen CLIP."""
    optim_args = {}  # torch's AdamW defaults (CLIP4Cir trains its Combiner with Adam)

    def __init__(self, cfg):
        cfg["train_mode"] = "zero_shot"  # nothing of CLIP trains in stage 2; the config records it so
        super().__init__(cfg)

    def trains(self):
        return True

    def setup(self, dev, rank, world, ckpt=None):
        cfg = self.cfg
        self.setup_clip(dev, rank, world, None)  # the frozen CLIP: base weights, or init_from's
        if cfg["init_from"]:
            self.provenance["init_from_fingerprint"] = weights_fingerprint(cfg["init_from"])
        if ckpt is not None and ckpt.get("init_from_fingerprint") != self.provenance.get("init_from_fingerprint"):
            raise ValueError(f"{cfg['resume']}: this Combiner trains on the CLIP of {cfg['init_from']}, which is "
                             f"another file now ({ckpt.get('init_from_fingerprint')} when the run began)")
        train = merge_sets(load_composed(cfg["dataset"], cfg["data_root"], "train"))
        if not train.has_targets:
            raise ValueError(f"{train.source}: pairs without targets cannot train")
        self.val_sets = self._val_sets()
        with rank_zero_first(rank, world):  # rank 0 writes the feature cache, the others read it
            self.train_feats = self._features(train, "train")
            self.val_feats = [self._features(s, "val") for s in self.val_sets]
        self._draw_tables(train)
        combiner = build_combiner(cfg["combiner"], self.train_feats["views"].shape[1], cfg["projection_mult"],
                                  cfg["hidden_mult"], cfg["n_experts"], cfg["attention_heads"], cfg["dropout"])
        if ckpt is not None:
            combiner.load_state_dict(ckpt["model"])
        self.combiner = combiner.to(dev)
        self.module = CombinerLoss(self.combiner, cfg["group_weight"])
        self.label = f"{cfg['combiner']} on {self.label}" + (f" from {cfg['init_from']}" if cfg["init_from"] else "")
        self.say(f"model: {self.label} (CLIP frozen); {sum(p.numel() for p in combiner.parameters()):,} parameters; "
                 f"{len(train.pairs)} train pairs over {len(train.item_ids)} items, features cached")

    def _features(self, cset, split):
        cfg = self.cfg
        identity = {k: cfg[k] for k in ("clip_model", "clip_weights", "init_from")}
        identity["seed"] = cfg["seed"] if cfg["clip_model"] == "tiny" else ""  # a random init depends on it
        data = json.dumps({"items": cset.item_ids, "pairs": [[p.reference, p.target, p.caption, p.train_captions]
                                                             for p in cset.pairs]}).encode()
        files = [path for paths in cset.item_images for path in paths]
        prefix = "-".join(filter(None, ["composed", cfg["dataset"], split, cset.name]))
        return feature_cache(cfg["cache_dir"], prefix, identity, data, files, lambda: encode_composed(
            self.wrapper, cset, self.preprocess, self.dev, 64, cfg["num_workers"], train_captions=True))

    def _draw_tables(self, train):
        """Per item the rows of its views, per pair the rows of its caption variants (start, count, order)."""
        def table(owner, n):
            count = torch.bincount(owner, minlength=n)
            return count.cumsum(0) - count, count, torch.argsort(owner, stable=True)
        f = self.train_feats
        self.views_of = table(f["view_item"], len(train.item_ids))
        self.captions_of = table(f["train_caption_pair"], len(train.pairs))
        self.ref_item = torch.tensor([train.index[p.reference] for p in train.pairs])
        self.tgt_item = torch.tensor([train.index[p.target] for p in train.pairs])
        # per pair its group's other items, the reference included ([n_pairs, M], -1 pads); where a dataset has no
        # groups (FashionIQ) the reference alone
        groups = [sorted({train.index[m] for m in (p.members or []) + [p.reference] if m in train.index}
                         - {train.index[p.target]}) for p in train.pairs]
        width = max(map(len, groups), default=0)
        self.group_items = torch.tensor([g + [-1] * (width - len(g)) for g in groups]).reshape(len(groups), width)

    def steps_per_epoch(self):
        return (len(self.ref_item) * self.cfg["draws_per_pair"]) // (self.cfg["batch_size"] * self.world)

    def batches(self, epoch):
        """draws_per_pair draws of every pair in an order from (seed, epoch), each with a random view of the
        reference and of the target and a random caption variant; rank r takes its slice of each global batch."""
        cfg, f, dev = self.cfg, self.train_feats, self.dev
        g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + epoch)
        pairs = torch.arange(len(self.ref_item)).repeat(cfg["draws_per_pair"])
        pairs = pairs[torch.randperm(len(pairs), generator=g)]

        def pick(table, owners):
            start, count, order = table
            return order[start[owners] + (torch.rand(len(owners), generator=g) * count[owners]).long()]
        ref, tgt = pick(self.views_of, self.ref_item[pairs]), pick(self.views_of, self.tgt_item[pairs])
        cap = pick(self.captions_of, pairs)
        use_groups = cfg["group_weight"] > 0  # every pair has a group: its reference at least
        if use_groups:  # a random view of every group member, drawn last: the draws above stay those of group_weight 0
            members = self.group_items[pairs]
            group_mask = members >= 0
            group = pick(self.views_of, members.clamp(min=0).flatten()).reshape(members.shape)
        step = cfg["batch_size"] * self.world
        for i in range(0, len(pairs) - step + 1, step):  # the ragged last batch is dropped, as in stage 1
            sl = slice(i + self.rank * cfg["batch_size"], i + (self.rank + 1) * cfg["batch_size"])
            batch = (f["views"][ref[sl]].to(dev), f["train_captions"][cap[sl]].to(dev), f["views"][tgt[sl]].to(dev),
                     self.tgt_item[pairs[sl]].to(dev))
            yield batch + ((f["views"][group[sl]].to(dev), group_mask[sl].to(dev)) if use_groups else ())

    @torch.no_grad()
    def validate(self):
        combiner, dev = self.combiner, self.dev

        def combine(image, text):
            return combiner(image.to(dev), F.normalize(text, dim=-1).to(dev)).float().cpu()
        combiner.eval()
        try:
            per_set = {s.name: score_set(s, f, combine) for s, f in zip(self.val_sets, self.val_feats)}
        finally:
            combiner.train()
        return benchmark_metrics(per_set)

    def param_groups(self, weight_decay):
        return param_groups(self.combiner, weight_decay)

    def after_step(self):
        pass

    def checkpoint(self, best):
        return {"model": {k: v.detach().clone() for k, v in self.combiner.state_dict().items()},
                "combiner_args": self.combiner.args, "model_label": self.label, **self.provenance}


def load_stage2(path, device="cpu"):
    """(combiner in eval mode, its frozen CLIP's wrapper, preprocess, label) of a stage-2 best.pt / last.pt. The
    CLIP is the run's: its init_from file (checked against the fingerprint recorded in training), else its base."""
    ckpt = safe_load(path, "a stage-2 checkpoint of train_composed.py")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "composed" or "combiner_args" not in ckpt:
        raise ValueError(f"{path}: not a stage-2 checkpoint of train_composed.py (no combiner in it)")
    cfg, expected = ckpt["config"], ckpt.get("init_from_fingerprint") or {}
    if cfg.get("init_from"):
        got = weights_fingerprint(cfg["init_from"]) if Path(cfg["init_from"]).is_file() else None
        if got is None or any(got[k] != expected.get(k) for k in ("sha256_first_mb", "bytes")):
            raise ValueError(f"{path}: its Combiner was trained on the CLIP of {cfg['init_from']}, which is "
                             f"{'gone' if got is None else 'another file now'} (recorded: {expected})")
        wrapper, preprocess, _ = load_checkpoint(cfg["init_from"], device)
        model = wrapper.model
    else:
        model, preprocess = load_clip(cfg["clip_model"], device, weights=cfg.get("clip_weights") or None,
                                      seed=cfg.get("seed", 0))
    combiner = build_combiner(**ckpt["combiner_args"])
    combiner.load_state_dict(ckpt["model"])
    label = ckpt.get("model_label") or f"{cfg['combiner']} on {model_label(cfg['clip_model'])}"
    return combiner.to(device).eval(), CLIPWrapper(model, "zero_shot").eval(), preprocess, label

