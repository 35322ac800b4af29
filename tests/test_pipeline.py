"""End to end on a small toy Pix3D: generate -> render -> jsonl -> train -> eval_recall.py and evaluate_caption.py CLIs.

    .venv/bin/python -m pytest -q tests/test_pipeline.py

The CLIs' numbers are checked against a brute-force ranking (tests/test_recall.py's reference) of the same model's
features, and against the caption metrics recomputed from the jsonl; so are the shape-only subset, the chance level
and the shortcut baselines printed beside them.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import ndcg_score

import eval_recall
import evaluate_caption
import metrics.baselines as bl
import train
from features import encode_split
from metrics.caption import evaluate_caption as caption_metrics
from models.clip_wrapper import load_checkpoint, load_clip
from multiview_dataset import MultiViewDataset
from scripts import generate_jsonl, make_toy_pix3d, render_objs
from tests.test_recall import cosines, reference


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "pix3d_toy"
    assert make_toy_pix3d.main(["--out_dir", str(root), "--models_per_category", "4", "--photos_per_model", "1",
                                "--photo_size", "96"]) in (0, None)
    assert render_objs.main(["--obj_dir", str(root / "model"), "--out_dir", str(root / "renders"),
                             "--n_views", "4", "--size", "64"]) == 0
    assert generate_jsonl.main(["--json_path", str(root / "pix3d.json")]) == 0
    return root


@pytest.fixture(scope="module")
def checkpoint(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train.main([f"--data_jsonl={toy / 'usable_samples.jsonl'}", "--clip_model=tiny", "--train_mode=linear",
                "--epochs=2", "--batch_size=8", "--lr=1e-3", "--num_workers=0", f"--logs_dir={out}/logs",
                f"--weights_dir={out}/weights", f"--cache_dir={out}/cache", "--run_name=toy"])
    return out / "weights/toy/best.pt"


def test_toy_pipeline_gives_a_usable_dataset(toy):
    rows = [json.loads(x) for x in (toy / "usable_samples.jsonl").read_text().splitlines()]
    models, _ = make_toy_pix3d.plan(0, make_toy_pix3d.CATEGORIES, 4, (0.8, 0.1, 0.1), 0)
    assert len(rows) == len(models) and {r["category"] for r in rows} == set(make_toy_pix3d.CATEGORIES)
    assert {r["category"] for r in rows if r["split"] == "test"} == set(make_toy_pix3d.CATEGORIES)
    for r in rows:
        assert len(r["views"]) == 4 and all((toy / v).exists() for v in r["views"])
        assert len(r["photos"]) == 1 and (toy / r["photos"][0]["img"]).exists()
        color = r["attributes"]["color"]
        assert any(color in c for c in r["captions"])  # the toy model's recorded colour is in its captions
    ds = MultiViewDataset(toy / "usable_samples.jsonl", "train", load_clip("tiny")[1])
    image, caption, m = ds[0]
    assert image.shape == (3, 64, 64) and caption in ds.captions[m]


def test_eval_recall_cli_writes_json_and_pictures(toy, checkpoint, tmp_path, capsys):
    assert eval_recall.main(["--checkpoint", str(checkpoint), "--split", "test", "--out_dir", str(tmp_path),
                             "--num_workers", "0"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    m = result["metrics"]
    n = result["n_models"]
    rows = [json.loads(line) for line in (toy / "usable_samples.jsonl").read_text().splitlines()]
    assert n == sum(r["split"] == "test" for r in rows) >= 9 and "tiny (random init" in result["model"]

    # every number is that of a brute-force ranking of the same model's features (views averaged per model)
    wrapper, preprocess, _ = load_checkpoint(checkpoint)
    feats, ds = encode_split(wrapper, preprocess, toy / "usable_samples.jsonl", "test", "cpu", num_workers=0)
    shapes = torch.stack([F.normalize(feats["image"][feats["image_model"] == i], dim=-1).mean(0) for i in range(n)])
    text_models = feats["text_model"].tolist()
    for prefix, shape_ids, text_ids in (("", list(range(n)), text_models),
                                        ("category/", ds.categories, [ds.categories[i] for i in text_models])):
        for d, q, g, qi, gi in (("image2text", shapes, feats["text"], shape_ids, text_ids),
                                ("text2image", feats["text"], shapes, text_ids, shape_ids)):
            want = reference(q, g, qi, gi, ks=(1, 5, 10))
            for key in ("R@1", "R@5", "R@10", "mAP", "mean_rank", "median_rank"):
                assert m[f"{prefix}{d}_{key}"] == pytest.approx(want[key], abs=1e-6), f"{prefix}{d}_{key}"
            if not prefix:
                curve = result["recall_curve"][d]
                assert curve[0] == pytest.approx(want["R@1"]) and curve[4] == pytest.approx(want["R@5"])
                # NDCG: sklearn's, whose tie-averaged DCG is the expected DCG under a random order of tied scores
                relevant = np.array([[a == b for b in gi] for a in qi], dtype=float)
                for k in (1, 5, 10):
                    assert result["ndcg"][f"{d}_NDCG@{k}"] == pytest.approx(
                        ndcg_score(relevant, cosines(q, g), k=k), abs=1e-6), f"{d}_NDCG@{k}"
    assert m["text2image_R@1"] < 1 and m["image2text_mAP"] < 1  # not saturated: a wrong ranking would show

    # the captions that name no colour: the same ranking restricted to them; chance is k / n with one shape each
    captions = [c for c, _ in ds.texts]
    subset = [i for i, c in enumerate(captions) if not any(w in c.split() for w in bl.COLOR_WORDS)]
    assert 0 < m["shape_only/n_captions"] == len(subset) < len(captions)
    want = reference(feats["text"][subset], shapes, [text_models[i] for i in subset], list(range(n)), ks=(1, 5, 10))
    for key in ("R@1", "R@5", "R@10", "mAP"):
        assert m[f"shape_only/text2image_{key}"] == pytest.approx(want[key], abs=1e-6), key
    for k in (1, 5, 10):
        assert m[f"text2image_chance_R@{k}"] == pytest.approx(min(k, n) / n) == m[f"shape_only/text2image_chance_R@{k}"]
        # one relevant shape among n on a random place: E[1 / log2(place + 1)] over the top k places, IDCG = 1
        assert result["ndcg"][f"text2image_chance_NDCG@{k}"] == pytest.approx(
            sum(1 / np.log2(r + 1) for r in range(1, min(k, n) + 1)) / n)
    baseline = result["baselines"]["colour_category"]
    assert set(baseline) == set(m) and baseline == bl.colour_category(toy / "usable_samples.jsonl", "test")
    assert len(result["recall_curve"]["text2image"]) == 50
    for name in ("recall_curve.png", "retrieval_gallery.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    out = capsys.readouterr().out
    assert "text2image (same model)" in out and "colour_category baseline" in out and "  chance" in out
    assert f"{result['ndcg']['image2text_NDCG@5']:9.3f}" in out.split("NDCG@10")[1]  # the NDCG table is printed


def test_evaluate_caption_cli(toy, checkpoint, tmp_path, monkeypatch):
    # no --out_dir: the report goes to logs/<the checkpoint's run>/ under the working directory
    monkeypatch.chdir(tmp_path)
    assert evaluate_caption.main(["--checkpoint", str(checkpoint), "--split", "test", "--no_meteor"]) == 0
    out = tmp_path / "logs" / "toy" / "captions_test.json"
    report = json.loads(out.read_text())
    assert set(report["captioners"]) == {"retrieval", "generic", "category", "nearest_caption"}
    assert "METEOR" not in report["captioners"]["retrieval"] and "CIDEr" in report["captioners"]["retrieval"]
    rows = [json.loads(x) for x in (toy / "usable_samples.jsonl").read_text().splitlines()]
    train_caps = {c for r in rows if r["split"] == "train" for c in r["captions"]}
    assert all(ex["retrieval"] in train_caps for ex in report["examples"])  # never a test caption

    # the baselines' scores, recomputed from the jsonl: the report pairs each shape with its own references
    test = [r for r in rows if r["split"] == "test"]
    gold = [r["captions"] for r in test]
    category = [ex["category"] for ex in report["examples"]]
    assert all(c.split()[0] == ("an" if c.split()[1][0] in "aeiou" else "a") for c in category)  # "an object"
    generic = caption_metrics(gold, [evaluate_caption.GENERIC_CAPTION] * len(test), meteor=False)
    for key, value in generic.items():
        assert report["captioners"]["generic"][key] == pytest.approx(value, rel=1e-12), key
    assert report["captioners"]["retrieval"]["CIDEr"] > report["captioners"]["generic"]["CIDEr"]
    # nearest_caption: a training model's first caption, scored by the same code against the same references
    nearest = bl.nearest_captions(toy / "usable_samples.jsonl", "test")
    first_train = {r["captions"][0] for r in rows if r["split"] == "train"}
    assert all(c in first_train for c in nearest)
    assert [ex["nearest_caption"] for ex in report["examples"]] == nearest[:8]
    scores = caption_metrics(gold, nearest, meteor=False)
    for key, value in scores.items():
        assert report["captioners"]["nearest_caption"][key] == pytest.approx(value, rel=1e-12), key


def test_zero_shot_cli_without_checkpoint(toy, tmp_path):
    assert eval_recall.main(["--clip_model", "tiny", "--data_jsonl", str(toy / "usable_samples.jsonl"),
                             "--out_dir", str(tmp_path), "--num_workers", "0"]) == 0
    assert "zero-shot" in json.loads((tmp_path / "results.json").read_text())["model"]
    with pytest.raises(SystemExit):
        eval_recall.main(["--split", "test"])  # neither a checkpoint nor a model
