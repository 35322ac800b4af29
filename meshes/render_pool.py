"""Rendering a folder of meshes: find the models, pick a shard, render them in watched worker processes.

    models = find_models("data/pix3d/model", "data/pix3d/renders")          # [(obj path, output folder)]
    models = shard_models(models, (0, 4))                                   # this shard's quarter
    run = render_models(models, obj_dir, out_dir, view_cameras(), size=224, workers=2)
    run.done, run.rendered, run.skipped, run.failures, run.warnings   # resumable: finished models are skipped

scripts/render_objs.py (a dataset's renders) and shape_index (a user's collection) render through these
functions, so a folder rendered by one is finished for the other (meshes.render.is_done).
"""
import os
import re
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

from meshes.geometry import MeshError
from meshes.render import NO_GL, OffscreenRenderer, configure_gl, gl_context_made, is_done, render_model
from meshes.workers import WorkersCannotStart, run_watched
from utils import read_jsonl, write_jsonl

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


def shard_models(models, shard):
    """The models of shard (i, n): those whose sorted index % n == i. ValueError when two .obj files would
    render into one folder."""
    owner = {}
    for obj_path, folder in models:  # e.g. a/x.obj next to a/y.obj claims a/x/, as does a/x/model.obj
        if folder in owner:
            raise ValueError(f"{obj_path} and {owner[folder]} would both render into {folder}")
        owner[folder] = obj_path
    shard_i, shard_n = shard
    return [m for k, m in enumerate(models) if k % shard_n == shard_i]


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


def render_jobs(jobs, cameras, size=224, bg=(255, 255, 255), up="y", workers=1, timeout_per_model=600.0):
    """Iterator of (job, failure reason or None, [material warning]) over jobs [(obj path, out dir, rel name)],
    in worker processes watched by meshes/workers.py: a model whose worker dies or overruns timeout_per_model
    seconds (0 or None: no limit) fails alone. A reason starting with meshes.render.NO_GL means no model can
    render (headless OpenGL is missing); workers.WorkersCannotStart when no worker process starts. Closing the
    iterator stops the workers."""
    import multiprocessing as mp

    if not jobs:
        return

    configure_gl()  # PyOpenGL reads its platform once, at its first import
    import pyrender  # noqa: F401  imported once here (after configure_gl), forked workers inherit it
    import trimesh  # noqa: F401

    # fork starts much faster than spawn, but is only safe while this process holds no GL context (a
    # library caller may hold one): the forkserver forks from a clean process instead.
    if "fork" in mp.get_all_start_methods() and not gl_context_made():
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        ctx.set_forkserver_preload([__name__, "pyrender", "trimesh"])
    lp_threads = 0 if workers > 1 else None
    watched = run_watched(_render_job, jobs, workers, _init_worker, (size, bg, cameras, up, lp_threads),
                          timeout_per_model or None, ctx)
    with closing(watched):  # closing this generator stops the workers at once
        for job, result, lost in watched:
            yield (job, lost, []) if lost is not None else (job, *result)


def remove_temp_files(out_dir, folders, suffix=""):
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


class CannotRender(RuntimeError):
    """No model can render: headless OpenGL is missing, or no worker process starts."""


def render_models(models, obj_dir, out_dir, cameras, size=224, bg=(255, 255, 255), up="y", workers=1,
                  timeout_per_model=600.0, suffix="", progress=True):
    """Render the models [(obj path, output folder)] that are not finished yet (meshes.render.is_done), after
    removing the temp files a killed run left. A model that fails is listed, never stops the run. Writes
    <out_dir>/failures<suffix>.jsonl (this run's failures) and warnings<suffix>.jsonl (every finished model's
    material warnings), names relative to obj_dir. Returns a namespace of done [(obj path, folder)], rendered,
    skipped, failures [{"model", "reason"}] and warnings [{"model", "kind", "file"}]. CannotRender when nothing
    can render."""
    from tqdm import tqdm

    obj_dir, out_dir = Path(obj_dir), Path(out_dir)
    removed = remove_temp_files(out_dir, [folder for _, folder in models], suffix)
    if removed:
        print(f"removed {removed} temp files left by an interrupted run")
    done = [m for m in models if is_done(m[1], cameras, size, size, up)]
    skipped, finished = len(done), set(done)
    jobs = [(str(p), str(folder), p.relative_to(obj_dir).as_posix()) for p, folder in models
            if (p, folder) not in finished]
    model_of = {p.relative_to(obj_dir).as_posix(): (p, folder) for p, folder in models}
    warnings = previous_warnings(out_dir / f"warnings{suffix}.jsonl",
                                 {p.relative_to(obj_dir).as_posix() for p, _ in done})
    failures, rendered = [], 0
    bar = tqdm(total=len(jobs), desc="render", unit="model", disable=not (jobs and progress))
    results = render_jobs(jobs, cameras, size, bg, up, workers, timeout_per_model)
    try:
        for (_, _, rel), reason, problems in results:
            if reason is not None and reason.startswith(NO_GL):
                raise CannotRender(reason)
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
        raise CannotRender(str(e)) from None
    finally:
        bar.close()
        results.close()  # stops the workers
        write_jsonl(out_dir / f"failures{suffix}.jsonl", failures)  # this run's failures
        # every finished model's warnings: the skipped ones' from earlier runs, the rendered ones' from this one
        write_jsonl(out_dir / f"warnings{suffix}.jsonl", sorted(warnings, key=lambda row: row["model"]))
    return SimpleNamespace(done=done, rendered=rendered, skipped=skipped, failures=failures, warnings=warnings)
