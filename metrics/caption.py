"""Caption metrics (BLEU-1..4, METEOR, ROUGE_L, CIDEr) through pycocoevalcap, and two CLIP scores.

    from metrics.caption import evaluate_caption, caption_scores, mean_cosine, clipscore
    evaluate_caption([["a brown wooden chair", "a chair"]], ["A wooden chair."])   # -> {'BLEU-1': ..., 'CIDEr': ...}
    scores, per_item = caption_scores(gold, pred)   # the same, and each item's CIDEr and METEOR statistics
    meteor_from_stats(per_item["METEOR_stats"])      # == scores["METEOR"]; any multiset of items (a bootstrap)

The numbers are the standard COCO-caption ones: captions go through pycocoevalcap's PTBTokenizer
(Stanford CoreNLP 3.4.1 jar, lower-cased, punctuation tokens dropped), then Bleu(4), Meteor (METEOR 1.5 jar
with its paraphrase table), Rouge and Cider (which is CIDEr-D: clipped counts and a length penalty).
Both jars and the paraphrase table ship inside the pycocoevalcap wheel, so nothing is downloaded.
SPICE is left out: it downloads Stanford CoreNLP models on first use.

Java is needed for the tokenizer and for METEOR. Without Java, `meteor=False` still works: the tokenizer is
replaced by metrics.ptb_tokenizer.ptb_tokenize_python, a pure-python imitation (a warning says so).

Per item: corpus CIDEr is the mean of the items' CIDEr (its IDF comes from all the references given), so a subset
or resample of items is scored by averaging theirs. Corpus METEOR is not a mean of segment scores: METEOR pools
the segments' match statistics first, so a multiset of items is scored by giving METEOR their statistics again
(meteor_from_stats), which is what METEOR itself does for the whole corpus.

CLIP scores of a caption against a shape embedding: mean_cosine is the plain mean cosine of paired rows;
clipscore is Hessel et al. 2021's CLIPScore, 2.5 * max(cos, 0) averaged, meant to be computed with a CLIP
independent of the model being evaluated (evaluate_caption.py --clipscore_model) and the candidate prefixed
with CLIPSCORE_PROMPT.
"""
import atexit
import shutil
import threading
import warnings

import numpy as np

from metrics.ptb_tokenizer import ptb_tokenize_python

JAVA_HELP = (
    "Java is needed for METEOR and for pycocoevalcap's PTB tokenizer (both run a .jar shipped with the package). "
    "Install a Java runtime, e.g. `apt-get install default-jre-headless`, or skip METEOR with "
    "meteor=False (`--no_meteor` on the command line); without Java the tokenizer then falls back to a "
    "pure-python imitation of PTBTokenizer."
)
METRIC_KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"]
CLIPSCORE_WEIGHT = 2.5  # Hessel et al.'s w: it stretches CLIP's typical cosines (up to ~0.4) towards [0, 1]
CLIPSCORE_PROMPT = "A photo depicts"  # Hessel et al. prefix every candidate with it


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

    def clean(text, what, empty_ok=False):
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}")
        text = " ".join(text.split())
        if not text and not empty_ok:
            raise ValueError(f"{what} is empty")
        return text

    gts, res = {}, {}
    for i, (gold, pred) in enumerate(zip(gold_captions, pred_captions)):
        refs = [gold] if isinstance(gold, str) else list(gold)
        if not refs:
            raise ValueError(f"gold_captions[{i}] has no reference captions")
        gts[i] = [{"caption": clean(r, f"gold_captions[{i}][{j}]")} for j, r in enumerate(refs)]
        # an empty prediction is a valid (bad) caption, what a decoder emitting its end token first gives: scored
        res[i] = [{"caption": clean(pred, f"pred_captions[{i}]", empty_ok=True)}]
    return gts, res


# ----------------------------------------------------------------------------- tokenization
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
# (it holds ~1.1 GB resident while alive; it also exits by itself when python dies and its stdin closes). The
# exit hook is registered when the first process starts, not at import.
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


def _meteor_process():
    """The running METEOR scorer, started when there is none (call with _meteor_lock held)."""
    global _meteor
    from pycocoevalcap.meteor.meteor import Meteor

    if _meteor is None or _meteor.meteor_p.poll() is not None:
        _meteor = Meteor()
        atexit.unregister(close_meteor)  # registered once, however many processes were started
        atexit.register(close_meteor)
    return _meteor


