"""scripts/demo.py: the one-seed path and the --seeds loop end to end on conftest's synthetic shapes (each given a
photo, and composed pairs within each category) with short runs, and the seeds tables from fake per-seed outputs.

    .venv/bin/python -m pytest -q tests/test_demo.py
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import metrics.baselines as bl
from composed_fixtures import make_composed_pairs
from metrics.bootstrap import aggregate_seeds
from metrics.composed import COLUMNS, ROWS
from metrics.tables import seeds_markdown
from scripts import demo
from scripts.demo_data import check_toy_design
from tests.conftest import make_synthetic_dataset
from utils import read_jsonl, write_jsonl

# a few optimizer steps per stage: the loop, not the learning, is under test
SHORT = dict(epochs=1, max_steps=2, num_workers=0, batch_size=8, draws_per_model=2, warmup_steps=1, pk_models=4,
             pk_images=2, pk_photos=1, patience=1)
SHORT_CAPTIONER = ["--epochs=1", "--max_steps=2", "--num_workers=0", "--width=32", "--layers=1", "--heads=2",
                   "--prefix_len=2", "--batch_size=8", "--warmup_steps=1"]


def with_photos(root):
    """conftest's 18 coloured shapes, each with one "photo": its first render pasted on a grey ground, and the
    composed pairs of tests/composed_fixtures.py (the test split: 3 pairs over its 3 circles)."""
    path = make_synthetic_dataset(root)
    rows = read_jsonl(path)
    (root / "img").mkdir()
    for row in rows:
        render = Image.open(root / row["views"][0]).convert("RGB")
        photo = Image.new("RGB", (64, 64), (120, 125, 130))
        photo.paste(render, (8, 8), Image.eval(render.convert("L"), lambda v: 255 if v < 250 else 0))
        name = row["model_id"].replace("/", "_") + ".png"
        photo.save(root / "img" / name)
        row["photos"] = [{"img": f"img/{name}", "bbox": [8, 8, 56, 56], "truncated": False, "occluded": False}]
    write_jsonl(path, rows)
    make_composed_pairs(path)
    return path


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_seeds")
    jsonl = with_photos(root)
    common = dict(demo.COMMON, data_jsonl=str(jsonl), logs_dir=str(root / "logs"), weights_dir=str(root / "weights"),
                  cache_dir=str(root / "cache"))
    results = demo.several_seeds(2, "cpu", common=common, out=root / "demo-seeds", extra=SHORT,
                                 captioner_argv=SHORT_CAPTIONER, meteor=False, n_resamples=50, composed_jsonl=jsonl)
    return root, jsonl, results


def test_seeds_loop_trains_every_stage_per_seed_and_reports_its_numbers(two_seeds):
    root, jsonl, results = two_seeds
    assert json.loads((root / "demo-seeds/results.json").read_text()) == results
    assert set(results["runs"]) == {"text2shape", "photo2shape", "captions", "composed"}
    assert set(results["runs"]["composed"]) == set(ROWS)
    assert all(set(m) == {"R@1", "R@5"} for m in results["runs"]["composed"].values())
    assert set(results["runs"]["text2shape"]) == {"linear", "full", "colour_category"}
    assert set(results["runs"]["photo2shape"]) == {"stage2", "stage2_no_ce", "stage3"}
    assert set(results["runs"]["captions"]) == {"retrieval", "generative", "nearest_caption"}
    assert results["n_test_models"] == 3 and results["seeds"] == [0, 1] and results["n_resamples"] == 50
    # composed retrieval's intervals resample the test models of its own data (here the same file)
    assert results["n_composed_test_models"] == 3 and results["composed_data"] == str(jsonl.resolve())
    for seed in (0, 1):
        for run in ("linear", "full", "stage2", "stage2_no_ce", "stage3", "captioner"):
            config = json.loads((root / f"logs/demo-seeds-s{seed}-{run}/config.json").read_text())
            assert config["seed"] == seed
        stage3 = json.loads((root / f"logs/demo-seeds-s{seed}-stage3/config.json").read_text())
        assert stage3["init_from"].endswith(f"demo-seeds-s{seed}-stage2/best.pt")
        no_ce = json.loads((root / f"logs/demo-seeds-s{seed}-stage2_no_ce/config.json").read_text())
        assert no_ce["ce_weight"] == 0.0 and "ce" in no_ce["shape_loss"]
        # each seed's per-seed value is the number its own report printed
        report = json.loads((root / f"demo-seeds/seed_{seed}/full/results.json").read_text())["metrics"]
        full = results["runs"]["text2shape"]["full"]
        for key in ("text2image_R@1", "text2image_R@10", "text2image_mAP", "image2text_R@1", "image2text_mAP"):
            assert full[key]["per_seed"][seed] == pytest.approx(report[key], rel=1e-12, abs=1e-15), key
        # every synthetic caption names its colour: no shape-only subset, so no shape_only rows
        assert report["shape_only/n_captions"] == 0 and not any(k.startswith("shape_only/") for k in full)
        # composed: stage 1 from this seed's full model, both Combiners from that stage 1, the report's own numbers
        stage1 = json.loads((root / f"logs/demo-seeds-s{seed}-composed-stage1/config.json").read_text())
        assert stage1["seed"] == seed and stage1["init_from"].endswith(f"demo-seeds-s{seed}-full/best.pt")
        for run in ("combiner", "moe_combiner"):
            config = json.loads((root / f"logs/demo-seeds-s{seed}-composed-{run}/config.json").read_text())
            assert config["combiner"] == run and config["seed"] == seed
            assert config["init_from"].endswith(f"demo-seeds-s{seed}-composed-stage1/best.pt")
        rows = json.loads((root / f"demo-seeds/seed_{seed}/composed/results.json").read_text())["rows"]
        for row in ROWS:
            for key in ("R@1", "R@5"):
                got = results["runs"]["composed"][row][key]["per_seed"][seed]
                assert got == pytest.approx(rows[row][key], rel=1e-12, abs=1e-15), (row, key)
    # the seed changes training: the two seeds' full models differ
    a, b = (torch.load(root / f"weights/demo-seeds-s{s}-full/best.pt", weights_only=True)["model"] for s in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the baselines do not train: one value every seed, and it is the baseline's own number
    cc = results["runs"]["text2shape"]["colour_category"]["text2image_R@1"]
    assert cc["sd"] == 0.0 and cc["per_seed"][0] == pytest.approx(bl.colour_category(jsonl, "test")["text2image_R@1"])
    for family in results["runs"].values():
        for run in family.values():
            for m in run.values():
                assert len(m["per_seed"]) == 2 and m["mean"] == pytest.approx(np.mean(m["per_seed"]))
    by = {(c["a"], c["b"], c["metric"]) for c in results["comparisons"]}
    # no shape_only subset here, and METEOR skipped (meteor=False)
    assert len(by) == 2 * 4 + 2 * 2 + 3 * 1 + 2 * 2
    assert ("stage2", "stage2_no_ce", "photo2shape_mAP") in by and ("generative", "nearest_caption", "CIDEr") in by
    assert {("combiner", "image_only", "R@5"), ("combiner", "stage1_sum", "R@1")} <= by
    md = (root / "demo-seeds/results.md").read_text()
    assert "| linear | full | text2image_R@1 |" in md and "| stage2 | stage2_no_ce | photo2shape_mAP |" in md
    assert "| combiner | stage1_sum | R@5 |" in md and "| moe_combiner | R@1 |" in md
    assert f"On its own data ({jsonl.resolve()}): intervals resample its 3 test models." in md
    per_query = json.loads((root / "demo-seeds/seed_1/per_query.json").read_text())
    assert set(per_query["photo2shape"]) == {"stage2", "stage2_no_ce", "stage3"}
    # each composed query goes with its target, a test model: 3 pairs over the 3 test circles
    targets = per_query["composed"]["combiner"]["R@1"]["model"]
    assert sorted(targets) == sorted(bl.split_dataset(jsonl, "test").model_ids)


def test_one_seed_demo_keeps_its_results_keys(tmp_path):
    """The default path (seed 0, logs/demo/ in the real demo): the keys of results.json as before, the untrained
    row named random_init for the tiny model and the caption cosine named cosine_same_model; composed retrieval's
    six rows with chance and the test split's size."""
    jsonl = with_photos(tmp_path)
    common = dict(demo.COMMON, data_jsonl=str(jsonl), logs_dir=str(tmp_path / "logs"),
                  weights_dir=str(tmp_path / "weights"), cache_dir=str(tmp_path / "cache"))
    demo.one_seed("cpu", common=common, out=tmp_path / "demo", extra=SHORT, captioner_argv=SHORT_CAPTIONER,
                  composed_jsonl=jsonl)
    s = json.loads((tmp_path / "demo/results.json").read_text())
    assert set(s) == {"random_init", "linear", "full", "captions", "captions_baselines", "captions_generative",
                      "shape_retrieval", "baselines", "model", "n_test_models", "composed"}
    assert set(s["composed"]) == set(ROWS) | {"chance", "n_queries", "n_gallery", "data"}
    assert all(set(s["composed"][row]) == set(COLUMNS) for row in (*ROWS, "chance"))
    assert s["composed"]["n_queries"] == 3 and s["composed"]["n_gallery"] == 3
    # a random ranking of the 2 candidates left once the reference is out
    assert s["composed"]["chance"]["R@1"] == pytest.approx(0.5) and s["composed"]["chance"]["R@5"] == 1.0
    report = json.loads((tmp_path / "demo/composed/results.json").read_text())
    assert all(s["composed"][row][k] == report["rows"][row][k] for row in ROWS for k in COLUMNS)
    stage1 = json.loads((tmp_path / "logs/demo-composed-stage1/config.json").read_text())
    assert stage1["init_from"] == str(tmp_path / "weights/demo-full/best.pt")
    assert set(s["shape_retrieval"]) == {"random_init", "stage2", "stage3", "n_photos", "n_photos_left_out",
                                         "n_models"}
    assert set(s["baselines"]) == {"colour_category", "nearest_caption", "colour_histogram"}
    assert {"CIDEr", "cosine_same_model"} <= set(s["captions"]) and "CLIPScore" not in s["captions"]
    assert set(s["captions_baselines"]) == {"generic", "category"} and s["n_test_models"] == 3
    assert s["full"]["text2image_R@1"] == json.loads((tmp_path / "demo/full/results.json").read_text())[
        "metrics"]["text2image_R@1"]
    stage3 = json.loads((tmp_path / "logs/demo-shape-stage3/config.json").read_text())
    assert stage3["seed"] == 0 and stage3["init_from"] == str(tmp_path / "weights/demo-shape-stage2/best.pt")
    md = (tmp_path / "demo/results.md").read_text()
    # no row of the untrained tiny model is called zero_shot (sum_zero_shot: eval_composed's row, explained there)
    assert "| random_init |" in md and "| cosine_same_model |" in md
    assert "zero_shot" not in md.replace("sum_zero_shot", "")
    assert "image_only, text_only and sum_zero_shot are the untrained model (random_init)" in md
    assert f"test split of {jsonl.resolve()}: 3 queries against 3 shapes" in md and "| moe_combiner |" in md
    assert "| chance | 0.500 | 1.000 |" in md


