"""metrics/per_query.py and metrics/bootstrap.py: per-query values against the brute-force ranking and the reported
metrics, the cluster bootstrap against the multiset of queries it stands for, paired comparisons, seeds pooled.

    .venv/bin/python -m pytest -q tests/test_bootstrap.py
"""
import math

import numpy as np
import pytest
import torch

import metrics.baselines as bl
import metrics.retrieval
from metrics.bootstrap import aggregate_seeds, bootstrap_record, compare, interval, resample_counts, summarise
from metrics.per_query import (colour_category_records, photo2shape_records, retrieval_per_query,
                               text2shape_records)
from metrics.retrieval import photo2shape_metrics, retrieval_metrics
from tests.conftest import make_synthetic_dataset
from tests.test_recall import reference

KS = (1, 5, 10)


def tied_features(n, dim=6, seed=0):
    """Coarsely rounded random vectors: many exact ties, as a collapsed or baseline model gives."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, dim), generator=g).float() + 0.01 * torch.randint(0, 2, (n, dim), generator=g)


@pytest.fixture(params=["compare", "sort"])
def path(request, monkeypatch):
    """Both of metrics.retrieval's ranking paths: one pass per match, and the sort of whole rows."""
    monkeypatch.setattr(metrics.retrieval, "_SORT_ABOVE_N_POS", 10**9 if request.param == "compare" else 0)
    return request.param


# ----------------------------------------------------------------------------- per-query values
def test_per_query_values_are_each_querys_brute_force_values(path):
    queries, gallery = tied_features(14, seed=1), tied_features(9, seed=2)
    q_ids = [i % 5 for i in range(13)] + [99]  # the last query has no match
    g_ids = [0, 1, 1, 2, 3, 3, 3, 4, 0]
    per = retrieval_per_query(queries, gallery, q_ids, g_ids, ks=KS)
    assert per["matched"].tolist() == [True] * 13 + [False]
    assert all(math.isnan(per[key][13]) for key in ("R@1", "AP"))
    for i in range(13):
        want = reference(queries[i:i + 1], gallery, [q_ids[i]], g_ids, ks=KS)
        for k in KS:
            assert per[f"R@{k}"][i].item() == pytest.approx(float(want[f"R@{k}"]), rel=1e-12, abs=1e-12), (i, k)
        assert per["AP"][i].item() == pytest.approx(float(want["mAP"]), rel=1e-12), i
    assert 0 < per["R@1"][:13].mean() < 1  # ties split hits: not a trivially saturated case


def test_per_query_values_average_to_retrieval_metrics_exactly(path):
    queries, gallery = tied_features(40, seed=3), tied_features(12, seed=4)
    q_ids, g_ids = [i % 13 for i in range(40)], [i % 12 for i in range(12)]  # code 12 has no shape: unmatched
    per = retrieval_per_query(queries, gallery, q_ids, g_ids, ks=KS, chunk_size=7)
    want = retrieval_metrics(queries, gallery, q_ids, g_ids, ks=KS, chunk_size=7)
    matched = per["matched"]
    assert int((~matched).sum()) == want["n_no_match"] > 0
    for k in KS:
        assert per[f"R@{k}"][matched].mean().item() == want[f"R@{k}"]
    assert per["AP"][matched].mean().item() == want["mAP"]


def test_text2shape_and_photo2shape_records_hold_the_reported_metrics():
    g = torch.Generator().manual_seed(5)
    views, view_models = torch.randn(24, 8, generator=g), [m for m in range(6) for _ in range(4)]
    texts, text_models = torch.randn(15, 8, generator=g), [i % 6 for i in range(15)]
    captions = [f"a {'red ' if i % 3 else ''}thing {i}" for i in range(15)]  # every third names no colour
    cats = ["a", "a", "b", "b", "c", "c"]
    model_ids = [f"m{m}" for m in range(6)]
    records = text2shape_records(views, view_models, texts, text_models, captions, model_ids)
    want = bl.text2shape_metrics(views, view_models, texts, text_models, [cats[m] for m in view_models],
                                 [cats[m] for m in text_models], captions)
    assert set(records) == {f"{d}_{m}" for d in ("text2image", "image2text", "shape_only/text2image")
                            for m in ("R@1", "R@5", "R@10", "mAP")}
    for key, record in records.items():
        assert np.mean(record["value"]) == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    # clusters: a caption belongs to its model, a shape query to itself, the shape-only captions to theirs
    assert records["text2image_R@1"]["model"] == [model_ids[m] for m in text_models]
    assert records["image2text_mAP"]["model"] == model_ids
    assert records["shape_only/text2image_R@5"]["model"] == [model_ids[text_models[i]] for i in range(0, 15, 3)]

    photos, photo_models = torch.randn(9, 8, generator=g), [0, 0, 1, 2, 3, 3, 4, 5, 5]
    records = photo2shape_records(photos, photo_models, views, view_models, model_ids)
    want = photo2shape_metrics(photos, photo_models, views, view_models)
    for key in ("photo2shape_R@1", "photo2shape_R@5", "photo2shape_R@10", "photo2shape_mAP"):
        assert np.mean(records[key]["value"]) == pytest.approx(want[key], rel=1e-12), key
        assert records[key]["model"] == [model_ids[m] for m in photo_models]


