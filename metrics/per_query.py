"""Each query's share of a metric, and the test model it belongs to: what metrics/bootstrap.py resamples.

    per = retrieval_per_query(text_feats, shape_feats, text_ids, shape_ids)  # {"R@1": [n_queries], "AP", "matched"}
    records = text2shape_records(feats["image"], feats["image_model"], feats["text"], feats["text_model"], captions,
                                 ds.model_ids)         # {"text2image_R@1": {"model": [...], "value": [...]}, ...}

A record is one metric over one set of queries: {"model": the test model of each query, "value": each query's
value}, whose mean is the metric as metrics.retrieval reports it; or, for METEOR, {"model": ..., "meteor_stats":
each model's METEOR statistics}, which metrics.caption.meteor_from_stats pools into the corpus score. The values
are metrics.retrieval's own per-query numbers (fair ties: each query's expected R@k hit and expected AP under a
random order of tied scores), or metrics.composed's for composed queries, taken before they are averaged; nothing
here ranks anew.
"""

import torch

from metrics.baselines import colour_category_embeddings, shape_only
from metrics.retrieval import _first_hit_within, rank_queries, shape_gallery

KS = (1, 5, 10)


def retrieval_per_query(query_features, gallery_features, query_ids, gallery_ids, ks=KS, chunk_size=4096):
    """Per query (float64 tensors in query order): {"R@k": the expected hit of its first match in the top k,
    "AP": its expected average precision, "matched": whether the gallery holds a match}; NaN where it does not.
    The mean over the matched queries is retrieval_metrics' R@k and mAP: the same tensors, before averaging."""
    ks, first, ap, matched = rank_queries(query_features, gallery_features, query_ids, gallery_ids, ks, chunk_size)
    matched = matched.cpu()
    hit = _first_hit_within(ks, first)

    def scatter(ranked):
        out = torch.full((len(matched),), float("nan"), dtype=torch.float64)
        out[matched] = ranked.cpu().double()
        return out

    return {**{f"R@{k}": scatter(hit[k]) for k in ks}, "AP": scatter(ap), "matched": matched}


def _records(prefix, per_query, query_models, ks):
    """{prefix_R@k, prefix_mAP: record} of the matched queries; query_models: the test model of each query."""
    keep = per_query["matched"].nonzero().squeeze(1).tolist()
    models = [query_models[i] for i in keep]
    names = {f"R@{k}": f"R@{k}" for k in ks} | {"mAP": "AP"}
    return {f"{prefix}_{name}": {"model": models, "value": per_query[col][keep].tolist()}
            for name, col in names.items()}


def text2shape_records(image_features, image_models, text_features, text_models, captions, model_ids, views="mean",
                       ks=KS):
    """Records of text2image_*, image2text_* and shape_only/text2image_* (R@k, mAP), as text2shape_metrics reports
    them: the views pooled into shapes, every caption a query (its cluster: its model), every shape a query of
    image2text (its cluster: itself). The captions without a colour word are a subset of the text2image queries
    against the same gallery, so their values are those queries' values. image_models / text_models: indices into
    model_ids."""
    image_models = [int(m) for m in image_models]
    text_models = [int(m) for m in text_models]
    shapes, shape_models = shape_gallery(image_features, image_models, views)
    t2i = retrieval_per_query(text_features, shapes, text_models, shape_models, ks)
    i2t = retrieval_per_query(shapes, text_features, shape_models, text_models, ks)
    out = _records("text2image", t2i, [model_ids[m] for m in text_models], ks)
    out.update(_records("image2text", i2t, [model_ids[m] for m in shape_models], ks))
    subset = shape_only(captions)
    if subset:
        sub = {k: v[subset] for k, v in t2i.items()}
        out.update(_records("shape_only/text2image", sub, [model_ids[text_models[i]] for i in subset], ks))
    return out


def photo2shape_records(photo_features, photo_models, view_features, view_models, model_ids, views="mean", ks=KS):
    """Records of photo2shape_R@k and photo2shape_mAP: every photo a query (its cluster: its model) against the
    shapes of all the split's models. photo_models / view_models: indices into model_ids."""
    shapes, shape_models = shape_gallery(view_features, [int(m) for m in view_models], views)
    photo_models = [int(m) for m in photo_models]
    per = retrieval_per_query(photo_features, shapes, photo_models, shape_models, ks)
    return _records("photo2shape", per, [model_ids[m] for m in photo_models], ks)


def composed_records(per_query, target_ids, keys=None):
    """Records of composed retrieval's metrics (R@k, Rsubset@k; `keys`, default all) from eval_composed's
    per-query values (metrics/composed.py's composed_per_query): each query with its target, the test model it
    has to find, as a caption goes with the model it describes."""
    return {k: {"model": list(target_ids), "value": [float(v) for v in per_query[k]]}
            for k in (per_query if keys is None else keys)}


def caption_records(model_ids, per_item):
    """Records of CIDEr and METEOR from metrics.caption.caption_scores' per-item lists (one item per model)."""
    out = {"CIDEr": {"model": list(model_ids), "value": list(per_item["CIDEr"])}}
    if "METEOR_stats" in per_item:
        out["METEOR"] = {"model": list(model_ids), "meteor_stats": list(per_item["METEOR_stats"])}
    return out


def colour_category_records(jsonl, split, ks=KS):
    """text2shape_records of metrics.baselines.colour_category: the same agreement embeddings
    (colour_category_embeddings), so the records' means are colour_category's numbers."""
    text, image, text_ids, captions, ds = colour_category_embeddings(jsonl, split)
    return text2shape_records(image, range(len(ds.model_ids)), text, text_ids, captions, ds.model_ids, ks=ks)