def _meteor_call(work):
    """work(scorer) under the lock; a failure kills the process, whose line protocol is then out of step."""
    global _meteor
    with _meteor_lock:
        scorer = _meteor_process()
        try:
            return work(scorer)
        except Exception as e:
            proc = scorer.meteor_p
            _kill_meteor(scorer)
            _meteor = None
            raise RuntimeError(f"METEOR (java, exit code {proc.returncode}) failed: {e!r}") from e


def _meteor_eval(scorer, stats):
    """METEOR's EVAL of segment statistics, as pycocoevalcap's compute_score sends it: it answers one score per
    segment, then the corpus score of the pooled statistics."""
    p = scorer.meteor_p
    p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
    p.stdin.flush()
    for _ in stats:
        p.stdout.readline()
    return float(p.stdout.readline().strip())


def _meteor_score(gts, res):
    """(corpus METEOR, each item's statistics line): compute_score's SCORE and EVAL calls, keeping the statistics."""
    def work(scorer):
        stats = [scorer._stat(res[i][0], gts[i]) for i in gts]
        return _meteor_eval(scorer, stats), stats

    return _meteor_call(work)


def meteor_from_stats(stats):
    """Corpus METEOR of the items whose statistics lines (caption_scores' per_item["METEOR_stats"]) are given,
    repeats included: the statistics of all of them are pooled, as for one corpus."""
    if not stats:
        raise ValueError("no METEOR statistics to score")
    return _meteor_call(lambda scorer: _meteor_eval(scorer, list(stats)))


# ----------------------------------------------------------------------------- public API
def evaluate_caption(gold_captions, pred_captions, meteor=True):
    """Corpus-level caption metrics, equal to pycocoevalcap's for the same captions.

    gold_captions: one entry per item, a list of reference strings (or one string).
    pred_captions: one predicted string per item.
    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE_L", "CIDEr": float}; no "METEOR" key when meteor=False.
    CIDEr (CIDEr-D) takes its IDF from the references given, so it is only comparable on the same gold set.
    """
    return caption_scores(gold_captions, pred_captions, meteor)[0]


def caption_scores(gold_captions, pred_captions, meteor=True):
    """(evaluate_caption's dict, per item: {"CIDEr": [float], "METEOR_stats": [METEOR's statistics line]}) from one
    pass of the scorers. The mean of the items' CIDEr is the corpus CIDEr; meteor_from_stats of their statistics
    is the corpus METEOR (no "METEOR_stats" when meteor=False)."""
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
    per_item = {}
    if meteor:
        out["METEOR"], per_item["METEOR_stats"] = _meteor_score(gts, res)
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    cider, per_item["CIDEr"] = Cider().compute_score(gts, res)
    out["CIDEr"] = float(cider)
    per_item["CIDEr"] = [float(c) for c in per_item["CIDEr"]]
    return out, per_item


def _unit_rows(x, name):
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


def paired_cosines(image_features, text_features):
    """Cosine of row i of images with row i of texts, as a float64 array. Features need not be normalised; numpy
    arrays or torch tensors, shape (N, D) or (D,) for one pair."""
    img, txt = _unit_rows(image_features, "image_features"), _unit_rows(text_features, "text_features")
    if img.shape != txt.shape:
        raise ValueError(f"image_features {img.shape} and text_features {txt.shape} must have the same shape")
    return np.sum(img * txt, axis=1)


def mean_cosine(image_features, text_features):
    """Mean cosine of paired rows, a plain float (the `cosine_same_model` of evaluate_caption.py when the features
    come from the evaluated model itself). Not Hessel et al.'s CLIPScore: see clipscore."""
    return float(np.mean(paired_cosines(image_features, text_features)))


def clipscore(image_features, text_features, w=CLIPSCORE_WEIGHT):
    """Hessel et al. 2021's CLIPScore: the mean over pairs of w * max(cos, 0), w = 2.5. Published figures use an
    independent CLIP (ViT-B/32) and candidates prefixed with CLIPSCORE_PROMPT; both are the caller's to supply."""
    return float(np.mean(w * np.maximum(paired_cosines(image_features, text_features), 0.0)))
