"""metrics.retrieval against brute-force references (python loops over the full similarity matrix; every order of
the tied items of small galleries) and sklearn.

Run: .venv/bin/python -m pytest -q tests/test_recall.py
"""
import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import metrics.retrieval
from metrics.retrieval import aggregate_views, compute_recall_at_k, evaluate_retrieval, retrieval_metrics, shape_gallery

KS = (1, 2, 5, 10)


# ----------------------------------------------------------------------------- brute-force references
def cosines(query, gallery):
    """float64 cosines, each a correctly rounded sum (math.fsum): equal vectors get bit-equal scores wherever they
    sit (a BLAS matrix product can round two equal columns differently, which would split a tie)."""

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.array([[math.sqrt(math.fsum(row * row))] for row in x])

    q, g = unit(query), unit(gallery)
    return np.array([[math.fsum(qi * gj) for gj in g] for qi in q])


def matched_queries(query, gallery, query_ids, gallery_ids):
    """(cosines, [(query row, is_match per gallery item)] of the queries with a match, number without one)."""
    sim = cosines(query, gallery)
    rows = [(i, [query_ids[i] == gallery_ids[j] for j in range(len(sim[i]))]) for i in range(len(sim))]
    ranked = [(i, m) for i, m in rows if any(m)]
    return sim, ranked, len(rows) - len(ranked)


def summarise(per_query, n_no_match, ks):
    """per_query: (P(first hit in top k) for each k, expected first-hit rank, expected AP), one per ranked query."""
    out = {f"R@{k}": statistics.mean(float(r[0][k]) for r in per_query) for k in ks}
    ranks = [float(r[1]) for r in per_query]
    out["mean_rank"] = statistics.mean(ranks)
    out["median_rank"] = statistics.median(ranks)
    out["mAP"] = statistics.mean(float(r[2]) for r in per_query)
    out["n_no_match"] = n_no_match
    out["ranks"] = ranks
    return out


def reference(query, gallery, query_ids, gallery_ids, ks=KS):
    """Plain loops over the float64 cosine matrix, tie group by tie group, in exact fractions. Ties count as a
    uniformly random order of each group: the first hit from the law of X (non-matches of the group placed before
    its first match), AP place by place. Checked against every order of small galleries in all_orders()."""
    sim, ranked, n_no_match = matched_queries(query, gallery, query_ids, gallery_ids)
    per_query = []
    for i, is_match in ranked:
        by_score = {}  # (items, matches) per distinct score
        for j, score in enumerate(sim[i].tolist()):
            n, m = by_score.get(score, (0, 0))
            by_score[score] = (n + 1, m + is_match[j])
        groups = [by_score[score] for score in sorted(by_score, reverse=True)]
        above = next(sum(n for n, _ in groups[:g]) for g, (_, m) in enumerate(groups) if m)
        n, m = next(group for group in groups if group[1])
        t = n - m
        p_x = [Fraction(math.comb(t + m - 1 - x, m - 1), math.comb(t + m, m)) for x in range(t + 1)]
        assert sum(p_x) == 1
        hit_within = {k: sum(p for x, p in enumerate(p_x) if above + 1 + x <= k) for k in ks}
        rank = sum((above + 1 + x) * p for x, p in enumerate(p_x))
        # place `above + place` of a group holds a match with probability m / n; then the group's other place - 1
        # places hold (place - 1)(m - 1)/(n - 1) matches on average
        precision_sum, items_above, matches_above = Fraction(0), 0, 0
        for n, m in groups:
            for place in range(1, n + 1):
                others = Fraction((place - 1) * (m - 1), n - 1) if n > 1 else 0
                precision_sum += Fraction(m, n) * (matches_above + 1 + others) / (items_above + place)
            items_above, matches_above = items_above + n, matches_above + m
        ap = precision_sum / sum(is_match)
        if len(set(sim[i].tolist())) == len(sim[i]):  # no ties at all: sklearn straight on the raw scores
            assert math.isclose(average_precision_score(is_match, sim[i]), ap, rel_tol=1e-9)
        per_query.append((hit_within, rank, ap))
    return summarise(per_query, n_no_match, ks)