def test_seeds_markdown_from_fake_per_seed_outputs():
    units = ["a", "b", "c", "d"]

    def record(values):
        return {"model": units, "value": values}

    per_seed = [{"captions": {"generative": {"CIDEr": record([2.0, 1.0, 2.0, 1.0])},
                              "retrieval": {"CIDEr": record([1.0, 1.0, 1.0, 1.0])}}},
                {"captions": {"generative": {"CIDEr": record([2.0, 2.0, 2.0, 1.0])},
                              "retrieval": {"CIDEr": record([1.0, 1.0, 1.0, 1.0])}}}]
    r = aggregate_seeds(per_seed, units, [("captions", "generative", "retrieval", ["CIDEr", "METEOR"])], 100)
    r.update(model="tiny", seeds=[0, 1])
    md = seeds_markdown(r)
    assert "| generative | CIDEr | 1.500 1.750 | 1.625 | 0.177 |" in md
    assert "| retrieval | CIDEr | 1.000 1.000 | 1.000 | 0.000 | [1.000, 1.000] |" in md
    row = next(line for line in md.splitlines() if line.startswith("| generative | retrieval | CIDEr |"))
    assert "| +0.625 |" in row and "| A > B |" in row and row.endswith("| +0.500 +0.750 |")
    assert "METEOR" not in md.split("Paired comparisons")[1]  # no METEOR records: no METEOR comparison


