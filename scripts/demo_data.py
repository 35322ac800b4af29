"""The demo's toy sets (scripts/demo.py steps 1-3): each built once by make_toy_pix3d.py and then kept, its views
rendered and its usable_samples.jsonl written; a kept set made with other flags than the demo asks for stops the
run, since its shapes, splits or pairs would not be the ones the demo describes.

    prepare_data([(Path("data/pix3d_toy"), ["--split_fractions", "0.6,0.1,0.3"])], "0.6,0.1,0.3", Path("logs/demo"))
"""
import json
import time
from pathlib import Path

from scripts import generate_jsonl, make_toy_pix3d, render_objs
from utils import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def step(title):
    """Print a step's title; returns the start time."""
    print(f"\n=== {title}", flush=True)
    return time.time()


def prepare_data(sets, split_fractions, out):
    """Steps 1-3 for each (folder, make_toy_pix3d arguments) of `sets`: the toy set, its renders and
    usable_samples.jsonl with `split_fractions` (each kept when already there), and a contact sheet of one model
    per category of the first set in `out`."""
    t = step("1/10 toy Pix3D datasets")
    for data, args in sets:
        if (data / "pix3d.json").exists():
            check_toy_design(data, args)
            print(f"kept {data} (delete it to rebuild)")
        else:
            make_toy_pix3d.main(["--out_dir", str(data), *args])
    print(f"({time.time() - t:.0f}s)")

    t = step("2/10 render 12 views per model")
    for data, _ in sets:
        rc = render_objs.main(["--obj_dir", str(data / "model"), "--out_dir", str(data / "renders"), "--workers", "2"])
        if rc:
            raise SystemExit(f"rendering failed (exit {rc}); see {data / 'renders/failures.jsonl'}")
    print(f"({time.time() - t:.0f}s)")

    t = step("3/10 usable_samples.jsonl")
    for data, _ in sets:
        generate_jsonl.main(["--json_path", str(data / "pix3d.json"), "--split_fractions", split_fractions])
    first = sets[0][0]
    rows = read_jsonl(first / "usable_samples.jsonl")
    sheet_rows = [next(r for r in rows if r["category"] == c) for c in sorted({r["category"] for r in rows})]
    render_objs.contact_sheet([first / v for r in sheet_rows for v in r["views"]], out / "renders_contact_sheet.png",
                              ncols=12, thumb=80)
    print(f"contact sheet: {out / 'renders_contact_sheet.png'} ({time.time() - t:.0f}s)")


def check_toy_design(data, args):
    """Stop when the toy set in `data` was made with another seed, other split fractions or another edited_share
    than `args` (make_toy_pix3d's flags) ask for: its shapes, splits and pairs would not be the ones the demo
    describes."""
    design = data / "toy_design.json"  # older toy sets have none, nor composed pairs
    made = json.loads(design.read_text()) if design.exists() else {}
    if made and "edited_share" not in made:  # made before the flag existed: the default share
        made["edited_share"] = make_toy_pix3d.P_EDITED
    want = make_toy_pix3d.parse_args(["--out_dir", str(data), *args])
    for key in ("seed", "split_fractions", "edited_share"):
        if made.get(key) != getattr(want, key):
            raise SystemExit(f"{data} was made with {key} {made.get(key)}, not {getattr(want, key)}: make clean-data "
                             f"rebuilds it")


def shown(path):
    """A path as tables show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