def all_orders(query, gallery, query_ids, gallery_ids, ks=KS):
    """The expectation by brute force: every one of the N! orders of the gallery, sorted by score with a stable
    sort, so each order of each tie group comes up equally often. Small galleries only (N <= 7)."""
    sim, ranked, n_no_match = matched_queries(query, gallery, query_ids, gallery_ids)
    per_query = []
    for i, is_match in ranked:
        firsts, aps = [], []
        for perm in itertools.permutations(range(len(sim[i]))):
            order = sorted(perm, key=lambda j: -sim[i, j])
            hits = [place for place, j in enumerate(order, start=1) if is_match[j]]
            firsts.append(hits[0])
            aps.append(Fraction(sum(Fraction(h, place) for h, place in enumerate(hits, start=1)), len(hits)))
        hit_within = {k: Fraction(sum(f <= k for f in firsts), len(firsts)) for k in ks}
        per_query.append((hit_within, Fraction(sum(firsts), len(firsts)), sum(aps) / len(aps)))
    return summarise(per_query, n_no_match, ks)


def assert_same(got, want):
    assert [float(r) for r in got["ranks"]] == pytest.approx(want["ranks"], rel=1e-12)
    assert got["n_no_match"] == want["n_no_match"]
    for key in [f"R@{k}" for k in KS] + ["mean_rank", "median_rank", "mAP"]:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def check_both_ways(img, txt, img_ids, txt_ids, chunk_size):
    for q, g, qi, gi in ((img, txt, img_ids, txt_ids), (txt, img, txt_ids, img_ids)):
        assert_same(retrieval_metrics(q, g, qi, gi, ks=KS, chunk_size=chunk_size), reference(q, g, qi, gi))


@pytest.fixture(params=["compare", "sort"])
def path(request, monkeypatch):
    """Run each test through both ranking paths: one pass per match, and the sort of whole rows."""
    monkeypatch.setattr(metrics.retrieval, "_SORT_ABOVE_N_POS", 10**9 if request.param == "compare" else 0)
    return request.param


