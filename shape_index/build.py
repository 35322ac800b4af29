"""Building and updating an index: the shapes of a collection (meshes, renders or a usable_samples.jsonl), each
embedded once.

    shapes, failures = shapes_from_meshes("my_meshes/", "index/renders", render, workers=2)   # renders first
    shapes, failures, render = shapes_from_renders("data/pix3d/renders")
    shapes, failures, render = shapes_from_jsonl("data/pix3d/usable_samples.jsonl")
    stats = update_index("index/", shapes, encoder, identity, render)    # embeds only what is new or changed

A shape is {"model_id", "mesh_path", "views": [view PNGs], "views_key", "mesh_key"}. On an update, a shape
whose model_id, views_key (its views.json and every view's size and mtime) and mesh_key (the mesh file's size
and mtime) equal the index's keeps its embedding; the others are embedded; shapes no longer in the collection
are dropped. A mesh whose file changed since it was indexed is rendered again.
"""
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from meshes.render import is_done, view_name
from shape_index.encoder import cameras_of, render_settings
from shape_index.store import (BadIndex, identity_differences, load_index, read_manifest, thumbnail_name,
                               write_index, write_thumbnail)

EMBED_CHUNK = 64  # shapes encoded between two looks at the clock
COMMIT_EVERY_S = 600.0  # a long first build writes the index this often, so a killed run keeps what it embedded


def file_key(path):
    """'<size>-<mtime_ns>' of a file: changes when the file is rewritten."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def views_key(folder, views):
    """What identifies a shape's rendered views: its views.json (each PNG's sha256, the cameras) and every view
    file's size and mtime."""
    h = hashlib.sha1()
    record = Path(folder) / "views.json"
    if record.is_file():
        h.update(record.read_bytes())
    for v in views:
        h.update(f"{Path(v).name}:{file_key(v)}\n".encode())
    return h.hexdigest()


def check_identity(root, identity, rebuild=False):
    """BadIndex when the index in `root` was built with other weights, render settings, pooling or dtype than
    `identity` (the manifest's IDENTITY_KEYS) and rebuild is False."""
    manifest = read_manifest(root)
    if manifest is None or rebuild:
        return
    diffs = identity_differences(manifest, identity)
    if diffs:
        lines = "".join(f"\n  {k}: index {json.dumps(a)}, now {json.dumps(b)}" for k, a, b in diffs)
        raise BadIndex(f"{Path(root) / 'manifest.json'}: the index was built differently:{lines}\n"
                       f"  re-run with --rebuild to re-embed every shape this way (the old index is replaced)")


def shapes_from_meshes(mesh_dir, renders_dir, render, workers=1, timeout_per_model=600.0, shard=(0, 1), old=None,
                       progress=True):
    """Render every .obj under mesh_dir that is not rendered yet into renders_dir (meshes.render_pool: resumable,
    a broken mesh is listed and skipped; with shard (i, n) only that shard) and return (shapes, failures
    [{"model", "reason"}]). old: {model_id: shape row} of the current index; a mesh whose file changed since
    is rendered again. render_pool.CannotRender when nothing can render."""
    from meshes.render_pool import find_models, render_models, shard_models

    mesh_dir, renders_dir = Path(mesh_dir), Path(renders_dir)
    if not mesh_dir.is_dir():
        raise FileNotFoundError(f"--mesh_dir {mesh_dir}: not a folder")
    models = shard_models(find_models(mesh_dir, renders_dir), shard)
    if not models:
        raise ValueError(f"{mesh_dir}: no .obj files" + (f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""))
    old = old or {}
    for obj, folder in models:
        row = old.get(folder.relative_to(renders_dir).as_posix())
        if row and row.get("mesh_key") != file_key(obj):
            (folder / "views.json").unlink(missing_ok=True)  # the mesh changed: its renders are stale
    suffix = "" if shard[1] == 1 else f"_shard{shard[0]}of{shard[1]}"
    run = render_models(models, mesh_dir, renders_dir, cameras_of(render), render["size"], tuple(render["bg"]),
                        render["up"], workers, timeout_per_model, suffix, progress)
    shapes = []
    for obj, folder in sorted(run.done):
        views = [folder / view_name(i) for i in range(render["n_views"])]
        shapes.append({"model_id": folder.relative_to(renders_dir).as_posix(), "mesh_path": str(obj),
                       "views": views, "views_key": views_key(folder, views), "mesh_key": file_key(obj)})
    return shapes, run.failures


