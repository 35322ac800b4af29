"""Caption quality on a split: retrieval captioning, an optional generative captioner and two baselines, each
scored with BLEU-1..4, METEOR, ROUGE_L, CIDEr (metrics/caption.py) and CLIP cosines of caption and shape.

    python evaluate_caption.py --checkpoint weights/<run>/best.pt --split test [--no_meteor]
    python evaluate_caption.py --captioner generative --captioner_checkpoint weights/<captioner run>/best.pt
    python evaluate_caption.py --checkpoint ... --clipscore_model ViT-B/32        # adds Hessel et al.'s CLIPScore
(the second adds the generative captioner of train_captioner.py; its CLIP checkpoint is the one it was trained on)

Two CLIP scores, named apart: `cosine_same_model` is the mean cosine of caption and shape under the evaluated model
itself (retrieval captions are the argmax of that cosine, so it favours them by construction); `CLIPScore`, only
with --clipscore_model, is the published metric (Hessel et al. 2021): 2.5 * max(cos, 0) averaged, under another
CLIP, the candidate prefixed "A photo depicts", the shape its views' pooled embedding. --clipscore_model takes an
OpenAI name whose weights are already in ~/.cache/clip, or a weights file; nothing is downloaded. "tiny" (random
init) only stands in for tests, and the report says so (`clipscore_model`).

Retrieval captioning gives each shape the best-matching caption of the TRAINING split. Baselines: "generic" (the
same caption for every shape), "category" (its category noun: "a chair", "an object") and, unless --no_baselines,
"nearest_caption" (the first caption of the training model whose renders look most alike, 16x16 grey thumbnails:
no text-image learning; metrics/baselines.py).
Writes logs/<run>/captions_<split>.json (or into --out_dir); with --captioner generative, <run> is the captioner's
run. METEOR needs Java (see metrics.caption.JAVA_HELP); `from evaluate_caption import evaluate_caption` keeps working.
"""
import argparse
import warnings
from pathlib import Path

import torch.nn.functional as F

from features import encode_split, encode_texts
from meshes.captions import CATEGORY_NOUNS, with_article
from metrics.baselines import nearest_captions
from metrics.caption import (CLIPSCORE_PROMPT, JAVA_HELP, METRIC_KEYS, caption_scores, clipscore, java_available,
                            mean_cosine)
# re-exported for tasks/captioner.py, which validates with it
from metrics.caption import evaluate_caption  # noqa: F401
from metrics.evaluate import add_eval_args, load_eval_model, save_results
from metrics.retrieval import shape_gallery
from multiview_dataset import MultiViewDataset

GENERIC_CAPTION = "a 3D model of an object"


def retrieval_captions(wrapper, shapes, train_captions, device, batch_size=256):
    """For each shape embedding, the best-matching caption among the TRAINING split's captions (never the
    evaluated split's: that would copy the answer)."""
    bank = F.normalize(encode_texts(wrapper, train_captions, device, batch_size), dim=-1)
    best = (F.normalize(shapes, dim=-1) @ bank.T).argmax(1)
    return [train_captions[i] for i in best.tolist()]


def baseline_captions(categories):
    """The two captioners that look at nothing (generic) or at the category alone, one caption per shape."""
    return {"generic": [GENERIC_CAPTION] * len(categories),
            "category": [with_article(CATEGORY_NOUNS.get(c, c)) for c in categories]}


