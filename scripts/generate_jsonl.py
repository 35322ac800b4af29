"""Parse pix3d.json into usable_samples.jsonl: one line per 3D model, with captions, renders, photos and split.

    .venv/bin/python scripts/generate_jsonl.py --json_path data/pix3d/pix3d.json [--split_fractions 0.8,0.1,0.1]

Reads the real Pix3D file and the toy one (scripts/make_toy_pix3d.py) identically. Each output line:
    {"model_id": "chair/IKEA_POANG_1", "category": "chair", "split": "train", "name": "IKEA POANG",
     "captions": [...], "views": ["renders/chair/IKEA_POANG_1/view_00.png", ...],
     "photos": [{"img": ..., "mask": ..., "bbox": [...], "truncated": false, "occluded": false, ...}],
     "attributes": {"color": "brown", "shape": "tall", "parts": {...}}}
Captions come from meshes/captions.py: category, IKEA name, the colour measured on the renders, proportions,
size and part counts; a model whose captions all belong to other models too gets a more specific one.
Paths are relative to the folder of the output file. Models whose renders are missing, failed or unreadable
are left out and counted; so are entries with bad fields or paths outside the data folder, and photos or
masks that cannot be read.

Splits are by model (never by photo: a model in two splits leaks), stratified by category, and kept in
splits.json beside the output ({"seed": 0, "split_fractions": [0.8, 0.1, 0.1], "models": {model_id: split}}):
a model keeps its split across runs whatever models come and go, and new models fill their category's
fractions; variants of one product (IKEA_X_1, IKEA_X_2) share one (meshes/splits.py). Another --seed or
--split_fractions than the file's is an error unless --resplit, which draws every split anew.
"""
import argparse
import json
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from meshes.captions import (build_captions, detail_captions, make_distinct, measure_mesh,  # noqa: E402
                             readable_name, shape_word, size_classes, view_colors)
from meshes.pix3d import (check_photos, find_views, group_entries, load_captions_json,  # noqa: E402
                          load_pix3d_json, model_id_of, read_views)
from meshes.splits import assign_splits, parse_fractions, read_splits, write_splits  # noqa: E402
from utils import read_jsonl, write_jsonl  # noqa: E402

LARGEST_K = 10  # the largest K of the Recall@K that evaluation reports; R@K of K models or fewer is always 1.0
SECOND_COLOR = 0.25  # a second colour covering at least this fraction of the object is worth saying
# what a jsonl row keeps of a model's attributes (toy models: "held_out" names the held-out combinations it shows)
ATTRIBUTE_KEYS = ("color", "second_color", "shape", "style", "parts", "held_out", "variant_of", "edits")


def model_attributes(obj, images, up="y"):
    """What the captions may say of a model: its attributes.json (toy models) completed by what its renders
    show (colour: a texture paints the model, not the .mtl) and by measuring the mesh (size, part count; the
    .mtl colour only when no view shows the object)."""
    attributes = {}
    attr_file = obj.parent / "attributes.json"  # written by the toy generator; real Pix3D has none
    if attr_file.exists():
        try:
            attributes = json.loads(attr_file.read_text())
        except (OSError, ValueError) as e:
            print(f"warning: {attr_file}: not readable JSON ({e}); ignored", file=sys.stderr)
        if not isinstance(attributes, dict):
            print(f"warning: {attr_file}: not an object of attributes; ignored", file=sys.stderr)
            attributes = {}
    try:
        measured = measure_mesh(obj, up)
    except Exception as e:  # an unreadable mesh still has its renders; the captions say less
        print(f"warning: {obj}: could not measure mesh attributes ({e})", file=sys.stderr)
        measured = {}
    colors = view_colors(images)
    attributes.setdefault("color", colors[0][0] if colors else measured.get("color"))
    second = [w for w, f in colors if w != attributes["color"] and f >= SECOND_COLOR]
    attributes.setdefault("second_color", second[0] if second else None)
    attributes.setdefault("size", measured.get("size"))
    attributes.setdefault("n_parts", measured.get("n_parts"))
    attributes["shape"] = shape_word(attributes.get("size"))
    return attributes


def failed_models(renders_dir):
    """Model ids that scripts/render_objs.py listed in failures*.jsonl (one file per --shard)."""
    failed = set()
    for failures_file in renders_dir.glob("failures*.jsonl"):
        failed |= {model_id_of("model/" + r["model"]) for r in read_jsonl(failures_file)
                   if isinstance(r, dict) and isinstance(r.get("model"), str)}
    return failed


def model_row(mid, category, model_path, root, views, photos, rel):
    """One output line, before captions are made distinct and splits drawn; ValueError for unreadable views."""
    files, records = views
    images = read_views(files, records)
    up = next((r["up"] for r in records if isinstance(r.get("up"), str)), "y")
    attributes = model_attributes(root / model_path, images, up)
    return {
        "model_id": mid, "category": category, "split": None, "name": readable_name(mid), "captions": [],
        "views": [rel(v) for v in files],
        "photos": [dict(p, img=rel(root / p["img"]), mask=rel(root / p["mask"]) if p["mask"] else None)
                   for p in photos],
        "attributes": attributes,
    }


