"""Parse pix3d.json into usable_samples.jsonl: one line per 3D model, with captions, renders, photos and split.

    .venv/bin/python scripts/generate_jsonl.py --json_path data/pix3d/pix3d.json [--split_fractions 0.8,0.1,0.1]

Reads the real Pix3D file and the toy one (scripts/make_toy_pix3d.py) identically. Each output line:
    {"model_id": "chair/IKEA_POANG_1", "category": "chair", "split": "train", "name": "IKEA POANG",
     "captions": [...], "views": ["renders/chair/IKEA_POANG_1/view_00.png", ...],
     "photos": [{"img": ..., "mask": ..., "bbox": [...], "truncated": false, "occluded": false, ...}],
     "attributes": {"color": "brown", "shape": "tall", "parts": {...}}}
Captions come from meshes/captions.py: category, IKEA name, measured colour, proportions and part counts.
Paths are relative to the folder of the output file. Models whose renders are missing (or failed) are left
out and counted. Splits are by model (never by photo: a model in two splits leaks), stratified by category.
"""
import argparse
import json
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from meshes.captions import build_captions, measure_mesh, readable_name, shape_word  # noqa: E402
from utils import read_jsonl, write_jsonl  # noqa: E402

ENTRY_FIELDS = ("img", "category", "model")


def model_id_of(model_path):
    """'model/chair/IKEA_POANG_1/model.obj' -> 'chair/IKEA_POANG_1' (a folder can hold other .obj: keep the stem)."""
    p = Path(model_path)
    parts = p.parts[1:] if p.parts and p.parts[0] == "model" else p.parts
    rel = Path(*parts)
    return str(rel.parent) if rel.name == "model.obj" else str(rel.parent / rel.stem)


