"""Shortcut baselines, chance levels and the shape-only subset (metrics/baselines.py) against hand-made cases and
brute force.

    .venv/bin/python -m pytest -q tests/test_baselines.py
"""
import itertools
import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import eval_recall
import eval_shape_retrieval
import metrics.baselines as bl
from metrics.retrieval import retrieval_metrics
from models.clip_wrapper import load_clip
from multiview_dataset import MultiViewDataset
from tests.conftest import make_synthetic_dataset
from utils import read_jsonl, write_jsonl

# conftest's models are "<shape>/Mnn", numbered colour by colour over (square, circle, triangle)
TEST = {"square/M00": ["a red square", "a square"], "circle/M01": ["a red circle"],
        "square/M06": ["a blue square"], "circle/M07": ["a blue circle", "something round"]}


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """conftest's 18 coloured shapes, re-split: the red and the blue square and circle are the test split (with the
    captions of TEST), the other 14 train; each test model has one "photo": its first render on a grey ground."""
    root = tmp_path_factory.mktemp("hand_made")
    path = make_synthetic_dataset(root)
    rows = read_jsonl(path)
    for row in rows:
        row["split"] = "test" if row["model_id"] in TEST else "train"
        if row["model_id"] in TEST:
            row["captions"] = TEST[row["model_id"]]
            render = Image.open(root / row["views"][0]).convert("RGB")
            photo = Image.new("RGB", (64, 64), (120, 125, 130))
            mask = Image.eval(render.convert("L"), lambda v: 255 if v < 250 else 0)
            photo.paste(render, (8, 8), mask)
            name = row["model_id"].replace("/", "_") + ".png"
            (root / "img").mkdir(exist_ok=True)
            photo.save(root / "img" / name)
            row["photos"] = [{"img": f"img/{name}", "bbox": [8, 8, 56, 56], "truncated": False, "occluded": False}]
    write_jsonl(path, rows)
    return path


# ----------------------------------------------------------------------------- chance
def brute_force_chance(query_ids, gallery_ids, k):
    """Mean over every order of the gallery and over the queries with a match: is a match in the top k."""
    orders = list(itertools.permutations(range(len(gallery_ids))))
    hits = [Fraction(sum(any(query == gallery_ids[j] for j in order[:k]) for order in orders), len(orders))
            for query in query_ids if query in gallery_ids]
    return sum(hits) / len(hits)


def test_chance_is_the_expectation_over_every_random_order():
    gallery = ["a", "a", "b", "c", "c", "c"]
    queries = ["a", "b", "c", "c", "d"]  # "d" has no match: left out, as retrieval_metrics leaves it out
    got = bl.chance_recall(queries, gallery, ks=(1, 2, 3, 5, 6, 10))
    for k in (1, 2, 3, 5, 6, 10):
        assert got[f"R@{k}"] == pytest.approx(float(brute_force_chance(queries, gallery, k)), rel=1e-12), k
    assert got["R@1"] == pytest.approx((2 / 6 + 1 / 6 + 3 / 6 + 3 / 6) / 4) and got["R@10"] == 1.0
    assert math.isnan(bl.chance_recall(["x"], gallery)["R@1"])
    # a collapsed model (every score tied) ranks at random: retrieval's tie rule gives exactly the chance level
    m = retrieval_metrics(torch.ones(len(queries), 4), torch.ones(len(gallery), 4), queries, gallery, ks=(1, 2, 3))
    assert [m[f"R@{k}"] for k in (1, 2, 3)] == pytest.approx([got[f"R@{k}"] for k in (1, 2, 3)], rel=1e-9)


# ----------------------------------------------------------------------------- captions
def test_shape_only_subset_is_exactly_the_captions_without_a_colour_word():
    captions = ["a red chair", "a chair", "a Gray sofa", "a redwood table", "a bordered bed", "a chair in greens",
                "the IKEA POANG chair", "a table with four legs", "a black and white desk"]
    assert bl.shape_only(captions) == [1, 3, 4, 6, 7]
    nouns = bl.category_nouns(["chair", "misc", "table"])
    assert nouns == {"chair": "chair", "misc": "misc", "table": "table", "object": "misc"}
    assert bl.caption_tokens("A red chair and an object", nouns) == {("colour", "red"), ("category", "chair"),
                                                                     ("category", "misc")}
    assert bl.caption_tokens("an armchair on a tablet", nouns) == set()  # whole words only


