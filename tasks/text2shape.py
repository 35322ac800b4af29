"""text2shape: CLIP on (render, caption) pairs of usable_samples.jsonl, every tower or a linear probe.

Full / tower training draws a random view and caption per model (MultiViewDataset, train mode) through a DataLoader;
the linear probe trains the projections on backbone features cached once (features.cached_features), so an epoch
never runs the encoders. Validation: Recall@K both ways on the val split, shapes pooled from their views.
"""
import torch

from features import cached_features, encode_split
from models.clip_wrapper import tokenize
from models.losses import build_loss
from multiview_dataset import EpochSampler, MultiViewDataset, SeededDraws
from metrics.retrieval import evaluate_retrieval
from tasks.clip_task import ClipTask
from utils import rank_zero_first


def collate_pairs(batch):
    """(images, tokens, model indices) of (image, caption, model index) items."""
    return (torch.stack([x[0] for x in batch]), tokenize([x[1] for x in batch]), torch.tensor([x[2] for x in batch]))


def augmented(preprocess):
    """Random resized crop + flip before CLIP's own normalisation (no colour jitter: captions name colours)."""
    from torchvision import transforms as T

    n_px = preprocess.transforms[1].size
    return T.Compose([T.RandomResizedCrop(n_px, scale=(0.7, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), *preprocess.transforms[2:]])


class PairLoss(torch.nn.Module):
    """CLIP and the contrastive loss; forward(images or image features, tokens or text features, model ids)."""

    def __init__(self, wrapper, loss_fn, linear):
        super().__init__()
        self.wrapper, self.loss_fn, self.linear = wrapper, loss_fn, linear

    def forward(self, a, b, ids):
        w = self.wrapper
        img, txt = (w.project_image(a), w.project_text(b)) if self.linear else w(a, b)
        with torch.autocast(img.device.type, enabled=False):  # the loss in fp32: bf16 logits skew its gradient
            loss = self.loss_fn(img.float(), txt.float(), w.logit_scale.exp().float(), ids=ids)
        return {"loss": loss, "logit_scale": w.logit_scale.exp().detach()}


class Text2Shape(ClipTask):
    select_default = "mean_recall"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.select_metric = cfg["select_metric"] or self.select_default
        self.linear = cfg["train_mode"] == "linear"
        self.uses_ddp = not self.linear

    def setup(self, dev, rank, world, ckpt=None):
        cfg = self.cfg
        self.setup_clip(dev, rank, world, ckpt)
        if cfg["loss"] != "clip":  # cosine losses never use the temperature: frozen, so DDP sees what trains
            self.wrapper.logit_scale.requires_grad_(False)
        self.say(f"model: {self.label}; {self.wrapper.summary()}")
        self.module = PairLoss(self.wrapper, build_loss(cfg["loss"]), self.linear)
        self.val_cache = None
        if self.linear:
            self.train_cache, self.val_cache = self._linear_caches()
            self.n_models = len(self.train_cache[1].model_ids)
        else:
            MultiViewDataset(cfg["data_jsonl"], "val", self.preprocess, mode="eval")  # fails now if val is empty
            if self.trains():
                self._build_loader()

    def _linear_caches(self):
        """Rank 0 computes the features (or finds them cached); the others then read them."""
        cfg = self.cfg
        identity = {k: cfg[k] for k in ("clip_model", "clip_weights", "init_from")}
        identity["seed"] = cfg["seed"] if cfg["clip_model"] == "tiny" else ""  # a random init depends on it
        with rank_zero_first(self.rank, self.world):
            return tuple(cached_features(self.wrapper, self.preprocess, cfg["data_jsonl"], split, self.dev,
                                         cfg["cache_dir"], identity, cfg["num_workers"]) for split in ("train", "val"))

    def _build_loader(self):
        cfg = self.cfg
        tf = augmented(self.preprocess) if cfg["augment"] else self.preprocess
        ds = MultiViewDataset(cfg["data_jsonl"], "train", tf, mode="train", draws_per_model=cfg["draws_per_model"])
        self.datasets = [ds]  # fit() reports their unreadable files and bad lines at the end
        # the order comes from (seed, epoch) alone, with one process as with several: the global RNG, which the
        # DataLoader draws from differently with and without workers, plays no part in which batches are made
        self.sampler = EpochSampler(torch.utils.data.DistributedSampler(ds, self.world, self.rank, seed=cfg["seed"]))
        self.loader = torch.utils.data.DataLoader(
            SeededDraws(ds, cfg["seed"]), batch_size=cfg["batch_size"], sampler=self.sampler, drop_last=True,
            num_workers=cfg["num_workers"], persistent_workers=cfg["num_workers"] > 0,
            pin_memory=self.dev.startswith("cuda"), collate_fn=collate_pairs)

    def steps_per_epoch(self):
        if self.linear:
            return (self.n_models * self.cfg["draws_per_model"]) // (self.cfg["batch_size"] * self.world)
        return len(self.loader)

    def batches(self, epoch):
        dev = self.dev
        if self.linear:
            feats = self.train_cache[0]
            for v, t, ids in linear_batches(feats, self.n_models, self.cfg, epoch, self.rank, self.world):
                yield feats["image"][v].to(dev), feats["text"][t].to(dev), ids.to(dev)
            return
        self.sampler.set_epoch(epoch)
        for x, t, ids in self.loader:
            yield x.to(dev, non_blocking=True), t.to(dev, non_blocking=True), ids.to(dev, non_blocking=True)

    @torch.no_grad()
    def validate(self):
        cfg, w = self.cfg, self.wrapper
        if self.val_cache is not None:
            feats = self.val_cache[0]
            feats = dict(feats, image=w.project_image(feats["image"].to(self.dev)).float().cpu(),
                         text=w.project_text(feats["text"].to(self.dev)).float().cpu())
        else:
            feats, _ = encode_split(w, self.preprocess, cfg["data_jsonl"], "val", self.dev, cfg["batch_size"],
                                    cfg["num_workers"])
        metrics = evaluate_retrieval(feats["image"], feats["image_model"], feats["text"], feats["text_model"])
        recalls = [v for k, v in metrics.items() if "_R@" in k and "/" not in k]
        metrics["mean_recall"] = float(sum(recalls) / len(recalls))
        return metrics


def linear_batches(feats, n_models, cfg, epoch, rank=0, world=1):
    """Index batches (view row, text row, model) for one epoch: draws_per_model random pairs per model, drawn from
    a generator seeded by (seed, epoch), the same on every rank; rank r takes its slice of each global batch."""
    g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + epoch)
    views_of = [torch.nonzero(feats["image_model"] == m).flatten() for m in range(n_models)]
    texts_of = [torch.nonzero(feats["text_model"] == m).flatten() for m in range(n_models)]
    models = torch.arange(n_models).repeat(cfg["draws_per_model"])
    models = models[torch.randperm(len(models), generator=g)]
    v = torch.stack([views_of[m][torch.randint(len(views_of[m]), (), generator=g)] for m in models.tolist()])
    t = torch.stack([texts_of[m][torch.randint(len(texts_of[m]), (), generator=g)] for m in models.tolist()])
    step = cfg["batch_size"] * world
    for i in range(0, len(models) - step + 1, step):  # drop the ragged last batch: tiny batches hurt contrastive
        sl = slice(i + rank * cfg["batch_size"], i + (rank + 1) * cfg["batch_size"])
        yield v[sl], t[sl], models[sl]