def load_pix3d_json(json_path):
    """The list of entries; a malformed file raises one clear error naming the file and position."""
    try:
        with open(json_path) as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {json_path}: file not found") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {json_path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(entries, list):
        raise SystemExit(f"error: {json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def entry_problem(entry):
    """None when the entry is usable, else a short reason."""
    if not isinstance(entry, dict):
        return "not an object"
    for key in ENTRY_FIELDS:
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"missing or empty '{key}'"
    bbox = entry.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
        return "bbox is not [x1, y1, x2, y2]"
    return None


def find_views(renders_dir, model_path, model_id):
    """The rendered views of a model, or None when they are missing or incomplete."""
    rel = Path(model_path)
    rel = Path(*rel.parts[1:]) if rel.parts and rel.parts[0] == "model" else rel
    for folder in (renders_dir / rel.parent, renders_dir / rel.parent / rel.stem, renders_dir / model_id):
        meta = folder / "views.json"
        if meta.exists():
            views = json.loads(meta.read_text())
            names = [(v.get("image") or v.get("file")) if isinstance(v, dict) else None for v in views]
            files = [folder / name if name else None for name in names]
            if any(f is None for f in files):
                files = sorted(folder.glob("view_*.png"))
            if files and len(files) == len(views) and all(f.exists() for f in files):
                return files
            return None
    return None


def split_models(models_by_category, fractions, seed):
    """model_id -> split, stratified by category, deterministic from seed; >= 1 test model per category
    with at least 3 models."""
    rng = random.Random(seed)
    split = {}
    for category in sorted(models_by_category):
        ids = sorted(models_by_category[category])
        rng.shuffle(ids)
        n = len(ids)
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        for i, mid in enumerate(ids):
            split[mid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split


def group_entries(entries, json_path):
    """Usable entries by model: ({model_id: (category, model path)}, {model_id: [photo]}, Counter of the
    reasons entries were skipped); the first few skipped entries are named on stderr."""
    skipped, photos, model_info = Counter(), defaultdict(list), {}
    for i, entry in enumerate(entries):
        problem = entry_problem(entry)
        if problem:
            skipped[problem] += 1
            if sum(skipped.values()) <= 5:
                print(f"warning: {json_path}: entry {i}: {problem}; skipped", file=sys.stderr)
            continue
        mid = model_id_of(entry["model"])
        model_info.setdefault(mid, (entry["category"], entry["model"]))
        photos[mid].append({
            "img": entry["img"], "mask": entry.get("mask"), "bbox": entry.get("bbox"),
            "truncated": bool(entry.get("truncated", False)), "occluded": bool(entry.get("occluded", False)),
            "slightly_occluded": bool(entry.get("slightly_occluded", False)),
        })
    return model_info, photos, skipped


def model_attributes(obj):
    """What the captions may say of a model: its attributes.json (toy models) completed by measuring the
    mesh (colour, size), and the shape word of its size."""
    attributes = {}
    attr_file = obj.parent / "attributes.json"  # written by the toy generator; real Pix3D has none
    if attr_file.exists():
        attributes = json.loads(attr_file.read_text())
    try:
        measured = measure_mesh(obj)
    except Exception as e:  # a broken mesh still has its renders missing; don't stop the whole run
        print(f"warning: {obj}: could not measure mesh attributes ({e})", file=sys.stderr)
        measured = {}
    attributes.setdefault("color", measured.get("color"))
    attributes.setdefault("size", measured.get("size"))
    attributes["shape"] = shape_word(attributes.get("size"))
    return attributes


def parse_fractions(text):
    """'0.8,0.1,0.1' -> [0.8, 0.1, 0.1]; ValueError unless three non-negative fractions summing to 1."""
    fractions = [float(x) for x in text.split(",")]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError("expected three fractions summing to 1")
    return fractions


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json_path", default="data/pix3d/pix3d.json")
    ap.add_argument("--renders_dir", default=None, help="default: <json dir>/renders")
    ap.add_argument("--output", default=None, help="default: <json dir>/usable_samples.jsonl")
    ap.add_argument("--captions_json", default=None, help="human captions: {model_id: [caption, ...]}, merged first")
    ap.add_argument("--split_fractions", default="0.8,0.1,0.1", help="train,val,test fractions by model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        fractions = parse_fractions(args.split_fractions)
    except ValueError as e:
        ap.error(f"--split_fractions {args.split_fractions}: {e}")

    json_path = Path(args.json_path)
    root = json_path.parent
    renders_dir = Path(args.renders_dir) if args.renders_dir else root / "renders"
    output = Path(args.output) if args.output else root / "usable_samples.jsonl"
    human = json.loads(Path(args.captions_json).read_text()) if args.captions_json else {}
    model_info, photos, skipped = group_entries(load_pix3d_json(json_path), json_path)

    failed = set()
    for failures_file in renders_dir.glob("failures*.jsonl"):  # failures_shard{i}of{n}.jsonl with --shard
        failed |= {model_id_of("model/" + r["model"]) for r in read_jsonl(failures_file)}

    rows, left_out = [], Counter()
    out_dir = output.parent.resolve()
    rel = lambda p: os.path.relpath(Path(p).resolve(), out_dir)  # noqa: E731
    for mid, (category, model_path) in sorted(model_info.items()):
        views = None if mid in failed else find_views(renders_dir, model_path, mid)
        if views is None:
            left_out["renders failed" if mid in failed else "renders missing"] += 1
            continue
        attributes = model_attributes(root / model_path)
        name = readable_name(mid)
        captions = list(human.get(mid, [])) + build_captions(category, attributes, name)
        rows.append({
            "model_id": mid, "category": category, "split": None, "name": name,
            "captions": list(dict.fromkeys(captions)),
            "views": [rel(v) for v in views],
            "photos": [dict(p, img=rel(root / p["img"]), mask=rel(root / p["mask"]) if p["mask"] else None)
                       for p in photos[mid]],
            "attributes": {k: attributes.get(k) for k in ("color", "shape", "style", "parts") if attributes.get(k)},
        })

    by_category = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row["model_id"])
    split = split_models(by_category, fractions, args.seed)
    for row in rows:
        row["split"] = split[row["model_id"]]
    write_jsonl(output, rows)

    counts = Counter(r["split"] for r in rows)
    print(f"wrote {len(rows)} models to {output} (train {counts['train']}, val {counts['val']}, "
          f"test {counts['test']}); entries skipped {sum(skipped.values())}"
          + (f" ({dict(skipped)})" if skipped else "")
          + f"; models left out {sum(left_out.values())}" + (f" ({dict(left_out)})" if left_out else ""))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
