"""Index a collection of 3D shapes for search.py: render them, embed each shape once, write an index folder.

    .venv/bin/python scripts/index_shapes.py --mesh_dir my_meshes/ --index index/ --checkpoint weights/<run>/best.pt
    .venv/bin/python scripts/index_shapes.py --mesh_dir my_meshes/ --index index/ --clip_model tiny   # random init
    .venv/bin/python scripts/index_shapes.py --renders_dir data/pix3d/renders --index index/ --checkpoint ...
    .venv/bin/python scripts/index_shapes.py --data_jsonl data/pix3d/usable_samples.jsonl --index index/ --checkpoint ...
    .venv/bin/python scripts/index_shapes.py --mesh_dir my_meshes/ --index index/ --checkpoint ... --shard 0/4  # render only

--mesh_dir: every .obj below it, any layout, rendered like the training data (scripts/render_objs.py's renderer,
settings and resumable worker pool; --shard i/n renders one part and embeds nothing: run once more without it)
into --renders_dir (default <index>/renders). A mesh that cannot be loaded or renders blank is listed in
<renders_dir>/failures.jsonl and left out. --renders_dir alone: renders render_objs.py already made (the render
settings come from their views.json). --data_jsonl: the models of a usable_samples.jsonl (--split, default all).

Each shape's views are encoded and pooled as evaluation pools them (--views mean|max). Writes into --index:
manifest.json (the model and its weights hash, render settings, views, dtype, embedding_dim, count, date, source),
embeddings-<gen>.npy (--dtype float16|float32), shapes-<gen>.jsonl (model_id, mesh_path, thumbnail, ...) and
thumbnails/ (shape_index/store.py). Re-running embeds only new or changed shapes and drops the ones that are gone;
another model, other render settings, --views or --dtype than the manifest's is an error unless --rebuild. Writes
are atomic: a killed run leaves the previous index usable. --clip_model tiny is a random-init model and every
output says so. Nothing is downloaded: a pretrained --clip_model needs its file on the machine (--clip_weights).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshes.geometry import UP_AXES  # noqa: E402
from meshes.render import configure_gl  # noqa: E402
from meshes.render_pool import CannotRender  # noqa: E402
from metrics.retrieval import AGGREGATIONS  # noqa: E402
from shape_index.build import (check_identity, shapes_from_jsonl, shapes_from_meshes, shapes_from_renders,  # noqa: E402
                               update_index)
from shape_index.encoder import load_encoder, model_identity, render_settings  # noqa: E402
from shape_index.store import DTYPES, BadIndex, load_index, read_manifest  # noqa: E402
from utils import get_device  # noqa: E402

# ----------------------------------------------------------------------------- config (defaults of the flags)
RENDER = render_settings()  # render_objs.py's: 12 views, 224 px, elevations 15/40, distance 3, yfov 40, white, +y up
DTYPE = "float32"           # float16 halves the file (search holds float32 in RAM either way); cosines move ~1e-3
VIEWS = "mean"              # how a shape's views are pooled: eval_recall.py's default
WORKERS = 1                 # render worker processes
TIMEOUT_PER_MODEL = 600.0   # seconds one mesh may take to render before it fails
BATCH_SIZE = 64             # views per encoder batch
NUM_WORKERS = 2             # DataLoader workers reading views
MAX_LISTED = 5              # failures named on the terminal (all of them are counted)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="the index folder (created or updated)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--mesh_dir", help="a folder of .obj meshes (any layout)")
    src.add_argument("--data_jsonl", help="a usable_samples.jsonl (scripts/generate_jsonl.py)")
    ap.add_argument("--renders_dir", help="with --mesh_dir: where the renders go (default <index>/renders); "
                                          "alone: a folder of renders from scripts/render_objs.py")
    ap.add_argument("--split", default="all", choices=("train", "val", "test", "all"), help="with --data_jsonl")
    ap.add_argument("--checkpoint", help="weights/<run>/best.pt from train.py")
    ap.add_argument("--clip_model", help="zero-shot without a checkpoint: a CLIP name, or 'tiny' (random init)")
    ap.add_argument("--clip_weights", help="a local CLIP weights file (for --clip_model, or a linear probe's base)")
    ap.add_argument("--dtype", default=DTYPE, choices=DTYPES)
    ap.add_argument("--views", default=VIEWS, choices=AGGREGATIONS, help="how a shape's view embeddings are pooled")
    ap.add_argument("--n_views", type=int, default=RENDER["n_views"])
    ap.add_argument("--size", type=int, default=RENDER["size"], help="square image side in pixels")
    ap.add_argument("--elevations", default=",".join(f"{e:g}" for e in RENDER["elevations"]))
    ap.add_argument("--distance", type=float, default=RENDER["distance"])
    ap.add_argument("--yfov", type=float, default=RENDER["yfov"])
    ap.add_argument("--bg", default=",".join(map(str, RENDER["bg"])), help="background colour R,G,B")
    ap.add_argument("--up", choices=UP_AXES, default=RENDER["up"], help="the model axis that points up")
    ap.add_argument("--workers", type=int, default=WORKERS, help="render worker processes")
    ap.add_argument("--timeout_per_model", type=float, default=TIMEOUT_PER_MODEL)
    ap.add_argument("--shard", default="0/1", help="i/n: only render the meshes whose sorted index %% n == i")
    ap.add_argument("--rebuild", action="store_true", help="re-embed everything, replacing an index built otherwise")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    ap.add_argument("--num_workers", type=int, default=NUM_WORKERS)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if bool(args.checkpoint) == bool(args.clip_model):
        ap.error("give --checkpoint PATH, or --clip_model NAME for zero-shot")
    if not (args.mesh_dir or args.data_jsonl or args.renders_dir):
        ap.error("give --mesh_dir, --renders_dir or --data_jsonl")
    if args.data_jsonl and args.renders_dir:
        ap.error("--renders_dir goes with --mesh_dir (where renders go) or alone (renders to index)")
    try:
        args.render = render_settings(args.n_views, args.size, [float(e) for e in args.elevations.split(",")],
                                      args.distance, args.yfov, [int(c) for c in args.bg.split(",")], args.up)
        args.shard = tuple(int(s) for s in args.shard.split("/"))
    except ValueError:
        ap.error("--elevations and --bg take comma-separated numbers, --shard i/n")
    if len(args.render["bg"]) != 3 or not all(0 <= c <= 255 for c in args.render["bg"]):
        ap.error(f"--bg {args.bg}: expected R,G,B in 0..255")
    if len(args.shard) != 2 or not 0 <= args.shard[0] < args.shard[1]:
        ap.error(f"--shard {args.shard}: expected i/n with 0 <= i < n")
    if args.shard[1] > 1 and not args.mesh_dir:
        ap.error("--shard splits the rendering of --mesh_dir; there is nothing to render here")
    if args.render != RENDER and not args.mesh_dir:
        ap.error("render settings come from the renders' views.json: --n_views ... --up go with --mesh_dir")
    return args


def collect(args, identity):
    """(shapes, failures, render settings, source) of the collection the arguments name."""
    if args.mesh_dir:
        renders_dir = Path(args.renders_dir or Path(args.index) / "renders")
        check_identity(args.index, dict(identity, render=args.render, views=args.views, dtype=args.dtype),
                       args.rebuild)  # before hours of rendering, not after
        old = {} if args.rebuild or read_manifest(args.index) is None else \
            {s["model_id"]: s for s in load_index(args.index).shapes}
        configure_gl()
        shapes, failures = shapes_from_meshes(args.mesh_dir, renders_dir, args.render, args.workers,
                                              args.timeout_per_model, args.shard, old)
        source = {"mesh_dir": args.mesh_dir, "renders_dir": str(renders_dir)}
        return shapes, failures, args.render, source
    if args.data_jsonl:
        shapes, failures, render = shapes_from_jsonl(args.data_jsonl, args.split)
        return shapes, failures, render, {"data_jsonl": args.data_jsonl, "split": args.split}
    shapes, failures, render = shapes_from_renders(args.renders_dir)
    return shapes, failures, render, {"renders_dir": args.renders_dir}


def print_failures(failures, what):
    for f in failures[:MAX_LISTED]:
        print(f"{what} failed: {f['model']}: {f['reason']}", file=sys.stderr)
    if len(failures) > MAX_LISTED:
        print(f"... {len(failures) - MAX_LISTED} more", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    try:
        identity = model_identity(args.checkpoint, args.clip_model, args.clip_weights)
        shapes, failures, render, source = collect(args, identity)
        if args.mesh_dir:
            print(f"rendered into {source['renders_dir']}: {len(shapes)} shapes ready, {len(failures)} failed "
                  f"(listed in failures*.jsonl there)")
        else:
            print_failures(failures, "read")
        if args.shard[1] > 1:
            print(f"shard {args.shard[0]}/{args.shard[1]} rendered; once every shard is done, run again without "
                  f"--shard to embed")
            return 0
        encoder = load_encoder(identity, get_device(args.device))
        print(f"model: {encoder.label}")
        stats = update_index(args.index, shapes, encoder, identity, render, args.views, args.dtype, args.rebuild,
                             source, args.batch_size, args.num_workers)
    except (BadIndex, CannotRender, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (BadIndex, FileNotFoundError)) else 1
    print_failures(stats.failed, "embedding")
    print(f"indexed {stats.count} shapes in {args.index}: embedded {stats.embedded}, reused {stats.reused}, "
          f"removed {stats.removed}, failed {len(failures) + len(stats.failed)}; model: {encoder.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