def test_agreement_embeddings_score_the_count_exactly():
    queries = [set(), {"red"}, {"red", "chair"}, {"red", "blue", "chair", "bed", "sofa"}]
    gallery = [{"red", "chair"}, {"blue", "bed"}, {"green"}, set()]
    q, g = bl.agreement_embeddings(queries, gallery)
    norm = q.norm(dim=1)
    assert torch.equal(norm, g.norm(dim=1)[:1].expand(len(q))) and torch.equal(norm, g.norm(dim=1)[:1].expand(4))
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    counts = torch.tensor([[len(a & b) for b in gallery] for a in queries], dtype=torch.float32)
    assert torch.equal(cos, counts / norm[0] ** 2)  # bit-exact: equal counts tie exactly


# ----------------------------------------------------------------------------- the baselines on hand-made data
def test_colour_category_ranks_the_caption_that_names_colour_and_category_first(hand_made):
    categories = [c for c, _ in bl.nearest_train_models(hand_made, "test")]
    assert categories == ["square", "circle", "square", "circle"]  # thumbnails of the train split's shapes
    assert bl.render_colours(hand_made, "test")[0] == [{"red"}, {"red"}, {"blue"}, {"blue"}]
    m = bl.colour_category(hand_made, "test")
    # per caption, the expected R@1 over the orders of tied shapes: "a red square" 1, "a square" ties the two
    # squares (1/2), "a red circle", "a blue square", "a blue circle" 1, "something round" ties all four (1/4)
    assert m["text2image_R@1"] == pytest.approx((4 + 1 / 2 + 1 / 4) / 6)
    assert m["text2image_R@5"] == 1.0 and m["text2image_chance_R@1"] == pytest.approx(1 / 4)
    assert m["shape_only/n_captions"] == 2
    assert m["shape_only/text2image_R@1"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["shape_only/text2image_chance_R@1"] == pytest.approx(1 / 4)
    # shape -> text: the red square's own "a red square" (2 agreements) beats everything
    assert m["image2text_R@1"] == 1.0


def test_the_category_classifier_never_reads_the_evaluated_models_category(hand_made):
    rows = read_jsonl(hand_made)
    for blank in ("unknown", "triangle"):  # a name no train model has, and a wrong one that train models have
        path = hand_made.parent / f"blanked_{blank}.jsonl"
        write_jsonl(path, [dict(r, category=blank) if r["split"] == "test" else r for r in rows])
        assert bl.nearest_train_models(path, "test") == bl.nearest_train_models(hand_made, "test")
        assert bl.nearest_captions(path, "test") == bl.nearest_captions(hand_made, "test")
        got, want = bl.colour_category(path, "test"), bl.colour_category(hand_made, "test")
        instance = [k for k in want if not k.startswith("category/")]  # category/ keys score with the jsonl's
        assert {k: got[k] for k in instance} == {k: want[k] for k in instance}


def test_nearest_caption_is_the_first_caption_of_the_nearest_training_model(hand_made):
    train = MultiViewDataset(hand_made, "train", None, mode="eval")
    nearest = [train.model_ids[t] for _, t in bl.nearest_train_models(hand_made, "test")]
    # grey levels: red 81, blue 75 and purple 86 are closest; every view of a shape sits at the same offsets
    assert nearest == ["square/M15", "circle/M16", "square/M15", "circle/M16"]
    assert bl.nearest_captions(hand_made, "test") == ["a purple square", "a purple circle"] * 2
    # on the train split a model is never its own neighbour
    own = bl.nearest_train_models(hand_made, "train")
    assert all(t != m for m, (_, t) in enumerate(own))


def test_colour_histogram_ties_shapes_of_one_colour(hand_made):
    m = bl.colour_histogram(hand_made, "test")
    # the grey ground is the crop's border colour and is left out: each photo has its shape's colour only, so
    # its own shape ties with the other shape of that colour (expected R@1 1/2), before the other colour
    assert m["photo2shape_R@1"] == pytest.approx(0.5) and m["photo2shape_R@5"] == 1.0
    assert m["photo2shape_mAP"] == pytest.approx(0.75)  # AP of a tie of two with one match: (1 + 1/2) / 2
    assert m["photo2shape_chance_R@1"] == pytest.approx(0.25)
    assert m["category/photo2shape_R@1"] == pytest.approx(0.5) and m["category/photo2shape_chance_R@1"] == 0.5


# ----------------------------------------------------------------------------- same splits as the models
def _spy(monkeypatch, name, modules):
    calls, original = [], getattr(bl, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, name, spy)
    return calls


def test_baselines_are_scored_on_the_models_split(hand_made, tmp_path, monkeypatch, capsys):
    """The model's evaluation and its baseline pass the same gallery and queries to the same metric code."""
    calls = _spy(monkeypatch, "text2shape_metrics", (bl, eval_recall))
    assert eval_recall.main(["--clip_model", "tiny", "--data_jsonl", str(hand_made), "--out_dir", str(tmp_path),
                             "--num_workers", "0"]) == 0
    (model, baseline) = calls
    ids = lambda x: x.tolist() if torch.is_tensor(x) else list(x)  # noqa: E731
    assert sorted(set(ids(model[1]))) == ids(baseline[1]) == [0, 1, 2, 3]  # the 4 test models, in one order
    assert dict(zip(ids(model[1]), model[4])) == dict(zip(baseline[1], baseline[4]))  # their categories
    assert ids(model[3]) == ids(baseline[3]) and model[5:7] == baseline[5:7]  # the captions, in one order
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["baselines"]["colour_category"]) == set(result["metrics"])  # the same keys
    out = capsys.readouterr().out
    assert "colour_category baseline" in out and "chance" in out and "text2image (shape only)" in out

    calls = _spy(monkeypatch, "photo2shape_with_chance", (bl, eval_shape_retrieval))
    assert eval_shape_retrieval.main(["--clip_model", "tiny", "--data_jsonl", str(hand_made), "--out_dir",
                                      str(tmp_path / "p"), "--num_workers", "0"]) == 0
    (model, baseline) = calls
    assert ids(model[1]) == ids(baseline[1]) and model[4] == baseline[4]  # photo queries, categories
    result = json.loads((tmp_path / "p/results.json").read_text())
    assert set(result["baselines"]["colour_histogram"]) == set(result["metrics"])
    assert "colour_histogram baseline" in capsys.readouterr().out
    assert eval_recall.main(["--clip_model", "tiny", "--data_jsonl", str(hand_made), "--out_dir",
                             str(tmp_path / "n"), "--num_workers", "0", "--no_baselines"]) == 0
    assert "baselines" not in json.loads((tmp_path / "n/results.json").read_text())


