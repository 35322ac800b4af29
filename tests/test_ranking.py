"""metrics.ranking (Text2Shape's RR@k and NDCG@k) against every order of the tied items of small galleries, and
against sklearn.metrics.ndcg_score.

Run: .venv/bin/python -m pytest -q tests/test_ranking.py
"""
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

import metrics.ranking
from metrics.ranking import expected_ndcg, rr_ndcg_metrics

KS = (1, 2, 3, 5, 10)


def four_hot(rng, n, dim=8):
    """Rows with exactly four ones: unit rows of entries 1/2, so every cosine is a multiple of 1/4, exact in float32
    and float64 alike, and equal counts of shared ones tie bit for bit in any summation order."""
    x = np.zeros((n, dim))
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = 1
    return x


def all_orders(query, gallery, query_ids, gallery_ids, ks=KS):
    """The expectation by brute force: each of the N! orders of the gallery, stably sorted by score, so every order
    of every tie group comes up equally often; RR@k and NDCG@k of each ranking as Text2Shape computes them, averaged
    over the orders, then over the queries with a relevant item. Small galleries only (N <= 7)."""
    sim = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    per_query = []
    for i in range(len(query)):
        relevant = [query_ids[i] == gid for gid in gallery_ids]
        if not any(relevant):
            continue
        ideal = {k: math.fsum(1 / math.log2(r + 1) for r in range(1, min(sum(relevant), k) + 1)) for k in ks}
        rr, ndcg = {k: [] for k in ks}, {k: [] for k in ks}
        for perm in itertools.permutations(range(len(gallery))):
            ranking = sorted(perm, key=lambda j: -sim[i, j])
            for k in ks:
                top = [relevant[j] for j in ranking[:k]]
                rr[k].append(any(top))
                ndcg[k].append(math.fsum(rel / math.log2(r + 1) for r, rel in enumerate(top, start=1)) / ideal[k])
        per_query.append({k: (sum(rr[k]) / len(rr[k]), math.fsum(ndcg[k]) / len(ndcg[k])) for k in ks})
    out = {f"RR@{k}": np.mean([q[k][0] for q in per_query]) for k in ks}
    out.update({f"NDCG@{k}": np.mean([q[k][1] for q in per_query]) for k in ks})
    return out


