"""Ranking a block of queries with ties broken at random, in expectation (metrics/retrieval.py's docstring gives the
arithmetic): per query, the first match's tie group (items strictly above it, non-matches and matches in the
group) and the expected average precision. Two ways to the same numbers: one comparison pass per match (few
matches per query) or one sort per row (many, as at category level)."""
import math

import torch


def expected_precision(above, matches_above, group_matches, group_size):
    """Expected precision at a match of a tie group, the mean over the group's matches (McSherry & Najork 2008).

    The group's n items (m of them matches, M matches among the `above` items scoring higher) take places
    above + 1 .. above + n in a uniformly random order. Place above + i holds a match with probability m / n,
    and then the group's other i - 1 places hold (i - 1) c matches on average, c = (m - 1) / (n - 1); so the
    group's precisions sum to sum_i (m / n) (M + 1 + (i - 1) c) / (above + i)
    = m c + (m / n) (M + 1 - c (above + 1)) (H(above + n) - H(above)), H the harmonic numbers. Divided by m.
    """
    a, big_m, m, n = (x.double() for x in (above, matches_above, group_matches, group_size))
    alone = n == 1  # no tie: the plain (M + 1) / (above + 1), exactly
    c = torch.where(alone, 0.0, (m - 1) / (n - 1).clamp(min=1))
    tied = c + (big_m + 1 - c * (a + 1)) * harmonic_gap(a, n) / n
    return torch.where(alone, (big_m + 1) / (a + 1), tied)


def harmonic_gap(a, n):
    """H(a + n) - H(a) = sum_{i = 1..n} 1 / (a + i), to ~1e-13 relative. A difference of digammas loses digits as
    a grows (1e-9 at a = 1e6, multiplied by a in expected_precision), so from a = 100 on it is the difference of
    H's asymptotic series ln x + gamma + 1 / (2x) - 1 / (12x^2) + 1 / (120x^4), truncated below 1e-13 there."""
    x, y = a.clamp(min=100), a + n
    series = torch.log1p(n / x) - n / (2 * x * y) + (1 / x**2 - 1 / y**2) / 12 - (1 / x**4 - 1 / y**4) / 120
    return torch.where(a < 100, torch.special.digamma(a + n + 1) - torch.special.digamma(a + 1), series)


def rank_by_comparison(sims, match_idx, valid, scratch):
    """Few matches per query: per match, one `sims > score` and one `sims == score` pass over the row.

    match_idx: the gallery index of each row's matches (valid marks the real ones, a prefix of each row).
    Returns (first, AP): first holds, per row, the best match's tie group as (items strictly above it,
    non-matches in the group, matches in the group); AP is the expected average precision.
    sims is overwritten (its matches set to -inf, so that both passes count non-matches only);
    scratch: a bool tensor shaped like sims, reused for every comparison.
    """
    pos_scores = sims.gather(1, match_idx).masked_fill(~valid, -math.inf).sort(dim=1, descending=True).values
    sims.scatter_(1, torch.where(valid, match_idx, match_idx[:, :1]), -math.inf)
    thresholds = pos_scores.masked_fill(~valid, math.inf)  # a padding slot counts nothing
    neg_above = torch.zeros(valid.shape, dtype=torch.long, device=sims.device)
    neg_at = torch.zeros_like(neg_above)
    for t in range(valid.shape[1]):
        score = thresholds[:, t : t + 1]
        # an int32 sum is ~2x faster than the default int64
        neg_above[:, t] = torch.gt(sims, score, out=scratch).sum(1, dtype=torch.int32)
        # ties are rare: any() finds the rows that have one at half the cost of a count, which runs on those only
        tied = torch.eq(sims, score, out=scratch).any(1).nonzero().squeeze(1)
        if len(tied) > len(sims) // 8:  # many (a collapsed model): counting every row beats copying them out
            neg_at[:, t] = scratch.sum(1, dtype=torch.int32)
        elif len(tied):
            neg_at[tied, t] = scratch[tied].sum(1)
    matches_above = (pos_scores[:, None, :] > pos_scores[:, :, None]).sum(2)
    matches_at = ((pos_scores[:, None, :] == pos_scores[:, :, None]) & valid[:, None, :]).sum(2)
    precision = expected_precision(neg_above + matches_above, matches_above, matches_at, neg_at + matches_at)
    ap = torch.where(valid, precision, 0.0).sum(1) / valid.sum(1)  # padding slots are NaN, not 0
    return torch.stack([neg_above[:, 0], neg_at[:, 0], matches_at[:, 0]], 1), ap


def rank_by_sorting(sims, pos):
    """Many matches per query (category level): sort each row once. Returns the same as rank_by_comparison."""
    n = sims.shape[1]
    values, order = sims.sort(dim=1, descending=True)
    is_match = pos.gather(1, order)
    del order
    # tie groups of the sorted row: positions start .. end - 1 share one score; int32 halves the memory
    next_differs = values[:, 1:] != values[:, :-1]
    del values
    positions = torch.arange(1, n, device=sims.device, dtype=torch.int32).expand_as(next_differs)
    start = torch.zeros(sims.shape, dtype=torch.int32, device=sims.device)
    start[:, 1:] = torch.where(next_differs, positions, 0)
    start = start.cummax(dim=1).values  # = items scoring strictly higher
    end = torch.full(sims.shape, n, dtype=torch.int32, device=sims.device)
    end[:, :-1] = torch.where(next_differs, positions, n)
    end = end.flip(1).cummin(dim=1).values.flip(1)
    del next_differs, positions
    matches_to = is_match.cumsum(1, dtype=torch.int32)  # matches at positions 0 .. p
    matches_above = (matches_to - is_match.int()).gather(1, start.long())
    matches_at = matches_to.gather(1, end.long() - 1) - matches_above
    del matches_to
    size = end.sub_(start)
    # the plain precision where the match has no tie, the expected one inside tie groups
    precision = torch.where(is_match, (matches_above + 1) / (start + 1).double(), 0.0)
    tied = (is_match & (size > 1)).nonzero(as_tuple=True)
    if len(tied[0]):
        precision[tied] = expected_precision(start[tied], matches_above[tied], matches_at[tied], size[tied])
    ap = precision.sum(1) / is_match.sum(1)
    del precision, tied
    at_first = is_match.byte().argmax(1, keepdim=True)  # the first match's position (argmax: the first maximum)
    m = matches_at.gather(1, at_first)
    first = torch.cat([start.gather(1, at_first), size.gather(1, at_first) - m, m], 1).long()
    return first, ap
