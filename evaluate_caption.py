"""Caption metrics (BLEU-1..4, METEOR, ROUGE_L, CIDEr) through pycocoevalcap, and a CLIP cosine score.

    from evaluate_caption import evaluate_caption, clip_score
    evaluate_caption([["a brown wooden chair", "a chair"]], ["A wooden chair."])   # -> {'BLEU-1': ..., 'CIDEr': ...}

Command line (scores retrieval captioning and two baselines, with their CLIP score, on a split):
    python evaluate_caption.py --checkpoint weights/<run>/best.pt --split test [--no_meteor]
    python evaluate_caption.py --captioner generative --captioner_checkpoint weights/<captioner run>/best.pt
(the second adds the generative captioner of train_captioner.py; its CLIP checkpoint is the one it was trained on)

The numbers are the standard COCO-caption ones: captions go through pycocoevalcap's PTBTokenizer
(Stanford CoreNLP 3.4.1 jar, lower-cased, punctuation tokens dropped), then Bleu(4), Meteor (METEOR 1.5 jar
with its paraphrase table), Rouge and Cider (which is CIDEr-D: clipped counts and a length penalty).
Both jars and the paraphrase table ship inside the pycocoevalcap wheel, so nothing is downloaded.
SPICE is deliberately left out: it downloads Stanford CoreNLP models on first use.

Java is needed for the tokenizer and for METEOR. Without Java, `meteor=False` still works: the tokenizer is
replaced by `ptb_tokenize_python`, a pure-python imitation (a warning says so).
"""
import atexit
import re
import shutil
import threading
import warnings

import numpy as np

JAVA_HELP = (
    "Java is needed for METEOR and for pycocoevalcap's PTB tokenizer (both run a .jar shipped with the package). "
    "Install a Java runtime, e.g. `apt-get install default-jre-headless`, or skip METEOR with "
    "meteor=False (`--no_meteor` on the command line); without Java the tokenizer then falls back to a "
    "pure-python imitation of PTBTokenizer."
)
METRIC_KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"]


def java_available():
    return shutil.which("java") is not None


# ----------------------------------------------------------------------------- input checks
def _check_inputs(gold_captions, pred_captions):
    """Return the two lists in pycocoevalcap's {id: [{"caption": str}, ...]} layout, after checking them.

    Whitespace runs (newlines, tabs, \\r) become one space: the tokenizer splits on whitespace anyway, and
    it reads one caption per line, so a stray line break would shift every later caption onto the wrong id.
    """
    if isinstance(pred_captions, str) or isinstance(gold_captions, str):
        raise ValueError("gold_captions and pred_captions must be lists (one entry per item), not a single string")
    gold_captions, pred_captions = list(gold_captions), list(pred_captions)
    if len(gold_captions) != len(pred_captions):
        raise ValueError(f"gold_captions has {len(gold_captions)} entries but pred_captions has {len(pred_captions)}")
    if not pred_captions:
        raise ValueError("no captions to evaluate (both lists are empty)")

    def clean(text, what):
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}")
        text = " ".join(text.split())
        if not text:
            raise ValueError(f"{what} is empty")
        return text

    gts, res = {}, {}
    for i, (gold, pred) in enumerate(zip(gold_captions, pred_captions)):
        refs = [gold] if isinstance(gold, str) else list(gold)
        if not refs:
            raise ValueError(f"gold_captions[{i}] has no reference captions")
        gts[i] = [{"caption": clean(r, f"gold_captions[{i}][{j}]")} for j, r in enumerate(refs)]
        res[i] = [{"caption": clean(pred, f"pred_captions[{i}]")}]
    return gts, res


# ----------------------------------------------------------------------------- tokenization
# Tokens pycocoevalcap drops after PTB tokenization (copied from its ptbtokenizer.py). Note that it lower-cases
# before this filter, so "-LRB-" never matches and brackets survive as "-lrb-"/"-rrb-": we keep that quirk.
PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                    "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-", '"': "''"}
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
                "lemme": ["lem", "me"], "gimme": ["gim", "me"]}
_CONTRACTION = re.compile(r"^(.*[a-z0-9.])(n't|'s|'m|'re|'ve|'d|'ll)$")
# u.s. / e.g. and common titles: the final dot belongs to the word (a short list from PTB's much longer one)
_ABBREVIATION = re.compile(r"^(([a-z]\.)+|(mr|mrs|ms|dr|prof|st|jr|sr|etc|vs|inc|ltd|co|corp|approx)\.)$")


