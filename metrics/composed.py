"""Composed retrieval metrics: a query (a reference and a modification text, already combined into one vector) and
its one target in a gallery.

    m = composed_metrics(queries, gallery, gallery_ids, target_ids, reference_ids, subset_ids=members)
    # -> {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"}
    per = composed_per_query(queries, gallery, gallery_ids, target_ids, reference_ids, subset_ids=members)
    # -> the same keys, each query's value (composed_metrics is their mean; metrics/per_query.py takes them)
    benchmark_metrics({"dress": m1, "shirt": m2, "toptee": m3})   # FashionIQ: per garment, their mean, the means
    ranked_ids(queries, gallery, gallery_ids, reference_ids, subset_ids=members)   # CIRR's test-server submission

The reference is removed from its own query's candidates (CIRR's protocol: the reference is never the answer), so
a query ranks the other N - 1 gallery items; reference_ids=None keeps it (FashionIQ's protocol, as CLIP4Cir and
FashionIQ's own evaluation score it). Rsubset@k ranks only the query's group (CIRR's img_set members, without the
reference). Ties count as metrics/retrieval.py counts them: every number is its expectation under a random order
of each group of equal scores, so a collapsed model scores chance (chance_metrics is exactly that).
"""
import math

import torch

from metrics.retrieval import _first_hit_within, _id_list, _normalise

KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
COLUMNS = tuple(f"R@{k}" for k in KS) + tuple(f"Rsubset@{k}" for k in SUBSET_KS)  # composed_metrics' keys
# the rows eval_composed.composed_report scores: the shortcut baselines, then the trained models
ROWS = ("image_only", "text_only", "sum_zero_shot", "stage1_sum", "combiner", "moe_combiner")
# what picks best.pt: CLIP4Cir's "mean(R@5 + R_s@1)" for CIRR (and the toy set), its "average_recall" for FashionIQ
SELECT_METRICS = ("mean_R@5_Rsubset@1", "mean_R@10_R@50")


def _gallery_index(gallery_ids, n):
    ids = _id_list(gallery_ids, n, "gallery_ids")
    index = {}
    for j, i in enumerate(ids):
        if index.setdefault(i, j) != j:
            raise ValueError(f"gallery_ids: {i!r} appears twice (rows {index[i]} and {j}); a gallery item is one row")
    return index


def _positions(ids, index, n, name, allow_missing=False):
    """Gallery rows of one id per query; -1 where allowed to be missing, else a ValueError naming the id."""
    out = []
    for q, i in enumerate(_id_list(ids, n, name)):
        if i not in index and not allow_missing:
            raise ValueError(f"{name}: query {q}'s {name[:-4]} {i!r} is not in the gallery")
        out.append(index.get(i, -1))
    return torch.tensor(out, dtype=torch.long)


def _subset_rows(subset_ids, index, targets, references, n):
    """(gallery rows [n, M] of each query's group without its reference, valid mask [n, M])."""
    if len(subset_ids) != n:
        raise ValueError(f"subset_ids: {len(subset_ids)} groups for {n} queries")
    rows = []
    for q, members in enumerate(subset_ids):
        missing = [m for m in members if m not in index]
        if missing:
            raise ValueError(f"subset_ids: query {q}'s group member {missing[0]!r} is not in the gallery")
        r = [index[m] for m in dict.fromkeys(members) if index[m] != int(references[q])]
        if int(targets[q]) not in r:
            raise ValueError(f"subset_ids: query {q}'s target is not in its group {list(members)}")
        rows.append(r)
    width = max(len(r) for r in rows)
    valid = torch.tensor([[j < len(r) for j in range(width)] for r in rows], dtype=torch.bool)
    padded = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)
    return padded, valid


def composed_metrics(query_features, gallery_features, gallery_ids, target_ids, reference_ids, ks=KS,
                     subset_ids=None, chunk_size=1024):
    """{"R@k"} over the gallery without each query's reference, and with subset_ids (per query, the gallery ids
    of its group) {"Rsubset@1", "Rsubset@2", "Rsubset@3"} over the group without the reference.

    target_ids: one gallery id per query; a target missing from the gallery (or equal to its reference) is a
    ValueError naming it. reference_ids: one id per query (a reference not in the gallery excludes nothing), or
    None to keep every gallery item a candidate."""
    return query_means(composed_per_query(query_features, gallery_features, gallery_ids, target_ids, reference_ids,
                                          ks, subset_ids, chunk_size))


def query_means(per_query):
    """composed_metrics from composed_per_query's values: each key's mean over the queries."""
    return {k: v.mean().item() for k, v in per_query.items()}


