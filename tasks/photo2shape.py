"""photo2shape: metric learning over each 3D model's photos and renders (identity = the model), in P x K batches.

Losses (ShapeLoss): batch-hard triplet, center, identity cross-entropy over the training models, SupCon with the
model's captions as extra positives. Validation: photo -> shape Rank-k and mAP on the val split.
"""
import functools

import torch

from metrics.evaluate import evaluate_photo2shape
from models.clip_wrapper import tokenize
from models.losses import ShapeLoss, parse_shape_loss
from multiview_dataset import EpochSampler, PKSampler, SeededDraws, ShapeImageDataset
from tasks.clip_task import ClipTask
from tasks.text2shape import augmented


class PhotoShapeNet(torch.nn.Module):
    """CLIP and the metric loss in one module, so that DDP synchronises the loss's own parameters too."""

    def __init__(self, wrapper, shape_loss):
        super().__init__()
        self.wrapper, self.shape_loss = wrapper, shape_loss

    def forward(self, images, ids, tokens=None, text_ids=None):
        img = self.wrapper.encode_image(images)
        txt = self.wrapper.encode_text(tokens) if tokens is not None else None
        with torch.autocast(img.device.type, enabled=False):  # the loss in fp32: bf16 logits skew its gradient
            loss, parts = self.shape_loss(img.float(), ids, None if txt is None else txt.float(), text_ids,
                                          self.wrapper.logit_scale.exp().float())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


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


class Photo2Shape(ClipTask):
    select_default = "photo2shape_mAP"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.select_metric = cfg["select_metric"] or self.select_default
        self.with_text = "supcon" in parse_shape_loss(cfg["shape_loss"])  # a typo fails now, not after loading
        if cfg["train_mode"] not in ("zero_shot", "image", "full"):
            raise ValueError(f"task=photo2shape trains train_mode=image or full (or evaluates zero_shot), "
                             f"not {cfg['train_mode']!r}")
        if cfg["train_mode"] == "full" and not self.with_text:
            raise ValueError(f"task=photo2shape with train_mode=full trains the text tower, which shape_loss="
                             f"{cfg['shape_loss']!r} never reaches (only supcon sees captions): use train_mode=image, "
                             f"or add supcon")

    def setup(self, dev, rank, world, ckpt=None):
        cfg = self.cfg
        self.setup_clip(dev, rank, world, ckpt)
        if not self.with_text:  # triplet, center and ce never use the temperature
            self.wrapper.logit_scale.requires_grad_(False)
        self.say(f"model: {self.label}; {self.wrapper.summary()}")
        self._val_data()  # fails now if the val split has no photos
        if not self.trains():
            return
        tf = augmented(self.preprocess) if cfg["augment"] else self.preprocess
        ds = ShapeImageDataset(cfg["data_jsonl"], "train", tf, keep_hard=cfg["keep_hard_photos"],
                               margin=cfg["photo_margin"], apply_mask=cfg["photo_mask"])
        self.datasets = [ds]  # fit() reports their unreadable files and bad lines at the end
        self.sampler = PKSampler(ds.labels, ds.is_photo, cfg["pk_models"], cfg["pk_images"], cfg["pk_photos"],
                                 seed=cfg["seed"], rank=rank, world_size=world)
        self.loader = torch.utils.data.DataLoader(
            SeededDraws(ds, cfg["seed"]), batch_sampler=EpochSampler(self.sampler), num_workers=cfg["num_workers"],
            persistent_workers=cfg["num_workers"] > 0,
            pin_memory=dev.startswith("cuda"), collate_fn=functools.partial(collate_photo2shape, with_text=self.with_text))
        shape_loss = ShapeLoss(cfg["shape_loss"], len(ds.model_ids), self.wrapper.model.text_projection.shape[1],
                               cfg["triplet_margin"], cfg["center_weight"], cfg["ce_weight"]).to(dev)
        if ckpt is not None:
            shape_loss.load_state_dict(ckpt["shape_loss"])
        self.module = PhotoShapeNet(self.wrapper, shape_loss)
        n_photos = sum(ds.is_photo)
        self.say(f"photo2shape train: {n_photos} photos ({ds.n_hard_skipped} truncated/occluded left out) and "
                 f"{len(ds) - n_photos} renders of {len(ds.model_ids)} models; P x K = {cfg['pk_models']} x "
                 f"{cfg['pk_images']}; {self.sampler.n_skipped} models skipped (fewer than two images)")

    def _val_data(self):
        ShapeImageDataset(self.cfg["data_jsonl"], "val", self.preprocess, views=False,
                          keep_hard=self.cfg["keep_hard_photos"], mode="eval")

    def param_groups(self, weight_decay):
        groups = super().param_groups(weight_decay)
        own = [p for p in self.module.shape_loss.parameters() if p.requires_grad]
        if own:  # the identity classifier's prototypes: no decay
            groups.append({"params": own, "weight_decay": 0.0})
        return groups

    def steps_per_epoch(self):
        return len(self.loader)

    def batches(self, epoch):
        self.loader.batch_sampler.set_epoch(epoch)
        dev = self.dev
        for x, ids, t, tm in self.loader:
            yield (x.to(dev, non_blocking=True), ids.to(dev), None if t is None else t.to(dev),
                   None if tm is None else tm.to(dev))

    def validate(self):
        cfg = self.cfg
        return evaluate_photo2shape(self.wrapper, self.preprocess, cfg["data_jsonl"], "val", self.dev,
                                    cfg["keep_hard_photos"], cfg["photo_margin"], cfg["photo_mask"],
                                    batch_size=cfg["batch_size"], num_workers=cfg["num_workers"])

    def checkpoint(self, best):
        out = super().checkpoint(best)
        if hasattr(self, "module"):
            out["shape_loss"] = self.module.shape_loss.state_dict()
        return out