def _split_word(word):
    """PTB-split one whitespace-separated, lower-cased word into tokens."""
    if word in ("'n'", "'s", "'m", "'re", "'ve", "'d", "'ll", "n't"):  # already a PTB token
        return [word]
    head, tail = [], []
    # leading "--", quotes, brackets, "$", and "#" before a number: PTB writes them as separate tokens
    while word:
        if word.startswith("--"):
            head.append("--")
            word = word[2:]
        elif (word[0] in "\"'`([{$" and not re.match(r"'\d+s$", word)) or re.match(r"#\d", word):  # '90s stays
            head.append(_BRACKETS.get(word[0], word[0]))
            word = word[1:]
        else:
            break
    # trailing punctuation, peeled from the end; "..." and runs like "?!" stay one token as in PTB
    while word:
        m = re.search(r"(\.\.\.+|[?!]+|[\"'`)\]},;:%*/-]|\.)$", word)
        if m is None:
            break
        if m.group() == "." and _ABBREVIATION.match(word):
            break
        if m.group().startswith("...") and _ABBREVIATION.match(word[: m.start()] + "."):  # "etc..." -> "etc."
            word, tail = word[: m.start()] + ".", ["..."] + tail
            break
        tail.insert(0, _BRACKETS.get(m.group(), m.group()))
        word = word[: m.start()]
    middle = []
    if word:
        # "--" and ";" split a word; commas split it unless they sit between digits (1,000)
        parts = re.split(r"(--|;|(?<!\d),|,(?!\d))", word)
        for part in parts:
            if not part:
                continue
            if part in _SPLIT_WORDS:
                middle += _SPLIT_WORDS[part]
                continue
            clitics = []
            while m := _CONTRACTION.match(part):  # bed's's -> bed 's 's
                part, clitics = m.group(1), [m.group(2)] + clitics
            middle += [part] + clitics
    return head + middle + tail


def ptb_tokenize_python(caption):
    """Pure-python stand-in for pycocoevalcap's PTBTokenizer (used only when Java is missing).

    Same contract: lower-case, Penn-Treebank split (clitics "n't", "'s", "'re"...; "$", "%", "#" and brackets
    as their own tokens; "cannot" -> "can not"; hyphenated words, decimals, 1,000 and u.s. stay whole), then
    drop the tokens in PTB_PUNCTUATIONS. It matches the Java tokenizer on ordinary captions (see
    tests/test_caption_metrics.py); rare constructs (#hashtags, URLs, emoticons, non-ASCII quotes) may split
    differently.
    """
    tokens = []
    for word in caption.lower().split():
        tokens += _split_word(word)
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATIONS)


