"""Reading and checking Pix3D-format input (scripts/generate_jsonl.py): pix3d.json and its entries, the photos
and masks they name, a model's rendered views, and human captions.

Users' data is never as clean as ours: a bad entry, photo, mask or view is reported and skipped (and counted),
never fatal; only a file that cannot be read at all (pix3d.json, --captions_json) stops the run, naming the
file, line and column. Paths from the data stay inside the data folder: an absolute path, or one that climbs
out with '..', is never read.
"""
import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

ENTRY_FIELDS = ("img", "category", "model")
PATH_FIELDS = ("model", "img", "mask")
OUTSIDE = "path outside the data folder"


def model_id_of(model_path):
    """'model/chair/IKEA_POANG_1/model.obj' -> 'chair/IKEA_POANG_1' (a folder can hold other .obj: keep the stem)."""
    p = Path(model_path)
    parts = p.parts[1:] if p.parts and p.parts[0] == "model" else p.parts
    rel = Path(*parts)
    return str(rel.parent) if rel.name == "model.obj" else str(rel.parent / rel.stem)


def read_json(path, what):
    """The parsed JSON of a file the user named; SystemExit naming the file (and line and column) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: file not found ({what})") from None
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: {path}: not UTF-8 text ({what}): {e}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except OSError as e:
        raise SystemExit(f"error: {path}: cannot read ({what}): {e}") from None


def load_pix3d_json(json_path):
    """The list of entries; a malformed file raises one clear error naming the file and position."""
    entries = read_json(json_path, "the pix3d.json")
    if not isinstance(entries, list):
        raise SystemExit(f"error: {json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def inside(rel_path):
    """True when a path from the data stays inside the data folder: relative and not climbing out with '..'
    (Windows separators count as separators)."""
    p = PurePosixPath(str(rel_path).replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):  # /x, C:/x
        return False
    return os.path.normpath(str(p)).split("/")[0] != ".."


def entry_problem(entry):
    """None when the entry is usable, else a short reason."""
    if not isinstance(entry, dict):
        return "not an object"
    for key in ENTRY_FIELDS:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            return f"missing or empty '{key}'"
    if entry.get("mask") is not None and not isinstance(entry["mask"], str):
        return "'mask' is not a path"
    if not all(inside(entry[key]) for key in PATH_FIELDS if entry.get(key)):
        return OUTSIDE
    bbox = entry.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4
                             or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        return "bbox is not [x1, y1, x2, y2]"
    return None


def group_entries(entries, json_path):
    """Usable entries by model: ({model_id: (category, model path)}, {model_id: [photo]}, Counter of the
    reasons entries were skipped); the first few skipped entries are named on stderr. An entry naming the
    same photo as an earlier one is a duplicate: skipped and counted."""
    skipped, photos, model_info, seen = Counter(), defaultdict(list), {}, set()
    for i, entry in enumerate(entries):
        problem = entry_problem(entry)
        if problem is None and os.path.normpath(entry["img"]) in seen:
            problem = "duplicate photo"
        if problem:
            skipped[problem] += 1
            if sum(skipped.values()) <= 5:
                print(f"warning: {json_path}: entry {i}: {problem}; skipped", file=sys.stderr)
            continue
        seen.add(os.path.normpath(entry["img"]))
        mid = model_id_of(entry["model"])
        model_info.setdefault(mid, (entry["category"], entry["model"]))
        photos[mid].append({
            "img": entry["img"], "mask": entry.get("mask") or None, "bbox": entry.get("bbox"),
            "truncated": bool(entry.get("truncated", False)), "occluded": bool(entry.get("occluded", False)),
            "slightly_occluded": bool(entry.get("slightly_occluded", False)),
        })
    return model_info, photos, skipped


def image_problem(path):
    """None when the image file can be read whole, else a short reason. Cheap: a PNG's chunks are checked
    (verify), a JPEG is decoded at 1/8 scale (a truncated one fails)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()
    except Exception as e:  # PIL raises many kinds of errors on damaged files
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def photo_problem(root, photo):
    """None when a photo (and its mask, when it names one) can be read and the two have one size."""
    problem = image_problem(root / photo["img"])
    if problem:
        return f"photo {problem}"
    if photo["mask"]:
        problem = image_problem(root / photo["mask"])
        if problem:
            return f"mask {problem}"
        if image_size(root / photo["mask"]) != image_size(root / photo["img"]):
            return "mask and photo differ in size"
    return None


