"""generate_jsonl on users' data (issues #10 and #11): colours from the renders, captions that tell models apart,
splits that stay put, and bad photos, views, paths, captions files and entries skipped and counted."""
import hashlib
import json

import numpy as np
import pytest
import trimesh
from PIL import Image
from test_generate_jsonl import REAL_MODELS, entry, rows_of, write_dataset, write_photo

from meshes.objfile import write_obj
from scripts import generate_jsonl as gj


@pytest.fixture
def pix3d(tmp_path):
    write_dataset(tmp_path, REAL_MODELS)
    return tmp_path


def run(root, *extra):
    return gj.main(["--json_path", str(root / "pix3d.json"), *extra])


def summary(capsys):
    out = capsys.readouterr()
    return out.out.strip().splitlines()[-1], out.err


# ----------------------------------------------------------------------------- captions
def textured_box(folder, texture_rgb):
    """A box whose .mtl says grey (Kd 0.5) but whose texture, mapped with UVs, paints it `texture_rgb`."""
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16), texture_rgb).save(folder / "tex.png")
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    lines = ["mtllib model.mtl", "usemtl t"] + ["v %f %f %f" % tuple(v) for v in box.vertices]
    lines += ["vt 0.5 0.5"] + ["f %d/1 %d/1 %d/1" % tuple(f + 1) for f in box.faces]
    (folder / "model.obj").write_text("\n".join(lines) + "\n")
    (folder / "model.mtl").write_text("newmtl t\nKd 0.5 0.5 0.5\nmap_Kd tex.png\n")
    return folder / "model.obj"


def test_textured_mesh_caption_names_its_texture_colour(tmp_path, capsys):
    from meshes.render import render_views

    entries = []
    for k, (name, rgb) in enumerate([("duck", (235, 200, 30)), ("table", (120, 75, 40))]):
        obj = textured_box(tmp_path / "model/misc" / name, rgb)
        render_views(obj, size=64, save_dir=tmp_path / "renders/misc" / name)
        e = dict(entry("misc", name, k), img=f"img/misc/{k}.png", mask=None)
        write_photo(tmp_path, dict(e, mask=f"mask/misc/{k}.png"))
        entries.append(e)
    (tmp_path / "pix3d.json").write_text(json.dumps(entries))
    assert run(tmp_path) == 0
    rows = rows_of(tmp_path / "usable_samples.jsonl")
    duck, table = rows["misc/duck"], rows["misc/table"]
    assert duck["attributes"]["color"] == "yellow" and "a yellow object" in duck["captions"]
    assert table["attributes"]["color"] == "brown"
    assert not any("gray" in c for c in duck["captions"] + table["captions"])  # what the .mtl says


def test_every_model_gets_a_caption_of_its_own(tmp_path, capsys):
    """Seven 'misc' scans (names that say nothing) of one colour and shape: three differ in size, in the parts
    their .obj names, in a second colour; four are identical and cannot be told apart, and the summary says so."""
    misc = [f"scan_{c}" for c in "abcdefg"]
    entries = write_dataset(tmp_path, [("misc", m) for m in misc], photos_per_model=1)
    obj = lambda m: tmp_path / f"model/misc/{m}/model.obj"  # noqa: E731
    trimesh.creation.box(extents=(2, 1.6, 2)).export(obj("scan_b"))  # large
    write_obj(obj("scan_c"), [(trimesh.creation.box((1, .8, 1)), (200, 30, 30)),
                              (trimesh.creation.box((.2, .2, .2)), (200, 30, 30))])  # two parts, same size
    view = tmp_path / "renders/misc/scan_d"
    for f in view.glob("view_*.png"):  # red and blue
        im = Image.open(f).convert("RGB")
        im.paste((40, 70, 180), (8, 8, 24, 14))
        im.save(f)
    (tmp_path / "pix3d.json").write_text(json.dumps(entries))
    assert run(tmp_path) == 0
    line, err = summary(capsys)
    rows = rows_of(tmp_path / "usable_samples.jsonl")
    owners = {}
    for r in rows.values():
        for c in r["captions"]:
            owners.setdefault(c, set()).add(r["model_id"])
    alone = {m for m, r in rows.items() if any(owners[c] == {m} for c in r["captions"])}
    assert "a large red object" in rows["misc/scan_b"]["captions"]
    assert "a red object made of two parts" in rows["misc/scan_c"]["captions"]
    assert "an object in red and blue" in rows["misc/scan_d"]["captions"]  # its second colour is said
    assert alone == {"misc/scan_b", "misc/scan_c", "misc/scan_d"}  # a, e, f, g: nothing tells them apart
    assert line.endswith("models sharing all their captions 4")
    assert "4 models share all their captions with other models" in err


# ----------------------------------------------------------------------------- splits
def many_models(per_category=10):
    return [(cat, f"{cat.upper()}_{i:03d}") for cat in ("bed", "chair", "table") for i in range(per_category)]


