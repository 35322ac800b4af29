"""Tiny composed-retrieval data in the three on-disk layouts composed_dataset.py reads, for the tests.

    make_composed_pairs(jsonl)      composed.<split>.json beside a synthetic usable_samples.jsonl (conftest's)
    make_cirr(root)                 CIRR's cirr/captions, cirr/image_splits, train/<n>/, dev/, test1/ with small PNGs
    make_fashioniq(root)            FashionIQ's captions/, image_splits/, images/<name>.png
"""
import json
from pathlib import Path

from PIL import Image

from conftest import COLORS


def make_composed_pairs(jsonl):
    """Groups: the models of one category in one split. Pairs: each model of a group -> the next one (cyclically),
    the caption naming the target's colour (the synthetic models differ only in colour within a category)."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    groups = {}
    for r in rows:
        groups.setdefault((r["split"], r["category"]), []).append(r)
    pairs = {"train": [], "val": [], "test": []}
    for gid, ((split, _), members) in enumerate(sorted(groups.items())):
        ids = [r["model_id"] for r in members]
        for n, ref in enumerate(members):
            tgt = members[(n + 1) % len(members)]
            colour = tgt["captions"][0].split()[1]
            pairs[split].append({"pairid": len(pairs[split]), "reference": ref["model_id"],
                                 "target_hard": tgt["model_id"], "caption": f"make it {colour}",
                                 "img_set": {"id": gid, "members": ids}, "target_soft": {tgt["model_id"]: 1.0}})
    for split, entries in pairs.items():
        (Path(jsonl).parent / f"composed.{split}.json").write_text(json.dumps(entries))
    return pairs


def _png(path, colour, size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLORS[colour]).save(path)


CIRR_FOLDERS = {"train": "train/0", "val": "dev", "test1": "test1"}


def make_cirr(root):
    """Each split: six images (one per colour) in one group; pairs: each image -> the next colour's image."""
    root = Path(root)
    for split, folder in CIRR_FOLDERS.items():
        names = {f"{split}-{i}-0-img{i}": f"./{folder}/{split}-{i}-0-img{i}.png" for i in range(len(COLORS))}
        for (name, rel), colour in zip(names.items(), COLORS):
            _png(root / rel, colour)
        ids, entries = list(names), []
        for i, ref in enumerate(ids):
            tgt = ids[(i + 1) % len(ids)]
            e = {"pairid": 100 + i, "reference": ref, "caption": f"make it {list(COLORS)[(i + 1) % len(ids)]}",
                 "img_set": {"id": 7, "members": ids}}
            if split != "test1":
                e.update(target_hard=tgt, target_soft={tgt: 1.0})
            entries.append(e)
        for sub, data in (("captions", entries), ("image_splits", names)):
            path = root / "cirr" / sub / f"{'cap' if sub == 'captions' else 'split'}.rc2.{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
    return root


def make_fashioniq(root):
    """Each garment and split: four images; triplets candidate -> the next image, two captions each."""
    root = Path(root)
    for garment in ("dress", "shirt", "toptee"):
        for split in ("train", "val", "test"):
            names = [f"{garment}{split}{i}" for i in range(4)]
            for name, colour in zip(names, COLORS):
                _png(root / "images" / f"{name}.png", colour)
            triplets = [{"candidate": names[i], "target": names[(i + 1) % 4],
                         "captions": [f"is {list(COLORS)[(i + 1) % 4]}.", "has no sleeves"]} for i in range(4)]
            listed = names if split != "train" else names[:3]  # a train triplet may name an unlisted image
            for sub, data in (("captions", triplets), ("image_splits", listed)):
                path = root / sub / f"{'cap' if sub == 'captions' else 'split'}.{garment}.{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data))
    return root