def check_photos(root, photos, skipped):
    """The photos that can be read; each other one is counted in `skipped` by reason and (the first few) named."""
    kept = []
    for photo in photos:
        problem = photo_problem(root, photo)
        if problem is None:
            kept.append(photo)
            continue
        skipped[problem.split(" (")[0]] += 1
        if sum(skipped.values()) <= 5:
            print(f"warning: {root / photo['img']}: {problem}; photo skipped", file=sys.stderr)
    return kept


# ----------------------------------------------------------------------------- rendered views
def find_views(renders_dir, model_path, model_id):
    """(view files, views.json records) of a model, or None when its views are missing or incomplete. The
    records are {} for views.json files without dicts; a view name that is not a plain file name is never
    followed out of the model's folder."""
    rel = Path(model_path)
    rel = Path(*rel.parts[1:]) if rel.parts and rel.parts[0] == "model" else rel
    for folder in (renders_dir / rel.parent, renders_dir / rel.parent / rel.stem, renders_dir / model_id):
        meta = folder / "views.json"
        if not meta.exists():
            continue
        try:
            views = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(views, list) or not views:
            return None
        records = [v if isinstance(v, dict) else {} for v in views]
        names = [r.get("image") or r.get("file") for r in records]
        if all(isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..") for n in names):
            files = [folder / n for n in names]
        else:
            files, records = sorted(folder.glob("view_*.png")), [{} for _ in views]
        if files and len(files) == len(views) and all(f.is_file() for f in files):
            return files, records
        return None
    return None


def read_views(files, records):
    """The views as RGB arrays; ValueError naming the first file that differs from the size and sha256 its
    views.json recorded (meshes/render.py writes them) or that cannot be decoded (a truncated PNG)."""
    import numpy as np
    from PIL import Image

    images = []
    for path, record in zip(files, records):
        if "sha256" in record:
            data = path.read_bytes()
            if len(data) != record.get("bytes", len(data)) or hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise ValueError(f"{path}: not the file views.json recorded (size or sha256 differ; truncated?)")
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
        except Exception as e:  # PIL raises many kinds of errors on damaged files
            raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    return images


# ----------------------------------------------------------------------------- human captions
def caption_problem(value):
    if not isinstance(value, list):
        return f"expected a list of captions, got {type(value).__name__}"
    if not all(isinstance(c, str) for c in value):
        return "expected a list of strings"
    return None


def load_captions_json(path):
    """{model_id: [caption, ...]} of a --captions_json file, validated like pix3d.json: a file that is not
    JSON or not an object stops the run (file, line, column); a model id whose value is not a list of strings
    is reported and skipped, blank captions are dropped, whitespace is collapsed."""
    data = read_json(path, "--captions_json")
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: expected a JSON object {{model_id: [caption, ...]}}, "
                         f"got {type(data).__name__}")
    captions, problems = {}, 0
    for mid, value in data.items():
        problem = caption_problem(value)
        kept = [" ".join(c.split()) for c in value if " ".join(c.split())] if problem is None else []
        if problem is None and len(kept) < len(value):
            problem = f"{len(value) - len(kept)} blank caption(s) dropped"
        if problem:
            problems += 1
            if problems <= 5:
                print(f"warning: {path}: model {mid!r}: {problem}" + ("" if kept else "; skipped"), file=sys.stderr)
        if kept:
            captions[mid] = kept
    return captions
