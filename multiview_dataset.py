"""(render, caption) pairs from usable_samples.jsonl (written by scripts/generate_jsonl.py).

    ds = MultiViewDataset("data/pix3d_toy/usable_samples.jsonl", "train", preprocess)           # training
    ds = MultiViewDataset("data/pix3d_toy/usable_samples.jsonl", "test", preprocess, mode="eval")  # evaluation

mode="train": item i is a draw for model i % n_models: a random view and a random caption of that model,
    returned as (image tensor, caption str, model index). `draws_per_model` draws per model make an epoch.
    Randomness comes from torch's global RNG (seeded per DataLoader worker), so a run is reproducible and a
    resumed run continues the same stream.
mode="eval": item i is the i-th view of the split, returned as (image tensor, model index); the captions are
    in `ds.texts` as (caption, model index) pairs, so evaluation can aggregate views per model.
"""
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from utils import read_jsonl

SPLITS = ("train", "val", "test", "all")


def load_image(path):
    """RGB PIL image; an unreadable file raises an error that names it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise OSError(f"{path}: cannot read image ({e})") from None


class MultiViewDataset(Dataset):
    def __init__(self, jsonl_path, split, preprocess, mode="train", draws_per_model=12):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {SPLITS}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode {mode!r}: expected 'train' or 'eval'")
        self.jsonl_path = Path(jsonl_path)
        if not self.jsonl_path.exists():
            raise FileNotFoundError(f"{jsonl_path}: not found (run scripts/generate_jsonl.py first)")
        root = self.jsonl_path.parent
        rows = [r for r in read_jsonl(self.jsonl_path) if split == "all" or r["split"] == split]
        if not rows:
            raise ValueError(f"{jsonl_path}: no models in split {split!r}")
        self.split, self.mode, self.preprocess = split, mode, preprocess
        self.draws_per_model = draws_per_model
        self.model_ids = [r["model_id"] for r in rows]
        self.categories = [r["category"] for r in rows]
        self.captions = [r["captions"] for r in rows]
        self.views = [[root / v for v in r["views"]] for r in rows]
        self.photos = [[dict(p, img=root / p["img"], mask=root / p["mask"] if p.get("mask") else None)
                        for p in r.get("photos", [])] for r in rows]
        for mid, views, caps in zip(self.model_ids, self.views, self.captions):
            if not views or not caps:
                raise ValueError(f"{jsonl_path}: model {mid} has no views or no captions")
        # flat lists for evaluation: every view and every caption, each with its model index
        self.view_index = [(m, path) for m, views in enumerate(self.views) for path in views]
        self.texts = [(c, m) for m, caps in enumerate(self.captions) for c in caps]

    def __len__(self):
        if self.mode == "train":
            return len(self.model_ids) * self.draws_per_model
        return len(self.view_index)

    def __getitem__(self, i):
        if self.mode == "eval":
            m, path = self.view_index[i]
            return self.preprocess(load_image(path)), m
        m = i % len(self.model_ids)
        v = int(torch.randint(len(self.views[m]), ()))
        c = int(torch.randint(len(self.captions[m]), ()))
        return self.preprocess(load_image(self.views[m][v])), self.captions[m][c], m
