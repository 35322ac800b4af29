"""The evaluation library below the eval CLIs (eval_recall.py, eval_shape_retrieval.py, evaluate_caption.py).

    retrieval.py      Recall@K, ranks and mAP (text <-> shape, photo -> shape), pooling views into shapes
    ranking.py        Text2Shape's protocol: the recall rate RR@k (= R@k) and NDCG@k, with the same fair ties
    caption.py        BLEU / METEOR / ROUGE-L / CIDEr through pycocoevalcap (also per item), CLIP cosine and CLIPScore
    per_query.py      each query's share of a metric (fair-tie R@k hit, AP; per-model CIDEr, METEOR statistics)
    bootstrap.py      intervals over test models: cluster bootstrap of those, paired comparisons, seeds pooled
    ptb_tokenizer.py  a pure-python imitation of pycocoevalcap's PTB tokenizer (for machines without Java)
    composed.py       composed retrieval (reference + text -> target): R@K without the reference, CIRR's Rsubset@K
    plots.py          Recall@K curves and the gallery of retrieved shapes per query
    evaluate.py       a model on a split: encode, score, write results.json and TensorBoard under logs/<run>/
"""