def render_of_folder(folder):
    """The render settings a render_objs.py folder (views.json + view PNGs) was made with, or None when its
    views.json is missing or not of that kind. The background is the first view's corner pixel: a normalized
    model never reaches the corners."""
    from multiview_dataset import load_image

    try:
        records = json.loads((Path(folder) / "views.json").read_text())
        first = records[0]
        elevations = list(dict.fromkeys(float(r["elevation"]) for r in records))
        bg = load_image(Path(folder) / first["image"]).getpixel((0, 0))
        return render_settings(len(records), first["intrinsics"]["width"], elevations, first["distance"],
                               first["yfov"], bg, first.get("up", "y"))
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _from_folders(entries, source):
    """(shapes, failures, render) of [(model_id, folder, views, mesh_path)]: every folder must hold finished
    renders (views.json, PNGs as recorded) of one set of render settings."""
    by_render, failures, render_of = {}, [], {}
    for model_id, folder, _, _ in entries:
        render = render_of_folder(folder)
        if render is None:
            failures.append({"model": model_id, "reason": f"{folder}: no readable views.json from render_objs.py"})
            continue
        render_of[model_id] = render
        by_render.setdefault(json.dumps(render, sort_keys=True), []).append(model_id)
    if len(by_render) > 1:
        counts = "; ".join(f"{len(ids)} like {ids[0]}: {r}" for r, ids in by_render.items())
        raise ValueError(f"{source}: renders made with {len(by_render)} different settings ({counts}); "
                         f"index each kind separately")
    if not by_render:
        raise ValueError(f"{source}: no rendered model found (a folder with views.json and view_XX.png)")
    render = json.loads(next(iter(by_render)))
    cameras = cameras_of(render)
    shapes = []
    for model_id, folder, views, mesh_path in entries:
        if model_id not in render_of:
            continue
        if not is_done(folder, cameras, render["size"], render["size"], render["up"]):
            failures.append({"model": model_id, "reason": f"{folder}: a view is missing or differs from views.json"})
            continue
        shapes.append({"model_id": model_id, "mesh_path": mesh_path, "views": views,
                       "views_key": views_key(folder, views), "mesh_key": None})
    return shapes, failures, render


def shapes_from_renders(renders_dir):
    """(shapes, failures, render settings) of a folder of renders (scripts/render_objs.py's --out_dir): every
    folder below it holding a views.json is one shape, its id the folder's path below renders_dir."""
    renders_dir = Path(renders_dir)
    if not renders_dir.is_dir():
        raise FileNotFoundError(f"--renders_dir {renders_dir}: not a folder")
    entries = []
    for record in sorted(renders_dir.rglob("views.json")):
        folder = record.parent
        try:
            views = [folder / r["image"] for r in json.loads(record.read_text())]
        except (OSError, ValueError, TypeError, KeyError):
            views = []
        entries.append((folder.relative_to(renders_dir).as_posix(), folder, views, None))
    return _from_folders(entries, renders_dir)


def shapes_from_jsonl(jsonl, split="all"):
    """(shapes, failures, render settings) of a usable_samples.jsonl (bad lines are named and left out, as
    everywhere): one shape per model of the split, its views as listed."""
    from multiview_dataset import read_samples

    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise FileNotFoundError(f"--data_jsonl {jsonl}: not found")
    rows, _ = read_samples(jsonl)
    entries = [(r["model_id"], (jsonl.parent / r["views"][0]).parent, [jsonl.parent / v for v in r["views"]], None)
               for r in rows if split == "all" or r["split"] == split]
    if not entries:
        raise ValueError(f"{jsonl}: no models in split {split!r}")
    return _from_folders(entries, jsonl)


