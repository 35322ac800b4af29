"""Text2Shape's retrieval protocol (Chen et al. 2018, "Text2Shape"; TriCoLo reports the same): the recall rate RR@k
and NDCG@k, with ties handled as in metrics/retrieval.py.

    from metrics.ranking import rr_ndcg_metrics
    rr_ndcg_metrics(text_feats, shape_feats, text_model_ids, shape_model_ids, ks=(1, 5, 10))
    # -> {"RR@1": ..., "RR@5": ..., "RR@10": ..., "NDCG@1": ..., "NDCG@5": ..., "NDCG@10": ...}

Query i and gallery item j are relevant to each other when their ids are equal (binary relevance), as in
metrics.retrieval. With the gallery ranked by cosine similarity:

- RR@k, the recall rate: the share of queries with at least one relevant item in the top k. It is what
  metrics.retrieval calls R@k (the "hit" definition, not the share of all relevant items retrieved), in both
  directions, so it is taken from retrieval_metrics: text -> shape (one relevant shape per text) and shape -> text
  (several relevant captions per shape) alike. Text2Shape's "recall@k" (the share of a query's relevant items in
  its top k) is a different number, and is not computed here.
- NDCG@k = DCG@k / IDCG@k. DCG@k = sum over the top k places r = 1..k of rel(r) / log2(r + 1), rel(r) in {0, 1};
  Text2Shape writes the gain as 2^rel - 1, which is rel for binary relevance. IDCG@k is the DCG@k of an ideal
  ranking, all R relevant items first: sum_{r = 1..min(R, k)} 1 / log2(r + 1) (the number of relevant items,
  capped at k). This is sklearn.metrics.ndcg_score's definition.

Ties. Every number is its expected value when each group of exactly equal scores is put in a uniformly random order
(float32 cosines, bit-equal, as in metrics.retrieval). RR@k is retrieval_metrics' R@k, which is already that.
For NDCG: IDCG does not depend on the order, so E[NDCG@k] = E[DCG@k] / IDCG@k, and DCG@k is a sum over the relevant
items of the discount of the place each one lands on. A relevant item in a tie group of n items below `a` items that
score strictly higher lands on each of the places a + 1 .. a + n with probability 1 / n, so by linearity

    E[DCG@k] = sum over relevant items of (1 / n) * sum_{i = 1..n} D_k(a + i),   D_k(r) = 1 / log2(r + 1) if r <= k,
                                                                                 else 0,

the average of its group's discounts: exact, with no enumeration of orders (McSherry & Najork 2008 average the gains
of a tie group, which gives the same). A collapsed model (every score tied) therefore scores the chance level
R / N * sum_{r = 1..min(k, N)} 1 / log2(r + 1) / IDCG@k for R relevant items among N.

Queries without any relevant item in the gallery are left out (as retrieval_metrics leaves them out); with none
left every value is NaN.
"""
import math

import torch

# One internal helper set with metrics.retrieval: the same normalisation and id coding, so the same scores tie.
from metrics.retrieval import _encode_ids, _normalise, retrieval_metrics

# One block of sorted similarities holds at most this many entries (about 50 bytes each over the tensors the tie
# groups need, so ~200 MB).
_MAX_BLOCK_ELEMENTS = 2**22


def rr_ndcg_metrics(query_features, gallery_features, query_ids, gallery_ids, ks=(1, 5, 10)):
    """{"RR@k", "NDCG@k"} for k in ks, averaged over the queries with a relevant item (module docstring)."""
    ks = tuple(ks)
    recall = retrieval_metrics(query_features, gallery_features, query_ids, gallery_ids, ks=ks)  # checks ks too
    out = {f"RR@{k}": recall[f"R@{k}"] for k in ks}
    ndcg = expected_ndcg(query_features, gallery_features, query_ids, gallery_ids, ks)
    out.update({f"NDCG@{k}": _mean(ndcg[k]) for k in ks})
    return out


def _mean(values):
    return values.mean().item() if len(values) else math.nan


def expected_ndcg(query_features, gallery_features, query_ids, gallery_ids, ks=(1, 5, 10)):
    """{k: float64 tensor of each ranked query's expected NDCG@k}, in query order, queries without a relevant
    item left out (retrieval_metrics' "matched" mask says which)."""
    q = _normalise(query_features, "query_features")
    g = _normalise(gallery_features, "gallery_features", device=q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_features have dim {q.shape[1]} but gallery_features have dim {g.shape[1]}")
    qcode, gcode = _encode_ids(query_ids, gallery_ids, q.shape[0], g.shape[0], q.device)
    n = g.shape[0]
    # cum[k][r] = sum of the discounts of places 1 .. min(r, k), r = 0 .. n: a group's discounts are a difference
    places = torch.arange(1, n + 1, dtype=torch.float64, device=q.device)
    cum = {k: torch.cat([places.new_zeros(1), torch.where(places <= k, 1 / torch.log2(places + 1), 0).cumsum(0)])
           for k in ks}
    n_relevant = torch.bincount(gcode, minlength=int(qcode.max()) + 1)[qcode]
    ranked = (n_relevant > 0).nonzero().squeeze(1)
    dcg = {k: [] for k in ks}
    for rows in ranked.split(max(1, _MAX_BLOCK_ELEMENTS // n)):
        values, order = (q[rows] @ g.T).sort(dim=1, descending=True)
        relevant = gcode[order] == qcode[rows, None]
        # tie group of each place: `above` items score strictly higher, `upto` score at least as high
        negated = -values  # ascending, for searchsorted
        above = torch.searchsorted(negated, negated, right=False)
        upto = torch.searchsorted(negated, negated, right=True)
        size = (upto - above).double()
        for k in ks:
            mean_discount = (cum[k][upto] - cum[k][above]) / size
            dcg[k].append(torch.where(relevant, mean_discount, 0).sum(1))
    out = {}
    for k in ks:
        ideal = cum[k][n_relevant[ranked].clamp(max=n)]
        out[k] = (torch.cat(dcg[k]) / ideal).cpu() if len(ranked) else torch.zeros(0, dtype=torch.float64)
    return out


def ndcg_both_directions(shape_features, shape_ids, text_features, text_ids, ks=(1, 5, 10)):
    """Flat {"text2image_NDCG@k", "image2text_NDCG@k"} of a shape gallery (one row per shape) and its captions, and
    each direction's chance level `{direction}_chance_NDCG@k`: the NDCG of a random ranking, which is that of a
    collapsed model (every score tied). RR@k is not repeated here: it is the R@k both directions already report."""
    out = {}
    for name, (q, g, qi, gi) in {"text2image": (text_features, shape_features, text_ids, shape_ids),
                                 "image2text": (shape_features, text_features, shape_ids, text_ids)}.items():
        for prefix, qf, gf in (("", q, g), ("chance_", torch.ones(len(q), 1), torch.ones(len(g), 1))):
            ndcg = expected_ndcg(qf, gf, qi, gi, ks)
            out.update({f"{name}_{prefix}NDCG@{k}": _mean(ndcg[k]) for k in ks})
    return out
