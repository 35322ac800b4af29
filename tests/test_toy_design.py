"""The toy benchmark's design, read back from the files written: held-out combinations only in test, edit
variants that differ from their base in exactly the edited attributes, groups inside one split, CIRR's format."""
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import generate_jsonl as gj  # noqa: E402
import make_toy_pix3d as toy  # noqa: E402
import render_objs  # noqa: E402
from meshes.toy_design import HELD_OUT_COLOURS, HELD_OUT_PARTS, build_model, held_out_in  # noqa: E402
from meshes.toy_edits import SCALES, edit_options  # noqa: E402
from meshes.toy_furniture import CATEGORIES, COUNTED  # noqa: E402

FRACTIONS = "0.5,0.1,0.4"


@pytest.fixture(scope="module")
def toy_jsonl(tmp_path_factory):
    out = tmp_path_factory.mktemp("design") / "toy"
    toy.generate(out, seed=3, models_per_category=6, photos_per_model=1, photo_size=64, progress=False,
                 split_fractions=tuple(map(float, FRACTIONS.split(","))))
    assert render_objs.main(["--obj_dir", str(out / "model"), "--out_dir", str(out / "renders"), "--n_views", "2",
                             "--size", "48", "--workers", "1"]) == 0
    assert gj.main(["--json_path", str(out / "pix3d.json"), "--split_fractions", FRACTIONS]) == 0
    rows = [json.loads(line) for line in (out / "usable_samples.jsonl").read_text().splitlines()]
    return out, rows


def obj_facts(folder):
    """(area per material, count per COUNTED part, bounding box size) measured from model.obj alone."""
    verts, objects, current = [], {}, None
    for line in (folder / "model.obj").read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "v":
            verts.append([float(t) for t in tok[1:4]])
        elif tok and tok[0] == "o":
            current = objects[tok[1]] = {"material": None, "faces": []}
        elif tok and tok[0] == "usemtl":
            current["material"] = tok[1]
        elif tok and tok[0] == "f":
            current["faces"].append([int(t.split("/")[0]) - 1 for t in tok[1:4]])
    verts = np.array(verts)
    area, counts = Counter(), Counter()
    for name, o in objects.items():
        f = np.array(o["faces"])
        a, b, c = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
        area[o["material"]] += 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
        kind = name.rsplit("_", 1)[0]
        if kind in COUNTED:
            counts[COUNTED[kind]] += 1
    return area, counts, verts.max(0) - verts.min(0)


def test_held_out_combinations_are_only_in_test(toy_jsonl):
    out, rows = toy_jsonl
    seen = Counter()
    for row in rows:
        attrs = json.loads((out / "model" / row["model_id"] / "attributes.json").read_text())
        assert attrs["split"] == row["split"], row["model_id"]  # the generator drew generate_jsonl's split
        area, counts, _ = obj_facts(out / "model" / row["model_id"])
        total = sum(area.values())
        cat = row["category"]
        shown = {c for c, a in area.items() if a >= 0.05 * total}
        held = [f"colour:{HELD_OUT_COLOURS[cat]}"] * (HELD_OUT_COLOURS[cat] in shown)
        if cat in HELD_OUT_PARTS and counts[HELD_OUT_PARTS[cat][0]] == HELD_OUT_PARTS[cat][1] \
                and HELD_OUT_PARTS[cat][0] in attrs["parts"]:
            held.append(f"{HELD_OUT_PARTS[cat][0]}:{HELD_OUT_PARTS[cat][1]}")
        assert held == attrs["held_out"] == row["attributes"].get("held_out", []), row["model_id"]
        if held:
            assert row["split"] == "test", row["model_id"]
            seen[held[0].split(":")[0]] += 1
    assert seen["colour"] >= 5 and seen["legs"] + seen["drawers"] + seen["shelves"] + seen["cushions"] >= 3, seen