def test_demo_tables_show_baselines_and_chance(hand_made):
    from metrics.tables import results_markdown
    from scripts import demo

    run = bl.colour_category(hand_made, "test")
    photo = bl.colour_histogram(hand_made, "test")
    captions = {"BLEU-1": 0.5, "CIDEr": 1.0}
    s = {"random_init": run, "linear": run, "full": run, "model": "tiny", "n_test_models": 4,
         "captions": captions, "captions_baselines": {"generic": captions}, "captions_generative": captions,
         "baselines": {"colour_category": run, "nearest_caption": captions, "colour_histogram": photo},
         "shape_retrieval": {"random_init": photo, "stage2": photo, "stage3": photo, "n_photos": 4,
                             "n_photos_left_out": 0, "n_models": 4}}
    md = results_markdown(s, demo.UNTRAINED)
    for row in ("| colour_category baseline | 0.792 |", "| chance | 0.250 | 1.000 | 1.000 |",
                "| nearest_caption baseline", "| colour_histogram baseline | none | - | 0.500 |", "| chance | - | - | 0.250 |",
                "Shape only: the 2 test captions", "| random_init |", "| random_init | none | - |"):
        assert row in md, row
    assert demo.UNTRAINED == "random_init" and "zero_shot" not in md  # the tiny model's untrained row is no CLIP
    assert md.count("| chance |") == 3  # text <-> shape, shape only, photo -> shape


def test_a_model_without_readable_views_fails_loudly(hand_made, tmp_path):
    # the same jsonl content elsewhere (the cache key holds the path too): its renders are not beside it
    shutil.copy(hand_made, tmp_path / "usable_samples.jsonl")
    with pytest.raises(OSError, match="none of its 4 views can be read"):
        bl.colour_category(tmp_path / "usable_samples.jsonl", "test")


def test_colour_set_names_both_colours_of_a_shaded_two_colour_model():
    from meshes.captions import COLOR_WORDS

    rng = np.random.default_rng(0)
    shade = rng.uniform(0.5, 1.1, size=(1000, 1))  # lit and shadowed faces
    red = np.clip(np.array(COLOR_WORDS["red"]) * shade[:700], 0, 255)
    blue = np.clip(np.array(COLOR_WORDS["blue"]) * shade[700:], 0, 255)
    assert bl.colour_set(np.concatenate([red, blue]).astype(np.uint8)) == {"red", "blue"}
    # a colour on under COLOUR_SHARE of the pixels (handles, feet) is not one of the shape's colours
    assert bl.colour_set(np.concatenate([red, blue[:100]]).astype(np.uint8)) == {"red"}
    assert bl.colour_set(np.zeros((0, 3), np.uint8)) == set()