def gaussian(n, dim=64, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- against the reference
def test_duplicate_captions(path):
    # 30 models, one image each; 3 captions per model, the first two identical (same features, same id),
    # shuffled. The duplicates tie in the text gallery; images sit near their captions so ranks spread out.
    g = torch.Generator().manual_seed(1)
    n_models = 30
    txt = torch.randn(3 * n_models, 64, generator=g)
    txt[1::3] = txt[0::3]
    txt_ids = [m for m in range(n_models) for _ in range(3)]
    img = txt[0::3] + 1.5 * torch.randn(n_models, 64, generator=g)
    perm = torch.randperm(len(txt), generator=g)
    txt, txt_ids = txt[perm], [txt_ids[i] for i in perm.tolist()]
    check_both_ways(img, txt, list(range(n_models)), txt_ids, chunk_size=7)


def test_several_views_and_captions(path):
    # 25 models x 4 views, 25 models x 1..3 captions; image features near their model's text so recall is not ~0
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(25, 64, generator=g)
    img_ids = [m for m in range(25) for _ in range(4)]
    n_caps = torch.randint(1, 4, (25,), generator=g).tolist()
    txt_ids = [m for m in range(25) for _ in range(n_caps[m])]
    img = centres[img_ids] + 1.5 * torch.randn(len(img_ids), 64, generator=g)
    txt = centres[txt_ids] + 1.5 * torch.randn(len(txt_ids), 64, generator=g)
    check_both_ways(img, txt, img_ids, txt_ids, chunk_size=9)
    # the recall helper is the same numbers, both directions
    got = compute_recall_at_k(img, txt, image_ids=torch.tensor(img_ids), text_ids=np.array(txt_ids), ks=KS)
    i2t, t2i = reference(img, txt, img_ids, txt_ids), reference(txt, img, txt_ids, img_ids)
    assert set(got) == {f"{d}_R@{k}" for d in ("image2text", "text2image") for k in KS}
    for k in KS:
        assert got[f"image2text_R@{k}"] == pytest.approx(i2t[f"R@{k}"])
        assert got[f"text2image_R@{k}"] == pytest.approx(t2i[f"R@{k}"])
    assert 0 < i2t["R@1"] < 1  # the data is neither trivial nor hopeless


def test_no_ids_means_same_index(path):
    img, txt = gaussian(50, seed=6), gaussian(50, seed=7)
    txt = img + 2.0 * txt  # related pairs, not perfect
    got = compute_recall_at_k(img, txt, ks=KS)
    ids = list(range(50))
    for k in KS:
        assert got[f"image2text_R@{k}"] == pytest.approx(reference(img, txt, ids, ids)[f"R@{k}"])
        assert got[f"text2image_R@{k}"] == pytest.approx(reference(txt, img, ids, ids)[f"R@{k}"])
    assert set(got.values()) != {1.0}
    with pytest.raises(ValueError, match="image i matches text i"):
        compute_recall_at_k(img, txt[:40])
    with pytest.raises(ValueError, match="both"):
        compute_recall_at_k(img, txt, image_ids=ids)


def test_string_ids_and_queries_without_match(path):
    names = [f"{c}/IKEA_{n}_{v}" for c in ("chair", "sofa", "table") for n in ("POANG", "EKTORP") for v in (1, 2)]
    g = torch.Generator().manual_seed(8)
    img_ids = [names[i] for i in torch.randint(0, len(names), (40,), generator=g).tolist()]
    txt_ids = [n for n in names[:-2] for _ in range(2)]  # the last two models have no caption
    img, txt = torch.randn(40, 32, generator=g), torch.randn(len(txt_ids), 32, generator=g)
    want = reference(img, txt, img_ids, txt_ids)
    assert want["n_no_match"] > 0
    got = retrieval_metrics(img, txt, img_ids, txt_ids, ks=KS, chunk_size=6)
    assert_same(got, want)
    assert got["matched"].tolist() == [i in txt_ids for i in img_ids]
    check_both_ways(img, txt, img_ids, txt_ids, chunk_size=5)


def sparse_signs(n, g):
    """Entries +-0.5 on 4 of 16 dims: unit vectors whose cosines are exact multiples of 1/4 in float32 and float64,
    so ties between matches and non-matches are real (not float noise) and the same in the references."""
    x = torch.zeros(n, 16)
    for row in x:
        row[torch.randperm(16, generator=g)[:4]] = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
    return x * 0.5


def test_exact_ties_everywhere(path):
    g = torch.Generator().manual_seed(9)
    img, txt = sparse_signs(30, g), sparse_signs(60, g)
    img_ids = torch.randint(0, 12, (30,), generator=g).tolist()
    txt_ids = torch.randint(0, 12, (60,), generator=g).tolist()
    check_both_ways(img, txt, img_ids, txt_ids, chunk_size=4)


# ----------------------------------------------------------------------------- ties count at chance
def test_identical_embeddings_score_chance_with_one_match(path):
    # a collapsed model: one vector for everything, so every score ties. With one match among N, the first hit
    # is equally likely at each rank: R@k = k / N, mean rank (N + 1) / 2, mAP = mean of 1 / rank = H(N) / N.
    # The vector is exact in float32 (entries +-0.5), so every cosine is exactly 1 whatever the matmul kernel.
    for n, chunk_size in ((7, 3), (3000, 512)):
        same = torch.tensor([[0.5, -0.5, 0.5, 0.5]]).repeat(n, 1)
        got = retrieval_metrics(same, same, torch.arange(n), torch.arange(n), ks=KS, chunk_size=chunk_size)
        for k in KS:
            assert got[f"R@{k}"] == pytest.approx(min(k, n) / n, rel=1e-9), k
        assert got["mean_rank"] == got["median_rank"] == pytest.approx((n + 1) / 2, rel=1e-12)
        assert got["mAP"] == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n, rel=1e-9)
    want = all_orders(same[:7], same[:7], list(range(7)), list(range(7)))
    assert_same(retrieval_metrics(same[:7], same[:7], list(range(7)), list(range(7)), ks=KS), want)
    assert want["R@1"] == pytest.approx(1 / 7) and want["mAP"] == pytest.approx(sum(1 / r for r in range(1, 8)) / 7)


