"""Generate a small synthetic dataset in exactly Pix3D's on-disk format, so the pipeline runs before
downloading the real one (3.6 GB).

    .venv/bin/python scripts/make_toy_pix3d.py --out_dir data/pix3d_toy --seed 0
        [--models_per_category 35] [--photos_per_model 2] [--photo_size 256] [--categories chair,table]
        [--edited_share 1.0]      # every base model gets edit variants: a set for composed retrieval

Defaults: 449 models (288 base models and their edit variants) and 898 photos of 256 px. A previous toy dataset
in --out_dir is replaced; a folder holding anything else (e.g. the real Pix3D) is refused.

Writes, for all 9 Pix3D categories:
    model/<category>/TOY_<CATEGORY>_NNNN/model.obj, model.mtl   furniture built from boxes and cylinders
                                        (meshes/toy_furniture.py), one `o <part>_<i>` object per part
        attributes.json     (toy only) colour, part counts, size, style: ground truth for the captions
        3d_keypoints.txt    the model vertices nearest the 8 corners of its bounding box, "x y z" per line
        voxel.mat           32^3 solid occupancy grid (key "voxel") over the cube around the model's bounding
                            box, indexed [x, y, z]; written only when scipy is installed (pix3d.json names the
                            path either way, and nothing in this repo reads it)
    img/<category>/NNNN.png   "photos": the model rendered at a random pose over a procedural background
    mask/<category>/NNNN.png  0/255 mask of the visible object (an occluder is cut out of it)
    pix3d.json                one entry per photo with every field of the real file
    composed.<split>.json     composed retrieval's edit pairs in CIRR's caption format (reference, target_hard,
                              caption, img_set: the base and its variants), both ways: base -> variant, back
    toy_design.json           the seed, splits, held-out combinations and edited_share this set was made with

Model frame: metres, +y up, the front of the furniture faces +z (render_objs.py's azimuth 0 is a front
view), bounding box centred at the origin.
Camera (Pix3D's convention, github.com/xingyuansun/pix3d issue #2): X_cam = rot_mat @ X_model + trans_mat,
camera +x points left, +y up, +z forward (into the scene), and a point projects to pixels as
    f = focal_length / 32 * img_width          (focal_length in mm on a 32 mm wide sensor)
    u = img_width / 2 - f * X_cam / Z_cam,  v = img_height / 2 - f * Y_cam / Z_cam
rot_mat includes the in-plane rotation (inplane_rotation is the camera roll in radians, for reference);
cam_position is the camera centre in the model frame (-rot_mat^T @ trans_mat). 2d_keypoints holds one
"annotator": the projected 3D keypoints, [-1, -1] for those outside the photo.
Same seed -> byte-identical pix3d.json, models, keypoints, voxels and masks (each model and photo draws
from its own seeded generator, so --categories or counts do not change the other models). Photos can differ
in a pixel or two: pyrender draws meshes in set order, which decides ties between equally deep faces.
"""
import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshes.captions import COLOR_WORDS  # noqa: E402
from meshes.geometry import load_model  # noqa: E402
from meshes.objfile import mtl_text, obj_text  # noqa: E402
from meshes.render import OffscreenRenderer  # noqa: E402
from meshes.splits import SPLIT_NAMES, assign_splits, parse_fractions  # noqa: E402
from meshes.toy_design import (HELD_OUT_COLOURS, HELD_OUT_PARTS, PALETTES, build_model, draw_model,  # noqa: E402
                               held_out_in)
from meshes.toy_edits import draw_edits, edit_overrides, invert, relative_caption  # noqa: E402
from meshes.toy_furniture import CATEGORIES  # noqa: E402
from meshes.toy_photos import render_photo  # noqa: E402
from utils import atomic_save_image, atomic_write, write_json  # noqa: E402

VOXEL_RES = 32        # real Pix3D ships 128^3; 32^3 keeps the toy files small
P_EDITED = 0.35       # default share of base models that get edit variants (one or two) for composed retrieval
HELD_OUT_CYCLE = ("colour", None, None, "part", None, None)  # what the k-th test base model of a category shows