def _tokenize(captions_for_image, use_java):
    if not use_java:
        return {k: [ptb_tokenize_python(c["caption"]) for c in v] for k, v in captions_for_image.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize(captions_for_image)
    # the package pairs output lines with ids through zip(): a lost line would silently drop captions
    if any(len(out.get(k, [])) != len(v) for k, v in captions_for_image.items()):
        raise RuntimeError("pycocoevalcap's PTBTokenizer returned fewer lines than captions it was given")
    return out


# ----------------------------------------------------------------------------- METEOR (one JVM per process)
# Starting METEOR's JVM and loading its paraphrase table takes ~10 s, so the scorer is started once and reused;
# the lock serialises threads on its stdin/stdout protocol, and atexit (or close_meteor) ends the java process
# (it holds ~1.1 GB resident while alive; it also exits by itself when python dies and its stdin closes).
_meteor = None
_meteor_lock = threading.Lock()


def _kill_meteor(scorer):
    proc = scorer.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    proc.kill()
    proc.wait()


def close_meteor():
    """Stop the METEOR java process if one is running (also called automatically at exit)."""
    global _meteor
    with _meteor_lock:
        if _meteor is not None:
            _kill_meteor(_meteor)
            _meteor = None


atexit.register(close_meteor)


def _meteor_score(gts, res):
    global _meteor
    from pycocoevalcap.meteor.meteor import Meteor

    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:
            _meteor = Meteor()
        try:
            score, _ = _meteor.compute_score(gts, res)
        except Exception as e:
            # the line protocol is out of step (or java died): never reuse this process
            proc = _meteor.meteor_p
            _kill_meteor(_meteor)
            _meteor = None
            raise RuntimeError(f"METEOR (java, exit code {proc.returncode}) failed: {e!r}") from e
    return float(score)


# ----------------------------------------------------------------------------- public API
def evaluate_caption(gold_captions, pred_captions, meteor=True):
    """Corpus-level caption metrics, equal to pycocoevalcap's for the same captions.

    gold_captions: one entry per item, a list of reference strings (or one string).
    pred_captions: one predicted string per item.
    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE_L", "CIDEr": float}; no "METEOR" key when meteor=False.
    CIDEr (CIDEr-D) takes its IDF from the references given, so it is only comparable on the same gold set.
    """
    gts, res = _check_inputs(gold_captions, pred_captions)
    use_java = java_available()
    if not use_java:
        if meteor:
            raise RuntimeError("java was not found on PATH. " + JAVA_HELP)
        warnings.warn("java not found: captions are tokenized by ptb_tokenize_python, a pure-python imitation of "
                      "pycocoevalcap's PTBTokenizer; scores can differ slightly from the Java pipeline. " + JAVA_HELP)
    gts, res = _tokenize(gts, use_java), _tokenize(res, use_java)

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    if meteor:
        out["METEOR"] = _meteor_score(gts, res)
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def clip_score(image_features, text_features):
    """Mean cosine similarity of paired rows (row i of images with row i of texts), as a plain float.

    Features need not be normalised. numpy arrays or torch tensors, shape (N, D) or (D,) for one pair.
    This is the raw mean cosine, not Hessel et al.'s CLIPScore (2.5 * max(cos, 0)).
    """
    def as_2d(x, name):
        if hasattr(x, "detach"):  # torch tensor, possibly fp16 or on the GPU
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, D) with N >= 1, got {x.shape}")
        norms = np.linalg.norm(x, axis=1)
        if not np.all(norms > 0):
            raise ValueError(f"{name} row {int(np.argmin(norms))} has zero norm (cosine undefined)")
        return x / norms[:, None]

    img, txt = as_2d(image_features, "image_features"), as_2d(text_features, "text_features")
    if img.shape != txt.shape:
        raise ValueError(f"image_features {img.shape} and text_features {txt.shape} must have the same shape")
    return float(np.mean(np.sum(img * txt, axis=1)))


# --- CLI ---
GENERIC_CAPTION = "a 3D model of an object"


def retrieval_captions(wrapper, shapes, train_captions, device, batch_size=256):
    """For each shape embedding, the best-matching caption among the TRAINING split's captions (never the
    evaluated split's: that would copy the answer)."""
    import torch

    from models.clip_wrapper import tokenize

    with torch.no_grad():
        bank = torch.cat([wrapper.encode_text(tokenize(train_captions[i:i + batch_size]).to(device)).float().cpu()
                          for i in range(0, len(train_captions), batch_size)])
    bank = torch.nn.functional.normalize(bank, dim=-1)
    best = (torch.nn.functional.normalize(shapes, dim=-1) @ bank.T).argmax(1)
    return [train_captions[i] for i in best.tolist()]


def caption_report(wrapper, preprocess, jsonl, split, device, meteor=True, feats=None, captioners=None,
                   num_workers=2):
    """Scores of retrieval captioning, any extra captioners and the two baselines on a split:
    {"captioners": {name: {metric: value, ..., "CLIPScore": ...}}, "examples": [...]}.
    `captioners` maps extra names to functions (shape embeddings, model ids) -> captions."""
    import torch

    from eval_recall import encode_split, shape_level
    from models.clip_wrapper import tokenize
    from multiview_dataset import MultiViewDataset
    from meshes.captions import CATEGORY_NOUNS

    if feats is None:
        feats, ds = encode_split(wrapper, preprocess, jsonl, split, device, num_workers=num_workers)
    else:
        feats, ds = feats
    shapes, models = shape_level(feats, ds, "mean")
    train_caps = sorted({c for caps in MultiViewDataset(jsonl, "train", preprocess, mode="eval").captions for c in caps})
    gold = [ds.captions[m] for m in models]
    preds = {"retrieval": retrieval_captions(wrapper, shapes, train_caps, device)}
    for name, fn in (captioners or {}).items():
        preds[name] = fn(shapes, [ds.model_ids[m] for m in models])
    preds["generic"] = [GENERIC_CAPTION] * len(models)
    preds["category"] = ["a " + CATEGORY_NOUNS.get(ds.categories[m], ds.categories[m]) for m in models]
    report = {}
    for name, captions in preds.items():
        scores = evaluate_caption(gold, captions, meteor=meteor)
        with torch.no_grad():
            text = wrapper.encode_text(tokenize(captions).to(device)).float().cpu()
        scores["CLIPScore"] = clip_score(shapes, text)
        report[name] = scores
    examples = [{"model_id": ds.model_ids[m], "references": gold[i], **{n: p[i] for n, p in preds.items()}}
                for i, m in enumerate(models[:8])]
    return {"split": split, "n_models": len(models), "captioners": report, "examples": examples}


