"""The renderer on users' meshes and its faults: up axis, missing materials, dead and slow workers, blank
renders, corrupt PNGs on resume, odd encodings, orphaned temp files (scripts/render_objs.py, meshes/).

    .venv/bin/python -m pytest -q tests/test_render_faults.py
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshes import geometry
from meshes.objfile import write_obj
from test_render import chair_like, run, summary, views

ROOT = Path(__file__).resolve().parents[1]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def append_to_obj(path, vertices, faces):
    """Add vertices and faces (0-based among the added vertices) at the end of an .obj."""
    n = sum(line.startswith("v ") for line in path.read_text().splitlines())
    extra = ["v %.17g %.17g %.17g" % tuple(v) for v in vertices] + ["f %d %d %d" % tuple(np.add(f, n + 1))
                                                                    for f in faces]
    path.write_text(path.read_text() + "\n".join(extra) + "\n")
    return path


# ----------------------------------------------------------------------------- up axis
def test_z_up_mesh_with_up_z_matches_the_y_up_mesh(tmp_path, capsys):
    chair_like(tmp_path / "model/yup/model.obj")
    seat, post = trimesh.creation.box((1.0, 0.15, 0.6)), trimesh.creation.cylinder(0.08, 0.9)
    post.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    post.apply_translation((0.4, 0.5, -0.2))
    to_z_up = trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))  # +Y -> +Z, front +Z -> -Y
    for part in (seat, post):
        part.apply_transform(to_z_up)
    write_obj(tmp_path / "zmodel/zup/model.obj", [(seat, (200, 30, 30)), (post, (30, 30, 200))])
    assert run(tmp_path) == 0
    assert run(tmp_path, "--up", "z", obj_dir="zmodel") == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 0"
    for y_img, z_img in zip(views(tmp_path / "renders/yup"), views(tmp_path / "renders/zup")):
        diff = np.abs(y_img.astype(int) - z_img.astype(int))
        assert diff.mean() < 0.5 and (diff > 8).mean() < 0.002  # the same picture, up to rounding at edges
    assert {v["up"] for v in json.loads((tmp_path / "renders/zup/views.json").read_text())} == {"z"}
    assert run(tmp_path, "--up", "z", obj_dir="zmodel") == 0
    assert summary(capsys) == "rendered 0, skipped 1, failed 0, warnings 0"
    assert run(tmp_path, "--up", "y", obj_dir="zmodel") == 0  # another up axis: rendered again
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 0"
    lying = views(tmp_path / "renders/zup")[0]
    assert np.abs(lying.astype(int) - views(tmp_path / "renders/yup")[0].astype(int)).mean() > 5


def test_up_rotation_turns_each_axis_up():
    for up, axis in (("y", (0, 1, 0)), ("z", (0, 0, 1)), ("-y", (0, -1, 0)), ("-z", (0, 0, -1))):
        rot = geometry.up_rotation(up)
        np.testing.assert_array_equal(rot[:3, :3] @ np.array(axis, float), (0, 1, 0))
        assert np.linalg.det(rot[:3, :3]) == 1
    np.testing.assert_array_equal(geometry.up_rotation("z")[:3, :3] @ (0, -1, 0), (0, 0, 1))  # front faces +Z
    with pytest.raises(ValueError, match="x"):
        geometry.up_rotation("x")


# ----------------------------------------------------------------------------- missing materials
def test_missing_materials_are_warnings(tmp_path, capsys):
    model = tmp_path / "model"
    chair_like(model / "nomtl/model.obj")
    (model / "nomtl/model.mtl").unlink()
    write_obj(model / "notex/model.obj", [(trimesh.creation.box((1, 0.5, 0.7)), (120, 120, 120))], texture="wood.png")
    nomat = chair_like(model / "nomat/model.obj")
    nomat.write_text(nomat.read_text().replace("usemtl m1", "usemtl walnut"))
    chair_like(model / "fine/model.obj")
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "rendered 4, skipped 0, failed 0, warnings 3"
    assert f"warning: notex/model.obj: texture_missing: {model / 'notex/wood.png'}" in out
    expected = [{"model": "nomat/model.obj", "kind": "material_missing", "file": str(model / "nomat/model.mtl"),
                 "material": "walnut"},
                {"model": "nomtl/model.obj", "kind": "mtl_missing", "file": str(model / "nomtl/model.mtl")},
                {"model": "notex/model.obj", "kind": "texture_missing", "file": str(model / "notex/wood.png")}]
    assert rows(tmp_path / "renders/warnings.jsonl") == expected
    for name in ("nomtl", "notex", "nomat", "fine"):
        assert (tmp_path / f"renders/{name}/views.json").is_file()  # warnings, not failures
    # A resume keeps the warnings of the models it skips; a model rendered again gets its own anew.
    (model / "nomtl/model.mtl").write_text("newmtl m0\nKd 0.8 0.1 0.1\nnewmtl m1\nKd 0.1 0.1 0.8\n")
    (tmp_path / "renders/nomtl/views.json").unlink()
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 3, failed 0, warnings 2"
    assert rows(tmp_path / "renders/warnings.jsonl") == [expected[0], expected[2]]


def test_unreadable_texture_and_mixed_uv_faces_are_warnings(tmp_path, capsys):
    folder = tmp_path / "model/mixed"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(folder / "tex.png")
    (folder / "model.mtl").write_text("newmtl t\nKd 1 1 1\nmap_Kd tex.png\n")
    box = trimesh.creation.box((1, 0.6, 0.8))
    lines = ["mtllib model.mtl", "usemtl t"] + ["v %f %f %f" % tuple(v) for v in box.vertices] + ["vt 0 0"]
    lines += ["f %d/1 %d/1 %d/1" % tuple(f + 1) for f in box.faces[:6]]  # half the faces use UVs
    lines += ["f %d %d %d" % tuple(f + 1) for f in box.faces[6:]]
    (folder / "model.obj").write_text("\n".join(lines) + "\n")
    broken = tmp_path / "model/broken"
    write_obj(broken / "model.obj", [(box, (255, 255, 255))], texture="skin.jpg")
    (broken / "skin.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 2, skipped 0, failed 0, warnings 2"
    assert rows(tmp_path / "renders/warnings.jsonl") == [
        {"model": "broken/model.obj", "kind": "texture_unreadable", "file": str(broken / "skin.jpg")},
        {"model": "mixed/model.obj", "kind": "texture_without_uv", "file": str(folder / "tex.png")}]


# ----------------------------------------------------------------------------- dead and slow workers
KILLER = """
import os, signal, sys, time
import meshes.render
load = meshes.render.load_model
def load_or_die(path):  # the OOM killer on a huge mesh, and a mesh that never finishes loading
    if "killer" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    if "sleeper" in str(path):
        time.sleep(600)
    return load(path)
