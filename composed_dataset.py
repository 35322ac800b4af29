"""Composed retrieval data: a reference (a shape or an image) and a modification text whose answer is a target.

    sets = load_composed("toy", "data/pix3d_toy", "val")     # [ComposedSet]; FashionIQ: one per garment type
    train = merge_sets(load_composed("fashioniq", "data/fashionIQ_dataset", "train"))
    ds = ComposedDraws(train, preprocess)          # training draws: (reference image, target image, caption, target)
    feats = encode_composed(wrapper, cset, preprocess, device)   # every image, pooled items, captions
    metrics = score_set(cset, feats, element_wise_sum)           # composed_metrics of one combining function
    queries, items = composed_queries(cset, feats, element_wise_sum)

On disk (each read as it is published; a file that does not fit is an error naming it and the entry):
    toy        <root>/composed.<split>.json beside usable_samples.jsonl, in CIRR's caption format, over its
               model_ids (a shape: its rendered views); the gallery is every model of the split
    cirr       <root>/cirr/captions/cap.rc2.<split>.json and cirr/image_splits/split.rc2.<split>.json (image name ->
               path under <root>: train/<n>/, dev/, test1/); splits train | val | test1 (test1 has no targets)
    fashioniq  <root>/captions/cap.<garment>.<split>.json ({"target", "candidate", "captions": [two]}),
               image_splits/split.<garment>.<split>.json (image names), images/<name>.png (or .jpg)

An item is the unit retrieved: a shape is the mean of its unit view embeddings (metrics.retrieval.shape_gallery,
as every evaluation here pools), an image its one embedding. A training draw takes one random view of each shape
and one of a pair's caption variants; under multiview_dataset.SeededDraws a draw depends only on (seed, epoch, i).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from features import encode_images, encode_texts
from metrics.composed import composed_metrics, composed_per_query
from metrics.retrieval import shape_gallery
from multiview_dataset import UnreadableFiles, first_readable, load_image, read_samples

DATASETS = ("toy", "cirr", "fashioniq")
SPLITS = {"toy": ("train", "val", "test"), "cirr": ("train", "val", "test1"), "fashioniq": ("train", "val", "test")}
GARMENTS = ("dress", "shirt", "toptee")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Pair:
    pairid: int
    reference: str
    target: str | None          # None where the split's answers are withheld (CIRR test1)
    caption: str                # what evaluation encodes
    train_captions: list        # what a training draw picks from (FashionIQ: CLIP4Cir's four joinings)
    members: list | None = None  # the group (CIRR's img_set), scored by Rsubset@K; None where there is none


@dataclass
class ComposedSet:
    """One benchmark: its gallery items (ids and image paths) and its pairs. exclude_reference: whether a query's
    reference is left out of its candidates (CIRR and the toy set: yes; FashionIQ: no)."""
    name: str
    source: str
    item_ids: list
    item_images: list
    pairs: list
    exclude_reference: bool = True
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {i: n for n, i in enumerate(self.item_ids)}

    @property
    def has_targets(self):
        return all(p.target is not None for p in self.pairs)


def _read_json(path, kind, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}, found {type(data).__name__}")
    return data


def _string(entry, key, where):
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: '{key}' missing or not a non-blank string")
    return value


def _cirr_pair(entry, n, path, with_target):
    """A Pair of one CIRR-format entry ({"pairid", "reference", "target_hard", "caption", "img_set": {"members"}})."""
    where = f"{path}: entry {n}"
    if not isinstance(entry, dict) or not isinstance(entry.get("pairid"), int):
        raise ValueError(f"{where}: 'pairid' missing or not an integer")
    where = f"{path}: pair {entry['pairid']}"
    members = (entry.get("img_set") or {}).get("members") if isinstance(entry.get("img_set"), dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"{where}: 'img_set' must hold 'members', a list of ids")
    caption = _string(entry, "caption", where)
    target = _string(entry, "target_hard", where) if with_target else None
    return Pair(entry["pairid"], _string(entry, "reference", where), target, caption, [caption], members)


def _check_ids(cset, path, other_split=None):
    """Every id a pair names is a gallery item; `other_split` (id -> split) says where a stray one lives."""
    for p in cset.pairs:
        for role, ids in (("reference", [p.reference]), ("target", [p.target] if p.target else []),
                          ("group member", p.members or [])):
            for i in ids:
                if i in cset.index:
                    continue
                elsewhere = other_split and i in other_split
                where = (f"is in split {other_split[i]!r}: a group never spans splits" if elsewhere
                         else "is not in the split's gallery")
                raise ValueError(f"{path}: pair {p.pairid}: {role} {i!r} {where}")
        if p.target is not None and p.target == p.reference:
            raise ValueError(f"{path}: pair {p.pairid}: the target is the reference ({p.target!r})")


def _check_files(paths, source):
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: {len(missing)} image files missing, e.g. {', '.join(missing[:3])}")


def _check_split(dataset, split):
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS[dataset]:
        raise ValueError(f"{dataset}: unknown split {split!r}; its splits are {', '.join(SPLITS[dataset])}")


def toy_jsonl(root):
    """usable_samples.jsonl of a toy root (the folder, or the jsonl itself)."""
    root = Path(root)
    return root if root.suffix == ".jsonl" else root / "usable_samples.jsonl"


def toy_composed(root, split):
    jsonl = toy_jsonl(root)
    if not jsonl.is_file():
        raise FileNotFoundError(f"{jsonl}: not found (scripts/generate_jsonl.py writes it)")
    path = jsonl.parent / f"composed.{split}.json"
    entries = _read_json(path, list, "scripts/make_toy_pix3d.py writes composed.<split>.json beside the jsonl")
    rows, _ = read_samples(jsonl)
    kept = [r for r in rows if r["split"] == split]
    views = [[jsonl.parent / v for v in r["views"]] for r in kept]
    cset = ComposedSet("", str(path), [r["model_id"] for r in kept], views,
                       [_cirr_pair(e, n, path, with_target=True) for n, e in enumerate(entries)])
    _check_ids(cset, path, {r["model_id"]: r["split"] for r in rows})
    return [cset]


def cirr_composed(root, split):
    root = Path(root)
    path = root / "cirr" / "captions" / f"cap.rc2.{split}.json"
    names_path = root / "cirr" / "image_splits" / f"split.rc2.{split}.json"
    entries = _read_json(path, list, "CIRR's relative captions")
    names = _read_json(names_path, dict, "CIRR's image split: image name -> relative path")
    cset = ComposedSet("", str(path), list(names), [[root / rel] for rel in names.values()],
                       [_cirr_pair(e, n, path, with_target=split != "test1") for n, e in enumerate(entries)])
    _check_ids(cset, path)
    _check_files([p for paths in cset.item_images for p in paths], names_path)
    return [cset]


def fashioniq_caption(first, second):
    """CLIP4Cir's joining of FashionIQ's two captions: "C1 and c2" (stripped of '.?, ', the first capitalised)."""
    return f"{first.strip('.?, ').capitalize()} and {second.strip('.?, ')}"


def fashioniq_train_captions(first, second):
    """CLIP4Cir's training draws: both orders of the joining, and each caption alone."""
    return [fashioniq_caption(first, second), fashioniq_caption(second, first), first.strip(".?, ").capitalize(),
            second.strip(".?, ").capitalize()]