def caption_report(wrapper, preprocess, jsonl, split, device, meteor=True, feats=None, captioners=None,
                   num_workers=2, baselines=True, clipscore_model=None, per_model=False):
    """Scores of retrieval captioning, any extra captioners and the baselines on a split:
    {"captioners": {name: {metric: value, ..., "cosine_same_model": ...}}, "model_ids": [...], "examples": [...]}.
    `captioners` maps extra names to functions (shape embeddings, model ids) -> captions; feats: encode_split's
    (features, dataset) when already computed; baselines: also the nearest_caption shortcut baseline;
    clipscore_model: (wrapper, preprocess, label) of an independent CLIP, which adds "CLIPScore" to every row and
    "clipscore_model" (its label); per_model: also "per_model": {name: caption_scores' per-item lists, in
    model_ids order}."""
    feats, ds = feats or encode_split(wrapper, preprocess, jsonl, split, device, num_workers=num_workers)
    shapes, models = shape_gallery(feats["image"], feats["image_model"], "mean")
    train_ds = MultiViewDataset(jsonl, "train", preprocess, mode="eval")
    train_caps = sorted({c for caps in train_ds.captions for c in caps})
    gold = [ds.captions[m] for m in models]
    preds = {"retrieval": retrieval_captions(wrapper, shapes, train_caps, device)}
    for name, fn in (captioners or {}).items():
        preds[name] = fn(shapes, [ds.model_ids[m] for m in models])
    preds.update(baseline_captions([ds.categories[m] for m in models]))
    if baselines:
        nearest = nearest_captions(jsonl, split)  # in the dataset's model order, as `models` indexes it
        preds["nearest_caption"] = [nearest[m] for m in models]
    independent = None
    if clipscore_model:
        independent = _independent_shapes(clipscore_model, jsonl, split, device, models, num_workers)
    report, per_item = {}, {}
    for name, captions in preds.items():
        scores, per_item[name] = caption_scores(gold, captions, meteor=meteor)
        scores["cosine_same_model"] = mean_cosine(shapes, encode_texts(wrapper, captions, device))
        if independent is not None:
            texts = [f"{CLIPSCORE_PROMPT} {c}" for c in captions]
            scores["CLIPScore"] = clipscore(independent, encode_texts(clipscore_model[0], texts, device))
        report[name] = scores
    examples = [{"model_id": ds.model_ids[m], "references": gold[i], **{n: p[i] for n, p in preds.items()}}
                for i, m in enumerate(models[:8])]
    out = {"split": split, "n_models": len(models), "captioners": report,
           "model_ids": [ds.model_ids[m] for m in models], "examples": examples}
    if independent is not None:
        out["clipscore_model"] = clipscore_model[2]
    if per_model:
        out["per_model"] = per_item
    return out


def _independent_shapes(clipscore_model, jsonl, split, device, models, num_workers):
    """The split's shape embeddings under the independent CLIP, in the order of `models` (the evaluated model's)."""
    wrapper, preprocess, _ = clipscore_model
    feats, _ = encode_split(wrapper, preprocess, jsonl, split, device, num_workers=num_workers)
    shapes, order = shape_gallery(feats["image"], feats["image_model"], "mean")
    if list(order) != list(models):
        raise RuntimeError("the independent CLIP saw the split's models in another order")
    return shapes


