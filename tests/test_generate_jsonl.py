"""generate_jsonl on hand-written entries with real Pix3D paths, and the caption vocabulary (meshes/captions.py)."""
import json
from collections import Counter

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshes import captions
from scripts import generate_jsonl as gj

REAL_MODELS = [("chair", "IKEA_POANG_1"), ("chair", "IKEA_EKENAS"), ("bed", "IKEA_MALM_2"), ("bed", "IKEA_HEMNES"),
               ("table", "IKEA_LACK_1"), ("table", "IKEA_INGO"), ("sofa", "IKEA_KLIPPAN"), ("desk", "IKEA_MICKE_1"),
               ("bookcase", "IKEA_BILLY_1"), ("bookcase", "IKEA_EXPEDIT_2"), ("wardrobe", "IKEA_PAX_1"),
               ("misc", "IKEA_FROSTA"), ("tool", "hammer_1")] + [("chair", f"IKEA_CHAIR{i:02d}") for i in range(12)]


def write_model(root, category, name, color=(200, 30, 30), extents=(0.5, 1.0, 0.5)):
    folder = root / "model" / category / name
    folder.mkdir(parents=True)
    box = trimesh.creation.box(extents=extents)
    box.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.SimpleMaterial(diffuse=color))
    box.export(folder / "model.obj")
    return f"model/{category}/{name}/model.obj"


def write_views(renders, category, name, n=3, color=(200, 30, 30)):
    """n real 32 px views: a square of `color` on white, and the views.json that marks them done."""
    folder = renders / category / name
    folder.mkdir(parents=True)
    for v in range(n):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        im.paste(color, (8, 8, 24, 24))
        im.save(folder / f"view_{v:02d}.png")
    (folder / "views.json").write_text(json.dumps([{"image": f"view_{v:02d}.png", "azimuth": 30 * v}
                                                   for v in range(n)]))


def write_photo(root, e):
    (root / e["img"]).parent.mkdir(parents=True, exist_ok=True)
    (root / e["mask"]).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (90, 120, 150)).save(root / e["img"])
    Image.new("L", (40, 30), 255).save(root / e["mask"])


def entry(category, name, k):
    return {"img": f"img/{category}/{k:04d}.jpg", "category": category, "img_size": [640, 480],
            "2d_keypoints": [[]], "mask": f"mask/{category}/{k:04d}.png", "img_source": "ikea",
            "model": f"model/{category}/{name}/model.obj", "model_raw": f"model/{category}/{name}/model.obj",
            "model_source": "ikea", "3d_keypoints": f"model/{category}/{name}/3d_keypoints.txt",
            "voxel": f"model/{category}/{name}/voxel.mat", "rot_mat": np.eye(3).tolist(), "trans_mat": [0, 0, 2],
            "focal_length": 35.0, "cam_position": [0, 0, 2], "inplane_rotation": 0.0, "truncated": k % 5 == 0,
            "occluded": False, "slightly_occluded": False, "bbox": [10, 20, 300, 400]}


def write_dataset(root, models, photos_per_model=2):
    """Models [(category, name)] with a box mesh, three views and real photos and masks; returns the entries."""
    entries = []
    for i, (cat, name) in enumerate(models):
        write_model(root, cat, name, extents=(0.5, 1.2, 0.5) if cat == "bookcase" else (1, 0.8, 1))
        write_views(root / "renders", cat, name)
        entries += [entry(cat, name, photos_per_model * i + j) for j in range(photos_per_model)]
    for e in entries:
        write_photo(root, e)
    (root / "pix3d.json").write_text(json.dumps(entries))
    return entries


@pytest.fixture
def pix3d(tmp_path):
    write_dataset(tmp_path, REAL_MODELS)
    return tmp_path


