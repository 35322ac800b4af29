"""Caption a 3D model with the generative captioner: renders the views if needed, prints the caption.

    python caption.py path/to/model.obj                       # newest weights/*captioner*/best.pt
    python caption.py renders/chair/IKEA_X/                   # a folder of renders (view_*.png), or one holding a .obj
    python caption.py a.obj b.obj --decode nucleus --n 5      # five sampled captions each
    python caption.py model.obj --captioner_checkpoint weights/<run>/best.pt --save_views out/

An .obj is rendered like the training data (scripts/render_objs.py: 12 views, elevations 15 and 40 degrees,
unit sphere, white background), each view goes through the captioner's CLIP (the train.py checkpoint it was
trained on), the normalised view embeddings are averaged into the shape embedding, and the decoder writes.
"""
import argparse
import sys
from pathlib import Path

import torch

from meshes.render import render_views
from models.caption_decoder import DECODES
from multiview_dataset import image_files


def find_inputs(path):
    """('obj', file) or ('views', [image files]) for a path; a clear error otherwise."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".obj":
            return "obj", path
        raise ValueError(f"{path}: expected an .obj file or a folder of renders")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    images = image_files(path)
    if images:
        return "views", images
    objs = sorted(path.glob("*.obj"))
    if len(objs) == 1:
        return "obj", objs[0]
    raise ValueError(f"{path}: " + (f"{len(objs)} .obj files; name one" if objs else "no images and no .obj file"))


def main(argv=None):
    from models.caption_decoder import newest_captioner
    from models.shape_captioner import ShapeCaptioner
    from multiview_dataset import load_image
    from utils import get_device

    ap = argparse.ArgumentParser(description="Caption 3D models (.obj files or folders of renders).")
    ap.add_argument("paths", nargs="+", help=".obj files, folders of renders, or folders holding one .obj")
    ap.add_argument("--captioner_checkpoint", default=None, help="default: the newest weights/*captioner*/best.pt")
    ap.add_argument("--clip_checkpoint", default=None, help="default: the one the captioner was trained on")
    ap.add_argument("--decode", choices=DECODES, default=None, help="default: the captioner's training config")
    ap.add_argument("--beam_size", type=int, default=None)
    ap.add_argument("--top_p", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--n", type=int, default=1, help="captions per model (useful with --decode nucleus)")
    ap.add_argument("--size", type=int, default=224, help="render size in pixels (as render_objs.py)")
    ap.add_argument("--save_views", default=None, help="save the renders of an .obj here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = get_device(args.device)
    try:
        path = args.captioner_checkpoint or newest_captioner("weights", "best.pt")
        captioner = ShapeCaptioner(path, device, args.clip_checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    failed = 0
    for p in args.paths:  # each input gets its own lines: captions, or one error; one bad input stops nothing
        try:
            kind, what = find_inputs(p)
            save = args.save_views and (Path(args.save_views) / Path(p).stem if len(args.paths) > 1 else args.save_views)
            images = render_views(what, args.size, save) if kind == "obj" else [load_image(f) for f in what]
        except (OSError, ValueError) as e:
            print(f"{p}: error: {e}", file=sys.stderr, flush=True)
            failed += 1
            continue
        for text in captioner.captions(images, args.n, decode=args.decode, beam_size=args.beam_size,
                                       top_p=args.top_p, temperature=args.temperature):
            print(f"{p}: {text or '(empty caption)'}", flush=True)
    if failed:
        print(f"{failed} of {len(args.paths)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
