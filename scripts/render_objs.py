"""Render every .obj under a folder from a fixed ring of cameras, headless (EGL / OSMesa).

    .venv/bin/python scripts/render_objs.py --obj_dir data/pix3d/model --out_dir data/pix3d/renders \
        [--workers 2] [--shard 0/4] [--up z] [--timeout_per_model 600]

Writes <out_dir>/<model folder relative to obj_dir>/view_XX.png and views.json (camera pose, intrinsics,
up axis, PNG size and sha256 per view). A folder holding several .obj files gets one sub-folder per file
stem. Finished models are skipped, so an interrupted run just restarts: a model is finished when views.json
matches this run's cameras, size and --up and every PNG matches its recorded size and hash (a truncated PNG
is rendered again); temp files a killed run left are removed. Bad meshes, blank renders, and models whose
worker process died or overran --timeout_per_model go to failures.jsonl and never stop the run; models
drawn without their .mtl, a material or a texture go to warnings.jsonl. One OpenGL context per worker
process is reused for every view and model: creating one per image costs more than the rendering itself.
At the end, <out_dir>/contact_sheet.png shows the first view of up to 8 models per category, one row per
category (with --shard i/n, each top-level file gets a suffix: contact_sheet_shard{i}of{n}.png).
The renderer itself is meshes/render.py.
"""
import argparse
import os
import re
import sys
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshes.geometry import UP_AXES, MeshError, view_cameras  # noqa: E402
from meshes.render import (NO_GL, OffscreenRenderer, configure_gl, contact_sheet, gl_context_made,  # noqa: E402
                           is_done, render_model, view_name)
from meshes.workers import WorkersCannotStart, run_watched  # noqa: E402
from utils import read_jsonl, write_jsonl  # noqa: E402

SHEET_MODELS = 8  # models per category (row) on the contact sheet
# utils.atomic_write's temp files: .<target name>.<8 random characters from mkstemp>.tmp beside the target
TEMP_FILE = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")
MODEL_FILE = re.compile(r"view_\d+\.png|views\.json")  # what a model's folder holds


def find_models(obj_dir, out_dir):
    """Sorted [(obj path, output folder)]. One .obj in a folder -> the folder's mirror; several ->
    one sub-folder per stem (Pix3D mostly has model/<category>/<NAME>/model.obj)."""
    obj_dir, out_dir = Path(obj_dir), Path(out_dir)
    objs = sorted(p for p in obj_dir.rglob("*") if p.suffix.lower() == ".obj" and p.is_file())
    per_folder = {}
    for p in objs:
        per_folder[p.parent] = per_folder.get(p.parent, 0) + 1
    models = []
    for p in objs:
        rel = p.parent.relative_to(obj_dir)
        alone = per_folder[p.parent] == 1 and rel != Path(".")
        models.append((p, out_dir / rel if alone else out_dir / rel / p.stem))
    return models


_WORKER = {}  # a worker process's state: the renderer lives here, created once by _init_worker


def _init_worker(size, bg, cameras, up, lp_threads):
    """Worker initializer. Never raises: the error is kept and every job reports it, so the run stops
    with a message saying what to install."""
    if lp_threads is not None:  # several workers: llvmpipe draws in the worker's own thread, no helpers
        os.environ.setdefault("LP_NUM_THREADS", str(lp_threads))  # read when the GL context is made
    _WORKER.update(cameras=cameras, size=size, bg=bg, up=up)
    try:
        _WORKER["renderer"] = OffscreenRenderer(size, size, bg)
    except Exception as e:  # OffscreenRenderer raises OSError starting with NO_GL, naming what to install
        _WORKER["init_error"] = str(e) if str(e).startswith(NO_GL) else f"{NO_GL}: {type(e).__name__}: {e}"


def _render_job(job):
    """(obj path, out dir, rel name) -> (None or failure reason, [material warning]). Never raises."""
    obj_path, out_dir, rel = job
    if "init_error" in _WORKER:
        return _WORKER["init_error"], []
    try:
        return None, render_model(_WORKER["renderer"], obj_path, out_dir, _WORKER["cameras"], _WORKER["up"])
    except MeshError as e:
        return str(e), []
    except Exception as e:
        # The GL context may be unusable after an error deep in the renderer: start a fresh one.
        try:
            _WORKER["renderer"].close()
        except Exception:
            pass
        _WORKER["renderer"] = OffscreenRenderer(_WORKER["size"], _WORKER["size"], _WORKER["bg"])
        return f"render error: {type(e).__name__}: {e}", []


