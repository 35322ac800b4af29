"""metrics/composed.py against brute force: every order of each tie group enumerated on tiny galleries, the reference
left out of its own query's candidates, CIRR's subsets, chance, and its submission lists."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from metrics.composed import benchmark_metrics, chance_metrics, cirr_submission, composed_metrics, ranked_ids


def brute_recall(scores, target, candidates, k):
    """P(target in the top k) over every order of `candidates` that sorts their scores descending."""
    hits = total = 0
    for order in itertools.permutations(candidates):
        if all(scores[a] >= scores[b] for a, b in zip(order, order[1:])):
            total += 1
            hits += target in order[:k]
    return hits / total


def tied_problem(seed, n_gallery=7, n_queries=6, dim=3):
    """Gallery rows are one-hot (so a query scores each exactly its own normalised entries: many exact ties),
    queries small non-negative integers; each query has a reference, a different target and a group."""
    g = torch.Generator().manual_seed(seed)
    gallery = F.one_hot(torch.randint(dim, (n_gallery,), generator=g), dim).float()
    queries = torch.randint(0, 3, (n_queries, dim), generator=g).float() + torch.eye(dim)[torch.arange(n_queries) % dim]
    ids = [f"m{j}" for j in range(n_gallery)]
    refs, targets, groups = [], [], []
    for _ in range(n_queries):
        ref, tgt = torch.randperm(n_gallery, generator=g)[:2].tolist()
        others = [j for j in torch.randperm(n_gallery, generator=g).tolist() if j not in (ref, tgt)][:3]
        refs.append(ids[ref])
        targets.append(ids[tgt])
        groups.append([ids[j] for j in [ref, tgt] + others])
    return queries, gallery, ids, targets, refs, groups


@pytest.mark.parametrize("seed", range(6))
def test_recall_and_subset_recall_match_every_tie_order(seed):
    queries, gallery, ids, targets, refs, groups = tied_problem(seed)
    got = composed_metrics(queries, gallery, ids, targets, refs, ks=(1, 2, 3, 5, 6), subset_ids=groups)
    q = F.normalize(queries.double(), dim=-1)
    for k in (1, 2, 3, 5, 6):
        want = []
        for i in range(len(q)):
            scores = {gid: math.fsum((q[i] * gallery[j].double()).tolist()) for j, gid in enumerate(ids)}
            want.append(brute_recall(scores, targets[i], [m for m in ids if m != refs[i]], k))
        assert got[f"R@{k}"] == pytest.approx(sum(want) / len(want), abs=1e-12), k
    for k in (1, 2, 3):
        want = []
        for i in range(len(q)):
            scores = {gid: math.fsum((q[i] * gallery[j].double()).tolist()) for j, gid in enumerate(ids)}
            want.append(brute_recall(scores, targets[i], [m for m in groups[i] if m != refs[i]], k))
        assert got[f"Rsubset@{k}"] == pytest.approx(sum(want) / len(want), abs=1e-12), k


def test_the_reference_is_no_candidate_unless_kept():
    """A query equal to its reference's embedding (the image_only baseline): with the reference kept it is always
    first, so R@1 is 0; left out, the target's own rank counts."""
    torch.manual_seed(0)
    gallery = torch.randn(8, 16)
    refs, targets = [0, 1, 2, 3], [4, 5, 6, 7]
    queries = gallery[refs] + 0.01 * torch.randn(4, 16)
    kept = composed_metrics(queries, gallery, list(range(8)), targets, None, ks=(1,))
    removed = composed_metrics(queries, gallery, list(range(8)), targets, refs, ks=(1, 7))
    assert kept["R@1"] == 0.0
    sims = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    sims[range(4), refs] = -math.inf
    assert removed["R@1"] == (sims.argmax(1) == torch.tensor(targets)).float().mean().item()
    assert removed["R@7"] == 1.0  # 7 candidates without the reference: the target is always among them


def test_bad_ids_are_named():
    gallery, queries = torch.randn(4, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match="target 'zz' is not in the gallery"):
        composed_metrics(queries, gallery, ["a", "b", "c", "d"], ["a", "zz"], ["b", "c"])
    with pytest.raises(ValueError, match="'a' appears twice"):
        composed_metrics(queries, gallery, ["a", "b", "c", "a"], ["a", "b"], ["b", "c"])
    with pytest.raises(ValueError, match="its target 'b' is its reference"):
        composed_metrics(queries, gallery, ["a", "b", "c", "d"], ["a", "b"], ["c", "b"])
    with pytest.raises(ValueError, match="target is not in its group"):
        composed_metrics(queries, gallery, list("abcd"), ["a", "b"], ["c", "c"], subset_ids=[["a", "c"], ["c", "d"]])


def test_chance_is_the_expected_recall_of_a_random_ranking():
    ids = [f"m{j}" for j in range(11)]
    groups = [ids[:4], ids[2:8]]
    m = chance_metrics(ids, ["m1", "m3"], ["m0", "m2"], ks=(1, 5, 10, 50), subset_ids=groups)
    for k in (1, 5, 10, 50):
        assert m[f"R@{k}"] == pytest.approx(min(k, 10) / 10)  # 10 candidates: every item but the reference
    for k in (1, 2, 3):  # groups of 3 and 5 without their references
        assert m[f"Rsubset@{k}"] == pytest.approx((min(k, 3) / 3 + min(k, 5) / 5) / 2)


def test_benchmark_metrics_means_over_sets():
    per = {"dress": {"R@10": 0.2, "R@50": 0.6}, "shirt": {"R@10": 0.4, "R@50": 0.7}}
    m = benchmark_metrics(per)
    assert m["dress/R@10"] == 0.2 and m["shirt/R@50"] == 0.7
    assert m["R@10"] == pytest.approx(0.3) and m["R@50"] == pytest.approx(0.65)
    assert m["mean_R@10_R@50"] == pytest.approx((0.3 + 0.65) / 2)
    one = benchmark_metrics({"": {"R@5": 0.5, "Rsubset@1": 0.25, "R@10": 0.6, "R@50": 1.0}})
    assert one["mean_R@5_Rsubset@1"] == pytest.approx(0.375) and "/" not in "".join(one)


def test_ranked_ids_and_cirr_submission_against_a_sort():
    torch.manual_seed(1)
    gallery, queries = torch.randn(9, 8), torch.randn(3, 8)
    ids = [f"img{j}" for j in range(9)]
    refs = ["img0", "img4", "img8"]
    groups = [["img0", "img1", "img2", "img3"], ["img4", "img5", "img6", "img7", "img0"], ["img8", "img2", "img3"]]
    ranked, subset = ranked_ids(queries, gallery, ids, refs, top=5, subset_ids=groups)
    sims = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    for i in range(3):
        order = [ids[j] for j in sims[i].argsort(descending=True).tolist() if ids[j] != refs[i]]
        assert ranked[i] == order[:5]
        assert subset[i] == [m for m in order if m in groups[i]][:3]
    sub = cirr_submission([7, 8, 9], subset, "recall_subset")
    assert sub["version"] == "rc2" and sub["metric"] == "recall_subset" and sub["8"] == subset[1]
    with pytest.raises(ValueError, match="recall_subset"):
        cirr_submission([7], ranked[:1], "recall@5")