def update_index(root, shapes, encoder, identity, render, views="mean", dtype="float32", rebuild=False,
                 source=None, batch_size=64, num_workers=0, commit_every_s=COMMIT_EVERY_S, progress=True):
    """Bring the index in `root` to exactly `shapes`: reuse the embeddings of unchanged shapes, embed the rest,
    drop the ones that are gone, write thumbnails, then write the index (store.write_index, atomic). identity:
    model_identity(); a mismatch with the existing manifest is BadIndex unless rebuild. Returns a namespace of
    count, embedded, reused, removed, failed ([{"model", "reason"}] of shapes whose views could not be read)
    and manifest."""
    from tqdm import tqdm

    root = Path(root)
    if not shapes:
        raise ValueError("no shapes to index (the existing index, if any, is left as it was)")
    full = dict(identity, render=render, views=views, dtype=dtype)
    check_identity(root, full, rebuild)
    old = None if rebuild or read_manifest(root) is None else load_index(root)
    old_rows = {} if old is None else {s["model_id"]: (i, s) for i, s in enumerate(old.shapes)}
    manifest = dict(full, model=encoder.label, source=source or {})
    kept, todo = {}, []
    for shape in shapes:
        i, row = old_rows.get(shape["model_id"], (None, None))
        if row and row.get("views_key") == shape["views_key"] and row.get("mesh_key") == shape["mesh_key"]:
            kept[shape["model_id"]] = np.array(old.embeddings[i], dtype=np.float32)  # a copy: the file goes
        else:
            todo.append(shape)
    reused, failed, last_commit = len(kept), [], time.monotonic()
    bar = tqdm(total=len(todo), desc="embed", unit="shape", disable=not (todo and progress))
    try:
        for start in range(0, len(todo), EMBED_CHUNK):
            chunk = todo[start:start + EMBED_CHUNK]
            embeddings, problems = encoder.shapes([s["views"] for s in chunk], views, batch_size, num_workers)
            good = [s for k, s in enumerate(chunk) if k not in problems]
            failed += [{"model": chunk[k]["model_id"], "reason": why} for k, why in sorted(problems.items())]
            for shape, embedding in zip(good, embeddings):
                _thumbnail(root, shape)
                kept[shape["model_id"]] = embedding
            bar.update(len(chunk))
            if time.monotonic() - last_commit > commit_every_s and start + EMBED_CHUNK < len(todo):
                manifest = _write(root, manifest, shapes, kept)  # what is embedded so far survives a kill
                last_commit = time.monotonic()
    finally:
        bar.close()
    for shape in shapes:
        if shape["model_id"] in kept and not (root / "thumbnails" / thumbnail_name(shape["model_id"])).is_file():
            _thumbnail(root, shape)
    manifest = _write(root, manifest, shapes, kept)
    removed = 0 if old is None else len(set(old.ids) - set(kept))
    return SimpleNamespace(count=len(kept), embedded=len(kept) - reused, reused=reused, removed=removed,
                           failed=failed, manifest=manifest)


def _thumbnail(root, shape):
    write_thumbnail(shape["views"][0], Path(root) / "thumbnails" / thumbnail_name(shape["model_id"]))


def _write(root, manifest, shapes, embedded):
    """write_index of the shapes that have an embedding, in the order of `shapes` (sorted by the sources)."""
    rows = [s for s in shapes if s["model_id"] in embedded]
    lines = [{"model_id": s["model_id"], "mesh_path": s["mesh_path"],
              "thumbnail": f"thumbnails/{thumbnail_name(s['model_id'])}", "views_key": s["views_key"],
              "mesh_key": s["mesh_key"]} for s in rows]
    return write_index(root, manifest, np.stack([embedded[s["model_id"]] for s in rows]), lines)
