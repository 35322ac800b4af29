"""Tests for scripts/render_objs.py on tiny meshes written to tmp_path (headless EGL, ~64 px).

    PYOPENGL_PLATFORM=egl .venv/bin/python -m pytest -q tests/test_render.py
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import render_objs as ro  # noqa: E402

SMALL = ["--n_views", "6", "--size", "64", "--elevations", "15,40"]  # 3 azimuths x 2 elevations


def write_obj(path, parts, texture=None):
    """Write parts [(trimesh, (r, g, b))] as one .obj with a .mtl holding one Kd material per part.
    texture: an image file name to reference with map_Kd (the .obj gets no vt lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj, mtl, offset = [f"mtllib {path.stem}.mtl"], [], 1
    for k, (mesh, rgb) in enumerate(parts):
        mtl += [f"newmtl m{k}", "Kd %.3f %.3f %.3f" % tuple(c / 255 for c in rgb)]
        if texture:
            mtl.append(f"map_Kd {texture}")
        obj += [f"o part{k}", f"usemtl m{k}"] + ["v %.6f %.6f %.6f" % tuple(v) for v in mesh.vertices]
        obj += ["f %d %d %d" % tuple(f + offset) for f in mesh.faces]
        offset += len(mesh.vertices)
    path.write_text("\n".join(obj) + "\n")
    (path.parent / f"{path.stem}.mtl").write_text("\n".join(mtl) + "\n")
    return path


def chair_like(path):
    """Asymmetric: a red seat with a blue post at one corner, so every azimuth sees a different silhouette."""
    seat = trimesh.creation.box((1.0, 0.15, 0.6))
    post = trimesh.creation.cylinder(0.08, 0.9)
    post.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    post.apply_translation((0.4, 0.5, -0.2))
    return write_obj(path, [(seat, (200, 30, 30)), (post, (30, 30, 200))])


def cone_model(path):
    return write_obj(path, [(trimesh.creation.cone(0.5, 1.2), (40, 160, 40))])


def run(tmp_path, *extra, obj_dir="model", out="renders"):
    return ro.main(["--obj_dir", str(tmp_path / obj_dir), "--output_dir", str(tmp_path / out), *SMALL, *extra])


def summary(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def views(folder, n=6):
    return [np.asarray(Image.open(folder / f"view_{i:02d}.png")) for i in range(n)]


# ----------------------------------------------------------------------------- geometry helpers
def test_look_at_points_minus_z_at_target():
    eye, target = np.array([1.0, 2.0, 3.0]), np.array([0.2, -0.1, 0.4])
    pose = ro.look_at(eye, target)
    rot = pose[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    forward = -rot[:, 2]
    np.testing.assert_allclose(forward, (target - eye) / np.linalg.norm(target - eye), atol=1e-12)
    assert rot[1, 1] > 0  # camera up has a positive world-Y component
    np.testing.assert_allclose(pose[:3, 3], eye)
    top = ro.look_at((0, 5, 0))  # straight down along `up`: still a valid rotation
    np.testing.assert_allclose(top[:3, :3].T @ top[:3, :3], np.eye(3), atol=1e-12)


def test_view_cameras_rings():
    cams = ro.view_cameras(12, (15.0, 40.0), distance=2.0)
    assert len(cams) == 12
    assert sorted({c["elevation"] for c in cams}) == [15.0, 40.0]
    assert sorted({c["azimuth"] for c in cams}) == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    for c in cams:
        pose = np.array(c["pose"])
        assert np.linalg.norm(pose[:3, 3]) == pytest.approx(2.0)
        elev = np.degrees(np.arcsin(pose[1, 3] / 2.0))
        assert elev == pytest.approx(c["elevation"])
    with pytest.raises(ValueError):
        ro.view_cameras(7, (15.0, 40.0))


def test_normalize_scene_fits_unit_sphere(tmp_path):
    scene = ro.load_model(chair_like(tmp_path / "a.obj"))
    scene.apply_translation((5.0, -3.0, 2.0))
    norm = ro.normalize_scene(scene)
    verts = ro._scene_vertices(norm)
    np.testing.assert_allclose((verts.min(0) + verts.max(0)) / 2, 0, atol=1e-9)
    assert np.linalg.norm(verts, axis=1).max() == pytest.approx(1.0)
    assert ro._scene_vertices(scene)[:, 0].min() > 3  # the input was not modified
    # A stray vertex no face uses (some exporters leave them) must not shrink the model.
    box = trimesh.creation.box((2.0, 1.0, 1.0))
    stray = trimesh.Trimesh(np.vstack([box.vertices, [50.0, 50.0, 50.0]]), box.faces, process=False)
    verts = ro._scene_vertices(ro.normalize_scene(trimesh.Scene([stray])))
    np.testing.assert_allclose(np.abs(verts).max(0), np.array([2.0, 1.0, 1.0]) / np.sqrt(6), rtol=1e-6)


def test_render_matches_projected_vertices(tmp_path):
    """Silhouette bbox and depth range agree with a pinhole projection of the vertices (pose + intrinsics)."""
    scene = ro.normalize_scene(ro.load_model(chair_like(tmp_path / "a.obj")))
    verts = ro._scene_vertices(scene)
    cam = ro.view_cameras(6, (15.0, 40.0))[4]
    with ro.OffscreenRenderer(96, 96) as renderer:
        renderer.set_model(scene)
        rgb, depth, K = renderer.render(cam["pose"], cam["yfov"], intrinsics_out=True)
    pts = (np.linalg.inv(np.array(cam["pose"])) @ np.c_[verts, np.ones(len(verts))].T)[:3].T
    z = -pts[:, 2]  # distance in front of the camera
    u, v = K["cx"] + K["fx"] * pts[:, 0] / z, K["cy"] - K["fy"] * pts[:, 1] / z
    mask = depth > 0
    rows, cols = np.nonzero(mask)
    assert abs(cols.min() - u.min()) < 1.5 and abs(cols.max() + 1 - u.max()) < 1.5
    assert abs(rows.min() - v.min()) < 1.5 and abs(rows.max() + 1 - v.max()) < 1.5
    assert z.min() - 1e-3 <= depth[mask].min() and depth[mask].max() <= z.max() + 1e-3
    near = np.zeros_like(mask)  # antialiasing blends the 1-px rim around the silhouette
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(mask, (dy, dx), axis=(0, 1))
    assert (rgb[~near] == 255).all()  # white background where depth says there is nothing


# ----------------------------------------------------------------------------- CLI
def test_renders_nonblank_distinct_centred(tmp_path, capsys):
    chair_like(tmp_path / "model/chair/A/model.obj")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0"
    out = tmp_path / "renders/chair/A"
    imgs = views(out)
    for img in imgs:
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        fg = (img != 255).any(axis=2)
        assert 0.03 < fg.mean() < 0.9, "view is blank or all object"
        rows, cols = np.nonzero(fg)
        assert abs(rows.mean() - 32) < 12 and abs(cols.mean() - 32) < 12, "object not roughly centred"
        colours = img[fg].astype(int)
        assert (colours[:, 0] > colours[:, 2] + 60).any() and (colours[:, 2] > colours[:, 0] + 60).any()
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            diff = np.abs(imgs[i].astype(int) - imgs[j].astype(int)).mean()
            assert diff > 2.0, f"views {i} and {j} look the same"
    meta = json.loads((out / "views.json").read_text())
    assert len(meta) == 6
    for i, v in enumerate(meta):
        assert v["image"] == f"view_{i:02d}.png"
        assert {"azimuth", "elevation", "distance", "yfov", "pose", "intrinsics"} <= set(v)
        assert np.array(v["pose"]).shape == (4, 4)
        assert v["intrinsics"]["width"] == 64 and v["intrinsics"]["cx"] == 32
    assert (tmp_path / "renders/failures.jsonl").read_text() == ""


def test_bad_meshes_are_logged_and_skipped(tmp_path, capsys):
    bad = tmp_path / "model/bad"
    (bad / "empty").mkdir(parents=True)
    (bad / "empty/model.obj").write_text("")
    (bad / "garbage").mkdir()
    (bad / "garbage/model.obj").write_bytes(b"hello world\n\x00\x01 not an obj {}\n")
    (bad / "nofaces").mkdir()
    (bad / "nofaces/model.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    chair_like(tmp_path / "model/good/model.obj")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 3"
    assert (tmp_path / "renders/good/views.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "renders/failures.jsonl").read_text().splitlines()]
    reasons = {r["model"]: r["reason"] for r in rows}
    assert reasons == {"bad/empty/model.obj": "empty file",
                       "bad/garbage/model.obj": "no geometry parsed (not an OBJ file?)",
                       "bad/nofaces/model.obj": "no faces"}
    assert run(tmp_path, "--strict") != 0  # good one skipped, the 3 bad ones fail again
    assert summary(capsys) == "rendered 0, skipped 1, failed 3"
    with pytest.raises(ro.MeshError, match="file not found"):
        ro.load_model(tmp_path / "missing.obj")


def test_nothing_renderable_exits_nonzero(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/x.obj").write_text("")
    assert run(tmp_path) != 0
    assert summary(capsys) == "rendered 0, skipped 0, failed 1"


def test_resume_skips_finished_and_redoes_incomplete(tmp_path, capsys):
    chair_like(tmp_path / "model/A/model.obj")
    cone_model(tmp_path / "model/B/model.obj")
    assert run(tmp_path) == 0
    files = sorted((tmp_path / "renders").glob("*/*"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    assert run(tmp_path) == 0
    assert summary(capsys).endswith("rendered 0, skipped 2, failed 0")
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    (tmp_path / "renders/B/view_03.png").unlink()
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 1, failed 0"
    assert (tmp_path / "renders/B/view_03.png").is_file()
    assert all(f.stat().st_mtime_ns == mtimes[f] for f in files if f.parent.name == "A")
    assert not list((tmp_path / "renders").rglob("*.tmp"))  # atomic writes left no temp files


def test_nested_layout_and_multi_obj_folders(tmp_path, capsys):
    chair_like(tmp_path / "model/chair/A/model.obj")
    cone_model(tmp_path / "model/chair/B/model.obj")
    chair_like(tmp_path / "model/table/pair/left.obj")
    cone_model(tmp_path / "model/table/pair/right.obj")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 4, skipped 0, failed 0"
    done = sorted(p.parent.relative_to(tmp_path / "renders").as_posix()
                  for p in (tmp_path / "renders").rglob("views.json"))
    assert done == ["chair/A", "chair/B", "table/pair/left", "table/pair/right"]
    a, b = views(tmp_path / "renders/chair/A"), views(tmp_path / "renders/chair/B")
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() > 5  # distinct models, distinct renders


def test_texture_without_uv_falls_back_to_flat_colour(tmp_path, capsys):
    folder = tmp_path / "model/textured"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (20, 120, 220)).save(folder / "wood.png")
    write_obj(folder / "model.obj", [(trimesh.creation.box((1, 0.5, 0.7)), (255, 255, 255))], texture="wood.png")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0"
    img = views(tmp_path / "renders/textured")[0]
    fg = (img != 255).any(axis=2)
    assert fg.mean() > 0.05
    r, g, b = img[fg].astype(float).mean(0)
    assert b > r + 40, "flat colour should come from the (blue) texture, not white/grey"


def test_uv_texture_is_sampled(tmp_path, capsys):
    """A box with UVs on a half-yellow, half-green texture shows both colours (not a flat average)."""
    folder = tmp_path / "model/tex"
    folder.mkdir(parents=True)
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[:8], tex[8:] = (250, 210, 0), (0, 170, 0)  # image rows 0-7 (v > 0.5) yellow, rows 8-15 green
    Image.fromarray(tex).save(folder / "tex.png")
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    uv = np.c_[np.full(len(box.vertices), 0.5), np.where(box.vertices[:, 1] > 0, 0.9, 0.1)]  # top yellow
    lines = ["mtllib model.mtl", "usemtl t"] + ["v %f %f %f" % tuple(v) for v in box.vertices]
    lines += ["vt %f %f" % tuple(t) for t in uv]
    lines += ["f %d/%d %d/%d %d/%d" % tuple(np.repeat(f + 1, 2)) for f in box.faces]  # vertex i uses vt i
    (folder / "model.obj").write_text("\n".join(lines) + "\n")
    (folder / "model.mtl").write_text("newmtl t\nKd 1 1 1\nmap_Kd tex.png\n")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0"
    img = views(tmp_path / "renders/tex")[0].astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    yellow = (r > 120) & (g > 100) & (b < 60)
    green = (r < 60) & (g > 80) & (b < 60)
    assert yellow.sum() > 30 and green.sum() > 30
    assert np.nonzero(yellow)[0].mean() < np.nonzero(green)[0].mean()  # yellow above green, as mapped


def test_shards_partition_models(tmp_path, capsys):
    for k in range(5):
        (chair_like if k % 2 else cone_model)(tmp_path / f"model/m{k}/model.obj")
    assert run(tmp_path, "--shard", "0/2") == 0
    first = {p.parent.name for p in (tmp_path / "renders").rglob("views.json")}
    assert run(tmp_path, "--shard", "1/2") == 0
    both = {p.parent.name for p in (tmp_path / "renders").rglob("views.json")}
    assert first == {"m0", "m2", "m4"}  # sorted index % 2 == 0
    assert both - first == {"m1", "m3"}


def test_two_workers_match_one_worker(tmp_path, capsys):
    for k in range(3):
        (chair_like if k % 2 else cone_model)(tmp_path / f"model/m{k}/model.obj")
    assert run(tmp_path, "--workers", "1", out="one") == 0
    assert run(tmp_path, "--workers", "2", out="two") == 0
    assert summary(capsys) == "rendered 3, skipped 0, failed 0"
    for k in range(3):
        for x, y in zip(views(tmp_path / f"one/m{k}"), views(tmp_path / f"two/m{k}")):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 2


def test_contact_sheet(tmp_path):
    paths = []
    for k in range(5):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (64, 64), (k * 50, 0, 0)).save(paths[-1])
    out = ro.contact_sheet(paths, tmp_path / "sheet.png", ncols=3, thumb=32, labels=list("abcde"))
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * (32 + 14), 3 * 32, 3)
    assert tuple(sheet[10, 16]) == (0, 0, 0) and tuple(sheet[10, 80]) == (100, 0, 0)
    assert tuple(sheet[46 + 10, 16]) == (150, 0, 0)  # second row starts with image 3
    assert tuple(sheet[46 + 10, 80]) == (255, 255, 255)  # no sixth image: blank cell
