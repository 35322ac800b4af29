"""Intervals over test models: a cluster bootstrap of metrics/per_query.py's records, alone and paired.

    counts = resample_counts(len(test_models), 1000, seed=0)        # how often each model is drawn, per resample
    point, resampled = bootstrap_record(record, test_models, counts)
    interval(resampled)                                              # [2.5th, 97.5th percentile]
    compare(points_a, resampled_a, points_b, resampled_b)            # paired: same resamples for both runs
    aggregate_seeds(per_seed_records, test_models, [("text2shape", "linear", "full", ["text2image_R@1"])])

One resample draws as many test models as there are, with replacement; a drawn model brings all of its queries
(its captions for text -> shape, its photos for photo -> shape, itself for shape -> text and for its caption),
once per draw, and the metric is recomputed over that multiset of queries. The gallery is never resampled: every
query is still ranked against the whole test split, as metrics.retrieval ranked it, so only the queries' values
are reweighted. A metric that is a mean over queries is then a weighted mean; METEOR is recomputed by METEOR from
the drawn models' statistics (metrics.caption.meteor_from_stats). CIDEr's IDF stays that of the whole test split.

Paired comparison of runs A and B: the same resamples for both, the difference A - B in each; over several seeds,
each resample's difference is the mean of the seeds' differences. The 95% interval is the 2.5th and 97.5th
percentile over resamples; the verdict is "A > B" or "B > A" when the interval excludes 0, else "not separable".
A resample in which a metric has no query (no drawn model has a caption without a colour word, say) gives NaN
there and is left out of that metric's percentiles.
"""
import math

import numpy as np

from metrics.caption import meteor_from_stats

N_RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(n_units, n_resamples=N_RESAMPLES, seed=0):
    """(n_resamples, n_units) int64: how many times each unit is drawn in each resample of n_units draws."""
    if n_units < 1 or n_resamples < 1:
        raise ValueError(f"need at least one unit and one resample, got {n_units} and {n_resamples}")
    draws = np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))
    counts = np.zeros((n_resamples, n_units), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


def _unit_index(record, units):
    index = {u: i for i, u in enumerate(units)}
    unknown = sorted({str(m) for m in record["model"] if m not in index})
    if unknown:
        raise ValueError(f"queries of models that are not test models: {unknown[:5]}")
    return np.array([index[m] for m in record["model"]], dtype=np.int64)


def bootstrap_record(record, units, counts):
    """(the metric over all queries, the metric in each resample: float64 [n_resamples], NaN where no query was
    drawn). record: {"model", "value"} (a mean over queries) or {"model", "meteor_stats"} (METEOR's pooled score);
    units: the test models, in the order of counts' columns."""
    idx = _unit_index(record, units)
    if "value" in record:
        values = np.asarray(record["value"], dtype=np.float64)
        sums = np.bincount(idx, weights=values, minlength=len(units))
        sizes = np.bincount(idx, minlength=len(units)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            resampled = (counts @ sums) / (counts @ sizes)
        return float(values.mean()) if len(values) else math.nan, resampled
    stats = list(record["meteor_stats"])

    def meteor(weights):
        drawn = [s for s, u in zip(stats, idx) for _ in range(weights[u])]
        return meteor_from_stats(drawn) if drawn else math.nan

    return meteor(np.ones(len(units), dtype=np.int64)), np.array([meteor(row) for row in counts])


def interval(resampled, level=LEVEL):
    """[low, high]: the percentile interval of the finite resampled values; None when there are none."""
    x = np.asarray(resampled, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return None
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(x, [tail, 100 - tail])]


def verdict(ci):
    if ci is None or ci[0] <= 0 <= ci[1]:
        return "not separable"
    return "A > B" if ci[0] > 0 else "B > A"


def summarise(points, resampled, level=LEVEL):
    """One run's metric over seeds. points: its value per seed; resampled: [n_seeds, n_resamples], the same
    resamples for every seed. ci95 is the interval of the mean over seeds."""
    points, resampled = np.asarray(points, dtype=np.float64), np.atleast_2d(resampled)
    return {"per_seed": points.tolist(), "mean": float(points.mean()),
            "sd": float(points.std(ddof=1)) if len(points) > 1 else None,
            "ci95": interval(resampled.mean(0), level),
            "ci95_per_seed": [interval(r, level) for r in resampled]}


def compare(points_a, resampled_a, points_b, resampled_b, level=LEVEL):
    """Paired bootstrap of A - B: per seed its difference and interval, and pooled over seeds the mean difference,
    the interval of the mean of the seeds' differences in each resample, and the verdict."""
    diff = np.asarray(points_a, dtype=np.float64) - np.asarray(points_b, dtype=np.float64)
    resampled = np.atleast_2d(resampled_a) - np.atleast_2d(resampled_b)
    ci = interval(resampled.mean(0), level)
    per_seed = [{"diff": float(d), "ci95": interval(r, level), "verdict": verdict(interval(r, level))}
                for d, r in zip(diff, resampled)]
    return {"diff": float(diff.mean()), "ci95": ci, "verdict": verdict(ci), "per_seed": per_seed}


def aggregate_seeds(per_seed, units, comparisons, n_resamples=N_RESAMPLES, seed=0, level=LEVEL, family_units=None):
    """Every run's metrics over seeds, and the paired comparisons, from the seeds' records.

    per_seed: one {family: {run: {metric: record}}} per seed, the same runs and metrics in each (a run that does
    not train, a baseline, is the same record every seed); units: the test models; comparisons: [(family, run A,
    run B, [metrics])], a metric missing from either run left out; family_units: {family: its own test models} for
    a family measured on other data (the demo's composed retrieval), whose records are resampled over those. One
    set of resamples per set of units serves every run, seed and comparison. Returns {"n_seeds", "n_test_models",
    "n_resamples", "bootstrap_seed", "level", "runs": {family: {run: {metric: summarise()}}},
    "comparisons": [{"family", "a", "b", "metric", **compare()}]}."""
    units_of = {family: units for family in per_seed[0]} | (family_units or {})
    counts = {family: resample_counts(len(u), n_resamples, seed) for family, u in units_of.items()}
    done, boot = {}, {}
    for family, runs in per_seed[0].items():
        for run, metrics in runs.items():
            for metric in metrics:
                points, resampled = [], []
                for records in per_seed:
                    record = records[family][run][metric]
                    if id(record) not in done:  # a baseline's record is one object in every seed
                        done[id(record)] = bootstrap_record(record, units_of[family], counts[family])
                    points.append(done[id(record)][0])
                    resampled.append(done[id(record)][1])
                boot[family, run, metric] = (points, np.stack(resampled))
    out = {"n_seeds": len(per_seed), "n_test_models": len(units), "n_resamples": n_resamples,
           "bootstrap_seed": seed, "level": level, "runs": {}, "comparisons": []}
    for (family, run, metric), (points, resampled) in boot.items():
        out["runs"].setdefault(family, {}).setdefault(run, {})[metric] = summarise(points, resampled, level)
    for family, a, b, metrics in comparisons:
        for metric in metrics:
            if (family, a, metric) in boot and (family, b, metric) in boot:
                result = compare(*boot[family, a, metric], *boot[family, b, metric], level=level)
                out["comparisons"].append({"family": family, "a": a, "b": b, "metric": metric, **result})
    return out