def build_rows(model_info, photos, root, renders_dir, out_dir):
    """(rows, Counter of why models were left out, Counter of why photos were skipped)."""
    failed, rows, left_out, photo_skips = failed_models(renders_dir), [], Counter(), Counter()
    rel = lambda p: os.path.relpath(os.path.abspath(p), out_dir)  # noqa: E731  (lexical: symlinks kept)
    for mid, (category, model_path) in tqdm(sorted(model_info.items()), desc="models", unit="model",
                                            disable=len(model_info) < 50):
        views = None if mid in failed else find_views(renders_dir, model_path, mid)
        if views is None:
            left_out["renders failed" if mid in failed else "renders missing"] += 1
            continue
        try:
            kept = check_photos(root, photos[mid], photo_skips)
            rows.append(model_row(mid, category, model_path, root, views, kept, rel))
        except ValueError as e:
            left_out["views unreadable"] += 1
            if left_out["views unreadable"] <= 5:
                print(f"warning: model {mid}: {e}; left out", file=sys.stderr)
    return rows, left_out, photo_skips


def add_captions(rows, human):
    """Each row's captions (human ones first), each model told apart from the others where the data allows.
    Returns the model ids still sharing all their captions with other models."""
    by_category = defaultdict(dict)
    for row in rows:
        by_category[row["category"]][row["model_id"]] = row["attributes"].get("size")
    classes = {mid: c for sizes in by_category.values() for mid, c in size_classes(sizes).items()}
    for row in rows:
        attributes = dict(row["attributes"], size_class=classes.get(row["model_id"]))
        row["captions"] = list(dict.fromkeys(human.get(row["model_id"], [])
                                             + build_captions(row["category"], attributes, row["name"])))
        row["candidates"] = detail_captions(row["category"], attributes)
    shared = make_distinct([r["captions"] for r in rows], [r.pop("candidates") for r in rows])
    for row in rows:
        row["attributes"] = {k: row["attributes"].get(k) for k in ATTRIBUTE_KEYS if row["attributes"].get(k)}
    return [rows[i]["model_id"] for i in shared]


def split_rows(rows, splits_json, seed, fractions, resplit):
    """Set each row's split (meshes/splits.py) and write splits.json; returns nothing."""
    known = {} if resplit else read_splits(splits_json, seed, fractions)
    split, conflicts = assign_splits({r["model_id"]: r["category"] for r in rows}, fractions, seed, known)
    for family, seen in conflicts:
        print(f"warning: {splits_json}: the variants of {family} are in {' and '.join(seen)}; they stay there "
              "(--resplit puts each family in one split)", file=sys.stderr)
    for row in rows:
        row["split"] = split[row["model_id"]]
    write_splits(splits_json, seed, fractions, {**known, **split})


def report_no_rows(output, source):
    """Nothing is written when no model is usable: an empty run never replaces a jsonl (or splits.json)."""
    kept = f"; {output} is left as it was" if output.exists() and output.stat().st_size > 0 else ""
    print(f"error: no usable models from {source}{kept} (are --json_path and --renders_dir right?)",
          file=sys.stderr)


def warn_small_splits(counts):
    for s in ("train", "val", "test"):
        if counts[s] < LARGEST_K:
            print(f"warning: split {s} has {counts[s]} models, fewer than {LARGEST_K}: Recall@K with K >= "
                  f"{counts[s]} is 1.0 there whatever the model (more models or other --split_fractions)",
                  file=sys.stderr)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json_path", default="data/pix3d/pix3d.json")
    ap.add_argument("--renders_dir", default=None, help="default: <json dir>/renders")
    ap.add_argument("--output", default=None, help="default: <json dir>/usable_samples.jsonl")
    ap.add_argument("--captions_json", default=None, help="human captions: {model_id: [caption, ...]}, merged first")
    ap.add_argument("--split_fractions", default="0.8,0.1,0.1", help="train,val,test fractions by model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits_json", default=None, help="the splits kept across runs; default: splits.json "
                    "beside --output")
    ap.add_argument("--resplit", action="store_true", help="ignore --splits_json and draw every split anew")
    args = ap.parse_args(argv)
    try:
        args.fractions = parse_fractions(args.split_fractions)
    except ValueError as e:
        ap.error(f"--split_fractions {args.split_fractions}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    json_path = Path(args.json_path)
    root = json_path.parent
    renders_dir = Path(args.renders_dir) if args.renders_dir else root / "renders"
    output = Path(args.output) if args.output else root / "usable_samples.jsonl"
    splits_json = Path(args.splits_json) if args.splits_json else output.parent / "splits.json"
    human = load_captions_json(args.captions_json) if args.captions_json else {}
    model_info, photos, skipped = group_entries(load_pix3d_json(json_path), json_path)
    unknown = sorted(set(human) - set(model_info))
    if unknown:
        print(f"warning: {args.captions_json}: {len(unknown)} model ids not in {json_path} (e.g. {unknown[0]!r})",
              file=sys.stderr)

    rows, left_out, photo_skips = build_rows(model_info, photos, root, renders_dir, os.path.abspath(output.parent))
    shared = add_captions(rows, human)
    if shared:
        print(f"warning: {len(shared)} models share all their captions with other models, e.g. {shared[:3]} "
              "(nothing measured tells them apart)", file=sys.stderr)
    if not rows:
        report_no_rows(output, f"{json_path} and {renders_dir}")
        return 1
    split_rows(rows, splits_json, args.seed, args.fractions, args.resplit)
    write_jsonl(output, rows)  # atomic: a reader never sees half a file

    counts = Counter(r["split"] for r in rows)
    warn_small_splits(counts)
    detail = lambda c: f" ({dict(c)})" if c else ""  # noqa: E731
    print(f"wrote {len(rows)} models to {output} (train {counts['train']}, val {counts['val']}, "
          f"test {counts['test']}); entries skipped {sum(skipped.values())}{detail(skipped)}"
          f"; photos skipped {sum(photo_skips.values())}{detail(photo_skips)}"
          f"; models left out {sum(left_out.values())}{detail(left_out)}"
          f"; models sharing all their captions {len(shared)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
