"""Queries against an index: encode a text, a photo or a mesh, and rank the indexed shapes.

    searcher = open_searcher("index/", device="cpu")                       # index + its model + a backend
    query = searcher.encode("text", text="a low red sofa")                 # Query: embedding, label, image
    query = searcher.encode("photo", photo="img.png", bbox=(10, 20, 200, 220))
    query = searcher.encode("mesh", mesh="chair.obj")
    hits = searcher.search(query.embedding, top_k=10)                      # [Hit(rank, model_id, score, ...)]

    query = searcher.encode("composed", reference="chair/TOY_CHAIR_0001", text="with arms")
    hits = searcher.search(query.embedding, top_k=10, exclude=query.exclude)  # the reference is never a hit

A new kind of query is one function in QUERY_KINDS: f(searcher, **fields) -> Query. The composed query is composed
retrieval's stage-1 rule (models.combiner.element_wise_sum of the reference's indexed embedding and the text's): it
is what an index built with a `train_composed.py` stage-1 checkpoint was trained for; with another model it is
the zero-shot sum (eval_composed.py's sum_zero_shot row).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shape_index.backends import make_backend
from shape_index.encoder import load_encoder
from shape_index.store import load_index


@dataclass
class Hit:
    """One retrieved shape: its rank (1 = best), model id, cosine score, mesh file (None when the index was
    built from renders) and thumbnail file."""
    rank: int
    model_id: str
    score: float
    mesh_path: str | None
    thumbnail: Path


@dataclass
class Query:
    """An encoded query: its unit embedding [D] (float32), a label for people (the text, the file), and the
    picture the model saw (a photo crop, a mesh's first view), or None for text."""
    kind: str
    embedding: np.ndarray
    label: str
    image: object = None
    exclude: tuple = ()  # model ids that are never hits (a composed query's reference)


def text_query(searcher, text):
    return Query("text", searcher.encoder.text(text), text)


def photo_query(searcher, photo, bbox=None):
    embedding, crop = searcher.encoder.photo(photo, bbox)
    label = f"{photo}" + (f" (bbox {', '.join(f'{v:g}' for v in bbox)})" if bbox is not None else "")
    return Query("photo", embedding, label, crop)


def mesh_query(searcher, mesh):
    embedding, views = searcher.encoder.mesh(mesh, searcher.index.render, searcher.index.manifest["views"])
    return Query("mesh", embedding, str(mesh), views[0])


def composed_query(searcher, reference, text):
    import torch

    from models.combiner import element_wise_sum

    try:
        image = torch.from_numpy(searcher.index.embedding(reference))
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    embedding = element_wise_sum(image, torch.from_numpy(searcher.encoder.text(text))).numpy()
    return Query("composed", embedding, f"{reference} + \"{text}\"", exclude=(reference,))


QUERY_KINDS = {"text": text_query, "photo": photo_query, "mesh": mesh_query, "composed": composed_query}


class Searcher:
    """An index, the model it was built with (shape_index.encoder.Encoder) and a search backend."""

    def __init__(self, index, encoder, backend="auto"):
        if encoder is not None and encoder.dim != index.manifest["embedding_dim"]:
            raise ValueError(f"{index.root}: embeddings of dim {index.manifest['embedding_dim']}, the model gives "
                             f"{encoder.dim}")
        self.index, self.encoder = index, encoder
        self.backend = make_backend(index.embeddings, backend)

    def encode(self, kind, **fields):
        if kind not in QUERY_KINDS:
            raise ValueError(f"unknown query kind {kind!r}; expected one of {', '.join(QUERY_KINDS)}")
        return QUERY_KINDS[kind](self, **fields)

    def search(self, embedding, top_k=10, exclude=()):
        """[Hit] of one query embedding [D], or a list of them for a batch [Q, D]; model ids in `exclude` are left
        out and the ranks count only what is shown."""
        embedding = np.asarray(embedding, dtype=np.float32)
        skip = {self.index.row_of[m] for m in exclude if m in self.index.row_of}
        scores, rows = self.backend.search(embedding, min(top_k + len(skip), len(self.index)))
        hits = []
        for rs, ss in zip(np.atleast_2d(rows), np.atleast_2d(scores)):
            kept = [(int(row), float(score)) for row, score in zip(rs, ss) if int(row) not in skip][:top_k]
            hits.append([self._hit(r + 1, row, score) for r, (row, score) in enumerate(kept)])
        return hits if embedding.ndim == 2 else hits[0]

    def _hit(self, rank, row, score):
        shape = self.index.shapes[row]
        return Hit(rank, shape["model_id"], score, shape.get("mesh_path"), self.index.thumbnail(row))


def open_searcher(index_dir, device="cpu", backend="auto", checkpoint=None, clip_weights=None):
    """A Searcher over the index in index_dir with the model it was built with (checked by hash; checkpoint /
    clip_weights: where the files are now, if they moved)."""
    index = load_index(index_dir)
    encoder = load_encoder(index.manifest, device, checkpoint=checkpoint, clip_weights=clip_weights)
    return Searcher(index, encoder, backend)