def _fashioniq_image(root, name):
    for suffix in IMAGE_SUFFIXES:
        path = root / "images" / f"{name}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{root / 'images'}: no image {name} ({' / '.join(IMAGE_SUFFIXES)})")


def fashioniq_composed(root, split, garments=GARMENTS):
    """One ComposedSet per garment type, each its own gallery (FashionIQ scores them apart). The training split
    also takes in images its triplets name that its image split does not list."""
    root, sets = Path(root), []
    for garment in garments:
        if garment not in GARMENTS:
            raise ValueError(f"unknown FashionIQ garment {garment!r}; choose from {', '.join(GARMENTS)}")
        path = root / "captions" / f"cap.{garment}.{split}.json"
        entries = _read_json(path, list, "FashionIQ's relative captions")
        names = _read_json(root / "image_splits" / f"split.{garment}.{split}.json", list, "FashionIQ's image names")
        pairs = []
        for n, e in enumerate(entries):
            where = f"{path}: entry {n}"
            caps = e.get("captions") if isinstance(e, dict) else None
            if not isinstance(caps, list) or len(caps) != 2 or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"{where}: 'captions' must be a list of two strings")
            target = _string(e, "target", where) if split != "test" or "target" in e else None
            pairs.append(Pair(n, _string(e, "candidate", where), target, fashioniq_caption(*caps),
                              fashioniq_train_captions(*caps)))
        if split == "train":
            names = list(dict.fromkeys(names + [i for p in pairs for i in (p.reference, p.target)]))
        cset = ComposedSet(garment, str(path), names, [[_fashioniq_image(root, i)] for i in names], pairs,
                           exclude_reference=False)
        _check_ids(cset, path)
        sets.append(cset)
    return sets


def load_composed(dataset, root, split):
    """The split's benchmark sets: [one ComposedSet] for toy and cirr, one per garment type for fashioniq."""
    _check_split(dataset, split)
    return {"toy": toy_composed, "cirr": cirr_composed, "fashioniq": fashioniq_composed}[dataset](root, split)