meshes.render.load_model = load_or_die
from scripts import render_objs
sys.exit(render_objs.main(sys.argv[1:]))
"""


def run_in_subprocess(tmp_path, *extra):
    cmd = [sys.executable, "-c", KILLER, "--obj_dir", str(tmp_path / "model"), "--out_dir",
           str(tmp_path / "renders"), "--n_views", "6", "--size", "64", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)  # a hang fails the test


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_dead_or_slow_worker_fails_its_model_and_the_run_finishes(tmp_path, workers):
    for name in ("a_killer", "b", "c_sleeper", "d", "e"):
        chair_like(tmp_path / f"model/{name}/model.obj")
    res = run_in_subprocess(tmp_path, "--workers", workers, "--timeout_per_model", "4")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "rendered 3, skipped 0, failed 2, warnings 0"
    reasons = {r["model"]: r["reason"] for r in rows(tmp_path / "renders/failures.jsonl")}
    assert reasons == {"a_killer/model.obj": "worker process killed by SIGKILL (the out-of-memory killer?)",
                       "c_sleeper/model.obj": "took longer than 4 s: worker stopped"}
    for name in ("b", "d", "e"):  # rendered by the workers started in place of the lost ones
        assert (tmp_path / f"renders/{name}/views.json").is_file()


# ----------------------------------------------------------------------------- blank renders
def test_stray_vertices_and_degenerate_faces_do_not_shrink_the_model(tmp_path, capsys):
    chair_like(tmp_path / "model/plain/model.obj")
    append_to_obj(chair_like(tmp_path / "model/stray/model.obj"), [(1e6, 1e6, 1e6)], [])  # no face uses it
    far = [(5e4, 5e4, 5e4), (6e4, 6e4, 6e4), (7e4, 7e4, 7e4), (-3e4, 1e4, 2e4)]
    append_to_obj(chair_like(tmp_path / "model/degenerate/model.obj"), far, [(0, 1, 2), (3, 3, 0)])  # line, edge
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 3, skipped 0, failed 0, warnings 0"
    for name in ("stray", "degenerate"):
        for a, b in zip(views(tmp_path / "renders/plain"), views(tmp_path / f"renders/{name}")):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_blank_views_and_absurd_coordinates_fail(tmp_path, capsys):
    append_to_obj(chair_like(tmp_path / "model/far_part/model.obj"),  # a real (tiny) triangle far away
                  [(1e5, 0, 0), (1e5 + 0.01, 0, 0), (1e5, 0.01, 0)], [(0, 1, 2)])
    box = trimesh.creation.box((1, 1, 1))
    (tmp_path / "model/huge").mkdir(parents=True)
    (tmp_path / "model/huge/model.obj").write_text("# a unit box in units of 1e308\n")
    append_to_obj(tmp_path / "model/huge/model.obj", box.vertices * 1e308, box.faces)  # finite, but absurd
    append_to_obj(chair_like(tmp_path / "model/nan/model.obj"), [(np.nan, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1, 2)])
    chair_like(tmp_path / "model/good/model.obj")
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 3, warnings 0"
    reasons = {r["model"]: r["reason"] for r in rows(tmp_path / "renders/failures.jsonl")}
    assert reasons["far_part/model.obj"].startswith("view 0 is blank: ")
    assert reasons["huge/model.obj"] == "absurd coordinates: up to 5e+307, beyond 1e+12"
    assert reasons["nan/model.obj"] == "vertices are not finite (NaN or inf)"
    assert [p.parent.name for p in (tmp_path / "renders").glob("*/views.json")] == ["good"]


# ----------------------------------------------------------------------------- resume, encodings, temp files
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_resume_renders_again_a_model_with_a_damaged_png(tmp_path, capsys, damage):
    chair_like(tmp_path / "model/A/model.obj")
    chair_like(tmp_path / "model/B/model.obj")
    assert run(tmp_path) == 0
    png = tmp_path / "renders/B/view_02.png"
    good = png.read_bytes()
    data = good[: len(good) // 2] if damage == "truncate" else good[:-20] + bytes([good[-20] ^ 1]) + good[-19:]
    png.write_bytes(data)
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 1, failed 0, warnings 0"
    assert png.read_bytes() == good
    record = json.loads((tmp_path / "renders/B/views.json").read_text())[2]
    assert record["bytes"] == len(good) and len(record["sha256"]) == 64


def test_latin1_obj_renders(tmp_path, capsys):
    path = chair_like(tmp_path / "model/cafe/model.obj")
    path.write_bytes(b"# mod\xe9le export\xe9 (Latin-1)\n" + path.read_bytes())
    assert run(tmp_path) == 0
    assert summary(capsys) == "rendered 1, skipped 0, failed 0, warnings 0"


def test_orphaned_temp_files_are_removed_and_nothing_else(tmp_path, capsys):
    chair_like(tmp_path / "model/A/model.obj")
    assert run(tmp_path) == 0
    out = tmp_path / "renders"
    orphans = [out / "A/.view_03.png.k2j_x9ab.tmp", out / "A/.views.json.abcdefgh.tmp",
               out / ".failures.jsonl.0a1b2c3d.tmp", out / ".contact_sheet.png.zzzzzzzz.tmp"]
    others = [out / "A/notes.tmp", out / "A/.view_03.png.short.tmp", out / "A/.photo.png.abcdefgh.tmp",
              out / ".failures_shard0of2.jsonl.abcdefgh.tmp",  # another shard's, maybe being written now
              tmp_path / "model/A/.model.obj.abcdefgh.tmp"]  # outside --out_dir
    for path in orphans + others:
        path.write_bytes(b"half")
    (out / "A/view_03.png").unlink()  # the kill left this view unfinished
    assert run(tmp_path) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "removed 4 temp files left by an interrupted run" in lines
    assert lines[-1] == "rendered 1, skipped 0, failed 0, warnings 0"
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in others)


def test_render_views_warns_and_rejects_blank_renders(tmp_path):
    """The library entry point (caption.py's) says the same: a Python warning, a ValueError naming the file."""
    from meshes import render

    path = chair_like(tmp_path / "nomtl/model.obj")
    (tmp_path / "nomtl/model.mtl").unlink()
    with pytest.warns(UserWarning, match=f"{path}: mtl_missing: {tmp_path / 'nomtl/model.mtl'}"):
        assert len(render.render_views(path, size=32)) == 12
    far = append_to_obj(chair_like(tmp_path / "far/model.obj"), [(1e5, 0, 0), (1e5, 0.01, 0), (1e5, 0, 0.01)],
                        [(0, 1, 2)])
    with pytest.raises(ValueError, match=f"{far}: view 0 is blank"):
        render.render_views(far, size=32)
