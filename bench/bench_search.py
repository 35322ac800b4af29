"""Query latency and memory of shape search (shape_index/backends.py) on random unit embeddings.

    .venv/bin/python bench/bench_search.py                      # N = 10k, 100k, 1M at dim 512 (a few min, 2 cores)
    .venv/bin/python bench/bench_search.py --ns="[10000]"       # one size

For each N: the exact backend (torch matmul + topk) and FAISS IndexFlatIP (exact too); at the `ivf_ns` sizes also
FAISS IndexIVFFlat (approximate), with its recall@10 against exact search on the random embeddings and on
clustered ones (`clusters` centres, each point cos ~0.7 to its centre, as embeddings of a collection with many
similar shapes are; random points in 512 dimensions have no neighbourhoods for IVF to find). Latency is ms per
query for a batch of 1 (the mean of `repeats` single queries) and of 100 (a batch's time / 100), top 10. Memory:
the bytes the backend holds (the index RAM) and the child process's peak RSS (resource.getrusage; torch and FAISS
imported alone take `baseline`). Each row runs in a fresh process, so peaks are its own; the last line is the
headline. Needs faiss-cpu (requirements-extra.txt). Figures and the machine: BENCHMARKS.md.
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
threads = 2  # torch and FAISS threads: the 2-core CPU the numbers are reported for
dim = 512  # ViT-B/32's embedding size
ns = [10_000, 100_000, 1_000_000]  # 1M x 512 float32 = 2 GB
top_k = 10
batch = 100  # the second latency: queries searched together
repeats = 20  # single queries timed (the mean is reported)
ivf_ns = [100_000]  # IVF rows (building one at 1M takes minutes on 2 cores)
ivf_nprobe = [4, 16]  # of nlist = sqrt(N) lists, searched per query
train_per_list = 40  # IVF training vectors per list (FAISS asks for at least 39)
clusters = 1000  # centres of the clustered embeddings


def embeddings(n, d, seed=0, clusters=0):
    """[n, d] random unit rows, made block by block so generating them needs no second copy; with clusters > 0,
    each row is a random one of `clusters` fixed unit centres plus noise of norm ~1 (cos ~0.7 to it)."""
    import numpy as np

    rng, out = np.random.default_rng(seed), np.empty((n, d), dtype=np.float32)
    centres = embeddings(clusters, d, seed=1234) if clusters else None
    for s in range(0, n, 1 << 16):
        x = rng.standard_normal((min(1 << 16, n - s), d), dtype=np.float32)
        if clusters:
            x = x / np.sqrt(d) + centres[rng.integers(clusters, size=len(x))]
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def timed(search, queries, cfg, budget_s=10.0):
    """(ms per query alone, ms per query in a batch): a warm-up, then up to `repeats` single queries and up to 3
    batches, each series stopped once it has run budget_s (a slow backend at 1M is timed on fewer)."""
    search(queries[:1], cfg["top_k"])
    out = []
    for size, most in ((1, cfg["repeats"]), (cfg["batch"], 3)):
        t, done = time.perf_counter(), 0
        while done < most and (done == 0 or time.perf_counter() - t < budget_s):
            search(queries[done * size % len(queries):][:size], cfg["top_k"])
            done += 1
        out.append((time.perf_counter() - t) / (done * size) * 1e3)
    return tuple(out)


def measure(what, n, cfg):
    import faiss
    import numpy as np
    import torch

    from shape_index.backends import ExactBackend, FaissBackend

    torch.set_num_threads(cfg["threads"])
    faiss.omp_set_num_threads(cfg["threads"])
    row = {"what": what, "n": n, "baseline_mb": rss_mb()}
    clustered = cfg["clusters"] if what == "faiss_ivf_clustered" else 0
    emb = embeddings(n, cfg["dim"], clusters=clustered)
    queries = embeddings(max(cfg["batch"], cfg["repeats"]), cfg["dim"], seed=1, clusters=clustered)
    t = time.perf_counter()
    if what in ("exact", "faiss_flat"):
        backend = ExactBackend(emb) if what == "exact" else FaissBackend(emb)  # exact searches emb in place
        if what == "faiss_flat":
            del emb  # FAISS holds its own copy
        row["build_s"] = time.perf_counter() - t
        row["ms_single"], row["ms_batch"] = timed(backend.search, queries, cfg)
        row.update(index_mb=backend.nbytes / 2**20, peak_rss_mb=rss_mb())
        return row
    # IVF: approximate, scored by its recall of the exact top k
    nlist = int(n ** 0.5)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(cfg["dim"]), cfg["dim"], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(emb[np.random.default_rng(2).choice(n, min(n, cfg["train_per_list"] * nlist), replace=False)])
    ivf.add(emb)
    row.update(nlist=nlist, build_s=time.perf_counter() - t, by_nprobe={})
    _, truth = ExactBackend(emb).search(queries[:cfg["batch"]], cfg["top_k"])
    del emb
    for nprobe in cfg["ivf_nprobe"]:
        ivf.nprobe = nprobe
        found = ivf.search(queries[:cfg["batch"]], cfg["top_k"])[1]
        recall = np.mean([len(set(a) & set(b)) / cfg["top_k"] for a, b in zip(found, truth)])
        single, batched = timed(ivf.search, queries, cfg)
        row["by_nprobe"][nprobe] = {"recall@10": float(recall), "ms_single": single, "ms_batch": batched}
    row.update(index_mb=ivf.ntotal * cfg["dim"] * 4 / 2**20, peak_rss_mb=rss_mb())
    return row


def run_child(what, n, cfg):
    cmd = [sys.executable, __file__, "--child", what, str(n), json.dumps(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} at N={n} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    cfg = {"threads": threads, "dim": dim, "ns": ns, "top_k": top_k, "batch": batch, "repeats": repeats,
           "ivf_ns": ivf_ns, "ivf_nprobe": ivf_nprobe, "train_per_list": train_per_list, "clusters": clusters}
    cfg = apply_overrides(cfg)
    print(f"cpu: {os.cpu_count()} cores visible, {cfg['threads']} threads, dim {cfg['dim']}, top {cfg['top_k']}, "
          f"batch {cfg['batch']}")
    print(f"{'N':>9}  {'backend':<36} {'ms/query (1)':>12} {'ms/query (100)':>14} {'index MB':>9} "
          f"{'peak RSS MB':>11} {'build s':>8}  recall@10")
    single, baseline = {}, []
    for n in cfg["ns"]:
        ivf = ["faiss_ivf_random", "faiss_ivf_clustered"] if n in cfg["ivf_ns"] else []
        for what in ["exact", "faiss_flat"] + ivf:
            r = run_child(what, n, cfg)
            baseline.append(r["baseline_mb"])
            if "by_nprobe" not in r:
                single[what, n] = r["ms_single"]
                print(f"{n:>9,}  {what:<36} {r['ms_single']:>12.2f} {r['ms_batch']:>14.3f} {r['index_mb']:>9.0f} "
                      f"{r['peak_rss_mb']:>11.0f} {r['build_s']:>8.2f}  1 (exact)", flush=True)
                continue
            for nprobe, p in r["by_nprobe"].items():
                name = f"{what} nlist={r['nlist']} nprobe={nprobe}"
                print(f"{n:>9,}  {name:<36} {p['ms_single']:>12.2f} {p['ms_batch']:>14.3f} {r['index_mb']:>9.0f} "
                      f"{r['peak_rss_mb']:>11.0f} {r['build_s']:>8.2f}  {p['recall@10']:.3f}", flush=True)
    print(f"baseline RSS (torch + faiss imported): {min(baseline):.0f}-{max(baseline):.0f} MB")
    print("single-query ms, exact vs faiss_flat: " + "; ".join(
        f"N={n:,} {single['exact', n]:.1f} vs {single['faiss_flat', n]:.1f}" for n in cfg["ns"]))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))))
    else:
        main()
