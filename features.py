"""CLIP features of a split: every view and caption, the photo queries, and the on-disk cache of frozen features.

    feats, ds = encode_split(wrapper, preprocess, "data/pix3d_toy/usable_samples.jsonl", "test", device)
    feats, photos = encode_photo_split(wrapper, preprocess, jsonl, "test", device, photo_mask=True)
    feats, ds = cached_features(wrapper, preprocess, jsonl, "train", device, "data/cache", identity)
    feats = feature_cache("data/cache", "composed-train", identity, data, files, compute)   # any other features

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
from multiview_dataset import MultiViewDataset, ShapeImageDataset
from utils import atomic_torch_save


@torch.no_grad()
def encode_images(wrapper, dataset, device, batch_size=64, num_workers=0, backbone=False):
    """(features [n, D] on the CPU, model indices [n]) of an eval-mode dataset of (image, model index) items.

    backbone=True returns pre-projection features (for caching)."""
    was_training = wrapper.training
    wrapper.eval()
    encode = wrapper.image_backbone if backbone else wrapper.encode_image
    feats, models = [], []
    for x, m in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        feats.append(encode(x.to(device)).float().cpu())
        models.append(torch.as_tensor(m))
    wrapper.train(was_training)
    return torch.cat(feats), torch.cat(models)


@torch.no_grad()
def encode_texts(wrapper, texts, device, batch_size=256, backbone=False):
    """Features [len(texts), D] on the CPU of a list of strings."""
    was_training = wrapper.training
    wrapper.eval()
    encode = wrapper.text_backbone if backbone else wrapper.encode_text
    feats = [encode(tokenize(texts[i:i + batch_size]).to(device)).float().cpu()
             for i in range(0, len(texts), batch_size)]
    wrapper.train(was_training)
    return torch.cat(feats)


def encode_dataset(wrapper, dataset, device, batch_size=64, backbone=False, num_workers=0):
    """Encode every view and every caption of an eval-mode MultiViewDataset.

    Returns {"image": [n_views, D], "image_model": [n_views], "text": [n_texts, D], "text_model": [n_texts]}
    with model indices into dataset.model_ids. backbone=True returns pre-projection features (for caching).
    """
    images, image_model = encode_images(wrapper, dataset, device, batch_size, num_workers, backbone)
    text = encode_texts(wrapper, [c for c, _ in dataset.texts], device, batch_size, backbone)
    return {"image": images, "image_model": image_model,
            "text": text, "text_model": torch.tensor([m for _, m in dataset.texts])}


def encode_split(wrapper, preprocess, jsonl, split, device, batch_size=64, num_workers=2):
    """Every view and caption of a split, encoded: (features dict of encode_dataset, eval-mode MultiViewDataset)."""
    ds = MultiViewDataset(jsonl, split, preprocess, mode="eval")
    return encode_dataset(wrapper, ds, device, batch_size=batch_size, num_workers=num_workers), ds


def encode_photo_split(wrapper, preprocess, jsonl, split, device, keep_hard_photos=False, photo_margin=0.1,
                       photo_mask=False, batch_size=64, num_workers=0):
    """The photo queries and every view of a split, encoded: ({"photo", "photo_model", "view", "view_model"},
    eval-mode ShapeImageDataset of the photos). Photos are cropped to their bbox grown by photo_margin, their
    background painted white when photo_mask, and truncated/occluded ones left out unless keep_hard_photos."""
    photos = ShapeImageDataset(jsonl, split, preprocess, views=False, keep_hard=keep_hard_photos, margin=photo_margin,
                               apply_mask=photo_mask, mode="eval")
    views = MultiViewDataset(jsonl, split, preprocess, mode="eval")
    p, pm = encode_images(wrapper, photos, device, batch_size, num_workers)
    v, vm = encode_images(wrapper, views, device, batch_size, num_workers)
    return {"photo": p, "photo_model": pm, "view": v, "view_model": vm}, photos


def cached_features(wrapper, preprocess, jsonl, split, device, cache_dir, identity, num_workers=0):
    """(pre-projection features of every view and caption of a split, eval-mode dataset), computed once.

    identity: {name: value} naming the weights (model name, weights file, seed of a random init, a checkpoint the
    backbone was loaded from). A value that is an existing file enters the key with its size and mtime."""
    ds = MultiViewDataset(jsonl, split, preprocess, mode="eval")
    feats = feature_cache(cache_dir, f"features-{split}", identity, f"{split}\n".encode() + Path(jsonl).read_bytes(),
                          [path for _, path in ds.view_index],
                          lambda: encode_dataset(wrapper, ds, device, backbone=True, num_workers=num_workers))
    return feats, ds


def feature_cache(cache_dir, prefix, identity, data, files, compute):
    """compute()'s result, saved once in <cache_dir>/<prefix>-<key>.pt and read from there afterwards. The key
    covers identity (as cached_features describes it), the bytes `data` (the captions or pairs the features are
    of) and every file of `files` with its size and mtime, so a change to any of them computes anew."""
    h = hashlib.sha1()
    for key, value in sorted(identity.items()):
        h.update(f"{key}={value}\n".encode())
        if value and Path(str(value)).is_file():
            st = os.stat(value)
            h.update(f"{st.st_size}-{st.st_mtime_ns}\n".encode())
    h.update(data)
    for path in files:
        st = os.stat(path)
        h.update(f"{path}-{st.st_size}-{st.st_mtime_ns}".encode())
    path = Path(cache_dir) / f"{prefix}-{h.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    feats = compute()
    atomic_torch_save(feats, path)
    return feats