def assert_close(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("seed", range(3))
def test_ties_against_every_order(seed):
    """Shape -> text (several relevant captions per shape) and text -> shape, with many tied scores."""
    rng = np.random.default_rng(seed)
    shapes, texts = four_hot(rng, 4), four_hot(rng, 7)
    shape_ids, text_ids = [0, 1, 2, 3], [0, 0, 0, 1, 1, 2, 5]  # shape 3 has no caption, text 6 no shape
    for q, g, qi, gi in ((shapes, texts, shape_ids, text_ids), (texts, shapes, text_ids, shape_ids)):
        sim = q @ g.T
        assert any(len(set(row)) < len(row) for row in sim.tolist())  # ties are there to be handled
        assert_close(rr_ndcg_metrics(q, g, qi, gi, ks=KS), all_orders(q, g, qi, gi))


def test_collapsed_model_scores_chance():
    """Every score tied: E[DCG@k] = R / N * (the first min(k, N) discounts), with R relevant items among N."""
    n, ids = 6, [0, 0, 1, 2, 2, 2]
    got = rr_ndcg_metrics(np.ones((3, 4)), np.ones((n, 4)), [0, 1, 2], ids, ks=KS)
    for k in KS:
        per_query = []
        for r in (2, 1, 3):
            discounts = [1 / math.log2(p + 1) for p in range(1, min(k, n) + 1)]
            per_query.append(r / n * sum(discounts) / sum(discounts[: min(r, k)]))
        assert got[f"NDCG@{k}"] == pytest.approx(np.mean(per_query), rel=1e-12)
        want_rr = np.mean([1 - math.comb(n - r, min(k, n)) / math.comb(n, min(k, n)) for r in (2, 1, 3)])
        assert got[f"RR@{k}"] == pytest.approx(want_rr, rel=1e-12)
    assert got["NDCG@10"] < 1 and got["RR@1"] < 1


@pytest.mark.parametrize("relevance", ["one", "several"])
def test_ndcg_against_sklearn(relevance):
    """Without ties (random real-valued features) sklearn's ndcg_score on the same float32 scores is the reference;
    k beyond the gallery size included."""
    torch.manual_seed(0)
    q, g = torch.randn(30, 16), torch.randn(12, 16)
    g_ids = list(range(12)) if relevance == "one" else [i % 4 for i in range(12)]
    q_ids = [i % 12 if relevance == "one" else i % 4 for i in range(30)]
    q_ids[5] = 99  # a query without a relevant item: left out, as retrieval_metrics leaves it out
    scores = (torch.nn.functional.normalize(q) @ torch.nn.functional.normalize(g).T).numpy()
    assert all(len(set(row)) == len(row) for row in scores.tolist())
    keep = [i for i in range(30) if q_ids[i] != 99]
    y_true = np.array([[q_ids[i] == gid for gid in g_ids] for i in keep], dtype=float)
    got = rr_ndcg_metrics(q, g, q_ids, g_ids, ks=(1, 3, 5, 20))
    for k in (1, 3, 5, 20):
        assert got[f"NDCG@{k}"] == pytest.approx(ndcg_score(y_true, scores[keep], k=k), rel=1e-9)
        hits = [y_true[r][np.argsort(-scores[i])[:k]].any() for r, i in enumerate(keep)]
        assert got[f"RR@{k}"] == pytest.approx(np.mean(hits), rel=1e-12)
    assert got["NDCG@20"] < 1 and got["NDCG@1"] > 0  # neither saturated nor empty: a wrong ranking would show


def test_ndcg_with_ties_against_sklearn_tie_averaging():
    """sklearn's ndcg_score (ignore_ties=False) averages the gains of each tie group (McSherry & Najork 2008), which
    equals the expected DCG: a second reference for larger tied galleries than every order can cover."""
    rng = np.random.default_rng(3)
    q, g = four_hot(rng, 20), four_hot(rng, 30)
    q_ids, g_ids = rng.integers(0, 4, 20).tolist(), rng.integers(0, 4, 30).tolist()
    scores = (q / 2) @ (g / 2).T
    y_true = np.array([[qi == gi for gi in g_ids] for qi in q_ids], dtype=float)
    assert y_true.any(1).all()
    got = expected_ndcg(q, g, q_ids, g_ids, KS)
    for k in KS:
        assert got[k].numpy() == pytest.approx([ndcg_score(t[None], s[None], k=k) for t, s in zip(y_true, scores)],
                                               rel=1e-12)


def test_blocks_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(7)
    q, g = four_hot(rng, 25, dim=9), four_hot(rng, 40, dim=9)
    q_ids, g_ids = rng.integers(0, 8, 25).tolist(), rng.integers(0, 8, 40).tolist()
    whole = expected_ndcg(q, g, q_ids, g_ids, KS)
    monkeypatch.setattr(metrics.ranking, "_MAX_BLOCK_ELEMENTS", 3 * 40)  # blocks of 3 queries
    blocked = expected_ndcg(q, g, q_ids, g_ids, KS)
    for k in KS:
        assert torch.equal(whole[k], blocked[k])
        assert ((whole[k] >= 0) & (whole[k] <= 1 + 1e-12)).all()


def test_no_relevant_item_anywhere():
    got = rr_ndcg_metrics(np.eye(3), np.eye(3), [0, 1, 2], [5, 6, 7], ks=(1, 5))
    assert all(math.isnan(v) for v in got.values()) and set(got) == {"RR@1", "RR@5", "NDCG@1", "NDCG@5"}
    with pytest.raises(ValueError):
        rr_ndcg_metrics(np.eye(3), np.eye(3), [0, 1, 2], [0, 1, 2], ks=(0,))


def test_both_directions_and_chance_keys():
    """eval_recall's "ndcg" entry: each direction of a shape gallery and its captions, and the chance level (one
    relevant shape among N for a text: E[1 / log2(place + 1)] over the top k of N random places)."""
    rng = np.random.default_rng(1)
    shapes, texts = rng.normal(size=(5, 6)), rng.normal(size=(12, 6))
    shape_ids, text_ids = list(range(5)), [i % 5 for i in range(12)]
    got = metrics.ranking.ndcg_both_directions(shapes, shape_ids, texts, text_ids, ks=(1, 5))
    directions = ("text2image", "image2text")
    assert set(got) == {f"{d}_{c}NDCG@{k}" for d in directions for c in ("", "chance_") for k in (1, 5)}
    assert got["text2image_NDCG@5"] == rr_ndcg_metrics(texts, shapes, text_ids, shape_ids, ks=(5,))["NDCG@5"]
    assert got["image2text_NDCG@1"] == rr_ndcg_metrics(shapes, texts, shape_ids, text_ids, ks=(1,))["NDCG@1"]
    assert got["text2image_chance_NDCG@5"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 6)) / 5)
    assert got["image2text_chance_NDCG@1"] == pytest.approx(12 / 5 / 12)  # 2 or 3 relevant captions among 12
