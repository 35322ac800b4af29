"""Search an index of your own shapes (scripts/index_shapes.py) with a text, a photo or a mesh.

    .venv/bin/python search.py --index index/ --text "a low red sofa"
    .venv/bin/python search.py --index index/ --photo img.png --bbox 30,40,200,220 --top_k 5
    .venv/bin/python search.py --index index/ --mesh chair.obj --out_dir my_searches/chair
    .venv/bin/python search.py --index index/ --reference chair/TOY_CHAIR_0001 --text "with arms, and taller"

The query is encoded with the model the index was built with (its checkpoint, checked by hash: --checkpoint or
--clip_weights say where the file is now if it moved). A photo is cropped to --bbox grown by the checkpoint's
photo_margin (as eval_shape_retrieval.py crops), or padded square whole; a mesh is rendered with the index's
render settings and its views pooled as the indexed shapes' are. --reference ID with --text is a composed query:
the indexed shape's embedding plus the text's (composed retrieval's stage-1 sum; the reference is never a hit).
Prints the top k (rank, score, model id, mesh)
and writes into --out_dir (default <index>/searches/<date>-<time>-<kind>-<4 hex>/): results.html (the query
beside its top-k thumbnails, ids and scores; opens offline), results.json, query.png and thumbnails/.
--backend exact|faiss|auto (auto: exact, faster than FAISS's flat index where measured, BENCHMARKS.md; the results
are the same).
--explain N (text queries): for each of the top N shapes, explain_<rank>.png beside results.html shows which pixels
of which views the match depends on (models/relevance.py: attention rollout for ViT CLIPs, Grad-CAM for ResNets);
the shape's mesh is rendered again with the index's settings.
"""
import argparse
import secrets
import sys
from datetime import datetime
from pathlib import Path

from shape_index.backends import BACKENDS
from shape_index.query import open_searcher
from shape_index.report import write_report
from shape_index.store import BadIndex
from utils import get_device

# ----------------------------------------------------------------------------- config (defaults of the flags)
TOP_K = 10
BACKEND = "auto"
# One query flag per kind of shape_index.query.QUERY_KINDS: --<kind> VALUE becomes searcher.encode(kind, ...)
QUERY_FLAGS = {"text": "a description, e.g. \"a low red sofa\"",
               "photo": "an image file (crop it with --bbox x0,y0,x1,y1)",
               "mesh": "an .obj file, rendered like the indexed shapes"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="an index folder from scripts/index_shapes.py")
    query = ap.add_mutually_exclusive_group(required=True)
    for kind, help in QUERY_FLAGS.items():
        query.add_argument(f"--{kind}", help=help)
    ap.add_argument("--bbox", help="with --photo: x0,y0,x1,y1 in pixels")
    ap.add_argument("--reference", help="with --text: an indexed model id; finds shapes like it, changed as the "
                                        "text says (a composed query)")
    ap.add_argument("--top_k", type=int, default=TOP_K)
    ap.add_argument("--backend", default=BACKEND, choices=BACKENDS)
    ap.add_argument("--out_dir", help="where results.html goes (default <index>/searches/<date>-<time>-<kind>-<hex>)")
    ap.add_argument("--checkpoint", help="the index's checkpoint, if it moved since the index was built")
    ap.add_argument("--clip_weights", help="the index's CLIP weights file, if it moved")
    ap.add_argument("--explain", type=int, default=0, metavar="N",
                    help="with --text: write a relevance map of the top N shapes (explain_<rank>.png)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    args.kind = next(kind for kind in QUERY_FLAGS if getattr(args, kind) is not None)
    if args.reference is not None:
        if args.kind != "text":
            ap.error("--reference goes with --text (the modification)")
        args.kind = "composed"
    if args.bbox and args.kind != "photo":
        ap.error("--bbox goes with --photo")
    if args.explain and args.kind != "text":
        ap.error("--explain goes with --text (a relevance map explains how a text matches a shape)")
    if args.explain < 0:
        ap.error("--explain must be 0 or more")
    if args.top_k < 1:
        ap.error("--top_k must be at least 1")
    try:
        args.bbox = [float(v) for v in args.bbox.split(",")] if args.bbox else None
    except ValueError:
        ap.error(f"--bbox {args.bbox}: expected x0,y0,x1,y1")
    if args.bbox is not None and len(args.bbox) != 4:
        ap.error(f"--bbox: expected 4 numbers, got {len(args.bbox)}")
    return args


def query_fields(args):
    """The keyword arguments of searcher.encode(args.kind, ...) from the command line."""
    if args.kind == "composed":
        return {"reference": args.reference, "text": args.text}
    fields = {args.kind: getattr(args, args.kind)}
    if args.kind == "photo":
        fields["bbox"] = args.bbox
    return fields


def default_out_dir(index, kind):
    return Path(index) / "searches" / f"{datetime.now():%Y%m%d-%H%M%S}-{kind}-{secrets.token_hex(2)}"


def print_hits(hits):
    width = max(len(h.model_id) for h in hits)
    print(f"{'rank':>4}  {'score':>7}  {'model_id':<{width}}  mesh_path")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:7.4f}  {h.model_id:<{width}}  {h.mesh_path or '-'}")


def main(argv=None):
    args = parse_args(argv)
    try:
        searcher = open_searcher(args.index, get_device(args.device), args.backend, args.checkpoint,
                                 args.clip_weights)
        query = searcher.encode(args.kind, **query_fields(args))
    except (BadIndex, FileNotFoundError, ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    hits = searcher.search(query.embedding, args.top_k, exclude=query.exclude)
    print(f"{args.kind} query: {query.label}\nmodel: {searcher.index.manifest['model']}; "
          f"{len(searcher.index)} shapes, {searcher.backend.name} search")
    print_hits(hits)
    out_dir = Path(args.out_dir or default_out_dir(args.index, args.kind))
    for path in explain(searcher, args.text, hits[:args.explain], out_dir):
        print(f"wrote {path}")
    print(f"wrote {write_report(out_dir, query, hits, searcher)}")
    return 0


def explain(searcher, text, hits, out_dir):
    """explain_<rank>.png for each hit: its mesh rendered with the index's settings, with the relevance of each
    pixel to the text's match. A hit without a mesh file (an index of renders) is skipped with a note."""
    from models.relevance import relevance_figure, relevance_maps, shape_text_score
    from shape_index.encoder import render_mesh

    enc = searcher.encoder
    out_dir.mkdir(parents=True, exist_ok=True)
    for hit in hits:
        mesh = hit.mesh_path and Path(hit.mesh_path)
        if not mesh or not mesh.is_file():
            print(f"note: {hit.model_id}: no mesh file to render ({hit.mesh_path}); not explained", file=sys.stderr)
            continue
        views = render_mesh(mesh, searcher.index.render)
        maps = relevance_maps(enc.wrapper, enc.preprocess, text, views, enc.device)
        score = shape_text_score(enc.wrapper, enc.preprocess, text, views, enc.device)
        yield relevance_figure(views, maps, out_dir / f"explain_{hit.rank}.png",
                               f'"{text}" vs {hit.model_id} (rank {hit.rank}, cosine {score:.3f})\n{enc.label}')


if __name__ == "__main__":
    sys.exit(main())
