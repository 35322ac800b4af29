"""(render, caption) pairs from usable_samples.jsonl (written by scripts/generate_jsonl.py).

    ds = MultiViewDataset("data/pix3d_toy/usable_samples.jsonl", "train", preprocess)           # training
    ds = MultiViewDataset("data/pix3d_toy/usable_samples.jsonl", "test", preprocess, mode="eval")  # evaluation

mode="train": item i is a draw for model i % n_models: a random view and a random caption of that model,
    returned as (image tensor, caption str, model index). `draws_per_model` draws per model make an epoch.
    Randomness comes from torch's global RNG (seeded per DataLoader worker), so a run is reproducible and a
    resumed run continues the same stream.
mode="eval": item i is the i-th view of the split, returned as (image tensor, model index); the captions are
    in `ds.texts` as (caption, model index) pairs, so evaluation can aggregate views per model.

Photo -> shape retrieval (identity = the 3D model):
    ShapeImageDataset: the split's photos (cropped to their bbox, optionally masked) and renders, one label per model.
    PKSampler: batches of P models x K images (photos and renders mixed) for the metric losses.

Bad data never stops a run halfway: a jsonl line with a missing or mistyped field, or a model already on an
earlier line, is named (file, line, field) and left out on load (`n_bad_lines`); an image that cannot be read
mid-run is replaced by another image of the same model and counted in `n_unreadable` (over all DataLoader
workers), for the training loop to report.
"""
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test", "all")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}  # what counts as an image in a folder of renders
MAX_WARNINGS = 5  # bad lines and unreadable files named on stderr (per process); the rest are only counted


def image_files(folder):
    """The images of a folder (a shape's renders: view_00.png, ...), sorted by name; [] when it holds none."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path):
    """RGB PIL image; an unreadable file raises an error that names it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise OSError(f"{path}: cannot read image ({e})") from None


# ----------------------------------------------------------------------------- reading usable_samples.jsonl
def _strings(value, allow_empty_list=False):
    return (isinstance(value, list) and (allow_empty_list or len(value) > 0)
            and all(isinstance(v, str) and v.strip() for v in value))


def _photo_problem(photo):
    if not isinstance(photo, dict) or not isinstance(photo.get("img"), str) or not photo["img"]:
        return "photos: an entry without an 'img' path"
    if photo.get("mask") is not None and not isinstance(photo["mask"], str):
        return "photos: 'mask' is not a path"
    return None


def sample_problem(row):
    """None when a jsonl row is usable, else 'field: what is wrong'."""
    if not isinstance(row, dict):
        return f"not a JSON object but {type(row).__name__}"
    for key in ("model_id", "category"):
        if not isinstance(row.get(key), str) or not row[key]:
            return f"{key}: missing or not a string"
    if row.get("split") not in SPLITS[:3]:
        return f"split: {row.get('split')!r}, expected one of {', '.join(SPLITS[:3])}"
    if not _strings(row.get("captions")):
        return "captions: expected a non-empty list of non-blank strings"
    if not _strings(row.get("views")):
        return "views: expected a non-empty list of paths"
    if not isinstance(row.get("photos", []), list):
        return "photos: expected a list"
    return next(filter(None, map(_photo_problem, row.get("photos", []))), None)


