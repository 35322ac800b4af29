"""Generate a small synthetic dataset in exactly Pix3D's on-disk format, so the pipeline runs before
downloading the real one (3.6 GB).

    .venv/bin/python scripts/make_toy_pix3d.py --out_dir data/pix3d_toy --seed 0
        [--models_per_category 35] [--photos_per_model 2] [--photo_size 256] [--categories chair,table]
        [--edited_share 1.0]      # every base model gets edit variants: a set for composed retrieval

Defaults: 315 models and 630 photos of 256 px, about 40 s of CPU on 2 cores. A previous toy dataset in
--out_dir is replaced; a folder holding anything else (e.g. the real Pix3D) is refused.

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
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshes.captions import COLOR_WORDS  # noqa: E402
from meshes.geometry import load_model, look_at  # noqa: E402
from meshes.objfile import mtl_text, obj_text  # noqa: E402
from meshes.render import OffscreenRenderer  # noqa: E402
from meshes.splits import SPLIT_NAMES, assign_splits, parse_fractions  # noqa: E402
from meshes.toy_design import (HELD_OUT_COLOURS, HELD_OUT_PARTS, PALETTES, build_model, draw_model,  # noqa: E402
                               held_out_in)
from meshes.toy_edits import draw_edits, edit_overrides, invert, relative_caption  # noqa: E402
from meshes.toy_furniture import CATEGORIES  # noqa: E402
from utils import atomic_save_image, atomic_write, write_json  # noqa: E402

VOXEL_RES = 32        # real Pix3D ships 128^3; 32^3 keeps the toy files small
P_TRUNCATED = 0.10    # share of photos whose camera is shifted so the object leaves the frame
P_OCCLUDED = 0.12     # share of photos with a rectangle painted over part of the object
FOCAL_MM = (28.0, 50.0)
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


# ----------------------------------------------------------------------------- photos
def project_pix3d(points, rot_mat, trans_mat, focal_length, img_size):
    """Model-frame points (N, 3) -> pixel coordinates (N, 2) with Pix3D's camera convention."""
    cam = np.asarray(points, dtype=np.float64) @ np.asarray(rot_mat).T + np.asarray(trans_mat)
    w, h = img_size
    f = focal_length / 32.0 * w
    return np.stack([w / 2 - f * cam[:, 0] / cam[:, 2], h / 2 - f * cam[:, 1] / cam[:, 2]], axis=1)