def test_variants_differ_from_their_base_in_exactly_the_edits(toy_jsonl):
    out, rows = toy_jsonl
    variants = [r for r in rows if r["attributes"].get("variant_of")]
    assert len(variants) >= 10 and {e[0] for r in variants for e in r["attributes"]["edits"]} == \
        {"colour", "part", "scale"}
    for row in variants:
        cat = row["category"]
        base = out / "model" / cat / row["attributes"]["variant_of"]
        b_area, b_counts, b_size = obj_facts(base)
        v_area, v_counts, v_size = obj_facts(out / "model" / row["model_id"])
        expect_area, expect_counts, expect_size = dict(b_area), dict(b_counts), b_size.copy()
        for edit in row["attributes"]["edits"]:
            if edit[0] == "colour":
                expect_area[edit[2]] = expect_area.pop(edit[1])
            elif edit[0] == "part":
                assert b_counts[edit[1]] == edit[2], row["model_id"]
                expect_counts[edit[1]] = edit[3]
            else:
                expect_size = expect_size * np.array(SCALES[edit[1]])
        expect_counts = {k: v for k, v in expect_counts.items() if v}
        assert {k: v for k, v in v_counts.items() if v} == expect_counts, row["model_id"]
        if not any(e[0] == "part" for e in row["attributes"]["edits"]):  # a part count changes the geometry
            assert np.allclose(v_size, expect_size, atol=2e-3), row["model_id"]
            assert set(v_area) == set(expect_area)
        if all(e[0] == "colour" for e in row["attributes"]["edits"]):  # the same parts, repainted
            assert all(abs(v_area[c] / sum(v_area.values()) - expect_area[c] / sum(expect_area.values())) < 0.02
                       for c in v_area), row["model_id"]
        else:
            assert set(v_area) == set(expect_area), row["model_id"]


def test_composed_pairs_in_cirr_format_and_groups_inside_one_split(toy_jsonl):
    out, rows = toy_jsonl
    split_of = {r["model_id"]: r["split"] for r in rows}
    ids = set()
    for split in ("train", "val", "test"):
        pairs = json.loads((out / f"composed.{split}.json").read_text())
        for p in pairs:
            assert {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"} <= set(p)
            assert p["pairid"] not in ids
            ids.add(p["pairid"])
            members = p["img_set"]["members"]
            assert p["reference"] in members and p["target_hard"] in members and p["reference"] != p["target_hard"]
            assert {split_of[m] for m in members} == {split}
            assert p["caption"] and p["target_soft"] == {p["target_hard"]: 1.0}
    assert len(ids) >= 20


def test_edit_options_respect_held_out_and_style():
    parts, attrs = build_model("chair", np.random.default_rng(0), {"style": "office"})
    options = edit_options("chair", attrs, "train")
    assert not any(o[:2] == ("part", "legs") for o in options)  # an office chair has a base, not legs
    assert not any(o[0] == "colour" and o[2] == HELD_OUT_COLOURS["chair"] for o in options)
    assert any(o[0] == "colour" and o[2] == HELD_OUT_COLOURS["chair"] for o in edit_options("chair", attrs, "test"))
    parts, attrs = build_model("chair", np.random.default_rng(0), {"style": "dining", "legs": 3})
    assert held_out_in("chair", attrs) == ["legs:3"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_an_override_changes_only_its_attribute(category):
    rng_seed = [5, CATEGORIES.index(category), 1]
    _, attrs = build_model(category, np.random.default_rng(rng_seed))
    options = [o for o in edit_options(category, attrs, "test") if o[0] == "part"]
    for _, part, old, new in options:
        _, changed = build_model(category, np.random.default_rng(rng_seed), {part: new, "colors": attrs["palette"],
                                                                            "trim": attrs["trim"]})
        assert changed["parts"] == {**attrs["parts"], part: new}, (part, new)
        assert changed.get("style") == attrs.get("style") and changed["palette"] == attrs["palette"]
