"""Speed and memory of the retrieval metrics (metrics/retrieval.py) vs a per-query python loop over the full matrix.

    .venv/bin/python bench/bench_eval.py                   # N = 2,000 / 10,000 vs the loop, 20,000 alone
    .venv/bin/python bench/bench_eval.py --big=True        # also 100,000 x 100,000 (~3-5 min on 2 cores)

Random features (dim 512), ids = arange, so exactly one match per query, as the loop assumes; and a collapsed
model at N = 20,000 (every feature the same vector, so every score ties: R@1 must come out 1 / N). Each
measurement runs in a fresh python process, so its peak RSS (resource.getrusage ru_maxrss) is its own. The last
line is the headline. Figures and the machine they came from: BENCHMARKS.md.
"""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils import apply_overrides  # noqa: E402

# ----------------------------------------------------------------------------- config
threads = 2  # torch.set_num_threads: the 2-core CPU the numbers are reported for
dim = 512
ns_vs_loop = [2000, 10000]  # Recall@K both ways, ours vs the full-matrix loop
n_mid = 20000  # must stay well under a minute on 2 cores
big = False  # 100k x 100k retrieval_metrics takes minutes on 2 cores: opt in
n_big = 100000
ks = (1, 5, 10)


# ----------------------------------------------------------------------------- the full-matrix loop
def loop_recall(image_features, text_features, ks):
    """The full similarity matrix, then one topk per query in a python loop (text i <-> image i)."""
    import torch.nn.functional as F

    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    sim = image_features @ text_features.T
    n = len(sim)
    out = {}
    for k in ks:
        out[f"image2text_R@{k}"] = sum(i in sim[i].topk(k).indices for i in range(n)) / n
        out[f"text2image_R@{k}"] = sum(i in sim.T[i].topk(k).indices for i in range(n)) / n
    return out


# ----------------------------------------------------------------------------- one measurement (child process)
def measure(what, n, threads, dim):
    import torch

    from metrics.retrieval import compute_recall_at_k, retrieval_metrics

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(n, dim, generator=g)
    image = torch.randn(n, dim, generator=g) + 0.1 * text  # related, so recall is neither 0 nor 1
    ids = torch.arange(n)
    if what == "collapsed":
        text = image = text[:1].repeat(n, 1)
    # warm-up on a tiny input: the first call pays torch's one-off kernel/thread-pool setup, not the method
    small = torch.randn(16, dim, generator=g)
    loop_recall(small, small, ks) if what == "loop" else compute_recall_at_k(small, small, ks=ks)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    t = time.perf_counter()
    if what == "loop":
        metrics = loop_recall(image, text, ks)
    elif what == "ours":
        metrics = compute_recall_at_k(image, text, ids, ids, ks=ks)
    else:  # "one_direction", "collapsed": text -> image, every metric
        m = retrieval_metrics(text, image, ids, ids, ks=ks)
        metrics = {k: v for k, v in m.items() if k not in ("ranks", "matched")}
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"what": what, "n": n, "seconds": seconds, "peak_rss_gb": peak, "inputs_rss_gb": rss_inputs, **metrics}


def run_child(what, n, cfg):
    cmd = [sys.executable, __file__, "--child", what, str(n), str(cfg["threads"]), str(cfg["dim"])]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    cfg = {"threads": threads, "dim": dim, "ns_vs_loop": ns_vs_loop, "n_mid": n_mid, "big": big, "n_big": n_big}
    cfg = apply_overrides(cfg)
    print(f"cpu: {os.cpu_count()} cores visible, torch threads {cfg['threads']}, dim {cfg['dim']}, ks {ks}")
    print(f"{'N':>8} {'method':<28} {'seconds':>9} {'peak RSS GB':>12} {'R@1 i2t':>8} {'R@1 t2i':>8}")
    speedups = {}
    for n in cfg["ns_vs_loop"]:
        loop, ours = run_child("loop", n, cfg), run_child("ours", n, cfg)
        for r in (loop, ours):
            same = all(abs(loop[k] - r[k]) < 1e-9 for k in loop if "_R@" in k)
            name = "python loop (full matrix)" if r is loop else "compute_recall_at_k" + ("" if same else " DIFFERS")
            print(
                f"{n:>8} {name:<28} {r['seconds']:>9.2f} {r['peak_rss_gb']:>12.2f} "
                f"{r['image2text_R@1']:>8.3f} {r['text2image_R@1']:>8.3f}"
            )
        speedups[n] = loop["seconds"] / ours["seconds"]
        print(f"{n:>8} speedup {speedups[n]:.1f}x")
    rows = [run_child("one_direction", n, cfg) for n in [cfg["n_mid"]] + ([cfg["n_big"]] if cfg["big"] else [])]
    for r in rows:
        print(
            f"{r['n']:>8} {'retrieval_metrics t2i':<28} {r['seconds']:>9.2f} {r['peak_rss_gb']:>12.2f} "
            f"{'':>8} {r['R@1']:>8.3f}   (inputs alone {r['inputs_rss_gb']:.2f} GB, mAP {r['mAP']:.3f})"
        )
    flat = run_child("collapsed", cfg["n_mid"], cfg)
    print(
        f"{flat['n']:>8} {'collapsed model, t2i':<28} {flat['seconds']:>9.2f} {flat['peak_rss_gb']:>12.2f} "
        f"{'':>8} {flat['R@1']:>8.1e}   (chance 1/N = {1 / flat['n']:.1e}, mean rank {flat['mean_rank']:.1f})"
    )
    n_top = max(cfg["ns_vs_loop"])
    head = f"speedup vs the python loop at N={n_top}: {speedups[n_top]:.1f}x"
    head += f"; N={cfg['n_mid']} one direction in {rows[0]['seconds']:.1f} s, collapsed {flat['seconds']:.1f} s"
    if cfg["big"]:
        head += f"; N={cfg['n_big']} peak RSS {rows[-1]['peak_rss_gb']:.1f} GB in {rows[-1]['seconds']:.0f} s"
    else:
        head += f"; N={cfg['n_big']} not run (--big=True)"
    print(head)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], *map(int, sys.argv[3:]))))
    else:
        main()