def write_contact_sheet(done, obj_dir, out_path):
    """view_00 of the first SHEET_MODELS models of each category (the first folder below obj_dir), one
    row per category. done: [(obj path, output folder)] of the finished models."""
    rows = {}
    for obj_path, out_dir in sorted(done):
        rel = Path(obj_path).relative_to(obj_dir)
        rows.setdefault(rel.parts[0] if len(rel.parts) > 1 else ".", []).append(out_dir)
    ncols = min(SHEET_MODELS, max(len(folders) for folders in rows.values()))
    cells, labels = [], []
    for category in sorted(rows):
        folders = rows[category][:ncols]
        cells += [folder / view_name(0) for folder in folders] + [None] * (ncols - len(folders))
        labels += [folder.name for folder in folders] + [""] * (ncols - len(folders))
    return contact_sheet(cells, out_path, ncols=ncols, labels=labels)


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--obj_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n_views", type=int, default=12)
    p.add_argument("--size", type=int, default=224, help="square image side in pixels")
    p.add_argument("--elevations", default="15,40", help="comma-separated camera elevations in degrees")
    p.add_argument("--distance", type=float, default=3.0, help="camera distance (model fits the unit sphere)")
    p.add_argument("--yfov", type=float, default=40.0, help="vertical field of view in degrees")
    p.add_argument("--bg", default="255,255,255", help="background colour R,G,B")
    p.add_argument("--up", choices=UP_AXES, default="y",
                   help="the model axis that points up (y: Pix3D, ShapeNet; z: many CAD and scan exports)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own renderer")
    p.add_argument("--timeout_per_model", type=float, default=600.0,
                   help="seconds one model may take before its worker is stopped and it fails (0: no limit)")
    p.add_argument("--shard", default="0/1", help="i/n: render the models whose sorted index %% n == i")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any model failed")
    p.add_argument("--platform", choices=["egl", "osmesa"], default=os.environ.get("PYOPENGL_PLATFORM", "egl"))
    args = p.parse_args(argv)
    try:
        args.elevations = [float(e) for e in args.elevations.split(",")]
        args.bg = tuple(int(c) for c in args.bg.split(","))
        shard_i, shard_n = (int(s) for s in args.shard.split("/"))
    except ValueError:
        p.error("--elevations, --bg and --shard take comma-separated numbers and i/n")
    if len(args.bg) != 3 or not all(0 <= c <= 255 for c in args.bg):
        p.error(f"--bg {args.bg}: expected R,G,B in 0..255")
    if not 0 <= shard_i < shard_n:
        p.error(f"--shard {args.shard}: expected 0 <= i < n")
    if args.workers < 1 or args.timeout_per_model < 0:
        p.error("--workers must be at least 1 and --timeout_per_model at least 0")
    args.shard = (shard_i, shard_n)
    return args


def _shard(models, shard):
    """This shard's models, or ValueError when two .obj files would render into one folder."""
    owner = {}
    for obj_path, folder in models:  # e.g. a/x.obj next to a/y.obj claims a/x/, as does a/x/model.obj
        if folder in owner:
            raise ValueError(f"{obj_path} and {owner[folder]} would both render into {folder}")
        owner[folder] = obj_path
    shard_i, shard_n = shard
    return [m for k, m in enumerate(models) if k % shard_n == shard_i]


def _results(args, jobs, cameras):
    """Iterator of (job, failure reason or None, [material warning]) over the jobs, in worker processes
    watched by meshes/workers.py: a model whose worker dies or overruns --timeout_per_model fails alone."""
    import multiprocessing as mp

    if not jobs:
        return

    import pyrender  # noqa: F401  imported once here (after configure_gl), forked workers inherit it
    import trimesh  # noqa: F401

    # fork starts much faster than spawn, but is only safe while this process holds no GL context (a
    # library caller may hold one): the forkserver forks from a clean process instead.
    if "fork" in mp.get_all_start_methods() and not gl_context_made():
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        if __name__ != "__main__":
            ctx.set_forkserver_preload([__name__, "pyrender", "trimesh"])
    lp_threads = 0 if args.workers > 1 else None
    watched = run_watched(_render_job, jobs, args.workers, _init_worker,
                          (args.size, args.bg, cameras, args.up, lp_threads), args.timeout_per_model or None, ctx)
    with closing(watched):  # closing this generator stops the workers at once
        for job, result, lost in watched:
            yield (job, lost, []) if lost is not None else (job, *result)