def composed_per_query(query_features, gallery_features, gallery_ids, target_ids, reference_ids, ks=KS,
                       subset_ids=None, chunk_size=1024):
    """composed_metrics' keys, each a float64 tensor in query order: the query's expected hit of its target in the
    top k (fair ties) before the mean over queries is taken. Arguments as composed_metrics'."""
    q = _normalise(query_features, "query_features")
    g = _normalise(gallery_features, "gallery_features", device=q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_features have dim {q.shape[1]} but gallery_features have dim {g.shape[1]}")
    n = q.shape[0]
    index = _gallery_index(gallery_ids, g.shape[0])
    targets = _positions(target_ids, index, n, "target_ids")
    if reference_ids is None:
        references = torch.full((n,), -1, dtype=torch.long)
    else:
        references = _positions(reference_ids, index, n, "reference_ids", allow_missing=True)
        same = (references == targets).nonzero().flatten()
        if len(same):
            raise ValueError(f"query {int(same[0])}: its target {_id_list(target_ids, n, 'target_ids')[same[0]]!r} is "
                             f"its reference, which the protocol removes from its candidates")
    subset = None if subset_ids is None else _subset_rows(subset_ids, index, targets, references, n)
    first, first_subset = [], []
    for block in torch.arange(n).split(chunk_size):
        sims = q[block] @ g.T
        target_score = sims.gather(1, targets[block, None].to(q.device))
        if subset is not None:
            rows, valid = (x[block].to(q.device) for x in subset)
            member = sims.gather(1, rows)
            first_subset.append(_tie_group(member, target_score, valid))
        has_ref = references[block] >= 0
        sims[has_ref.nonzero().flatten().to(q.device), references[block][has_ref].to(q.device)] = -math.inf
        first.append(_tie_group(sims, target_score))
    hit = _first_hit_within(ks, torch.cat(first).cpu())
    out = {f"R@{k}": hit[k] for k in ks}
    if subset is not None:
        hit = _first_hit_within(SUBSET_KS, torch.cat(first_subset).cpu())
        out.update({f"Rsubset@{k}": hit[k] for k in SUBSET_KS})
    return out


def _tie_group(scores, target_score, valid=None):
    """Rows (candidates scoring strictly higher, other candidates scoring the same, 1): the target's tie group in
    the form metrics.retrieval's R@k expects (one match per query)."""
    above, equal = scores > target_score, scores == target_score
    if valid is not None:
        above, equal = above & valid, equal & valid
    ones = torch.ones(len(scores), dtype=torch.long, device=scores.device)
    return torch.stack([above.sum(1), equal.sum(1) - 1, ones], 1)  # the target itself is in `equal`


def chance_metrics(gallery_ids, target_ids, reference_ids, ks=KS, subset_ids=None):
    """composed_metrics of a random ranking: every query and item the same vector, so every score ties."""
    n, n_gallery = len(target_ids), len(gallery_ids)
    return composed_metrics(torch.ones(n, 1), torch.ones(n_gallery, 1), gallery_ids, target_ids, reference_ids, ks,
                            subset_ids)


def benchmark_metrics(per_set):
    """The metrics of a benchmark from those of its sets ({name: composed_metrics}): one set ("") as it is; several
    (FashionIQ's garments) as "<name>/<key>" for each and their mean under the plain key. Then the means that
    select a checkpoint: mean_R@5_Rsubset@1 (CIRR) and mean_R@10_R@50 (FashionIQ) where their keys exist."""
    if list(per_set) == [""]:
        out = dict(per_set[""])
    else:
        out = {f"{name}/{k}": v for name, m in per_set.items() for k, v in m.items()}
        for k in per_set[next(iter(per_set))]:
            out[k] = sum(m[k] for m in per_set.values()) / len(per_set)
    if "R@5" in out and "Rsubset@1" in out:
        out["mean_R@5_Rsubset@1"] = (out["R@5"] + out["Rsubset@1"]) / 2
    if "R@10" in out and "R@50" in out:
        out["mean_R@10_R@50"] = (out["R@10"] + out["R@50"]) / 2
    return out


def ranked_ids(query_features, gallery_features, gallery_ids, reference_ids, top=50, subset_ids=None, subset_top=3):
    """(per query the `top` best gallery ids without its reference, and with subset_ids the `subset_top` best
    members of its group without the reference, else None). Equal scores keep gallery order."""
    q = _normalise(query_features, "query_features")
    g = _normalise(gallery_features, "gallery_features", device=q.device)
    ids = _id_list(gallery_ids, g.shape[0], "gallery_ids")
    index = _gallery_index(ids, len(ids))
    refs = _id_list(reference_ids, q.shape[0], "reference_ids")
    ranked, ranked_subset = [], [] if subset_ids is not None else None
    for block in torch.arange(q.shape[0]).split(1024):
        sims = (q[block] @ g.T).cpu()
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, : top + 1]
        for row, (local, qi) in enumerate(zip(order.tolist(), block.tolist())):
            ranked.append([ids[j] for j in local if ids[j] != refs[qi]][:top])
            if subset_ids is not None:
                members = sorted({index[m] for m in subset_ids[qi] if m in index and m != refs[qi]})
                best = torch.sort(sims[row, members], descending=True, stable=True).indices[:subset_top]
                ranked_subset.append([ids[members[j]] for j in best.tolist()])
    return ranked, ranked_subset


def cirr_submission(pairids, ranked, metric):
    """CIRR's test-server file: {"version": "rc2", "metric": "recall" | "recall_subset", "<pairid>": [ids]}."""
    if metric not in ("recall", "recall_subset"):
        raise ValueError(f"metric {metric!r}: CIRR's server takes 'recall' or 'recall_subset'")
    return {"version": "rc2", "metric": metric, **{str(int(p)): list(r) for p, r in zip(pairids, ranked)}}