def background(rng, h, w):
    """Random 'room': colour gradient + stripes or checker + pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2, c3 = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
    a = rng.uniform(0, 2 * math.pi)
    t = (math.cos(a) * xx + math.sin(a) * yy) / (w + h) + .5
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    kind, period = int(rng.integers(3)), rng.uniform(8, 40) * w / 256
    if kind == 0:
        b = rng.uniform(0, math.pi)
        pattern = np.sin(2 * math.pi * (math.cos(b) * xx + math.sin(b) * yy) / period) > 0
    elif kind == 1:
        pattern = ((xx // period + yy // period) % 2) > 0
    else:
        pattern = np.zeros((h, w), dtype=bool)
    alpha = rng.uniform(.15, .4)
    img = np.where(pattern[..., None], (1 - alpha) * img + alpha * c3, img)
    img = img + rng.normal(0, rng.uniform(2, 6), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _camera(rng, radius, size, truncate):
    """Random camera: (OpenGL cam-to-world pose, yfov degrees, focal_length mm, roll radians)."""
    focal = rng.uniform(*FOCAL_MM)
    f_px = focal / 32 * size
    half_fov = math.atan(size / 2 / f_px)
    # Mostly front and side views, as people photograph furniture (doors and drawers stay visible).
    az, el, roll = math.radians(rng.uniform(-60, 60)), math.radians(rng.uniform(5, 40)), rng.uniform(-.2, .2)
    # The bounding sphere fills that share of the half field of view, so the whole model is in the frame.
    dist = radius / math.sin(rng.uniform(.85, 1.0) * half_fov if truncate else rng.uniform(.7, .95) * half_fov)
    eye = dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    pose = look_at(eye, (0, 0, 0), (0, 1, 0))
    c, s = math.cos(roll), math.sin(roll)
    pose[:3, :3] = pose[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if truncate:  # slide the camera sideways: part of the object leaves the frame, its centre stays in
        b = rng.uniform(0, 2 * math.pi)
        pose[:3, 3] += radius * rng.uniform(.6, 1.0) * (math.cos(b) * pose[:3, 0] + math.sin(b) * pose[:3, 1])
    return pose, math.degrees(2 * half_fov), focal, roll


def _occlude(rng, img, mask):
    """Paint a random rectangle over part of the object; returns (mask of what stays visible, covered share)."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
    scale = (.35, .6) if rng.random() < 2 / 3 else (.1, .25)
    for _ in range(20):
        rw, rh = (x2 - x1 + 1) * rng.uniform(*scale), (y2 - y1 + 1) * rng.uniform(*scale)
        cx, cy = rng.uniform(x1, x2 + 1), rng.uniform(y1, y2 + 1)
        r0, r1 = int(max(0, cy - rh / 2)), int(min(mask.shape[0], cy + rh / 2 + 1))
        c0, c1 = int(max(0, cx - rw / 2)), int(min(mask.shape[1], cx + rw / 2 + 1))
        covered = mask[r0:r1, c0:c1].sum() / mask.sum()
        if .01 < covered < .6:
            break
    else:
        return mask, 0.0
    color = rng.uniform(0, 255, 3)
    noise = rng.normal(0, 8, (r1 - r0, c1 - c0, 1))
    img[r0:r1, c0:c1] = np.clip(color + noise, 0, 255).astype(np.uint8)
    mask = mask.copy()
    mask[r0:r1, c0:c1] = False
    return mask, float(covered)


def render_photo(renderer, rng, verts, kps, size):
    """One photo of the model already set in `renderer`: (rgb, mask, annotation fields)."""
    radius = float(np.linalg.norm(verts, axis=1).max())
    truncate = rng.random() < P_TRUNCATED
    for _ in range(20):  # redraw the rare pose where almost nothing of the object is in view
        pose, yfov, focal, roll = _camera(rng, radius, size, truncate)
        rgb, depth = renderer.render(pose, yfov)
        mask = depth > 0
        if mask.sum() >= .005 * size * size:
            break
    world_to_gl = np.linalg.inv(pose)
    flip = np.diag([-1.0, 1.0, -1.0])  # OpenGL camera (x right, looks down -z) -> Pix3D's (x left, +z)
    rot, trans = flip @ world_to_gl[:3, :3], flip @ world_to_gl[:3, 3]
    img = np.where(mask[..., None], rgb, background(rng, size, size))
    covered = 0.0
    if rng.random() < P_OCCLUDED:
        mask, covered = _occlude(rng, img, mask)
    uv = project_pix3d(verts, rot, trans, focal, (size, size))
    truncated = bool((uv < 0).any() or (uv > size).any())
    kp_uv = project_pix3d(kps, rot, trans, focal, (size, size))
    inside = (kp_uv >= 0).all(1) & (kp_uv <= size).all(1)
    ys, xs = np.nonzero(mask)
    fields = {
        "2d_keypoints": [[[round(float(u), 2), round(float(v), 2)] if ok else [-1.0, -1.0]
                          for (u, v), ok in zip(kp_uv, inside)]],
        "rot_mat": np.round(rot, 6).tolist(),
        "trans_mat": np.round(trans, 6).tolist(),
        "focal_length": round(focal, 4),
        "cam_position": np.round(pose[:3, 3], 6).tolist(),
        "inplane_rotation": round(roll, 6),
        "truncated": truncated,
        "occluded": covered >= .1,
        "slightly_occluded": 0 < covered < .1,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
    }
    return img, mask, fields


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