def splits_of(root):
    return {m: r["split"] for m, r in rows_of(root / "usable_samples.jsonl").items()}


def test_removing_models_moves_no_other_model(tmp_path, capsys):
    write_dataset(tmp_path, many_models(), photos_per_model=1)
    assert run(tmp_path) == 0
    before = splits_of(tmp_path)
    assert sorted(before.values()).count("test") == 3  # one test model per category of ten
    gone = [m for m in sorted(before) if m.startswith("chair/")][:2]
    for m in gone:
        (tmp_path / "renders" / m / "views.json").unlink()
    assert run(tmp_path) == 0
    after = splits_of(tmp_path)
    assert set(after) == set(before) - set(gone)
    assert after == {m: before[m] for m in after}  # splits.json keeps every known model where it was
    assert set(json.loads((tmp_path / "splits.json").read_text())["models"]) == set(before)  # gone ones too
    (tmp_path / "splits.json").unlink()  # drawn afresh, other categories still do not move
    assert run(tmp_path) == 0
    fresh = splits_of(tmp_path)
    assert {m: s for m, s in fresh.items() if not m.startswith("chair/")} == \
           {m: s for m, s in before.items() if not m.startswith("chair/")}


def test_new_models_fill_their_category_and_leave_the_others(tmp_path):
    write_dataset(tmp_path, many_models(), photos_per_model=1)
    (tmp_path / "renders/chair").rename(tmp_path / "chair_renders")
    assert run(tmp_path) == 0
    before = splits_of(tmp_path)
    (tmp_path / "chair_renders").rename(tmp_path / "renders/chair")
    assert run(tmp_path) == 0
    after = splits_of(tmp_path)
    assert {m: after[m] for m in before} == before
    chairs = [s for m, s in after.items() if m.startswith("chair/")]
    assert sorted(chairs) == ["test"] + ["train"] * 8 + ["val"]


def test_product_families_stay_in_one_split(tmp_path):
    from meshes.splits import assign_splits, model_family

    assert model_family("chair/IKEA_POANG_2") == "chair/IKEA_POANG" == model_family("chair/IKEA_POANG")
    assert model_family("chair/TOY_CHAIR_0001") == "chair/TOY_CHAIR_0001"  # a serial number, not a variant
    models = {f"chair/IKEA_{name}_{k}": "chair" for name in ("POANG", "JULES", "EKENAS", "ADDE") for k in (1, 2, 3)}
    models.update({f"chair/IKEA_SOLO{i}": "chair" for i in range(8)})
    for seed in range(20):
        split, _ = assign_splits(models, [0.6, 0.2, 0.2], seed)
        for name in ("POANG", "JULES", "EKENAS", "ADDE"):
            assert len({split[f"chair/IKEA_{name}_{k}"] for k in (1, 2, 3)}) == 1, (seed, name)
    write_dataset(tmp_path, [("chair", m.split("/")[1]) for m in models], photos_per_model=1)
    for seed in range(4):
        assert run(tmp_path, "--seed", str(seed), "--split_fractions", "0.6,0.2,0.2", "--resplit") == 0
        split = splits_of(tmp_path)
        for name in ("POANG", "JULES", "EKENAS", "ADDE"):
            assert len({split[f"chair/IKEA_{name}_{k}"] for k in (1, 2, 3)}) == 1, (seed, name)


def test_small_splits_warn(pix3d, capsys):
    assert run(pix3d) == 0
    _, err = summary(capsys)
    assert "split val has 1 models, fewer than 10" in err and "split test has 1 models" in err
    assert "split train" not in err