def test_seeds_flag():
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "0"])


def test_a_toy_set_made_with_other_flags_is_refused(tmp_path):
    """The demo keeps a built toy set only when its toy_design.json records the seed, split fractions and
    edited_share that TOY_ARGS / COMPOSED_TOY_ARGS ask for (a set made before --edited_share existed has 0.35)."""
    design = tmp_path / "toy_design.json"
    design.write_text(json.dumps({"seed": 1, "split_fractions": [0.6, 0.1, 0.3], "edited_share": 1.0}))
    check_toy_design(tmp_path, demo.COMPOSED_TOY_ARGS)
    with pytest.raises(SystemExit, match="seed 1, not 0"):
        check_toy_design(tmp_path, demo.TOY_ARGS)
    design.write_text(json.dumps({"seed": 0, "split_fractions": [0.6, 0.1, 0.3]}))
    check_toy_design(tmp_path, demo.TOY_ARGS)
    with pytest.raises(SystemExit, match="edited_share 0.35, not 1.0"):
        check_toy_design(tmp_path, [*demo.TOY_ARGS, "--edited_share", "1"])
    design.write_text(json.dumps({"seed": 0, "split_fractions": [0.8, 0.1, 0.1], "edited_share": 0.35}))
    with pytest.raises(SystemExit, match="split_fractions"):
        check_toy_design(tmp_path, demo.TOY_ARGS)
