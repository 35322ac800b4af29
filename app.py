"""A local web page over an index of your own shapes: search by text, photo or mesh, see the results as thumbnails
with id and score, and the captioner's caption of the one you click.

    make app                                                   # installs requirements-app.txt once, then:
    .venv/bin/python app.py --index logs/search_example/index --captioner weights/demo-captioner/best.pt
    .venv/bin/python app.py --index index/ --checkpoint moved/best.pt --host 0.0.0.0 --port 8080

Build the index first with scripts/index_shapes.py. Queries are encoded with the model the index was built with
(--checkpoint / --clip_weights: where its files are now, if they moved), as search.py encodes them. The page
serves on http://127.0.0.1:7860 by default, only to this machine (--host 0.0.0.0 opens it to the network); no
share link, no analytics, nothing fetched from outside. Without --captioner the caption box says how to add one.
"""
import argparse
import sys

from meshes.render import configure_gl
from shape_index.backends import BACKENDS
from shape_index.store import BadIndex
from utils import get_device
from webapp.actions import TOP_K, open_app

# ----------------------------------------------------------------------------- config (defaults of the flags)
HOST = "127.0.0.1"  # this machine only
PORT = 7860         # gradio's usual port


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="an index folder from scripts/index_shapes.py")
    ap.add_argument("--checkpoint", help="the index's checkpoint, if it moved since the index was built")
    ap.add_argument("--clip_weights", help="the index's CLIP weights file, if it moved")
    ap.add_argument("--captioner", help="a train_captioner.py checkpoint (weights/<run>/best.pt) to caption results")
    ap.add_argument("--top_k", type=int, default=TOP_K, help="results shown at first (the page has a slider)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--host", default=HOST, help="address to bind; 0.0.0.0 lets other machines in")
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top_k must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    configure_gl()  # a mesh query renders in this process: headless EGL unless the environment chose otherwise
    try:
        app = open_app(args.index, get_device(args.device), args.checkpoint, args.clip_weights, args.captioner,
                       args.backend)
    except (BadIndex, FileNotFoundError, ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from webapp.page import build_page, launch
    except ImportError as e:
        print(f"error: {e}; the page needs its extra packages: .venv/bin/pip install -r requirements-app.txt "
              f"(or run `make app`)", file=sys.stderr)
        return 2
    print(app.summary(), flush=True)
    launch(build_page(app, args.top_k), app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
