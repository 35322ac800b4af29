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
The renderer itself is meshes/render.py; finding, sharding and the worker pool are meshes/render_pool.py.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshes.geometry import UP_AXES, view_cameras  # noqa: E402
from meshes.render import configure_gl, contact_sheet, view_name  # noqa: E402
from meshes.render_pool import CannotRender, find_models, render_models, shard_models  # noqa: E402

SHEET_MODELS = 8  # models per category (row) on the contact sheet


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


def main(argv=None):
    args = _parse_args(argv)
    os.environ["PYOPENGL_PLATFORM"] = args.platform  # before anything imports pyrender
    configure_gl()
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
        models = shard_models(models, args.shard)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shard_i, shard_n = args.shard
    suffix = "" if shard_n == 1 else f"_shard{shard_i}of{shard_n}"  # parallel shards keep their own files
    try:
        run = render_models(models, obj_dir, out_dir, cameras, args.size, args.bg, args.up, args.workers,
                            args.timeout_per_model, suffix)
    except CannotRender as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done, rendered, skipped, failures, warnings = run.done, run.rendered, run.skipped, run.failures, run.warnings
    if done:
        print(f"contact sheet: {write_contact_sheet(done, obj_dir, out_dir / f'contact_sheet{suffix}.png')}")
    print(f"rendered {rendered}, skipped {skipped}, failed {len(failures)}, warnings {len(warnings)}")
    if models and rendered == 0 and skipped == 0:
        return 1
    return 1 if args.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