def test_colour_category_records_hold_the_baselines_numbers(tmp_path):
    jsonl = make_synthetic_dataset(tmp_path)
    records = colour_category_records(jsonl, "test")
    want = bl.colour_category(jsonl, "test")
    for key, record in records.items():
        assert np.mean(record["value"]) == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    assert len(records["text2image_R@1"]["value"]) == 6 and len(records["image2text_R@1"]["value"]) == 3


# ----------------------------------------------------------------------------- the bootstrap
def test_resample_counts_draw_each_resample_in_full():
    counts = resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and (counts.sum(1) == 7).all()
    assert counts.mean() == pytest.approx(1.0) and (counts == 0).any()
    assert (resample_counts(7, 500, seed=3) == counts).all()  # a fixed seed gives the same resamples


def test_a_resample_is_the_metric_over_the_drawn_models_queries():
    """Brute force: spell each resample out as the multiset of queries its drawn models bring, and average."""
    rng = np.random.default_rng(0)
    units = [f"m{i}" for i in range(6)]
    models = [units[i] for i in [0, 0, 0, 1, 2, 2, 4, 5]]  # m3 has no query
    record = {"model": models, "value": rng.random(len(models)).tolist()}
    counts = resample_counts(len(units), 50, seed=1)
    point, resampled = bootstrap_record(record, units, counts)
    assert point == pytest.approx(np.mean(record["value"]), rel=1e-15)
    for row, got in zip(counts, resampled):
        drawn = [v for m, v in zip(models, record["value"]) for _ in range(row[units.index(m)])]
        if drawn:
            assert got == pytest.approx(np.mean(drawn), rel=1e-12)
        else:
            assert math.isnan(got)
    with pytest.raises(ValueError, match="not test models"):
        bootstrap_record({"model": ["x"], "value": [1.0]}, units, counts)


def known_mean_record(n_models, seed):
    """Models whose 1-5 queries are hits with probability 0.3: the true mean is 0.3."""
    rng = np.random.default_rng(seed)
    models, values = [], []
    for m in range(n_models):
        for _ in range(rng.integers(1, 6)):
            models.append(m)
            values.append(float(rng.random() < 0.3))
    return {"model": models, "value": values}


def test_interval_holds_the_true_mean_and_narrows_with_more_models():
    widths = []
    for n in (30, 480):
        record = known_mean_record(n, seed=n)
        _, resampled = bootstrap_record(record, list(range(n)), resample_counts(n, 1000, seed=0))
        lo, hi = interval(resampled)
        assert lo < 0.3 < hi
        widths.append(hi - lo)
    assert widths[1] < 0.4 * widths[0]  # 16x the models: about a quarter of the width


def test_paired_bootstrap_of_a_run_against_itself_is_exactly_zero():
    counts = resample_counts(40, 300, seed=0)
    point, resampled = bootstrap_record(known_mean_record(40, seed=1), list(range(40)), counts)
    same = compare([point], resampled, [point], resampled)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["verdict"] == "not separable"
    # a run that is better on every query: A > B, and the other way round B > A
    better = known_mean_record(40, seed=1)
    better["value"] = [v + 0.2 for v in better["value"]]
    p_better, r_better = bootstrap_record(better, list(range(40)), counts)
    up = compare([p_better], r_better, [point], resampled)
    assert up["diff"] == pytest.approx(0.2) and up["verdict"] == "A > B"
    assert compare([point], resampled, [p_better], r_better)["verdict"] == "B > A"