def test_identical_embeddings_score_chance_with_several_matches(path):
    # gallery of 7 with 3, 2, 1 and 1 items per id; a query of id 4 has no match. The expectation over all 7!
    # orders: with m matches among 7, R@1 = m / 7 and the first hit's mean rank is (7 + 1) / (m + 1).
    same = torch.tensor([[0.5, 0.5, -0.5, 0.5]]).repeat(7, 1)
    gallery_ids, query_ids = [0, 0, 0, 1, 1, 2, 3], [0, 1, 2, 3, 4]
    want = all_orders(same[:5], same, query_ids, gallery_ids)
    assert want["n_no_match"] == 1 and want["R@1"] == pytest.approx((3 / 7 + 2 / 7 + 1 / 7 + 1 / 7) / 4)
    assert want["ranks"] == pytest.approx([8 / 4, 8 / 3, 8 / 2, 8 / 2])
    got = retrieval_metrics(same[:5], same, query_ids, gallery_ids, ks=KS, chunk_size=2)
    assert_same(got, want)
    assert_same(got, reference(same[:5], same, query_ids, gallery_ids))
    # both directions and the category level, as evaluate_retrieval reports them: chance too
    out = evaluate_retrieval(same, gallery_ids, same[:5], query_ids, ks=(1,), views="per_view")
    assert out["text2image_R@1"] == pytest.approx(want["R@1"]) and out["text2image_mAP"] == pytest.approx(want["mAP"])


def test_partial_ties_against_every_order(path):
    # a few distinct scores per row, some shared by matches and non-matches: the metrics are the expectation over
    # all orders of the gallery (7! here), and the loop reference used by the other tests agrees with it
    for seed in (20, 21, 22):
        g = torch.Generator().manual_seed(seed)
        img, txt = sparse_signs(6, g), sparse_signs(7, g)
        img_ids = torch.randint(0, 3, (6,), generator=g).tolist()
        txt_ids = torch.randint(0, 3, (7,), generator=g).tolist()
        sim = cosines(img, txt)
        mixed_ties = sum(
            len({txt_ids[j] == img_ids[i] for j in range(7) if sim[i, j] == sim[i, j2]}) == 2
            for i in range(6) for j2 in range(7)
        )
        assert mixed_ties > 0, "the data must tie matches with non-matches"
        for q, gal, qi, gi in ((img, txt, img_ids, txt_ids), (txt, img, txt_ids, img_ids)):
            want = all_orders(q, gal, qi, gi)
            assert_same(reference(q, gal, qi, gi), want)
            for chunk_size in (1, 4096):
                assert_same(retrieval_metrics(q, gal, qi, gi, ks=KS, chunk_size=chunk_size), want)


def test_a_few_tied_queries_in_a_block(path):
    # 40 queries in one block, 60 gallery items of 30 ids; three items copied under another id, so only the queries
    # of those three ids (a few rows of the block) see a match tied with a non-match
    g = torch.Generator().manual_seed(23)
    gallery, gallery_ids = torch.randn(60, 16, generator=g), [i % 30 for i in range(60)]
    gallery = torch.cat([gallery, gallery[[0, 1, 2]]])
    gallery_ids += [3, 4, 5]  # copies of items of ids 0, 1, 2
    query_ids = torch.randint(0, 30, (40,), generator=g).tolist()
    query = gallery[query_ids] + 1.0 * torch.randn(40, 16, generator=g)
    want = reference(query, gallery, query_ids, gallery_ids)
    tied_rows = sum(i in (0, 1, 2, 3, 4, 5) for i in query_ids)
    assert 0 < tied_rows < 40 // 8
    assert_same(retrieval_metrics(query, gallery, query_ids, gallery_ids, ks=KS), want)