# ----------------------------------------------------------------------------- files of one model
def keypoints_3d(vertices):
    """The vertices nearest to the 8 corners of the bounding box (duplicates dropped, order kept)."""
    lo, hi = vertices.min(0), vertices.max(0)
    out = []
    for corner in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T:
        i = int(np.argmin(np.linalg.norm(vertices - corner, axis=1)))
        if i not in out:
            out.append(i)
    return vertices[out]


def voxel_mat(parts, res=VOXEL_RES):
    """MAT-file bytes holding a solid res^3 uint8 grid ('voxel') over the cube around the model, or None
    without scipy. The MAT header normally carries the creation time: it is fixed so files are reproducible."""
    try:
        import scipy.io
        from scipy.ndimage import binary_fill_holes
    except ImportError:
        return None
    verts = np.concatenate([mesh.vertices for mesh, _ in parts])
    lo, hi = verts.min(0), verts.max(0)
    side = float((hi - lo).max())
    origin = (lo + hi) / 2 - side / 2
    total = sum(mesh.area for mesh, _ in parts)
    points = [trimesh.sample.sample_surface(mesh, max(64, int(20000 * mesh.area / total)), seed=0)[0]
              for mesh, _ in parts]
    idx = np.clip(((np.concatenate(points) - origin) / side * res).astype(int), 0, res - 1)
    grid = np.zeros((res, res, res), dtype=bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"voxel": binary_fill_holes(grid).astype(np.uint8)}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, toy Pix3D voxel grid (scripts/make_toy_pix3d.py)".ljust(116)
    return bytes(data)


def write_model(out_dir, category, name, parts, attrs):
    folder = Path(out_dir) / "model" / category / name
    atomic_write(folder / "model.obj", obj_text(parts, comment="toy Pix3D model written by scripts/make_toy_pix3d.py"))
    atomic_write(folder / "model.mtl", mtl_text({color: COLOR_WORDS[color] for _, color in parts}))
    write_json(folder / "attributes.json", {"category": category, "name": name,
                                            **{k: v for k, v in attrs.items() if k != "category"}})
    verts = np.concatenate([mesh.vertices for mesh, _ in parts])
    atomic_write(folder / "3d_keypoints.txt", "".join("%.5f %.5f %.5f\n" % tuple(p) for p in keypoints_3d(verts)))
    mat = voxel_mat(parts)
    if mat is not None:
        atomic_write(folder / "voxel.mat", mat)
    return folder


