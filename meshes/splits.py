"""Train / val / test splits by model that stay put: a model's place depends on its family, its category and the
seed, never on a shared random stream, and a splits.json beside the jsonl keeps every model it has seen.

    known = read_splits(path, seed, fractions)      # {} when there is no file yet
    split = assign_splits(models, fractions, seed, known)
    write_splits(path, seed, fractions, {**known, **split})

Families: Pix3D's IKEA_X_1 and IKEA_X_2 are variants of one product (the same name caption), so a family (the
name without its `_<n>` suffix) is one unit: it never straddles two splits. Serial numbers with leading zeros
(TOY_CHAIR_0001, scan_0002) are ids, not variants.
"""
import hashlib
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from utils import atomic_write

SPLIT_NAMES = ("train", "val", "test")
VARIANT = re.compile(r"_[1-9]\d{0,2}$")


def parse_fractions(text):
    """'0.8,0.1,0.1' -> [0.8, 0.1, 0.1]; ValueError unless three finite non-negative fractions summing to 1."""
    fractions = [float(x) for x in text.split(",")]
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions) \
            or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError("expected three non-negative fractions summing to 1")
    return fractions


def model_family(model_id):
    """'chair/IKEA_POANG_2' -> 'chair/IKEA_POANG'; 'chair/TOY_CHAIR_0001' -> itself."""
    head, _, name = model_id.rpartition("/")
    family = VARIANT.sub("", name) or name
    return f"{head}/{family}" if head else family


def family_rank(seed, family):
    """A number in [0, 1) fixed by the seed and the family alone (sha256: the same on every machine and run)."""
    digest = hashlib.sha256(f"{seed}:{family}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def quotas(n, fractions):
    """(n_val, n_test) of n models: the fractions rounded, and at least one each (when its fraction is not 0)
    once a category has 3 models, so every category is evaluated."""
    def count(f):
        return 0 if f <= 0 or n < 3 else max(1, round(n * f))
    return count(fractions[1]), count(fractions[2])


def assign_splits(models, fractions, seed, known=None):
    """{model_id: split} for models {model_id: category}, stratified by category.

    Models in `known` (a previous splits.json) keep their split, and so does every new member of a known
    family. The other families fill what their category still needs of each split, in the order family_rank
    gives them: with no `known`, the first n_test families by rank are test, the next n_val val. Which
    category a family is in, and what the other categories hold, never changes its place.
    Returns (split, conflicts): conflicts lists families that `known` already puts in two splits.
    """
    known = known or {}
    families = defaultdict(lambda: defaultdict(list))  # category -> family -> [model_id]
    for mid, category in models.items():
        families[category][model_family(mid)].append(mid)
    split, conflicts = {}, []
    for category in sorted(families):
        counts = {s: 0 for s in SPLIT_NAMES}
        new = []
        for family, members in families[category].items():
            seen = sorted({known[m] for m in members if m in known})
            if not seen:
                new.append(family)
                continue
            if len(seen) > 1:
                conflicts.append((family, seen))
            for m in members:
                split[m] = known.get(m, seen[0])
                counts[split[m]] += 1
        n_val, n_test = quotas(len(models_in(families[category])), fractions)
        for family in sorted(new, key=lambda f: (family_rank(seed, f), f)):
            members = families[category][family]
            s = "test" if counts["test"] < n_test else "val" if counts["val"] < n_val else "train"
            for m in members:
                split[m] = s
            counts[s] += len(members)
    return split, conflicts


def models_in(families):
    return [m for members in families.values() for m in members]


def read_splits(path, seed, fractions):
    """{model_id: split} from a splits.json, or {} when there is none. SystemExit when the file is unreadable or
    was drawn with another seed or other fractions: reusing it would silently ignore the flags, drawing anew
    would silently move models that runs were evaluated on; the user chooses (--resplit)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        splits = saved["models"]
        if not isinstance(splits, dict) or not all(s in SPLIT_NAMES for s in splits.values()):
            raise ValueError("'models' is not {model_id: 'train' | 'val' | 'test'}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a splits file ({e}); move it away or pass --resplit") from None
    old = (saved.get("seed"), saved.get("split_fractions"))
    if old != (seed, list(fractions)):
        raise SystemExit(
            f"error: {path} holds the splits of {len(splits)} models drawn with seed {old[0]} and split_fractions "
            f"{old[1]}, not seed {seed} and {list(fractions)}; rerun with the old values to keep them, or pass "
            "--resplit to draw new splits (models that earlier runs were evaluated on may change split)")
    return splits


def write_splits(path, seed, fractions, splits):
    """splits.json: the seed, the fractions and {model_id: split} of every model seen so far (models whose
    renders are missing today keep their entry, so they come back to the same split)."""
    record = {"seed": seed, "split_fractions": list(fractions), "models": dict(sorted(splits.items()))}
    atomic_write(path, json.dumps(record, indent=1) + "\n")