def test_ties_far_down_the_ranking(path):
    # a gallery of 400 whose first ten items have a copy under another id, and queries pointing away from their
    # match: the match ties with a non-match hundreds of places down, where the expected precision is computed
    # differently (H's series instead of digammas)
    g = torch.Generator().manual_seed(24)
    gallery = torch.randn(400, 16, generator=g)
    gallery = torch.cat([gallery, gallery[:10]])
    gallery_ids = list(range(400)) + list(range(400, 410))
    query_ids = list(range(10)) + list(range(400, 410))
    query = -gallery[list(range(10)) + list(range(400, 410))] + 0.5 * torch.randn(20, 16, generator=g)
    got = retrieval_metrics(query, gallery, query_ids, gallery_ids, ks=KS, chunk_size=8)
    assert got["ranks"].min() > 100  # the tied groups sit below 100 others
    assert_same(got, reference(query, gallery, query_ids, gallery_ids))


def test_category_level_many_matches(path):
    # thousands of matches per query is the sort path's job by default; both paths must agree with the reference
    g = torch.Generator().manual_seed(10)
    img, txt = torch.randn(60, 16, generator=g), torch.randn(200, 16, generator=g)
    cats = ["bed", "chair", "sofa"]
    img_c = [cats[i] for i in torch.randint(0, 3, (60,), generator=g).tolist()]
    txt_c = [cats[i] for i in torch.randint(0, 3, (200,), generator=g).tolist()]
    check_both_ways(img, txt, img_c, txt_c, chunk_size=16)


def test_chunk_size_and_scale_do_not_change_results(path):
    img, txt = gaussian(70, seed=11), gaussian(70, seed=12) + gaussian(70, seed=11)
    ids = torch.arange(70) // 2
    base = retrieval_metrics(img, txt, ids, ids, ks=KS)
    scale = torch.rand(70, 1, generator=torch.Generator().manual_seed(13)) * 100 + 0.01
    for chunk_size, q in ((1, img), (13, img * scale), (4096, img.double() * 7)):
        got = retrieval_metrics(q, txt, ids, ids, ks=KS, chunk_size=chunk_size)
        assert got["ranks"].tolist() == base["ranks"].tolist()
        for key in [f"R@{k}" for k in KS] + ["mean_rank", "median_rank", "mAP"]:
            assert got[key] == pytest.approx(base[key], rel=1e-12)


# ----------------------------------------------------------------------------- one right text per image
def index_recall(image_features, text_features, k):
    """A loop where text i is the only right answer for image i (pairs listed row by row)."""
    sim = image_features @ text_features.T
    n = len(sim)
    return sum(i in sim[i].topk(k).indices for i in range(n)) / n


def test_index_pairing_undercounts_several_captions():
    # one model A with two captions, one model B with one; the pairs are (view A, caption A1), (view A, caption A2),
    # (view B, caption B). View A is closest to caption A2, so "text 0 for image 0" misses at k=1.
    view_a, view_b = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    cap_a1, cap_a2, cap_b = [0.6, 0.0, 0.8], [0.8, 0.0, 0.6], [0.0, 1.0, 0.0]
    images = torch.tensor([view_a, view_a, view_b])
    texts = torch.tensor([cap_a1, cap_a2, cap_b])
    by_index = index_recall(images, texts, k=1)
    assert by_index == pytest.approx(2 / 3)  # image 0 "misses": caption A2 beat caption A1
    right = compute_recall_at_k(images, texts, image_ids=["A", "A", "B"], text_ids=["A", "A", "B"], ks=(1,))
    assert right["image2text_R@1"] == 1.0 and right["text2image_R@1"] == 1.0
    assert by_index < right["image2text_R@1"]


# ----------------------------------------------------------------------------- aggregate_views / evaluate_retrieval
def test_aggregate_views_against_manual():
    feats = gaussian(7, dim=8, seed=14) * torch.arange(1, 8).float()[:, None]  # unequal norms
    ids = ["b", "a", "b", "c", "a", "b", "c"]
    unit = [f / f.norm() for f in feats]
    for how in ("mean", "max"):
        agg, unique = aggregate_views(feats, ids, how=how)
        assert unique == ["b", "a", "c"]
        for row, model in zip(agg, unique):
            views = torch.stack([u for u, i in zip(unit, ids) if i == model])
            manual = views.mean(0) if how == "mean" else views.max(0).values
            torch.testing.assert_close(row, manual / manual.norm())
    with pytest.raises(ValueError, match="mean, max"):
        aggregate_views(feats, ids, how="median")
    with pytest.raises(ValueError, match="6 ids for 7"):
        aggregate_views(feats, ids[:6])