# ----------------------------------------------------------------------------- main
def clean_output(out_dir):
    """Remove a previous toy dataset in `out_dir`; refuse to touch anything that is not one."""
    out_dir = Path(out_dir)
    js = out_dir / "pix3d.json"
    if js.exists():
        try:
            entries = json.loads(js.read_text())
        except ValueError:
            raise SystemExit(f"error: {js}: not valid JSON; refusing to overwrite {out_dir} "
                             "(pick another --out_dir)") from None
        if any(not isinstance(e, dict) or e.get("model_source") != "toy" for e in entries):
            raise SystemExit(f"error: {js} holds non-toy entries (the real Pix3D?); "
                             f"refusing to overwrite {out_dir}")
    model_dir = out_dir / "model"
    if model_dir.is_dir():
        foreign = [p for p in model_dir.glob("*/*") if not p.name.startswith("TOY_")]
        if foreign:
            raise SystemExit(f"error: {foreign[0]} is not a toy model; refusing to overwrite {out_dir}")
    for sub in ("model", "img", "mask"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    # the design files, and the splits drawn for the previous models (a new design draws them anew)
    for name in ["toy_design.json", "splits.json"] + [f"composed.{s}.json" for s in SPLIT_NAMES]:
        (out_dir / name).unlink(missing_ok=True)
    if js.exists():
        js.unlink()


def plan(seed, categories, models_per_category, split_fractions, split_seed, edited_share=P_EDITED):
    """[(category, name, base name or None, variant number)] of every model, and {model_id: split} as
    generate_jsonl.py will draw it with the same fractions and seed. A base model gets one or two edit variants
    with probability edited_share. (meshes/splits.py: a base and its variants, TOY_X_0001 and TOY_X_0001_1, are
    one family, so a group never spans splits.)"""
    models = []
    for category in categories:
        c = CATEGORIES.index(category)
        for i in range(models_per_category):
            name = f"TOY_{category.upper()}_{i + 1:04d}"
            rng = np.random.default_rng([seed, c, i, 2000])
            n_variants = int(rng.random() < edited_share) * (1 + int(rng.random() < .5))
            models.append((category, name, None, 0))
            models += [(category, f"{name}_{v}", name, v) for v in range(1, n_variants + 1)]
    split, _ = assign_splits({f"{c}/{n}": c for c, n, _, _ in models}, split_fractions, split_seed)
    return models, split


def generate(out_dir, seed=0, models_per_category=32, photos_per_model=2, photo_size=256, categories=None,
             progress=True, split_fractions=(0.8, 0.1, 0.1), split_seed=0, edited_share=P_EDITED):
    """Write the toy dataset into `out_dir`; returns the pix3d.json entries."""
    from PIL import Image
    from tqdm import tqdm

    categories = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; expected a subset of {', '.join(CATEGORIES)}")
    out_dir = Path(out_dir)
    clean_output(out_dir)
    models, split = plan(seed, categories, models_per_category, split_fractions, split_seed, edited_share)
    entries, pairs, bases, n_photos = [], {s: [] for s in SPLIT_NAMES}, {}, {}
    test_bases = {}  # category -> number of test base models so far: every third shows a held-out colour, ...
    renderer = OffscreenRenderer(photo_size, photo_size, (0, 0, 0))
    bar = tqdm(total=len(models), desc="toy pix3d", unit="model", disable=not progress)
    try:
        for category, name, base, v in models:
            c, mid = CATEGORIES.index(category), f"{category}/{name}"
            i = int((base or name).rsplit("_", 1)[1]) - 1
            if base is None:
                forced = None
                if split[mid] == "test":
                    k = test_bases[category] = test_bases.get(category, -1) + 1
                    forced = HELD_OUT_CYCLE[k % len(HELD_OUT_CYCLE)]
                parts, attrs, overrides = draw_model(category, [seed, c, i], split[mid], forced)
                bases[name] = (attrs, overrides, [])
            else:
                base_attrs, base_overrides, drawn = bases[base]
                erng = np.random.default_rng([seed, c, i, 3000 + v])
                edits = draw_edits(erng, category, base_attrs, split[mid])
                while sorted(edits) in drawn:  # two variants of one base are never the same model
                    edits = draw_edits(erng, category, base_attrs, split[mid])
                drawn.append(sorted(edits))
                overrides, scale = edit_overrides(base_attrs, base_overrides, edits)
                parts, attrs = build_model(category, np.random.default_rng([seed, c, i]), overrides, scale)
                attrs.update(held_out=held_out_in(category, attrs), variant_of=base, edits=[list(e) for e in edits])
                group = sorted(m for m in split if m == f"{category}/{base}" or m.startswith(f"{category}/{base}_"))
                for ref, target, how in ((base, name, edits), (name, base, invert(edits))):
                    pairs[split[mid]].append({
                        "pairid": None, "reference": f"{category}/{ref}", "target_hard": f"{category}/{target}",
                        "target_soft": {f"{category}/{target}": 1.0}, "caption": relative_caption(erng, how),
                        "img_set": {"id": group_id(category, base), "members": group},
                        "edits": [list(e) for e in how]})
            attrs["split"] = split[mid]
            folder = write_model(out_dir, category, name, parts, attrs)
            verts = np.concatenate([mesh.vertices for mesh, _ in parts])
            kps = np.loadtxt(folder / "3d_keypoints.txt", ndmin=2)
            renderer.set_model(load_model(folder / "model.obj"))  # render what is on disk
            rel = f"model/{category}/{name}"
            for p in range(photos_per_model):
                rng = np.random.default_rng([seed, c, i, 1000 + 100 * v + p])
                img, mask, fields = render_photo(renderer, rng, verts, kps, photo_size)
                n_photos[category] = n_photos.get(category, 0) + 1
                stem = f"{n_photos[category]:04d}.png"
                atomic_save_image(Image.fromarray(img), out_dir / "img" / category / stem)
                mask_img = Image.fromarray(mask.astype(np.uint8) * 255, "L")
                atomic_save_image(mask_img, out_dir / "mask" / category / stem)
                entries.append({
                    "img": f"img/{category}/{stem}", "category": category, "img_size": [photo_size, photo_size],
                    "2d_keypoints": fields.pop("2d_keypoints"), "mask": f"mask/{category}/{stem}",
                    "img_source": "toy", "model": f"{rel}/model.obj", "model_raw": f"{rel}/model.obj",
                    "model_source": "toy", "3d_keypoints": f"{rel}/3d_keypoints.txt", "voxel": f"{rel}/voxel.mat",
                    **fields})
            bar.update()
    finally:
        bar.close()
        renderer.close()
    pairid = 0
    for s in SPLIT_NAMES:
        for pair in pairs[s]:
            pair["pairid"], pairid = pairid, pairid + 1
        write_json(out_dir / f"composed.{s}.json", pairs[s])
    write_json(out_dir / "toy_design.json", {
        "seed": seed, "split_seed": split_seed, "split_fractions": list(split_fractions), "edited_share": edited_share,
        "held_out_colours": HELD_OUT_COLOURS, "held_out_parts": {k: {v[0]: v[1]} for k, v in HELD_OUT_PARTS.items()},
        "palettes": PALETTES, "note": "generate_jsonl.py with these split_fractions and seed puts every model in the "
                                      "split of attributes.json's 'split'; held-out combinations are then test-only"})
    write_json(out_dir / "pix3d.json", entries)  # last: its presence marks a finished dataset
    return entries


def group_id(category, base):
    """A stable number for the group of a base model and its variants: its category's index and its number."""
    return CATEGORIES.index(category) * 100_000 + int(base.rsplit("_", 1)[1])


def parse_args(argv=None):
    """The command line, checked; args.categories a list, args.split_fractions a list of three floats."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="data/pix3d_toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models_per_category", type=int, default=32, help="base models; edit variants come on top")
    p.add_argument("--photos_per_model", type=int, default=2)
    p.add_argument("--photo_size", type=int, default=256)
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated subset of the 9")
    p.add_argument("--split_fractions", default="0.8,0.1,0.1",
                   help="the train,val,test fractions generate_jsonl.py will be run with (held-out combinations "
                        "are put in that test split)")
    p.add_argument("--split_seed", type=int, default=0, help="the --seed generate_jsonl.py will be run with")
    p.add_argument("--edited_share", type=float, default=P_EDITED,
                   help="share of base models that get one or two edit variants (composed retrieval's pairs)")
    args = p.parse_args(argv)
    args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    bad = [c for c in args.categories if c not in CATEGORIES]
    if bad:
        p.error(f"--categories: unknown {', '.join(bad)} (choose from {', '.join(CATEGORIES)})")
    if args.models_per_category < 1 or args.photos_per_model < 0 or args.photo_size < 32:
        p.error("need --models_per_category >= 1, --photos_per_model >= 0 and --photo_size >= 32")
    if not 0 <= args.edited_share <= 1:
        p.error(f"--edited_share {args.edited_share}: a share, from 0 to 1")
    try:
        args.split_fractions = parse_fractions(args.split_fractions)
    except ValueError as e:
        p.error(f"--split_fractions {args.split_fractions!r}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    entries = generate(args.out_dir, args.seed, args.models_per_category, args.photos_per_model, args.photo_size,
                       args.categories, split_fractions=args.split_fractions, split_seed=args.split_seed,
                       edited_share=args.edited_share)
    n_models = len({e["model"] for e in entries})
    print(f"wrote {n_models} models ({len(args.categories) * args.models_per_category} base models and their edit "
          f"variants), {len(entries)} photos to {args.out_dir}")


if __name__ == "__main__":
    main()