def read_samples(jsonl_path):
    """(rows, number of lines left out) of usable_samples.jsonl. Each line that is not a usable row (not JSON,
    not an object, a missing or mistyped field, a model already on an earlier line) is named with its file,
    line and field on stderr (the first few) and left out."""
    rows, first_line, bad = [], {}, 0
    with open(jsonl_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = sample_problem(row)
            except json.JSONDecodeError as e:
                problem = f"not valid JSON ({e.msg})"
            if problem is None and row["model_id"] in first_line:
                problem = f"model_id: {row['model_id']} is already on line {first_line[row['model_id']]}"
            if problem:
                bad += 1
                if bad <= MAX_WARNINGS:
                    print(f"warning: {jsonl_path}:{lineno}: {problem}; line left out", file=sys.stderr)
                continue
            first_line[row["model_id"]] = lineno
            rows.append(row)
    if bad > MAX_WARNINGS:
        print(f"warning: {jsonl_path}: {bad} lines left out in all", file=sys.stderr)
    return rows, bad


class UnreadableFiles:
    """Counts reads of files that could not be read, in a shared tensor so that DataLoader worker processes
    add to the one count the main process reads. A file that failed once is not tried again in that process."""

    def __init__(self):
        self.count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.known = set()

    def failed(self, path, error):
        self.count += 1
        if path not in self.known:
            self.known.add(path)
            if len(self.known) <= MAX_WARNINGS:
                print(f"warning: {error}; another image of the same model is used instead", file=sys.stderr)

    def __int__(self):
        return int(self.count.item())


def first_readable(paths, load, unreadable):
    """load(path) of the first path that can be read (OSError or ValueError: counted in `unreadable`), or None."""
    for path in paths:
        if path in unreadable.known:
            unreadable.count += 1
            continue
        try:
            return load(path)
        except (OSError, ValueError) as e:
            unreadable.failed(path, e)
    return None


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
        rows, self.n_bad_lines = read_samples(self.jsonl_path)
        rows = [r for r in rows if split == "all" or r["split"] == split]
        if not rows:
            raise ValueError(f"{jsonl_path}: no models in split {split!r}")
        self.unreadable = UnreadableFiles()
        self.split, self.mode, self.preprocess = split, mode, preprocess
        self.draws_per_model = draws_per_model
        self.model_ids = [r["model_id"] for r in rows]
        self.categories = [r["category"] for r in rows]
        self.captions = [r["captions"] for r in rows]
        self.views = [[root / v for v in r["views"]] for r in rows]
        self.photos = [[dict(p, img=root / p["img"], mask=root / p["mask"] if p.get("mask") else None)
                        for p in r.get("photos", [])] for r in rows]
        # flat lists for evaluation: every view and every caption, each with its model index
        self.view_index = [(m, path) for m, views in enumerate(self.views) for path in views]
        self.texts = [(c, m) for m, caps in enumerate(self.captions) for c in caps]

    def __len__(self):
        if self.mode == "train":
            return len(self.model_ids) * self.draws_per_model
        return len(self.view_index)

    @property
    def n_unreadable(self):
        """Reads of unreadable files replaced by another image of the same model so far (all workers)."""
        return int(self.unreadable)

    def view(self, m, path):
        """The view at `path` of model m or, when it cannot be read, another view of m; None when none can."""
        return first_readable([path] + [p for p in self.views[m] if p != path], load_image, self.unreadable)

    def __getitem__(self, i):
        if self.mode == "eval":
            m, path = self.view_index[i]
            image = self.view(m, path)
            if image is None:
                raise OSError(f"{self.jsonl_path}: model {self.model_ids[m]}: none of its {len(self.views[m])} "
                              "views can be read")
            return self.preprocess(image), m
        m = i % len(self.model_ids)
        v = int(torch.randint(len(self.views[m]), ()))
        c = int(torch.randint(len(self.captions[m]), ()))
        for k in range(len(self.model_ids)):  # a model none of whose views can be read gives way to the next
            n = (m + k) % len(self.model_ids)
            image = self.view(n, self.views[n][v % len(self.views[n])])
            if image is not None:
                return self.preprocess(image), self.captions[n][c % len(self.captions[n])], n
        raise OSError(f"{self.jsonl_path}: no view of any model of split {self.split!r} can be read")


class SeededDraws(Dataset):
    """Item (epoch, i) of a train-mode dataset, drawn under an RNG seeded by (seed, epoch, i): the random view,
    caption and augmentation of a draw then depend neither on which DataLoader worker makes it nor on that
    worker's history, so persistent workers, any num_workers and a resumed run all give the same batches."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + i) % 2**62)
            return self.dataset[i]


class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) keys for SeededDraws from a sampler of indices (or a batch sampler of index lists); the
    DataLoader runs it in the main process, so set_epoch reaches it even with persistent workers."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for x in self.sampler:
            yield [(self.epoch, i) for i in x] if isinstance(x, list) else (self.epoch, x)


# ============================================================================= photo -> shape retrieval
def crop_photo(image, bbox, margin=0.1, mask=None):
    """A square crop around the object: its bbox [x0, y0, x1, y1] grown by `margin` (a fraction of the longer
    side, on each side) and padded with white beyond the photo's border. Square, so CLIP's centre crop keeps the
    whole object; white, like the renders' background. With a mask (L image, object > 0) the background is
    painted white first."""
    white = Image.new("RGB", image.size, (255, 255, 255))
    if mask is not None:
        image = Image.composite(image, white, mask.point(lambda v: 255 if v > 0 else 0))
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    side = max(1, round(side))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    box = (max(left, 0), max(top, 0), min(left + side, image.width), min(top + side, image.height))
    if box[0] < box[2] and box[1] < box[3]:
        canvas.paste(image.crop(box), (box[0] - left, box[1] - top))
    return canvas


def load_photo(photo, margin=0.1, apply_mask=False):
    """The cropped photo of one `photos` entry of usable_samples.jsonl (paths already resolved)."""
    image = load_image(photo["img"])
    bbox = photo.get("bbox")
    if not bbox or len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
        raise ValueError(f"{photo['img']}: bad bbox {bbox!r}; expected [x0, y0, x1, y1] with x0 < x1, y0 < y1")
    mask = None
    if apply_mask:
        if not photo.get("mask"):
            raise ValueError(f"{photo['img']}: no mask in usable_samples.jsonl, but the background removal asks for one")
        try:
            with Image.open(photo["mask"]) as m:
                mask = m.convert("L")
        except Exception as e:
            raise OSError(f"{photo['mask']}: cannot read mask ({e})") from None
        if mask.size != image.size:
            raise ValueError(f"{photo['mask']}: mask is {mask.size}, its photo {photo['img']} is {image.size}")
    return crop_photo(image, bbox, margin, mask)


def is_hard(photo):
    """Truncated or occluded: Pix3D's own evaluation leaves these photos out."""
    return bool(photo.get("truncated") or photo.get("occluded"))


class ShapeImageDataset(Dataset):
    """The photos and the renders of every model of a split; identity = the 3D model.

        ds = ShapeImageDataset(jsonl, "train", preprocess)                                  # photos + renders, training
        ds = ShapeImageDataset(jsonl, "test", preprocess, views=False, mode="eval")          # the photo queries

    Items: every kept photo (cropped to its bbox), then every render. mode="train" returns (image tensor, a
    random caption of the model, model index); mode="eval" returns (image tensor, model index).
    `labels[i]` and `is_photo[i]` describe item i (for PKSampler). Truncated/occluded photos are left out unless
    keep_hard; how many were left out is in `n_hard_skipped`.
    """

    def __init__(self, jsonl_path, split, preprocess, photos=True, views=True, keep_hard=False, margin=0.1,
                 apply_mask=False, mode="train"):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode {mode!r}: expected 'train' or 'eval'")
        base = MultiViewDataset(jsonl_path, split, preprocess, mode="eval")
        self.model_ids, self.categories, self.captions, self.views = base.model_ids, base.categories, base.captions, base.views
        self.photos, self.n_bad_lines, self.unreadable = base.photos, base.n_bad_lines, base.unreadable
        self.preprocess, self.mode, self.margin, self.apply_mask = preprocess, mode, margin, apply_mask
        kept = [(m, p) for m, ps in enumerate(base.photos) for p in ps if keep_hard or not is_hard(p)] if photos else []
        self.n_hard_skipped = sum(len(ps) for ps in base.photos) - len(kept) if photos else 0
        self.items = [(m, True, p) for m, p in kept]
        if views:
            self.items += [(m, False, path) for m, path in base.view_index]
        if not self.items:
            raise ValueError(f"{jsonl_path}: no {'photos' if photos else 'images'} in split {split!r}"
                             + ("" if keep_hard else " (truncated/occluded photos were left out)"))
        self.labels = [m for m, _, _ in self.items]
        self.is_photo = [p for _, p, _ in self.items]
        self.items_of = {}
        for i, m in enumerate(self.labels):
            self.items_of.setdefault(m, []).append(i)

    def __len__(self):
        return len(self.items)

    @property
    def n_unreadable(self):
        """Reads of unreadable photos, masks or views replaced by another image of the same model (all workers)."""
        return int(self.unreadable)

    def _load(self, i):
        _, photo, src = self.items[i]
        return load_photo(src, self.margin, self.apply_mask) if photo else load_image(src)

    def image(self, i):
        """Item i as a PIL image, before preprocessing (the gallery pictures show this). When it cannot be read:
        another image of the same model (its other items, then its views), counted in n_unreadable."""
        m = self.labels[i]
        fallback = [j for j in self.items_of[m] if j != i] + [("view", p) for p in self.views[m]]
        load = lambda j: load_image(j[1]) if isinstance(j, tuple) else self._load(j)  # noqa: E731
        image = first_readable([i] + fallback, load, self.unreadable)
        if image is None:
            raise OSError(f"model {self.model_ids[m]}: none of its photos and views can be read")
        return image

    def __getitem__(self, i):
        m = self.labels[i]
        x = self.preprocess(self.image(i))
        if self.mode == "eval":
            return x, m
        return x, self.captions[m][int(torch.randint(len(self.captions[m]), ()))], m


class PKSampler(torch.utils.data.Sampler):
    """Batches of P models x K images each (a batch sampler: yields lists of dataset indices).

    Each model contributes up to `n_photos` of its photos and fills the rest of its K with renders, so every
    batch mixes the two domains; a model with fewer than K images repeats some. Models with fewer than two
    images cannot give a positive pair and are skipped; `n_skipped` counts them. An epoch visits every usable
    model once (the ragged last group of fewer than P is dropped). The order depends only on (seed, epoch),
    so a resumed run sees the same batches; under DDP rank r takes batches r, r + world, ...
    """

    def __init__(self, labels, is_photo, P, K, n_photos=None, seed=0, rank=0, world_size=1):
        if P < 2 or K < 2:
            raise ValueError(f"P x K sampling needs P >= 2 models and K >= 2 images per model, got P={P}, K={K}")
        self.P, self.K, self.seed, self.rank, self.world = P, K, seed, rank, world_size
        self.n_photos = K // 2 if n_photos is None else min(n_photos, K)
        groups = {}
        for i, (m, photo) in enumerate(zip(labels, is_photo)):
            groups.setdefault(m, ([], []))[0 if photo else 1].append(i)
        self.groups = {m: g for m, g in groups.items() if len(g[0]) + len(g[1]) >= 2}
        self.models = sorted(self.groups)
        self.n_skipped = len(groups) - len(self.models)
        if len(self.models) < P:
            raise ValueError(f"P x K sampling: {len(self.models)} models with two or more images, fewer than "
                             f"P={P} ({self.n_skipped} skipped with fewer than two)")
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return (len(self.models) // self.P) // self.world

    def _pick(self, m, g):
        photos, views = self.groups[m]
        photos = [photos[i] for i in torch.randperm(len(photos), generator=g)[: self.n_photos].tolist()]
        views = [views[i] for i in torch.randperm(len(views), generator=g)[: self.K - len(photos)].tolist()]
        chosen = photos + views
        pool = self.groups[m][0] + self.groups[m][1]
        while len(chosen) < self.K:  # too few images: repeat some (augmentation makes the copies differ)
            chosen.append(pool[int(torch.randint(len(pool), (), generator=g))])
        return chosen

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = [self.models[i] for i in torch.randperm(len(self.models), generator=g).tolist()]
        batches = [order[i:i + self.P] for i in range(0, len(order) - self.P + 1, self.P)]
        batches = batches[: len(self) * self.world]
        for models in batches[self.rank::self.world]:
            yield [i for m in models for i in self._pick(m, g)]