def format_report(report, label):
    first = next(iter(report["captioners"].values()))
    keys = [k for k in METRIC_KEYS + ["cosine_same_model", "CLIPScore"] if k in first]
    widths = [max(10, len(k) + 2) for k in keys]
    lines = [f"captions for {report['n_models']} {report['split']} models, {label}",
             f"{'captioner':<16}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths))]
    for name, scores in report["captioners"].items():
        lines.append(f"{name:<16}" + "".join(f"{scores[k]:{w}.3f}" for k, w in zip(keys, widths)))
    if "clipscore_model" in report:
        lines.append(f"CLIPScore under {report['clipscore_model']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Caption quality (BLEU, METEOR, ROUGE-L, CIDEr, CLIP cosines) on a split.")
    add_eval_args(ap, splits=("val", "test"), out_dir_help="default: logs/<run>/ (the captioner's run with "
                                                           "--captioner generative); the file is captions_<split>.json")
    ap.add_argument("--captioner", default="retrieval", choices=("retrieval", "generative"),
                    help="retrieval: the best-matching training caption; generative: also train_captioner.py's "
                         "decoder (with --captioner_checkpoint)")
    ap.add_argument("--captioner_checkpoint", default=None, help="weights/<run>/best.pt from train_captioner.py")
    ap.add_argument("--decode", default=None, choices=("greedy", "beam", "nucleus"),
                    help="generative decoding; default: the captioner's training config")
    ap.add_argument("--no_meteor", action="store_true", help="skip METEOR (it needs Java)")
    ap.add_argument("--clipscore_model", default=None,
                    help="add Hessel et al.'s CLIPScore under this independent CLIP: an OpenAI name whose weights "
                         "are in ~/.cache/clip, or a weights file (never downloaded); 'tiny' only stands in for tests")
    args = ap.parse_args(argv)
    captioner = None
    if args.captioner == "generative":
        captioner = _load_generative(ap, args)
    elif args.captioner_checkpoint:
        ap.error("--captioner_checkpoint goes with --captioner generative")
    if not args.no_meteor and not java_available():
        raise SystemExit(f"error: {JAVA_HELP}")
    run = load_eval_model(ap, args, "")
    independent = _load_clipscore_model(ap, args.clipscore_model, run.device) if args.clipscore_model else None
    extra, feats = {}, None
    if captioner is not None:
        extra["generative"], feats = _generative_captioner(captioner, run, args)
        run.label += f"; generative captioner {args.captioner_checkpoint}"
    report = caption_report(run.wrapper, run.preprocess, run.jsonl, args.split, run.device, meteor=not args.no_meteor,
                            feats=feats, captioners=extra, num_workers=args.num_workers, baselines=args.baselines,
                            clipscore_model=independent)
    report["model"] = run.label
    path = save_results(run.out_dir, report, name=f"captions_{args.split}.json")
    print(format_report(report, run.label))
    print(f"wrote {path}")
    return 0


def _load_clipscore_model(ap, name, device):
    """(wrapper, preprocess, label) of --clipscore_model, from weights already on this machine: an OpenAI name is
    read from ~/.cache/clip (never downloaded), a path as a weights file, "tiny" built at random (a stand-in)."""
    from models.clip_weights import clip, load_weights, weights_fingerprint
    from models.clip_wrapper import TINY, CLIPWrapper, load_clip, model_label, weights_note, weights_path

    if name == TINY:
        model, preprocess = load_clip(TINY, device)
        label = f"{model_label(TINY)}: a stand-in, not a CLIP that published CLIPScores use"
    elif name in clip.available_models():
        path = weights_path(name)
        if not path.is_file():
            ap.error(f"--clipscore_model {name}: its weights are not at {path}, and nothing is downloaded here; "
                     f"put the file there or pass its path")
        model, preprocess = load_clip(name, device, weights=str(path))
        label = f"{model_label(name)}{weights_note(weights_fingerprint(path))}"
    elif Path(name).is_file():
        try:
            model, preprocess, arch = load_weights(name, device)
        except ValueError as e:  # not a CLIP weights file: say so, as for the other model arguments
            ap.error(f"--clipscore_model {e}")
        name_of = model_label(arch) if arch else "CLIP of no OpenAI architecture"
        label = f"{name_of}{weights_note(weights_fingerprint(name))}"
    else:
        ap.error(f"--clipscore_model {name}: neither a weights file nor a CLIP name "
                 f"({', '.join(clip.available_models())})")
    return CLIPWrapper(model, "zero_shot").eval(), preprocess, label


def _generative_captioner(captioner, run, args):
    """(captioning function of the decoder, encode_split's (features, dataset) of the split it reads)."""
    from models.caption_decoder import group_views, make_captioner

    dec, ckpt = captioner
    feats, ds = encode_split(run.wrapper, run.preprocess, run.jsonl, args.split, run.device,
                             num_workers=args.num_workers)
    views_of = dict(zip(ds.model_ids, group_views(feats["image"], feats["image_model"], len(ds.model_ids))))
    fn = make_captioner(dec.to(run.device), ckpt, run.device, views_of=views_of, decode=args.decode)
    return fn, (feats, ds)


def _load_generative(ap, args):
    """(decoder, checkpoint) of --captioner_checkpoint; fills in --checkpoint with the CLIP it was trained on, and
    the default --out_dir with the captioner's run folder under logs/."""
    from models.caption_decoder import load_captioner, resolve_clip_checkpoint

    if not args.captioner_checkpoint:
        ap.error("--captioner generative needs --captioner_checkpoint weights/<captioner run>/best.pt")
    if args.clip_model:
        ap.error("--captioner generative reads the shapes with the CLIP checkpoint it was trained on, not --clip_model")
    try:
        dec, ckpt = load_captioner(args.captioner_checkpoint)
        if not args.checkpoint:
            args.checkpoint = str(resolve_clip_checkpoint(ckpt))
        elif Path(args.checkpoint).resolve() != Path(ckpt["clip_checkpoint"]).resolve():
            warnings.warn(f"the captioner was trained on the embeddings of {ckpt['clip_checkpoint']}, but shapes are "
                          f"embedded with {args.checkpoint}: its captions only make sense for the CLIP it was trained on")
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    # logs/<the captioner checkpoint's folder name>, as load_for_eval names a CLIP run's folder
    args.out_dir = args.out_dir or str(Path("logs") / Path(args.captioner_checkpoint).resolve().parent.name)
    return dec, ckpt


if __name__ == "__main__":
    raise SystemExit(main())
