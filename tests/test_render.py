"""Tests for the renderer (meshes/geometry.py, meshes/render.py) and its CLI scripts/render_objs.py, on tiny
meshes written to tmp_path (headless EGL, ~64 px).

    .venv/bin/python -m pytest -q tests/test_render.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshes import geometry, render
from meshes.objfile import write_obj
from scripts import render_objs

SMALL = ["--n_views", "6", "--size", "64", "--elevations", "15,40"]  # 3 azimuths x 2 elevations


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
    return render_objs.main(["--obj_dir", str(tmp_path / obj_dir), "--out_dir", str(tmp_path / out), *SMALL, *extra])


def summary(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def views(folder, n=6):
    return [np.asarray(Image.open(folder / f"view_{i:02d}.png")) for i in range(n)]


# ----------------------------------------------------------------------------- geometry helpers
def test_write_obj_round_trip(tmp_path):
    """What write_obj writes loads back in trimesh as the same parts, vertices and colours."""
    box = trimesh.creation.box((1.0, 0.5, 0.25))
    cone = trimesh.creation.cone(0.3, 0.8)
    path = write_obj(tmp_path / "pair.obj", [(box, (200, 30, 30)), (cone, (30, 60, 200))])
    assert (tmp_path / "pair.mtl").is_file()
    scene = trimesh.load(path, force="scene", process=False)
    by_colour = {tuple(np.round(np.asarray(g.visual.material.main_color[:3]) / 5) * 5): g
                 for g in scene.geometry.values()}
    assert set(by_colour) == {(200, 30, 30), (30, 60, 200)}
    np.testing.assert_allclose(by_colour[(200, 30, 30)].area, box.area, rtol=1e-4)
    np.testing.assert_allclose(by_colour[(30, 60, 200)].bounds, cone.bounds, atol=1e-5)


def test_look_at_points_minus_z_at_target():
    eye, target = np.array([1.0, 2.0, 3.0]), np.array([0.2, -0.1, 0.4])
    pose = geometry.look_at(eye, target)
    rot = pose[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    forward = -rot[:, 2]
    np.testing.assert_allclose(forward, (target - eye) / np.linalg.norm(target - eye), atol=1e-12)
    assert rot[1, 1] > 0  # camera up has a positive world-Y component
    np.testing.assert_allclose(pose[:3, 3], eye)
    top = geometry.look_at((0, 5, 0))  # straight down along `up`: still a valid rotation
    np.testing.assert_allclose(top[:3, :3].T @ top[:3, :3], np.eye(3), atol=1e-12)


def test_view_cameras_rings():
    cams = geometry.view_cameras(12, (15.0, 40.0), distance=2.0)
    assert len(cams) == 12
    assert sorted({c["elevation"] for c in cams}) == [15.0, 40.0]
    assert sorted({c["azimuth"] for c in cams}) == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    for c in cams:
        pose = np.array(c["pose"])
        assert np.linalg.norm(pose[:3, 3]) == pytest.approx(2.0)
        elev = np.degrees(np.arcsin(pose[1, 3] / 2.0))
        assert elev == pytest.approx(c["elevation"])
    with pytest.raises(ValueError):
        geometry.view_cameras(7, (15.0, 40.0))


def test_normalize_scene_fits_unit_sphere(tmp_path):
    scene = geometry.load_model(chair_like(tmp_path / "a.obj"))
    scene.apply_translation((5.0, -3.0, 2.0))
    norm = geometry.normalize_scene(scene)
    verts = geometry.scene_vertices(norm)
    np.testing.assert_allclose((verts.min(0) + verts.max(0)) / 2, 0, atol=1e-9)
    assert np.linalg.norm(verts, axis=1).max() == pytest.approx(1.0)
    assert geometry.scene_vertices(scene)[:, 0].min() > 3  # the input was not modified
    # A stray vertex no face uses (some exporters leave them) must not shrink the model.
    box = trimesh.creation.box((2.0, 1.0, 1.0))
    stray = trimesh.Trimesh(np.vstack([box.vertices, [50.0, 50.0, 50.0]]), box.faces, process=False)
    verts = geometry.scene_vertices(geometry.normalize_scene(trimesh.Scene([stray])))
    np.testing.assert_allclose(np.abs(verts).max(0), np.array([2.0, 1.0, 1.0]) / np.sqrt(6), rtol=1e-6)


def test_render_matches_projected_vertices(tmp_path):
    """Silhouette bbox and depth range agree with a pinhole projection of the vertices (pose + intrinsics)."""
    scene = geometry.normalize_scene(geometry.load_model(chair_like(tmp_path / "a.obj")))
    verts = geometry.scene_vertices(scene)
    cam = geometry.view_cameras(6, (15.0, 40.0))[4]
    with render.OffscreenRenderer(96, 96) as renderer:
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
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 0"
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
    assert summary(capsys) == "rendered 1, skipped 0, failed 3, warnings 0"
    assert (tmp_path / "renders/good/views.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "renders/failures.jsonl").read_text().splitlines()]
    reasons = {r["model"]: r["reason"] for r in rows}
    assert reasons == {"bad/empty/model.obj": "empty file",
                       "bad/garbage/model.obj": "no geometry parsed (not an OBJ file?)",
                       "bad/nofaces/model.obj": "no faces"}
    assert run(tmp_path, "--strict") != 0  # good one skipped, the 3 bad ones fail again
    assert summary(capsys) == "rendered 0, skipped 1, failed 3, warnings 0"
    with pytest.raises(geometry.MeshError, match="file not found"):
        geometry.load_model(tmp_path / "missing.obj")


def test_nothing_renderable_exits_nonzero(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/x.obj").write_text("")
    assert run(tmp_path) != 0
    assert summary(capsys) == "rendered 0, skipped 0, failed 1, warnings 0"


def test_resume_skips_finished_and_redoes_incomplete(tmp_path, capsys):
    chair_like(tmp_path / "model/A/model.obj")
    cone_model(tmp_path / "model/B/model.obj")
    assert run(tmp_path) == 0
    files = sorted((tmp_path / "renders").glob("*/*"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    assert run(tmp_path) == 0
    assert summary(capsys).endswith("rendered 0, skipped 2, failed 0, warnings 0")
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    (tmp_path / "renders/B/view_03.png").unlink()
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 1, failed 0, warnings 0"
    assert (tmp_path / "renders/B/view_03.png").is_file()
    assert all(f.stat().st_mtime_ns == mtimes[f] for f in files if f.parent.name == "A")
    assert not list((tmp_path / "renders").rglob("*.tmp"))  # atomic writes left no temp files


def test_nested_layout_and_multi_obj_folders(tmp_path, capsys):
    chair_like(tmp_path / "model/chair/A/model.obj")
    cone_model(tmp_path / "model/chair/B/model.obj")
    chair_like(tmp_path / "model/table/pair/left.obj")
    cone_model(tmp_path / "model/table/pair/right.obj")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 4, skipped 0, failed 0, warnings 0"
    done = sorted(p.parent.relative_to(tmp_path / "renders").as_posix()
                  for p in (tmp_path / "renders").rglob("views.json"))
    assert done == ["chair/A", "chair/B", "table/pair/left", "table/pair/right"]
    a, b = views(tmp_path / "renders/chair/A"), views(tmp_path / "renders/chair/B")
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() > 5  # distinct models, distinct renders
    # The run's contact sheet: one row per category (chair, table), view_00 of each model, 96 px cells
    # with a 14 px label strip; a 64 px render is pasted unscaled in the middle of its cell.
    sheet = np.asarray(Image.open(tmp_path / "renders/contact_sheet.png"))
    assert sheet.shape == (2 * (96 + 14), 2 * 96, 3)
    cells = [(0, 0, "chair/A"), (0, 1, "chair/B"), (1, 0, "table/pair/left"), (1, 1, "table/pair/right")]
    for row, col, folder in cells:
        y, x = row * (96 + 14) + 16, col * 96 + 16
        np.testing.assert_array_equal(sheet[y:y + 64, x:x + 64], views(tmp_path / "renders" / folder, 1)[0])


def test_texture_without_uv_falls_back_to_flat_colour(tmp_path, capsys):
    folder = tmp_path / "model/textured"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (20, 120, 220)).save(folder / "wood.png")
    write_obj(folder / "model.obj", [(trimesh.creation.box((1, 0.5, 0.7)), (255, 255, 255))], texture="wood.png")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 1"  # drawn flat: said so
    rows = [json.loads(line) for line in (tmp_path / "renders/warnings.jsonl").read_text().splitlines()]
    assert rows == [{"model": "textured/model.obj", "kind": "texture_without_uv", "file": str(folder / "wood.png")}]
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
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 0"
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
    assert {p.name for p in (tmp_path / "renders").glob("*.png")} == {"contact_sheet_shard0of2.png",
                                                                      "contact_sheet_shard1of2.png"}


def test_two_workers_match_one_worker(tmp_path, capsys):
    for k in range(3):
        (chair_like if k % 2 else cone_model)(tmp_path / f"model/m{k}/model.obj")
    assert run(tmp_path, "--workers", "1", out="one") == 0
    assert run(tmp_path, "--workers", "2", out="two") == 0
    assert summary(capsys) == "rendered 3, skipped 0, failed 0, warnings 0"
    for k in range(3):
        for x, y in zip(views(tmp_path / f"one/m{k}"), views(tmp_path / f"two/m{k}")):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 2


def test_contact_sheet(tmp_path):
    paths = []
    for k in range(5):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (64, 64), (k * 50, 0, 0)).save(paths[-1])
    out = render.contact_sheet(paths, tmp_path / "sheet.png", ncols=3, thumb=32, labels=list("abcde"))
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * (32 + 14), 3 * 32, 3)
    assert tuple(sheet[10, 16]) == (0, 0, 0) and tuple(sheet[10, 80]) == (100, 0, 0)
    assert tuple(sheet[46 + 10, 16]) == (150, 0, 0)  # second row starts with image 3
    assert tuple(sheet[46 + 10, 80]) == (255, 255, 255)  # no sixth image: blank cell
    gap = np.asarray(Image.open(render.contact_sheet([paths[0], None, paths[2]], tmp_path / "gap.png", thumb=32)))
    assert gap.shape == (32, 96, 3) and tuple(gap[10, 48]) == (255, 255, 255) and tuple(gap[10, 80]) == (100, 0, 0)
    with pytest.raises(ValueError):
        render.contact_sheet([None, None], tmp_path / "none.png")


# ----------------------------------------------------------------------------- library entry points
def test_render_views_are_the_training_views(tmp_path, capsys):
    """render_views gives the 12 views render_objs.py writes for the dataset, and can save them alike."""
    chair_like(tmp_path / "model/chair/A/model.obj")
    assert render_objs.main(["--obj_dir", str(tmp_path / "model"), "--out_dir", str(tmp_path / "renders"),
                             "--size", "64"]) == 0
    images = render.render_views(tmp_path / "model/chair/A/model.obj", size=64, save_dir=tmp_path / "saved")
    assert len(images) == 12
    for img, ref in zip(images, views(tmp_path / "renders/chair/A", 12)):
        arr = np.asarray(img)
        assert img.size == (64, 64) and img.mode == "RGB"
        assert 0.03 < (arr != 255).any(axis=2).mean() < 0.9  # not blank
        assert np.abs(arr.astype(int) - ref.astype(int)).max() <= 2
    cameras = geometry.view_cameras()
    assert render.is_done(tmp_path / "saved", cameras, 64, 64)  # a folder render_objs.py would skip
    assert not list((tmp_path / "saved").glob("*.tmp"))
    assert len(render.render_views(tmp_path / "model/chair/A/model.obj", size=32)) == 12


def test_render_views_bad_mesh_names_the_file(tmp_path):
    bad = tmp_path / "broken.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(ValueError, match=f"{bad}: no faces"):
        render.render_views(bad, size=32)
    with pytest.raises(ValueError, match="file not found"):
        render.render_views(tmp_path / "missing.obj", size=32)


def test_no_opengl_says_what_to_install(tmp_path, monkeypatch):
    import pyrender

    def no_context(*args, **kwargs):
        raise RuntimeError("eglInitialize failed:\n  EGL_NOT_INITIALIZED")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", no_context)
    with pytest.raises(OSError, match="cannot create an OpenGL context.*EGL_NOT_INITIALIZED.*libegl-mesa0.*libosmesa6"):
        render.render_views(chair_like(tmp_path / "a.obj"), size=32)


def test_importing_the_renderer_changes_nothing():
    """No environment change and no pyrender (which fixes the GL platform) until a render is asked for."""
    code = ("import os, sys; before = dict(os.environ); import meshes.render, meshes.geometry, scripts.render_objs; "
            "print(dict(os.environ) == before, 'pyrender' in sys.modules, 'OpenGL' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYOPENGL_PLATFORM", "EGL_PLATFORM")}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False", "False"]


def test_configure_gl_only_fills_in_defaults(monkeypatch):
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delenv("EGL_PLATFORM", raising=False)
    render.configure_gl()
    assert os.environ["PYOPENGL_PLATFORM"] == "egl" and os.environ["EGL_PLATFORM"] == "surfaceless"
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")
    monkeypatch.delenv("EGL_PLATFORM")
    render.configure_gl()
    assert os.environ["PYOPENGL_PLATFORM"] == "osmesa" and "EGL_PLATFORM" not in os.environ
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    monkeypatch.setenv("EGL_PLATFORM", "device")
    render.configure_gl()
    assert os.environ["EGL_PLATFORM"] == "device"


def test_one_renderer_module_under_every_name():
    """The worker pool (what the CLI renders with), the library and its fork-safety flag are one module,
    whichever way they are imported."""
    import importlib

    from meshes import render_pool

    assert render_pool.OffscreenRenderer is render.OffscreenRenderer
    assert importlib.import_module("meshes.render") is render
    with render.OffscreenRenderer(16, 16):
        pass
    assert render_pool.gl_context_made() and render.gl_context_made()