def test_shape_gallery_pools_or_keeps_views():
    feats = gaussian(6, dim=8, seed=18) * 3
    models = torch.tensor([2, 0, 2, 1, 0, 2])
    pooled, ids = shape_gallery(feats, models)
    want, want_ids = aggregate_views(feats, [2, 0, 2, 1, 0, 2])
    assert ids == want_ids == [2, 0, 1] and torch.equal(pooled, want)
    kept, ids = shape_gallery(feats, models, views="per_view")
    assert ids == models.tolist()
    torch.testing.assert_close(kept, feats / feats.norm(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="mean, max, per_view"):
        shape_gallery(feats, models, views="sum")
    with pytest.raises(ValueError, match="view_models: 5 ids for 6"):
        shape_gallery(feats, models[:5])


def test_evaluate_retrieval_keys_and_values():
    g = torch.Generator().manual_seed(15)
    img_ids = [m for m in range(12) for _ in range(3)]  # 12 models x 3 views
    txt_ids = [m for m in range(12) for _ in range(2)]  # 2 captions each
    cat_of = {m: ("chair", "sofa", "bed")[m % 3] for m in range(12)}
    img, txt = torch.randn(36, 16, generator=g), torch.randn(24, 16, generator=g)
    img_c, txt_c = [cat_of[m] for m in img_ids], [cat_of[m] for m in txt_ids]

    out = evaluate_retrieval(img, img_ids, txt, txt_ids, img_c, txt_c, ks=(1, 5), views="mean")
    shape, models = aggregate_views(img, img_ids, "mean")
    assert models == list(range(12))
    for prefix, i_ids, t_ids in (("", models, txt_ids), ("category/", [cat_of[m] for m in models], txt_c)):
        for d, q, gal, qi, gi in (("image2text", shape, txt, i_ids, t_ids), ("text2image", txt, shape, t_ids, i_ids)):
            want = reference(q, gal, qi, gi, ks=(1, 5))
            for key in ("R@1", "R@5", "mAP", "mean_rank", "median_rank", "n_no_match"):
                assert out[f"{prefix}{d}_{key}"] == pytest.approx(want[key]), f"{prefix}{d}_{key}"
    assert all(not torch.is_tensor(v) for v in out.values())

    per_view = evaluate_retrieval(img, img_ids, txt, txt_ids, ks=(1,), views="per_view")
    assert per_view["image2text_R@1"] == pytest.approx(reference(img, txt, img_ids, txt_ids, ks=(1,))["R@1"])
    assert not any(k.startswith("category/") for k in per_view)
    with pytest.raises(ValueError, match="per_view"):
        evaluate_retrieval(img, img_ids, txt, txt_ids, views="sum")
    bad = list(img_c)
    bad[1] = "bed" if bad[0] != "bed" else "sofa"
    with pytest.raises(ValueError, match="two categories"):
        evaluate_retrieval(img, img_ids, txt, txt_ids, bad, txt_c)


def test_no_match_at_all_and_bad_input():
    q, g = gaussian(5, seed=16), gaussian(4, seed=17)
    out = retrieval_metrics(q, g, ["x"] * 5, ["y"] * 4)
    assert out["n_no_match"] == 5 and len(out["ranks"]) == 0 and math.isnan(out["R@1"]) and math.isnan(out["mAP"])
    with pytest.raises(ValueError, match="gallery_ids: 3 ids for 4"):
        retrieval_metrics(q, g, list(range(5)), [0, 1, 2])
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(q, gaussian(4, dim=8), list(range(5)), list(range(4)))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(q * float("nan"), g, list(range(5)), list(range(4)))