def test_summarise_and_compare_pool_the_seeds_inside_each_resample():
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 200)), rng.random((3, 200))
    s = summarise([0.1, 0.2, 0.6], a)
    assert s["mean"] == pytest.approx(0.3) and s["sd"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    assert s["ci95"] == interval(a.mean(0)) and s["ci95_per_seed"][2] == interval(a[2])
    assert summarise([0.4], a[:1])["sd"] is None
    c = compare([0.5, 0.6, 0.7], a, [0.4], b[:1])  # a baseline (one value) against three seeds
    assert c["diff"] == pytest.approx(0.2)
    assert c["ci95"] == interval((a - b[:1]).mean(0)) and c["per_seed"][1]["ci95"] == interval(a[1] - b[0])


def fake_seed(shift, baseline):
    """One seed's records: two text2shape runs and a baseline (the same object every seed), one photo run."""
    units = [f"m{i}" for i in range(8)]
    q_models = [u for u in units for _ in range(2)]

    def record(values):
        return {"model": q_models, "value": list(values)}

    good = np.linspace(0.2, 1.0, 16)
    return {"text2shape": {"linear": {"text2image_R@1": record(good - 0.1 - shift), "text2image_mAP": record(good)},
                           "full": {"text2image_R@1": record(good + shift), "text2image_mAP": record(good)},
                           "colour_category": baseline},
            "photo2shape": {"stage2": {"photo2shape_R@1": {"model": units, "value": [0.5] * 8}}}}


def test_aggregate_seeds_on_fake_per_seed_outputs():
    units = [f"m{i}" for i in range(8)]
    baseline = {"text2image_R@1": {"model": [u for u in units for _ in range(2)], "value": [0.55] * 16}}
    per_seed = [fake_seed(0.0, baseline), fake_seed(0.05, baseline)]
    comparisons = [("text2shape", "linear", "full", ["text2image_R@1", "text2image_mAP"]),
                   ("text2shape", "full", "colour_category", ["text2image_R@1", "text2image_mAP"])]
    r = aggregate_seeds(per_seed, units, comparisons, n_resamples=200, seed=0)
    assert (r["n_seeds"], r["n_test_models"], r["n_resamples"]) == (2, 8, 200)
    full = r["runs"]["text2shape"]["full"]["text2image_R@1"]
    assert full["per_seed"] == pytest.approx([0.6, 0.65]) and full["mean"] == pytest.approx(0.625)
    assert full["sd"] == pytest.approx(np.std([0.6, 0.65], ddof=1))
    cc = r["runs"]["text2shape"]["colour_category"]["text2image_R@1"]
    assert cc["per_seed"] == [0.55, 0.55] and cc["sd"] == 0.0 and cc["ci95"] == [0.55, 0.55]
    assert r["runs"]["photo2shape"]["stage2"]["photo2shape_R@1"]["ci95"] == [0.5, 0.5]
    by = {(c["a"], c["b"], c["metric"]): c for c in r["comparisons"]}
    assert set(by) == {("linear", "full", "text2image_R@1"), ("linear", "full", "text2image_mAP"),
                       ("full", "colour_category", "text2image_R@1")}  # the baseline has no mAP: left out
    worse = by["linear", "full", "text2image_R@1"]
    assert worse["diff"] == pytest.approx(-0.15) and worse["verdict"] == "B > A"  # every query 0.1 + 2 shift lower
    assert [s["diff"] for s in worse["per_seed"]] == pytest.approx([-0.1, -0.2])
    tie = by["linear", "full", "text2image_mAP"]
    assert tie["diff"] == 0.0 and tie["ci95"] == [0.0, 0.0] and tie["verdict"] == "not separable"
    # the same resamples serve every run: the pooled run interval is the seeds' mean under those resamples
    counts = resample_counts(8, 200, seed=0)
    seeds = np.stack([bootstrap_record(s["text2shape"]["full"]["text2image_R@1"], units, counts)[1] for s in per_seed])
    assert full["ci95"] == interval(seeds.mean(0))


def test_a_family_on_other_data_is_resampled_over_its_own_units():
    """family_units: a family measured on another test split (the demo's composed retrieval) is bootstrapped over
    that split's models, exactly as if aggregated alone; the other families keep `units`."""
    units, other = [f"m{i}" for i in range(8)], [f"c{i}" for i in range(5)]
    composed = {"combiner": {"R@1": {"model": other, "value": [1.0, 0.0, 1.0, 1.0, 0.0]}},
                "image_only": {"R@1": {"model": other, "value": [0.0, 0.0, 1.0, 0.0, 0.0]}}}
    per_seed = [dict(fake_seed(0.0, None), composed=composed)]
    for s in per_seed:
        del s["text2shape"]["colour_category"]
    comparisons = [("text2shape", "linear", "full", ["text2image_R@1"]),
                   ("composed", "combiner", "image_only", ["R@1"])]
    r = aggregate_seeds(per_seed, units, comparisons, n_resamples=200, family_units={"composed": other})
    alone = aggregate_seeds([{"composed": composed}], other, comparisons[1:], n_resamples=200)
    assert r["runs"]["composed"] == alone["runs"]["composed"]
    assert [c for c in r["comparisons"] if c["family"] == "composed"] == alone["comparisons"]
    rest = aggregate_seeds([{k: v for k, v in s.items() if k != "composed"} for s in per_seed], units,
                           comparisons[:1], n_resamples=200)
    assert r["runs"]["text2shape"] == rest["runs"]["text2shape"]
    with pytest.raises(ValueError, match="not test models"):  # without family_units: the composed models are unknown
        aggregate_seeds(per_seed, units, comparisons, n_resamples=200)