# ----------------------------------------------------------------------------- bad files
def test_missing_and_unreadable_photos_and_masks_are_skipped(pix3d, capsys):
    (pix3d / "img/chair/0000.jpg").unlink()
    data = (pix3d / "img/chair/0002.jpg").read_bytes()
    (pix3d / "img/chair/0002.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (pix3d / "mask/bed/0004.png").unlink()
    Image.new("L", (10, 10)).save(pix3d / "mask/bed/0005.png")  # not the photo's size
    assert run(pix3d) == 0
    line, err = summary(capsys)
    assert "photos skipped 4" in line and "0000.jpg: photo missing" in err
    rows = rows_of(pix3d / "usable_samples.jsonl")
    assert len(rows) == len(REAL_MODELS)  # the models stay, with the photos that can be read
    assert [p["img"] for p in rows["chair/IKEA_POANG_1"]["photos"]] == ["img/chair/0001.jpg"]
    assert rows["bed/IKEA_MALM_2"]["photos"] == []


def test_models_with_unreadable_views_are_left_out(pix3d, capsys):
    view = pix3d / "renders/chair/IKEA_EKENAS/view_01.png"
    view.write_bytes(view.read_bytes()[:40])  # truncated PNG
    folder = pix3d / "renders/bed/IKEA_MALM_2"  # views.json records each PNG's size and sha256 (render.py)
    record = json.loads((folder / "views.json").read_text())
    for r in record:
        data = (folder / r["image"]).read_bytes()
        r.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    record[2]["sha256"] = "0" * 64  # view_02.png is not the file that was rendered
    (folder / "views.json").write_text(json.dumps(record))
    assert run(pix3d) == 0
    line, err = summary(capsys)
    assert "models left out 2" in line and "views unreadable" in line
    assert "IKEA_EKENAS/view_01.png" in err and "IKEA_MALM_2/view_02.png" in err
    assert {"chair/IKEA_EKENAS", "bed/IKEA_MALM_2"}.isdisjoint(rows_of(pix3d / "usable_samples.jsonl"))


def test_a_typo_in_renders_dir_never_empties_the_jsonl(pix3d, capsys):
    assert run(pix3d) == 0
    good = (pix3d / "usable_samples.jsonl").read_text()
    assert run(pix3d, "--renders_dir", str(pix3d / "rendres")) == 1
    err = capsys.readouterr().err
    assert str(pix3d / "rendres") in err and str(pix3d / "usable_samples.jsonl") in err
    assert (pix3d / "usable_samples.jsonl").read_text() == good
    assert run(pix3d, "--renders_dir", str(pix3d / "rendres"), "--output", str(pix3d / "new.jsonl")) == 1
    assert not (pix3d / "new.jsonl").exists()


def test_captions_json_is_validated(pix3d, tmp_path, capsys):
    bad = tmp_path / "human.json"
    bad.write_text('{"chair/IKEA_POANG_1": ["a chair",\n  ]}')
    with pytest.raises(SystemExit, match=r"human.json: malformed JSON at line 2, column 3"):
        run(pix3d, "--captions_json", str(bad))
    bad.write_text('[["a chair"]]')
    with pytest.raises(SystemExit, match=r"human.json: expected a JSON object"):
        run(pix3d, "--captions_json", str(bad))
    bad.write_text(json.dumps({"chair/IKEA_POANG_1": "my chair", "chair/IKEA_EKENAS": ["  ", "a   wooden chair"],
                               "bed/IKEA_MALM_2": [3]}))
    assert run(pix3d, "--captions_json", str(bad)) == 0
    err = capsys.readouterr().err
    assert "model 'chair/IKEA_POANG_1': expected a list of captions, got str" in err
    assert "model 'bed/IKEA_MALM_2': expected a list of strings" in err
    rows = rows_of(pix3d / "usable_samples.jsonl")
    assert all(len(c) > 1 and c.strip() for r in rows.values() for c in r["captions"])
    assert rows["chair/IKEA_EKENAS"]["captions"][0] == "a wooden chair"


def test_paths_outside_the_data_folder_are_skipped(pix3d, capsys):
    outside = pix3d.parent / "outside"
    write_photo(outside, {"img": "secret.jpg", "mask": "secret.png"})
    entries = json.loads((pix3d / "pix3d.json").read_text())
    entries[0]["img"] = "../outside/secret.jpg"
    entries[2]["mask"] = str(outside / "secret.png")
    entries[4]["model"] = "model/../../outside/model.obj"
    entries[6]["img"] = "img/../../outside/secret.jpg"
    (pix3d / "pix3d.json").write_text(json.dumps(entries))
    views = pix3d / "renders/table/IKEA_INGO/views.json"  # view names are file names in the model's folder
    views.write_text(json.dumps([{"image": "../../../../outside/secret.jpg"}] * 3))
    assert run(pix3d) == 0
    line, _ = summary(capsys)
    assert "entries skipped 4 ({'path outside the data folder': 4})" in line
    text = (pix3d / "usable_samples.jsonl").read_text()
    assert "outside" not in text and "secret" not in text


def test_duplicate_entries_count_once(pix3d, capsys):
    entries = json.loads((pix3d / "pix3d.json").read_text())
    (pix3d / "pix3d.json").write_text(json.dumps(entries + entries[:10]))
    assert run(pix3d) == 0
    line, _ = summary(capsys)
    assert "entries skipped 10 ({'duplicate photo': 10})" in line
    assert all(len(r["photos"]) == 2 for r in rows_of(pix3d / "usable_samples.jsonl").values())


def test_view_colours_name_shaded_renders():
    from meshes.captions import view_colors

    shades = np.linspace(0.45, 1.1, 8)
    for word, rgb in (("yellow", (230, 200, 40)), ("white", (235, 235, 230)), ("gray", (128, 128, 128)),
                      ("brown", (110, 70, 40)), ("black", (25, 25, 25))):
        im = np.full((16, 40, 3), 255, np.uint8)
        for k, s in enumerate(shades):  # the faces of one object, from shadow to full light
            im[4:12, 4 + 4 * k:8 + 4 * k] = np.clip(np.array(rgb) * s, 0, 255)
        assert view_colors([im])[0][0] == word, word
