"""CLIP features of a split: encoding every view and caption, and the on-disk cache of frozen features.

    feats, ds = encode_split(wrapper, preprocess, "data/pix3d_toy/usable_samples.jsonl", "test", device)
    feats, ds = cached_features(wrapper, preprocess, jsonl, "train", device, "data/cache", identity)

A frozen encoder sees the same inputs every epoch, so a linear probe or the captioner computes the backbone's
features once and keeps them in data/cache; the key covers whatever identifies the weights, the jsonl and every
render's size and mtime, so a change to any of them computes the features anew.
"""
import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from models.clip_wrapper import tokenize
from multiview_dataset import MultiViewDataset
from utils import atomic_torch_save


@torch.no_grad()
def encode_dataset(wrapper, dataset, device, batch_size=64, backbone=False, num_workers=0):
    """Encode every view and every caption of an eval-mode MultiViewDataset.

    Returns {"image": [n_views, D], "image_model": [n_views], "text": [n_texts, D], "text_model": [n_texts]}
    with model indices into dataset.model_ids. backbone=True returns pre-projection features (for caching).
    """
    was_training = wrapper.training
    wrapper.eval()
    img_fn = wrapper.image_backbone if backbone else wrapper.encode_image
    txt_fn = wrapper.text_backbone if backbone else wrapper.encode_text
    images, image_model = [], []
    for x, m in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        images.append(img_fn(x.to(device)).float().cpu())
        image_model.append(m)
    texts = [c for c, _ in dataset.texts]
    text_feats = [txt_fn(tokenize(texts[i:i + batch_size]).to(device)).float().cpu()
                  for i in range(0, len(texts), batch_size)]
    wrapper.train(was_training)
    return {"image": torch.cat(images), "image_model": torch.cat(image_model),
            "text": torch.cat(text_feats), "text_model": torch.tensor([m for _, m in dataset.texts])}


def encode_split(wrapper, preprocess, jsonl, split, device, batch_size=64, num_workers=2):
    """Every view and caption of a split, encoded: (features dict, eval-mode dataset)."""
    ds = MultiViewDataset(jsonl, split, preprocess, mode="eval")
    return encode_dataset(wrapper, ds, device, batch_size=batch_size, num_workers=num_workers), ds


def cached_features(wrapper, preprocess, jsonl, split, device, cache_dir, identity, num_workers=0):
    """(pre-projection features of every view and caption of a split, eval-mode dataset), computed once.

    identity: {name: value} naming the weights (model name, weights file, seed of a random init, a checkpoint the
    backbone was loaded from). A value that is an existing file enters the key with its size and mtime."""
    ds = MultiViewDataset(jsonl, split, preprocess, mode="eval")
    h = hashlib.sha1()
    for key, value in sorted(identity.items()):
        h.update(f"{key}={value}\n".encode())
        if value and Path(str(value)).is_file():
            st = os.stat(value)
            h.update(f"{st.st_size}-{st.st_mtime_ns}\n".encode())
    h.update(f"{split}\n".encode() + Path(jsonl).read_bytes())
    for _, path in ds.view_index:
        st = os.stat(path)
        h.update(f"{path}-{st.st_size}-{st.st_mtime_ns}".encode())
    path = Path(cache_dir) / f"features-{split}-{h.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True), ds
    feats = encode_dataset(wrapper, ds, device, backbone=True, num_workers=num_workers)
    atomic_torch_save(feats, path)
    return feats, ds