def rows_of(path):
    return {r["model_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_one_line_per_model_with_disjoint_deterministic_splits(pix3d):
    assert gj.main(["--json_path", str(pix3d / "pix3d.json")]) == 0
    rows = [json.loads(line) for line in (pix3d / "usable_samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(REAL_MODELS) and len({r["model_id"] for r in rows}) == len(rows)
    by_id = {r["model_id"]: r for r in rows}
    poang = by_id["chair/IKEA_POANG_1"]
    assert poang["category"] == "chair" and poang["name"] == "IKEA POANG" and len(poang["photos"]) == 2
    assert all((pix3d / v).exists() for v in poang["views"]) and len(poang["views"]) == 3
    assert poang["photos"][0]["img"] == "img/chair/0000.jpg" and poang["photos"][0]["truncated"] is True
    splits = {s: {r["model_id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"]) and sum(map(len, splits.values())) == len(rows)
    assert "chair" in {by_id[m]["category"] for m in splits["test"]}  # 14 chairs: at least one in test
    first = (pix3d / "usable_samples.jsonl").read_text()
    gj.main(["--json_path", str(pix3d / "pix3d.json")])
    assert (pix3d / "usable_samples.jsonl").read_text() == first
    (pix3d / "splits.json").unlink()  # without the kept splits, the same seed draws the same splits
    gj.main(["--json_path", str(pix3d / "pix3d.json")])
    assert (pix3d / "usable_samples.jsonl").read_text() == first
    with pytest.raises(SystemExit, match="--resplit"):  # another seed would move models: only on request
        gj.main(["--json_path", str(pix3d / "pix3d.json"), "--seed", "1"])
    assert (pix3d / "usable_samples.jsonl").read_text() == first
    gj.main(["--json_path", str(pix3d / "pix3d.json"), "--seed", "1", "--resplit"])
    assert (pix3d / "usable_samples.jsonl").read_text() != first


def split_counts(path, category):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter(r["split"] for r in rows if r["category"] == category)


def test_split_fractions(pix3d, capsys):
    # 14 chairs: n_test = n_val = max(1, round(14 * f)), the rest train.
    out = pix3d / "usable_samples.jsonl"
    assert gj.main(["--json_path", str(pix3d / "pix3d.json")]) == 0
    assert split_counts(out, "chair") == {"train": 12, "val": 1, "test": 1}
    assert gj.main([f"--json_path={pix3d / 'pix3d.json'}", "--split_fractions=0.6,0.2,0.2", "--resplit"]) == 0
    assert split_counts(out, "chair") == {"train": 8, "val": 3, "test": 3}
    assert gj.main([f"--json_path={pix3d / 'pix3d.json'}", "--split_fractions=1,0,0", "--resplit"]) == 0
    assert split_counts(out, "chair") == {"train": 14}  # a zero fraction means none, not at least one
    for bad in ("0.8,0.2", "0.5,0.5,0.5", "a,b,c", "1.2,-0.1,-0.1", "nan,0.5,0.5", "inf,0,0"):
        with pytest.raises(SystemExit):
            gj.main(["--json_path", str(pix3d / "pix3d.json"), "--split_fractions", bad])
        assert f"--split_fractions {bad}" in capsys.readouterr().err


def test_captions_are_true_and_distinct(pix3d):
    gj.main(["--json_path", str(pix3d / "pix3d.json")])
    rows = {json.loads(x)["model_id"]: json.loads(x) for x in (pix3d / "usable_samples.jsonl").read_text().splitlines()}
    billy = rows["bookcase/IKEA_BILLY_1"]
    assert billy["attributes"]["color"] == "red" and billy["attributes"]["shape"] == "tall"
    assert "a tall red bookcase" in billy["captions"]
    assert any("IKEA BILLY" in c for c in billy["captions"])
    assert rows["tool/hammer_1"]["name"] is None  # scan ids are no names
    assert all(len(r["captions"]) >= 2 for r in rows.values())


def test_part_counts_and_human_captions(tmp_path, pix3d):
    attrs = {"color": "white", "parts": {"shelves": 5, "drawers": 1}, "size": {"width": 0.8, "height": 2.0, "depth": 0.3}}
    (pix3d / "model/bookcase/IKEA_BILLY_1/attributes.json").write_text(json.dumps(attrs))
    human = tmp_path / "human.json"
    human.write_text(json.dumps({"bookcase/IKEA_BILLY_1": ["my favourite bookcase"]}))
    gj.main(["--json_path", str(pix3d / "pix3d.json"), "--captions_json", str(human)])
    row = next(json.loads(x) for x in (pix3d / "usable_samples.jsonl").read_text().splitlines()
               if "BILLY" in x)
    assert row["captions"][0] == "my favourite bookcase"
    assert "a tall bookcase with one drawer and five shelves" in row["captions"]


def test_bad_entries_skipped_missing_renders_left_out(pix3d, capsys):
    entries = json.loads((pix3d / "pix3d.json").read_text())
    entries.append({"img": "img/chair/x.jpg", "category": "chair"})  # no model
    entries.append("garbage")
    entries.append(entry("chair", "IKEA_NO_RENDERS", 999))
    write_photo(pix3d, entries[-1])
    write_model(pix3d, "chair", "IKEA_NO_RENDERS")
    (pix3d / "pix3d.json").write_text(json.dumps(entries))
    assert gj.main(["--json_path", str(pix3d / "pix3d.json")]) == 0
    out = capsys.readouterr()
    assert "entries skipped 2" in out.out and "models left out 1" in out.out and "renders missing" in out.out
    ids = {json.loads(x)["model_id"] for x in (pix3d / "usable_samples.jsonl").read_text().splitlines()}
    assert "chair/IKEA_NO_RENDERS" not in ids


def test_malformed_json_names_file_and_position(tmp_path):
    bad = tmp_path / "pix3d.json"
    bad.write_text('[{"img": "a",\n "category": }]')
    with pytest.raises(SystemExit) as err:
        gj.main(["--json_path", str(bad)])
    assert str(bad) in str(err.value) and "line 2" in str(err.value)


def test_model_ids_and_names():
    assert gj.model_id_of("model/chair/IKEA_POANG_1/model.obj") == "chair/IKEA_POANG_1"
    assert gj.model_id_of("model/misc/foo/bar.obj") == "misc/foo/bar"
    assert captions.readable_name("sofa/IKEA_EKTORP_2") == "IKEA EKTORP"
    assert captions.parts_phrase({"legs": 4, "arms": 2}) == "two arms and four legs"
    assert captions.parts_phrase({"shelves": 1, "drawers": 0}) == "no drawers and one shelf"
    assert captions.parts_phrase({"shelves": -1, "doors": True}) is None
    assert captions.color_word((250, 250, 250)) == "white" and captions.color_word((100, 65, 35)) == "brown"


def test_every_colour_word_names_itself():
    for word, rgb in captions.COLOR_WORDS.items():
        assert captions.color_word(rgb) == word


def test_captions_say_only_what_is_known():
    # Known only by its category: one caption, no filler template.
    assert captions.build_captions("chair", {}) == ["a chair"]
    assert captions.build_captions("misc", {}) == ["an object"]
    caps = captions.build_captions("bookcase", {"color": "white", "shape": "tall", "parts": {"shelves": 5}},
                                   name="IKEA BILLY")
    assert caps == ["a tall white bookcase", "a bookcase in white", "a tall white bookcase with five shelves",
                    "a tall bookcase with five shelves", "a bookcase with five shelves", "a white bookcase that is tall",
                    "the IKEA BILLY bookcase in white"]
    two = captions.build_captions("chair", {"color": "red", "second_color": "gray", "parts": {"arms": 0}})
    assert two == ["a red chair", "a chair in red and gray", "a red and gray chair with no arms", "a chair with no arms"]
    assert all("3D model" not in c for c in caps)