def remove_temp_files(out_dir, folders, suffix):
    """Delete the temp files a killed run left (TEMP_FILE) beside this shard's own files only: its model
    folders and its top-level files, so a shard running beside it keeps its half-written files. Returns
    how many were removed."""
    own = {f"failures{suffix}.jsonl", f"warnings{suffix}.jsonl", f"contact_sheet{suffix}.png"}
    removed = 0
    for folder, targets in [(out_dir, own.__contains__)] + [(f, MODEL_FILE.fullmatch) for f in folders]:
        for path in Path(folder).glob(".*.tmp"):
            match = TEMP_FILE.fullmatch(path.name)
            if match and targets(match["target"]) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def previous_warnings(path, models):
    """The rows of an earlier run's warnings file about `models` (those this run skips, still as they were
    rendered then); none when the file is missing or damaged."""
    try:
        return [row for row in read_jsonl(path) if row.get("model") in models]
    except (OSError, ValueError, AttributeError):
        return []


def main(argv=None):
    args = _parse_args(argv)
    os.environ["PYOPENGL_PLATFORM"] = args.platform  # before anything imports pyrender
    configure_gl()
    from tqdm import tqdm

    obj_dir, out_dir = Path(args.obj_dir), Path(args.out_dir)
    if not obj_dir.is_dir():
        print(f"error: --obj_dir {obj_dir} is not a directory", file=sys.stderr)
        return 2
    models = find_models(obj_dir, out_dir)
    if not models:
        print(f"error: no .obj files under {obj_dir}", file=sys.stderr)
        return 1
    try:
        cameras = view_cameras(args.n_views, args.elevations, args.distance, args.yfov)
        models = _shard(models, args.shard)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shard_i, shard_n = args.shard
    suffix = "" if shard_n == 1 else f"_shard{shard_i}of{shard_n}"  # parallel shards keep their own files
    removed = remove_temp_files(out_dir, [folder for _, folder in models], suffix)
    if removed:
        print(f"removed {removed} temp files left by an interrupted run")
    done = [m for m in models if is_done(m[1], cameras, args.size, args.size, args.up)]
    skipped, finished = len(done), set(done)
    jobs = [(str(p), str(folder), p.relative_to(obj_dir).as_posix()) for p, folder in models
            if (p, folder) not in finished]
    model_of = {p.relative_to(obj_dir).as_posix(): (p, folder) for p, folder in models}
    warnings = previous_warnings(out_dir / f"warnings{suffix}.jsonl",
                                 {p.relative_to(obj_dir).as_posix() for p, _ in done})

    failures, rendered = [], 0
    bar = tqdm(total=len(jobs), desc="render", unit="model", disable=not jobs)
    results = _results(args, jobs, cameras)
    try:
        for (_, _, rel), reason, problems in results:
            if reason is not None and reason.startswith(NO_GL):
                bar.close()
                print(f"error: {reason}", file=sys.stderr)
                return 1
            if reason is None:
                rendered += 1
                done.append(model_of[rel])
                warnings += [{"model": rel, **problem} for problem in problems]
                for problem in problems:
                    tqdm.write(f"warning: {rel}: {problem['kind']}: {problem['file']}")
            else:
                failures.append({"model": rel, "reason": reason})
                tqdm.write(f"failed: {rel}: {reason}")
            bar.update()
    except WorkersCannotStart as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        results.close()  # stops the workers
        write_jsonl(out_dir / f"failures{suffix}.jsonl", failures)  # this run's failures
        # every finished model's warnings: the skipped ones' from earlier runs, the rendered ones' from this one
        write_jsonl(out_dir / f"warnings{suffix}.jsonl", sorted(warnings, key=lambda row: row["model"]))

    if done:
        print(f"contact sheet: {write_contact_sheet(done, obj_dir, out_dir / f'contact_sheet{suffix}.png')}")
    print(f"rendered {rendered}, skipped {skipped}, failed {len(failures)}, warnings {len(warnings)}")
    if models and rendered == 0 and skipped == 0:
        return 1
    return 1 if args.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
