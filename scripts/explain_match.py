"""Why does this shape match the text? Writes a PNG of the shape's views with a relevance heat overlay.

    .venv/bin/python scripts/explain_match.py --checkpoint weights/<run>/best.pt --text "a tall white bookcase" \
        --views data/pix3d_toy/renders/bookcase/<NAME>
    .venv/bin/python scripts/explain_match.py --clip_model ViT-B/32 --clip_weights ViT-B-32.pt --text "a chair" \
        --views view_00.png view_03.png --out chair.png

--views: a folder of renders (every .png / .jpg in it, sorted: scripts/render_objs.py's view_00.png ...) or image
files, all of one size. The explained score is the cosine of the text and the shape pooled from these views as
evaluation pools them (models/relevance.py: attention rollout for ViT CLIPs, Grad-CAM for ResNet CLIPs). All
views share one scale, so a view the match hardly depends on stays blue; under each view its share of the total.
Default output: logs/explain/<folder of the first view>.png. Prints the score and each view's share.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.clip_wrapper import check_model_args, load_for_eval  # noqa: E402
from models.relevance import relevance_figure, relevance_maps, shape_text_score  # noqa: E402
from multiview_dataset import image_files, load_image  # noqa: E402
from utils import get_device  # noqa: E402

START_LAYER = 0  # first ViT block of the rollout: 0 = all (Chefer et al.), -1 = the last only


def view_paths(paths):
    """Image files from folders of renders and image files, in the order given."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise SystemExit(f"{path}: no .png / .jpg images in this folder")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise SystemExit(f"{path}: no such file or folder")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="weights/<run>/best.pt from train.py")
    ap.add_argument("--clip_model", help="zero-shot without a checkpoint: a CLIP name, or 'tiny' (random init)")
    ap.add_argument("--clip_weights", default=None, help="a local CLIP weights file (for --clip_model, or a "
                                                         "linear probe's base)")
    ap.add_argument("--text", required=True, help="the text query")
    ap.add_argument("--views", nargs="+", required=True, help="a folder of renders, or image files")
    ap.add_argument("--out", default=None, help="the PNG to write (default logs/explain/<views folder>.png)")
    ap.add_argument("--start_layer", type=int, default=START_LAYER, help="first ViT block of the rollout")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    check_model_args(ap, args)
    paths = view_paths(args.views)
    device = get_device(args.device)
    wrapper, preprocess, label, _ = load_for_eval(args.checkpoint, args.clip_model, args.clip_weights, device)
    images = [load_image(p) for p in paths]
    maps = relevance_maps(wrapper, preprocess, args.text, images, device, start_layer=args.start_layer)
    score = shape_text_score(wrapper, preprocess, args.text, images, device)
    out = Path(args.out or Path("logs/explain") / f"{paths[0].parent.name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    relevance_figure(images, maps, out, title=f'"{args.text}" and {paths[0].parent.name}: cosine {score:.3f}\n{label}')
    shares = maps.sum((1, 2)) / max(float(maps.sum()), 1e-12)
    print(f"cosine {score:.3f}; share of the relevance per view: "
          + ", ".join(f"{p.name} {100 * s:.0f}%" for p, s in zip(paths, shares)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
