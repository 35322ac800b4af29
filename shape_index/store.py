"""The index folder on disk: manifest.json, one embedding per shape, the shapes' ids and paths, thumbnails.

    index = load_index("index/")        # ShapeIndex: .manifest, .embeddings [N, D], .shapes, .ids
    index.embedding("chair/IKEA_X")     # one shape's unit embedding (float32)

Layout:
    manifest.json            what built the index (see MANIFEST_KEYS) and the names of the two files below
    embeddings-<gen>.npy     [count, embedding_dim] unit rows, in the manifest's dtype (float16 or float32)
    shapes-<gen>.jsonl       one line per row: model_id, mesh_path (null when indexed from renders), thumbnail
                             (relative to the index folder), views_key and mesh_key (what decides re-embedding)
    thumbnails/<name>.png    view 0 of each shape, THUMB_SIZE px
    renders/                 the views, when the index rendered the meshes itself (index_shapes.py --mesh_dir)
    searches/                search.py's reports, unless it is told another --out_dir

An update writes a new generation <gen> of the two data files, then replaces manifest.json (atomically) to name
them, and only then deletes the previous generation and the thumbnails no shape uses: a run killed at any point
leaves a manifest naming complete files, so the previous index stays usable.
"""
import hashlib
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from utils import atomic_save_image, atomic_write, read_jsonl, write_json, write_jsonl

FORMAT = "shape_index/1"
MANIFEST = "manifest.json"
THUMB_SIZE = 128  # px, the longer side of a thumbnail
DTYPES = ("float16", "float32")
# What must be equal for an index to be updated rather than rebuilt: the weights, the renders and the pooling.
IDENTITY_KEYS = ("checkpoint_sha256", "clip_model", "clip_fingerprint", "render", "views", "dtype")
MANIFEST_KEYS = ("format", "model", "checkpoint", "checkpoint_sha256", "clip_model", "clip_weights",
                 "clip_fingerprint", "render", "views", "dtype", "embedding_dim", "count", "date", "source",
                 "generation", "embeddings_file", "shapes_file")


class BadIndex(ValueError):
    """An index folder that cannot be read, or that does not match what a command asks for."""


def sha256_file(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def thumbnail_name(model_id):
    """A flat, safe file name for a model id (ids hold slashes and any character): readable part + hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-60:].lstrip("._") or "shape"
    return f"{slug}-{hashlib.sha1(model_id.encode()).hexdigest()[:10]}.png"


def write_thumbnail(view_path, out_path):
    """view_path shrunk to THUMB_SIZE, written atomically as PNG."""
    from multiview_dataset import load_image

    image = load_image(view_path)
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    atomic_save_image(image, out_path)


def read_manifest(root):
    """The manifest of the index in `root`, or None when there is none; BadIndex when it is unreadable."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadIndex(f"{path}: cannot read the index manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadIndex(f"{path}: not a shape index manifest (expected format {FORMAT!r})")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise BadIndex(f"{path}: the manifest lacks {missing}")
    return manifest


def identity_differences(manifest, identity):
    """[(key, the index's value, the asked value)] of IDENTITY_KEYS that differ: what needs --rebuild."""
    return [(k, manifest.get(k), identity.get(k)) for k in IDENTITY_KEYS
            if json.dumps(manifest.get(k), sort_keys=True) != json.dumps(identity.get(k), sort_keys=True)]


class ShapeIndex:
    """A loaded index: manifest (dict), embeddings ([count, dim] numpy, the manifest's dtype, memory-mapped),
    shapes (list of dicts, row order), ids (model ids, row order)."""

    def __init__(self, root, manifest, embeddings, shapes):
        self.root, self.manifest, self.embeddings, self.shapes = Path(root), manifest, embeddings, shapes
        self.ids = [s["model_id"] for s in shapes]
        self.row_of = {m: i for i, m in enumerate(self.ids)}

    def __len__(self):
        return len(self.shapes)

    @property
    def render(self):
        """The render settings every shape's views were made with (a query mesh is rendered the same way)."""
        return self.manifest["render"]

    def thumbnail(self, row):
        return self.root / self.shapes[row]["thumbnail"]

    def embedding(self, model_id):
        """The unit embedding [dim] (float32) of one indexed shape, e.g. the reference of a composed query."""
        if model_id not in self.row_of:
            raise KeyError(f"{model_id!r} is not in the index {self.root}")
        return np.asarray(self.embeddings[self.row_of[model_id]], dtype=np.float32)


def load_index(root):
    """The index in folder `root`; BadIndex naming the file and the problem when it is missing or damaged."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise BadIndex(f"{root}: no {MANIFEST}: not a shape index (build one with scripts/index_shapes.py)")
    emb_path, shapes_path = root / manifest["embeddings_file"], root / manifest["shapes_file"]
    try:
        embeddings = np.load(emb_path, mmap_mode="r")  # pages in on use: a FAISS index holds its own copy
        shapes = read_jsonl(shapes_path)
    except (OSError, ValueError) as e:
        raise BadIndex(f"{root}: cannot read the index data ({e})") from None
    expected = (manifest["count"], manifest["embedding_dim"])
    if embeddings.shape != expected or str(embeddings.dtype) != manifest["dtype"]:
        raise BadIndex(f"{emb_path}: holds {embeddings.shape} {embeddings.dtype}, the manifest says "
                          f"{expected} {manifest['dtype']}")
    if len(shapes) != manifest["count"] or any(not isinstance(s, dict) or "model_id" not in s for s in shapes):
        raise BadIndex(f"{shapes_path}: expected {manifest['count']} shape lines with a model_id")
    return ShapeIndex(root, manifest, embeddings, shapes)


def write_index(root, manifest, embeddings, shapes):
    """Write a new generation of the index in `root` (see the module docstring): the data files, then the
    manifest naming them, then remove the previous generation and unused thumbnails. `manifest` holds the
    identity and description keys; count, dim, date and file names are filled in here. Returns the manifest."""
    root = Path(root)
    old = read_manifest(root)
    generation = (old["generation"] + 1) if old else 1
    dtype = manifest["dtype"]
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    embeddings = np.ascontiguousarray(embeddings, dtype=dtype)
    if embeddings.ndim != 2 or len(embeddings) != len(shapes):
        raise ValueError(f"{len(shapes)} shapes but embeddings of shape {embeddings.shape}")
    manifest = dict(manifest, format=FORMAT, count=len(shapes), embedding_dim=int(embeddings.shape[1]),
                    date=datetime.now(timezone.utc).isoformat(timespec="seconds"), generation=generation,
                    embeddings_file=f"embeddings-{generation:04d}.npy", shapes_file=f"shapes-{generation:04d}.jsonl")
    buf = io.BytesIO()
    np.save(buf, embeddings)
    atomic_write(root / manifest["embeddings_file"], buf.getvalue())
    write_jsonl(root / manifest["shapes_file"], shapes)
    write_json(root / MANIFEST, {k: manifest[k] for k in MANIFEST_KEYS})  # the commit point
    for name in ("embeddings_file", "shapes_file"):  # every earlier generation, a killed run's too
        for path in root.glob(manifest[name].replace(f"{generation:04d}", "*")):
            if path.name != manifest[name]:
                path.unlink(missing_ok=True)
    used = {Path(s["thumbnail"]).name for s in shapes}
    for path in (root / "thumbnails").glob("*.png"):
        if path.name not in used:
            path.unlink(missing_ok=True)
    return manifest