def format_report(report, label):
    keys = [k for k in METRIC_KEYS + ["CLIPScore"] if k in next(iter(report["captioners"].values()))]
    lines = [f"captions for {report['n_models']} {report['split']} models, {label}",
             f"{'captioner':<12}" + "".join(f"{k:>10}" for k in keys)]
    for name, scores in report["captioners"].items():
        lines.append(f"{name:<12}" + "".join(f"{scores[k]:10.3f}" for k in keys))
    return "\n".join(lines)


def main(argv=None):
    import argparse
    from pathlib import Path

    from models.clip_wrapper import add_model_args, check_model_args, load_for_eval
    from utils import get_device, write_json

    ap = argparse.ArgumentParser(description="Caption quality (BLEU, METEOR, ROUGE-L, CIDEr, CLIPScore) on a split.")
    add_model_args(ap)
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--captioner", default="retrieval", choices=("retrieval", "generative"),
                    help="retrieval: the best-matching training caption; generative: also train_captioner.py's "
                         "decoder (with --captioner_checkpoint)")
    ap.add_argument("--captioner_checkpoint", default=None, help="weights/<run>/best.pt from train_captioner.py")
    ap.add_argument("--decode", default=None, choices=("greedy", "beam", "nucleus"),
                    help="generative decoding; default: the captioner's training config")
    ap.add_argument("--no_meteor", action="store_true", help="skip METEOR (it needs Java)")
    ap.add_argument("--output", default=None, help="default: captions_<split>.json next to the checkpoint")
    args = ap.parse_args(argv)
    captioner = None
    if args.captioner == "generative":
        captioner = _load_generative(ap, args)
    elif args.captioner_checkpoint:
        ap.error("--captioner_checkpoint goes with --captioner generative")
    check_model_args(ap, args)
    if not args.no_meteor and not java_available():
        raise SystemExit(f"error: {JAVA_HELP}")
    device = get_device(args.device)
    wrapper, preprocess, label, run = load_for_eval(args.checkpoint, args.clip_model, args.clip_weights, device)
    jsonl = args.data_jsonl or run["data_jsonl"]
    output = args.output or (Path(args.checkpoint).with_name(f"captions_{args.split}.json") if args.checkpoint
                             else run["run_dir"] / f"captions_{args.split}.json")
    extra, feats = {}, None
    if captioner is not None:
        from models.caption_decoder import make_captioner
        from eval_recall import encode_split
        from models.caption_decoder import group_views

        dec, cap_ckpt = captioner
        feats = encode_split(wrapper, preprocess, jsonl, args.split, device)
        views = group_views(feats[0]["image"], feats[0]["image_model"], len(feats[1].model_ids))
        views_of = dict(zip(feats[1].model_ids, views))
        extra["generative"] = make_captioner(dec.to(device), cap_ckpt, device, views_of=views_of, decode=args.decode)
        output = args.output or Path(args.captioner_checkpoint).with_name(f"captions_{args.split}.json")
        label += f"; generative captioner {args.captioner_checkpoint}"
    report = caption_report(wrapper, preprocess, jsonl, args.split, device, meteor=not args.no_meteor, feats=feats,
                            captioners=extra)
    report["model"] = label
    write_json(output, report)
    print(format_report(report, label))
    print(f"wrote {output}")
    return 0


def _load_generative(ap, args):
    """(decoder, checkpoint) of --captioner_checkpoint; fills in --checkpoint with the CLIP it was trained on."""
    from pathlib import Path

    from models.caption_decoder import resolve_clip_checkpoint
    from models.caption_decoder import load_captioner

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
    return dec, ckpt


if __name__ == "__main__":
    raise SystemExit(main())
