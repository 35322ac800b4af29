"""The toy Pix3D generator: Pix3D's schema, a camera consistent with the masks, determinism, attributes
that are true of the geometry. Small sizes (2 models per category, 96 px photos) keep it to seconds."""
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from meshes.captions import COLOR_WORDS, measure_mesh
from meshes.toy_design import build_model
from meshes.toy_furniture import CATEGORIES, COUNTED
from meshes.toy_photos import project_pix3d
from scripts import make_toy_pix3d as toy

# The fields of every entry of the real pix3d.json, in its order.
PIX3D_FIELDS = ["img", "category", "img_size", "2d_keypoints", "mask", "img_source", "model", "model_raw",
                "model_source", "3d_keypoints", "voxel", "rot_mat", "trans_mat", "focal_length", "cam_position",
                "inplane_rotation", "truncated", "occluded", "slightly_occluded", "bbox"]
SMALL = dict(models_per_category=2, photos_per_model=1, photo_size=96, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "pix3d_toy"
    entries = toy.generate(out, seed=0, **SMALL)
    return out, entries


def parse_obj(path):
    """Brute-force OBJ reader: vertices, and per `o` object its material and faces (0-based)."""
    verts, objects, current = [], {}, None
    for line in Path(path).read_text().splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "v":
            verts.append([float(t) for t in tok[1:4]])
        elif tok[0] == "o":
            current = objects[tok[1]] = {"material": None, "faces": []}
        elif tok[0] == "usemtl":
            current["material"] = tok[1]
        elif tok[0] == "f":
            current["faces"].append([int(t.split("/")[0]) - 1 for t in tok[1:4]])
    verts = np.array(verts)
    for obj in objects.values():
        obj["faces"] = np.array(obj["faces"], dtype=int)
        obj["verts"] = verts[np.unique(obj["faces"])]
    return verts, objects


def tri_areas(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def mask_bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def model_dirs(root):
    return sorted(p for p in (Path(root) / "model").glob("*/*") if p.is_dir())


# ----------------------------------------------------------------------------- schema
def test_pix3d_json_schema(dataset):
    root, entries = dataset
    on_disk = json.loads((root / "pix3d.json").read_text())
    models, _ = toy.plan(0, CATEGORIES, SMALL["models_per_category"], (0.8, 0.1, 0.1), 0)
    assert on_disk == entries and len(entries) == len(models) * SMALL["photos_per_model"]
    assert sorted({e["category"] for e in entries}) == CATEGORIES
    num = (int, float)
    for e in entries:
        assert list(e) == PIX3D_FIELDS, e["img"]
        cat = e["category"]
        assert re.fullmatch(rf"img/{cat}/\d{{4}}\.png", e["img"]) and e["mask"] == e["img"].replace("img/", "mask/", 1)
        name = re.fullmatch(rf"model/{cat}/(TOY_{cat.upper()}_\d{{4}}(_\d)?)/model\.obj", e["model"]).group(1)
        assert e["model_raw"] == e["model"]
        assert e["3d_keypoints"] == f"model/{cat}/{name}/3d_keypoints.txt"
        assert e["voxel"] == f"model/{cat}/{name}/voxel.mat"
        assert e["img_source"] == e["model_source"] == "toy"
        for key in ("img", "mask", "model", "3d_keypoints"):
            assert (root / e[key]).is_file(), e[key]
        with Image.open(root / e["img"]) as im:
            assert list(im.size) == e["img_size"] and im.mode == "RGB"
        assert all(isinstance(v, int) for v in e["img_size"])
        kp = e["2d_keypoints"]
        assert isinstance(kp, list) and all(isinstance(ann, list) for ann in kp)
        assert all(len(p) == 2 and all(isinstance(c, num) for c in p) for ann in kp for p in ann)
        rot = np.array(e["rot_mat"])
        assert rot.shape == (3, 3) and np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) and np.linalg.det(rot) > 0
        assert np.array(e["trans_mat"]).shape == (3,) and np.array(e["cam_position"]).shape == (3,)
        # The camera centre in the model frame is -R^T t.
        assert np.allclose(e["cam_position"], -rot.T @ np.array(e["trans_mat"]), atol=1e-4)
        assert isinstance(e["focal_length"], float) and e["focal_length"] > 0
        assert isinstance(e["inplane_rotation"], float)
        assert all(isinstance(e[k], bool) for k in ("truncated", "occluded", "slightly_occluded"))
        assert not (e["occluded"] and e["slightly_occluded"])
        x1, y1, x2, y2 = e["bbox"]
        assert all(isinstance(v, int) for v in e["bbox"])
        assert 0 <= x1 <= x2 < e["img_size"][0] and 0 <= y1 <= y2 < e["img_size"][1]


def test_voxel_file_is_skipped_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` raise ImportError
    parts, _ = build_model("chair", np.random.default_rng(0))
    assert toy.voxel_mat(parts) is None


def test_voxels_when_scipy_present(dataset):
    root, entries = dataset
    scipy_io = pytest.importorskip("scipy.io")
    for e in entries[::4]:
        vox = scipy_io.loadmat(root / e["voxel"])["voxel"]
        assert vox.shape == (toy.VOXEL_RES,) * 3 and vox.dtype == np.uint8 and 0 < vox.sum() < vox.size


# ----------------------------------------------------------------------------- masks and camera
def silhouette(verts, faces, e):
    """Reference silhouette: every projected triangle filled with PIL, at the photo's size."""
    w, h = e["img_size"]
    uv = project_pix3d(verts, e["rot_mat"], e["trans_mat"], e["focal_length"], (w, h))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for f in faces:
        draw.polygon([tuple(p) for p in uv[f]], fill=255)
    return np.asarray(canvas) > 0, uv


def dilate(mask):
    """3x3 binary dilation."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def test_masks_match_the_annotated_camera(dataset):
    root, entries = dataset
    for e in entries:
        mask_img = np.asarray(Image.open(root / e["mask"]))
        assert mask_img.dtype == np.uint8 and set(np.unique(mask_img)) <= {0, 255}
        assert list(mask_img.shape[::-1]) == e["img_size"]
        mask = mask_img > 0
        assert mask.sum() > 0 and mask_bbox(mask) == e["bbox"], e["img"]

        verts, objects = parse_obj(root / e["model"])
        faces = np.concatenate([o["faces"] for o in objects.values()])
        assert (verts @ np.array(e["rot_mat"]).T + e["trans_mat"])[:, 2].min() > 0  # all in front of the camera
        sil, uv = silhouette(verts, faces, e)
        # What is visible is part of the projected model; without occluder it is the whole silhouette.
        # One pixel of slack: PIL and OpenGL disagree on which edge pixels a triangle covers.
        assert (mask & dilate(sil)).sum() == mask.sum(), e["img"]
        if not (e["occluded"] or e["slightly_occluded"]):
            covered = (sil & dilate(mask)).sum() / sil.sum()
            assert covered > 0.99, (e["img"], covered)
        w, h = e["img_size"]
        out_of_frame = bool((uv < 0).any() or (uv[:, 0] > w).any() or (uv[:, 1] > h).any())
        assert e["truncated"] == out_of_frame, e["img"]
        if not e["truncated"] and not e["occluded"] and not e["slightly_occluded"]:
            proj = [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max() - 1, uv[:, 1].max() - 1]
            assert np.abs(np.array(proj) - e["bbox"]).max() <= 2.0, (e["img"], proj, e["bbox"])

        kps = np.loadtxt(root / e["3d_keypoints"], ndmin=2)
        assert 1 <= len(kps) <= 8 and kps.shape[1] == 3
        # keypoints are model vertices
        assert all(np.abs(verts - k).max(1).min() < 1e-4 for k in kps)
        kp_uv = project_pix3d(kps, e["rot_mat"], e["trans_mat"], e["focal_length"], e["img_size"])
        for (u, v), ann in zip(kp_uv, e["2d_keypoints"][0]):
            if ann != [-1.0, -1.0]:
                assert abs(u - ann[0]) < 0.02 and abs(v - ann[1]) < 0.02


def test_truncated_and_occluded_photos_exist(tmp_path):
    # 120 photos of one small category: with 10% / 12% rates both kinds must show up.
    entries = toy.generate(tmp_path / "t", seed=3, categories=["tool"], models_per_category=60,
                           photos_per_model=2, photo_size=64, progress=False)
    assert any(e["truncated"] for e in entries)
    assert any(e["occluded"] or e["slightly_occluded"] for e in entries)
    assert sum(e["truncated"] for e in entries) < len(entries) / 2


# ----------------------------------------------------------------------------- determinism
def all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_rerun_overwrites(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "again"
    toy.generate(out, seed=5, models_per_category=3, photos_per_model=2, photo_size=64, progress=False)
    toy.generate(out, seed=0, **SMALL)  # re-run into the same folder: stale models/photos must go
    first, second = all_files(root), all_files(out)
    assert sorted(first) == sorted(second)
    for key in first:  # models, keypoints, voxels, masks and pix3d.json: byte for byte
        if not key.startswith("img/"):
            assert first[key] == second[key], key
    for key in (k for k in first if k.startswith("img/")):
        # Photos: pyrender draws meshes in set order, so where two faces tie in depth a pixel may differ.
        a, b = (np.asarray(Image.open(io.BytesIO(x[key]))) for x in (first, second))
        assert (a != b).any(-1).mean() < 0.002, key


def test_different_seed_differs(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "seed1"
    toy.generate(out, seed=1, **SMALL)
    assert (root / "pix3d.json").read_bytes() != (out / "pix3d.json").read_bytes()
    objs = [p.relative_to(root) for p in Path(root).rglob("model.obj")]
    objs = [p for p in objs if (out / p).exists()]  # the two seeds give different edit variants
    assert sum((root / p).read_bytes() != (out / p).read_bytes() for p in objs) >= len(objs) - 1


def test_refuses_to_overwrite_real_pix3d(tmp_path):
    (tmp_path / "pix3d.json").write_text(json.dumps([{"img": "img/bed/0001.png", "model_source": "ikea"}]))
    with pytest.raises(SystemExit, match="non-toy"):
        toy.generate(tmp_path, seed=0, **SMALL)
    assert (tmp_path / "pix3d.json").exists()


# ----------------------------------------------------------------------------- attributes vs geometry
def read_mtl(path):
    kd, name = {}, None
    for line in Path(path).read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "newmtl":
            name = tok[1]
        elif tok and tok[0] == "Kd":
            kd[name] = np.array([float(t) for t in tok[1:4]])
    return kd


def test_attributes_are_true_of_the_geometry(dataset):
    root, _ = dataset
    dirs = model_dirs(root)
    assert len(dirs) == len(toy.plan(0, CATEGORIES, SMALL["models_per_category"], (0.8, 0.1, 0.1), 0)[0])
    for folder in dirs:
        attrs = json.loads((folder / "attributes.json").read_text())
        assert attrs["category"] == folder.parent.name and attrs["name"] == folder.name
        verts, objects = parse_obj(folder / "model.obj")
        kd = read_mtl(folder / "model.mtl")
        # dominant colour: brute-force face areas per material, and trimesh's own loading as a reference
        area = {}
        for o in objects.values():
            area[o["material"]] = area.get(o["material"], 0.0) + tri_areas(verts, o["faces"]).sum()
        total = sum(area.values())
        assert max(area, key=area.get) == attrs["color"]
        if attrs["second_color"]:  # the palette's other colour, big enough to show in renders
            assert attrs["second_color"] in attrs["palette"] and area[attrs["second_color"]] / total >= 0.05
        assert {k: round(v / total, 4) for k, v in area.items()} == pytest.approx(attrs["colors"], abs=1e-3)
        scene = trimesh.load(folder / "model.obj", force="scene")
        by_mat = {g.visual.material.name: g.area for g in scene.geometry.values()}
        assert max(by_mat, key=by_mat.get) == attrs["color"]
        for name, rgb in kd.items():
            assert np.allclose(rgb * 255, COLOR_WORDS[name], atol=0.1)
        # the caption side measures the same colour word from the files on disk
        assert measure_mesh(folder / "model.obj")["color"] == attrs["color"], folder
        # size = bounding box extents, model centred
        lo, hi = verts.min(0), verts.max(0)
        assert np.allclose(hi - lo, [attrs["size"][k] for k in ("width", "height", "depth")], atol=2e-3)
        assert np.allclose((lo + hi) / 2, 0, atol=1e-4)
        check_parts(attrs, objects, lo, hi, folder)


def check_parts(attrs, objects, lo, hi, folder):
    counted = {}
    for name in objects:
        kind = name.rsplit("_", 1)[0]
        if kind in COUNTED:
            counted.setdefault(COUNTED[kind], []).append(objects[name])
    for key, n in attrs["parts"].items():
        assert len(counted.get(key, [])) == n, (folder, key)
    assert set(counted) <= set(attrs["parts"]), folder
    width = hi[0] - lo[0]
    for leg in counted.get("legs", []):  # legs stand on the floor
        assert abs(leg["verts"][:, 1].min() - lo[1]) < 1e-4, folder
    shelves = counted.get("shelves", [])
    for shelf in shelves:  # horizontal boards spanning most of the width
        ext = np.ptp(shelf["verts"], axis=0)
        assert ext[1] < 0.03 and ext[0] > 0.5 * width, folder
    assert len({round(s["verts"][:, 1].mean(), 3) for s in shelves}) == len(shelves)
    for panel in counted.get("doors", []) + counted.get("drawers", []):  # thin fronts at the front
        assert np.ptp(panel["verts"][:, 2]) <= 0.021 and panel["verts"][:, 2].max() > hi[2] - 0.05, folder
    arms = counted.get("arms", [])
    if arms:
        xs = sorted(a["verts"][:, 0].mean() for a in arms)
        assert xs[0] < 0 < xs[1] and abs(xs[0] + xs[1]) < 0.05, folder


def test_every_obj_loads_with_modest_face_counts(dataset):
    root, _ = dataset
    for folder in model_dirs(root):
        scene = trimesh.load(folder / "model.obj", force="scene")
        n = sum(len(g.faces) for g in scene.geometry.values())
        assert 0 < n < 5000, folder


def test_build_model_ranges():
    # Many models, no rendering: counts stay in their ranges and the recorded colour always dominates.
    ranges = {"shelves": range(0, 7), "drawers": range(0, 5), "legs": range(0, 6), "doors": range(1, 4),
              "arms": (0, 2), "pillows": (1, 2), "cushions": (1, 2, 3), "slats": (3, 4, 5), "footboards": (0, 1)}
    for c, category in enumerate(CATEGORIES):
        styles = set()
        for i in range(25):
            parts, attrs = build_model(category, np.random.default_rng([7, c, i]))
            assert attrs["color"] in COLOR_WORDS and next(iter(attrs["colors"])) == attrs["color"]
            assert max(attrs["colors"], key=attrs["colors"].get) == attrs["color"]
            assert abs(sum(attrs["colors"].values()) - 1) < 1e-3
            if len(parts) > 1:  # a many-part model shows its second colour
                assert attrs["second_color"] and attrs["colors"][attrs["second_color"]] >= 0.1, attrs
            assert all(color in COLOR_WORDS for _, color in parts)
            assert 0 < sum(len(m.faces) for m, _ in parts) < 5000
            for key, n in attrs["parts"].items():
                assert isinstance(n, int) and n in ranges[key], (category, key, n)
            if category == "bookcase":
                assert attrs["parts"]["shelves"] >= 2
            styles.add(attrs.get("style"))
        assert len(styles) >= (3 if category in ("chair", "table", "bed", "misc", "tool") else 1), (category, styles)
    with pytest.raises(ValueError, match="unknown category"):
        build_model("lamp", np.random.default_rng(0))


def test_cli_summary(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "scripts/make_toy_pix3d.py", "--out_dir", str(out), "--seed", "0",
                          "--categories", "chair,tool", "--models_per_category", "1", "--photos_per_model", "1",
                          "--photo_size", "64"], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    n = len(toy.plan(0, ["chair", "tool"], 1, (0.8, 0.1, 0.1), 0)[0])
    assert res.stdout.strip().splitlines()[-1] == (f"wrote {n} models (2 base models and their edit variants), "
                                                   f"{n} photos to {out}")
    bad = subprocess.run([sys.executable, "scripts/make_toy_pix3d.py", "--out_dir", str(out), "--categories", "lamp"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "lamp" in bad.stderr


def test_edited_share_sets_how_many_base_models_get_variants(tmp_path):
    """--edited_share 1: every base model has one or two variants (composed retrieval's own set); 0: none; the
    share is recorded in toy_design.json, and a share outside [0, 1] is refused."""
    for share, lo, hi in ((1.0, 1, 2), (0.0, 0, 0)):
        models, _ = toy.plan(0, CATEGORIES, 6, (0.6, 0.1, 0.3), 0, edited_share=share)
        variants = Counter(base for _, _, base, _ in models if base is not None)
        bases = [name for _, name, base, _ in models if base is None]
        assert len(bases) == 6 * len(CATEGORIES)
        assert all(lo <= variants.get(b, 0) <= hi for b in bases), share
    default, _ = toy.plan(0, CATEGORIES, 6, (0.6, 0.1, 0.3), 0)
    assert 0 < sum(base is not None for _, _, base, _ in default) < len(default) / 2  # about a third get variants
    out = tmp_path / "all_edited"
    toy.main(["--out_dir", str(out), "--categories", "chair", "--models_per_category", "3", "--photos_per_model", "1",
              "--photo_size", "64", "--edited_share", "1"])
    assert json.loads((out / "toy_design.json").read_text())["edited_share"] == 1.0
    pairs = [p for s in ("train", "val", "test") for p in json.loads((out / f"composed.{s}.json").read_text())]
    assert {p["img_set"]["id"] for p in pairs} == {toy.group_id("chair", f"TOY_CHAIR_{i:04d}") for i in (1, 2, 3)}
    with pytest.raises(SystemExit):
        toy.parse_args(["--edited_share", "1.5"])
