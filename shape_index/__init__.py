"""Search your own collection of meshes with a trained (or zero-shot) CLIP: an index of pooled shape embeddings
and the queries against it. scripts/index_shapes.py builds an index, search.py queries it; a web page or a new
kind of query builds on the same functions:

    from shape_index import open_searcher
    searcher = open_searcher("index/")                                 # the index and the model it was built with
    hits = searcher.search(searcher.encode("text", text="a low red sofa").embedding, top_k=10)

Modules: store.py (the folder: manifest, embeddings, shapes, thumbnails; load_index), encoder.py (the model and
every way to embed: shapes, text, photo, mesh), build.py (collecting shapes, incremental update_index),
backends.py (exact and FAISS top-k), query.py (Searcher, Hit, QUERY_KINDS), report.py (results.html).
"""
from shape_index.query import QUERY_KINDS, Hit, Query, Searcher, open_searcher
from shape_index.store import BadIndex, ShapeIndex, load_index

__all__ = ["QUERY_KINDS", "BadIndex", "Hit", "Query", "Searcher", "ShapeIndex", "load_index", "open_searcher"]