def merge_sets(sets):
    """One ComposedSet of several (FashionIQ's garments train together); an id in two sets is one item."""
    if len(sets) == 1:
        return sets[0]
    ids, images = {}, []
    for s in sets:
        for i, paths in zip(s.item_ids, s.item_images):
            if i not in ids:
                ids[i] = len(ids)
                images.append(paths)
    return ComposedSet("+".join(s.name for s in sets), ", ".join(s.source for s in sets), list(ids), images,
                       [p for s in sets for p in s.pairs], sets[0].exclude_reference)


class ComposedDraws(Dataset):
    """Item i: a draw of pair i % n_pairs, (reference image, target image, caption, target item index), with a
    random view of each shape and a random caption variant. An unreadable view gives way to another view of the
    same item (counted in n_unreadable); an item none of whose images can be read is an error naming it."""

    def __init__(self, cset, preprocess, draws_per_pair=1):
        if not cset.has_targets:
            raise ValueError(f"{cset.source}: pairs without targets cannot train")
        self.cset, self.preprocess, self.draws_per_pair = cset, preprocess, draws_per_pair
        self.unreadable, self.n_bad_lines = UnreadableFiles(), 0

    def __len__(self):
        return len(self.cset.pairs) * self.draws_per_pair

    @property
    def n_unreadable(self):
        return int(self.unreadable)

    def image(self, item):
        paths = self.cset.item_images[self.cset.index[item]]
        v = int(torch.randint(len(paths), ()))
        image = first_readable(paths[v:] + paths[:v], load_image, self.unreadable)
        if image is None:
            raise OSError(f"{self.cset.source}: none of the {len(paths)} images of {item!r} can be read")
        return self.preprocess(image)

    def __getitem__(self, i):
        p = self.cset.pairs[i % len(self.cset.pairs)]
        ref, tgt = self.image(p.reference), self.image(p.target)
        return ref, tgt, p.train_captions[int(torch.randint(len(p.train_captions), ()))], self.cset.index[p.target]


class ItemImages(Dataset):
    """Every image of every item, as (image tensor, item index): what features.encode_images takes."""

    def __init__(self, cset, preprocess):
        self.preprocess = preprocess
        self.items = [(n, path) for n, paths in enumerate(cset.item_images) for path in paths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        n, path = self.items[i]
        return self.preprocess(load_image(path)), n


def encode_composed(wrapper, cset, preprocess, device, batch_size=64, num_workers=0, train_captions=False):
    """{"views": [n_images, D] (raw), "view_item": [n_images], "captions": [n_pairs, D] (raw)} and with
    train_captions {"train_captions": [n_variants, D], "train_caption_pair": [n_variants]}."""
    views, view_item = encode_images(wrapper, ItemImages(cset, preprocess), device, batch_size, num_workers)
    out = {"views": views, "view_item": view_item,
           "captions": encode_texts(wrapper, [p.caption for p in cset.pairs], device)}
    if train_captions:
        texts = [(c, n) for n, p in enumerate(cset.pairs) for c in p.train_captions]
        out["train_captions"] = encode_texts(wrapper, [c for c, _ in texts], device)
        out["train_caption_pair"] = torch.tensor([n for _, n in texts])
    return out


def items_of(feats):
    """The unit item embeddings [n_items, D] in item order: a shape's views pooled as evaluation pools them."""
    items, order = shape_gallery(feats["views"], feats["view_item"])
    if order != list(range(len(order))):
        raise ValueError("view_item must list every item, in item order")
    return items


def composed_queries(cset, feats, combine):
    """(queries combine(reference item embeddings, caption embeddings) [n_pairs, D], unit items [n_items, D])."""
    items = items_of(feats)
    refs = torch.tensor([cset.index[p.reference] for p in cset.pairs])
    with torch.no_grad():
        return combine(items[refs], feats["captions"]), items


def answer_ids(cset):
    """What composed_metrics scores a set's queries against: {"target_ids", "reference_ids" (None where the set
    keeps the reference a candidate), "subset_ids" (None where its pairs have no groups)}."""
    members = [p.members for p in cset.pairs]
    return {"target_ids": [p.target for p in cset.pairs],
            "reference_ids": [p.reference for p in cset.pairs] if cset.exclude_reference else None,
            "subset_ids": members if all(m is not None for m in members) else None}


def score_set(cset, feats, combine, ks=(1, 5, 10, 50), per_query=False):
    """composed_metrics of the queries combine(reference item embeddings, caption embeddings) on one set; with
    per_query, composed_per_query's values instead (their means are those metrics)."""
    queries, items = composed_queries(cset, feats, combine)
    score = composed_per_query if per_query else composed_metrics
    return score(queries, items, cset.item_ids, ks=ks, **answer_ids(cset))
