"""Top-k inner-product search over unit shape embeddings: exact (a matrix product + topk) or FAISS.

    backend = make_backend(index.embeddings, "auto")       # exact unless FAISS_ABOVE says otherwise
    scores, rows = backend.search(queries, k)              # [Q, k] float32 cosines, [Q, k] int64 rows, best first

Both return the same thing for the same embeddings: rows ordered by score, equal scores by row. FAISS is
optional (`pip install -r requirements-extra.txt`); IndexFlatIP is exact too. On the machines this was measured on
(bench/bench_search.py, BENCHMARKS.md) it was slower than the exact matrix product at 10k, 100k and 1M shapes, so
auto stays exact; set FAISS_ABOVE where a FAISS build with a fast BLAS wins.
"""
import numpy as np
import torch

BACKENDS = ("auto", "exact", "faiss")
FAISS_ABOVE = None  # auto picks FAISS for more shapes than this, when it is installed (None: never)
BLOCK_ROWS = 1 << 18  # exact search scores this many shapes at a time: [Q, BLOCK_ROWS] floats at most


def faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_queries(queries, dim):
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries of shape {q.shape}: expected [n, {dim}]")
    return q


def _best_first(scores, rows):
    """Each query's results by descending score, ties by ascending row (the order both backends report)."""
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


class ExactBackend:
    """Every shape scored: queries @ embeddings.T in blocks of BLOCK_ROWS, the running top k kept. The embeddings
    are held as float32 in RAM: converting a float16 index block by block at every query made search ~10x slower
    (bench/bench_search.py), so float16 saves disk, not memory."""

    name = "exact"

    def __init__(self, embeddings):
        if embeddings.dtype != np.float32 or isinstance(embeddings, np.memmap) or not embeddings.flags.writeable:
            embeddings = np.array(embeddings, dtype=np.float32)  # an index file is memory-mapped: copy it to RAM
        self.embeddings = torch.from_numpy(embeddings)
        self.dim = self.embeddings.shape[1]

    def __len__(self):
        return len(self.embeddings)

    @property
    def nbytes(self):
        return self.embeddings.numel() * self.embeddings.element_size()

    def search(self, queries, k):
        q = torch.from_numpy(_as_queries(queries, self.dim))
        k = min(k, len(self))
        best_s = best_i = None
        for start in range(0, len(self), BLOCK_ROWS):
            block = self.embeddings[start:start + BLOCK_ROWS]
            top = (q @ block.T).topk(min(k, len(block)), dim=1)
            s, i = top.values, top.indices + start
            if best_s is not None:
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                top = s.topk(min(k, s.shape[1]), dim=1)
                s, i = top.values, i.gather(1, top.indices)
            best_s, best_i = s, i
        return _best_first(best_s.numpy(), best_i.numpy())


class FaissBackend:
    """faiss.IndexFlatIP: exact inner products, in FAISS's own float32 copy of the embeddings."""

    name = "faiss"

    def __init__(self, embeddings):
        try:
            import faiss
        except ImportError:
            raise ImportError("--backend faiss needs FAISS: .venv/bin/pip install -r requirements-extra.txt") from None
        self.dim = embeddings.shape[1]
        self.index = faiss.IndexFlatIP(self.dim)
        for start in range(0, len(embeddings), BLOCK_ROWS):  # a float16 file is converted a block at a time
            self.index.add(np.ascontiguousarray(embeddings[start:start + BLOCK_ROWS], dtype=np.float32))

    def __len__(self):
        return self.index.ntotal

    @property
    def nbytes(self):
        return self.index.ntotal * self.dim * 4

    def search(self, queries, k):
        scores, rows = self.index.search(_as_queries(queries, self.dim), min(k, len(self)))
        return _best_first(scores, rows)


def make_backend(embeddings, backend="auto"):
    """ExactBackend or FaissBackend over [N, D] unit embeddings. auto: FAISS above FAISS_ABOVE shapes when it is
    installed and FAISS_ABOVE is set, else exact."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        big = FAISS_ABOVE is not None and len(embeddings) > FAISS_ABOVE
        backend = "faiss" if big and faiss_available() else "exact"
    return FaissBackend(embeddings) if backend == "faiss" else ExactBackend(embeddings)
