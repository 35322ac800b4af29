"""metrics.caption against pycocoevalcap called directly (corpus scores, per-item CIDEr, METEOR of a resample of
items), mean_cosine and Hessel et al.'s CLIPScore against hand computations, and the pure-python PTB tokenizer
against the Java one.

    .venv/bin/python -m pytest -q tests/test_caption_metrics.py

METEOR starts a JVM and loads its paraphrase table (~10 s on 2 cores), twice here: ours and the reference's.
"""
import shutil
import warnings

import numpy as np
import pytest

import metrics.caption as ec
from metrics.ptb_tokenizer import ptb_tokenize_python

needs_java = pytest.mark.skipif(
    shutil.which("java") is None,
    reason="java not on PATH: install the Java runtime package default-jre-headless (pycocoevalcap's PTB tokenizer "
           "and METEOR are .jar files)")

# mixed case, punctuation, 1-3 references; item 0 and 3 have a reference identical to the prediction
GOLD = [
    ["A brown wooden chair with four legs.", "a wooden chair", "Chair made of WOOD, brown."],
    ["A round white table!", "white round dining table"],
    "A grey fabric sofa with three seats.",
    ["An IKEA bed frame, made of pine.", "a bed", "a pine bed frame with slats"],
    ["a tall bookcase; it's black", "black bookshelf with five shelves"],
    ["A desk (L-shaped) with two drawers"],
]
PRED = [
    "a wooden chair",
    "A white table, round.",
    "a grey sofa with three cushions",
    "An IKEA bed frame, made of pine.",
    "a black bookcase that's tall",
    "an l-shaped desk with drawers",
]
UNRELATED = ["purple elephants dance", "quantum soup", "the sky is loud", "seven angry trumpets",
             "rain over mountains", "my keyboard sings"]


def reference_scores(gold, pred):
    """The standard COCO pipeline, written out independently of evaluate_caption."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": c} for c in ([g] if isinstance(g, str) else g)] for i, g in enumerate(gold)}
    res = {i: [{"caption": p}] for i, p in enumerate(pred)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:  # do not leave the reference's JVM behind
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3], "METEOR": meteor_score,
            "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}


@pytest.fixture(scope="module")
def ours():
    yield ec.evaluate_caption(GOLD, PRED)
    ec.close_meteor()


@needs_java
def test_matches_pycocoevalcap(ours):
    ref = reference_scores(GOLD, PRED)
    assert list(ours) == ec.METRIC_KEYS
    assert all(type(v) is float for v in ours.values())
    for k in ec.METRIC_KEYS:
        assert ours[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    assert 0 < ours["BLEU-4"] < 1 and 0 < ours["METEOR"] < 1 and ours["CIDEr"] > 0


@needs_java
def test_perfect_and_unrelated(ours):
    refs = [[g] if isinstance(g, str) else [g[0]] for g in GOLD]  # one reference each
    perfect = ec.evaluate_caption(refs, [r[0] for r in refs])
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE_L"] == pytest.approx(1.0, abs=1e-12)
    unrelated = ec.evaluate_caption(refs, UNRELATED)
    for k in ec.METRIC_KEYS:
        assert unrelated[k] < perfect[k], k


@needs_java
def test_single_string_gold_is_a_one_element_list():
    a = ec.evaluate_caption(["a brown chair", "a table"], ["a chair", "a round table"], meteor=False)
    b = ec.evaluate_caption([["a brown chair"], ["a table"]], ["a chair", "a round table"], meteor=False)
    assert a == b
    assert "METEOR" not in a and list(a) == [k for k in ec.METRIC_KEYS if k != "METEOR"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 entries.*2"):
        ec.evaluate_caption([["a"], ["b"], ["c"]], ["a", "b"])
    with pytest.raises(ValueError, match=r"gold_captions\[1\] has no reference"):
        ec.evaluate_caption([["a"], []], ["a", "b"])
    with pytest.raises(ValueError, match=r"gold_captions\[0\]\[1\] is empty"):
        ec.evaluate_caption([["a", ""]], ["a"])
    with pytest.raises(ValueError, match="empty"):
        ec.evaluate_caption([], [])


@needs_java
def test_an_empty_prediction_is_scored_not_refused():
    """A decoder that emits its end token first gives "": a bad caption, scored as pycocoevalcap scores an empty
    candidate (BLEU's brevity penalty, no n-gram matches), not a crash of the validation that meets it."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gold, pred = [["a red chair", "a chair"], ["a blue table"], ["a bed"]], ["a red chair", "", "a bed"]
    got = ec.evaluate_caption(gold, pred, meteor=False)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(gold)})
    res = tok.tokenize({i: [{"caption": c}] for i, c in enumerate(pred)})
    assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert got["CIDEr"] < ec.evaluate_caption(gold, ["a red chair", "a blue table", "a bed"], meteor=False)["CIDEr"]


def test_without_java(monkeypatch):
    monkeypatch.setattr(ec.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        ec.evaluate_caption(GOLD, PRED)
    with pytest.warns(UserWarning, match="pure-python"):
        fallback = ec.evaluate_caption(GOLD, PRED, meteor=False)
    assert "METEOR" not in fallback and list(fallback) == [k for k in ec.METRIC_KEYS if k != "METEOR"]


@needs_java
def test_without_java_scores_as_with_java(monkeypatch):
    """The fallback tokenizer matches Java on these captions, so the scores are the same."""
    monkeypatch.setattr(ec.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="pure-python"):
        fallback = ec.evaluate_caption(GOLD, PRED, meteor=False)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ec.evaluate_caption(GOLD, PRED, meteor=False) == pytest.approx(fallback, rel=1e-12)


def test_meteor_process_is_ended_after_a_failure(monkeypatch):
    """A scorer whose protocol breaks must not stay alive nor be reused."""
    import subprocess

    import pycocoevalcap.meteor.meteor as pm

    started = []

    class Broken:
        def __init__(self):
            started.append(self)
            self.meteor_p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)

        def _stat(self, hypothesis, references):
            raise ValueError("could not convert string to float: ''")

    ec.close_meteor()
    monkeypatch.setattr(pm, "Meteor", Broken)
    with pytest.raises(RuntimeError, match="METEOR"):
        ec._meteor_score({0: ["a"]}, {0: ["a"]})
    assert ec._meteor is None and len(started) == 1
    assert started[0].meteor_p.poll() is not None  # the child process was ended


TOKENIZER_CASES = [
    "A brown wooden chair, with four legs.", "The TABLE's top is round!", "Don't sit: it's a (small) stool...",
    'A "modern" sofa -- grey/blue & soft; 3.5 m wide, 50% off $20.', "can't, won't, I'm, we're, they've, he'd",
    "U.S. made chair e.g. oak?", "a chair's back-rest", "item #3 @home", "it is 'quoted' here", "what?!",
    "o'neill chair", "cannot gonna", "1,000 chairs", "x -- y - z", "[box] {tag}", "desk*", "it's 5' tall",
    "rock 'n' roll", "ok.", "the dogs' bed", "A chair. A table.", "an IKEA-style bed", "a '90s chair-- etc...",
    "Mr. Smith's desk w/ legs", "the U.S.'s bed's", "--a shelf--", "(U.S.)...", "#3 sofa", "\"Chair,\" she said.",
]


@needs_java
def test_python_tokenizer_matches_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(TOKENIZER_CASES)})
    for i, s in enumerate(TOKENIZER_CASES):
        assert ptb_tokenize_python(s) == java[i][0], s


def test_mean_cosine():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(7, 16)) * 3, rng.normal(size=(7, 16))
    manual = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(img, txt)])
    score = ec.mean_cosine(img, txt)
    assert type(score) is float and score == pytest.approx(manual, rel=1e-10)
    torch = pytest.importorskip("torch")
    assert ec.mean_cosine(torch.tensor(img), torch.tensor(txt)) == pytest.approx(manual, rel=1e-5)
    assert ec.mean_cosine(img[0], 2 * img[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        ec.mean_cosine(img, txt[:3])
    with pytest.raises(ValueError, match="zero norm"):
        ec.mean_cosine(np.zeros((1, 4)), np.ones((1, 4)))


def test_clipscore_is_hessels_formula():
    """CLIPScore = mean of 2.5 * max(cos, 0): cosines 1, 0.6, 0, -0.8 by construction (unnormalised rows)."""
    img = np.array([[2.0, 0.0], [3.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    txt = np.array([[7.0, 0.0], [0.6, 0.8], [4.0, 0.0], [-0.8, 0.6]])
    assert ec.clipscore(img, txt) == pytest.approx(2.5 * (1.0 + 0.6 + 0.0 + 0.0) / 4, rel=1e-12)
    assert ec.mean_cosine(img, txt) == pytest.approx((1.0 + 0.6 + 0.0 - 0.8) / 4, rel=1e-12)
    assert ec.clipscore(img, txt, w=1.0) == pytest.approx((1.0 + 0.6) / 4, rel=1e-12)


@needs_java
def test_per_item_cider_is_pycocoevalcaps_per_image_cider():
    """Each item's CIDEr is what pycocoevalcap returns per image (IDF from all the references), and their mean is
    the corpus CIDEr."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    scores, per_item = ec.caption_scores(GOLD, PRED, meteor=False)
    assert scores == ec.evaluate_caption(GOLD, PRED, meteor=False) and "METEOR_stats" not in per_item
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in ([g] if isinstance(g, str) else g)] for i, g in enumerate(GOLD)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(PRED)})
    assert per_item["CIDEr"] == pytest.approx(list(Cider().compute_score(gts, res)[1]), rel=1e-12)
    assert np.mean(per_item["CIDEr"]) == pytest.approx(scores["CIDEr"], rel=1e-12)


@needs_java
def test_meteor_of_a_resample_is_meteor_of_the_repeated_items(ours):
    """A bootstrap resample of items (repeats included) scored from the statistics equals METEOR run on the
    resampled captions themselves; all items together give the corpus METEOR."""
    scores, per_item = ec.caption_scores(GOLD, PRED)
    assert scores["METEOR"] == ours["METEOR"] == ec.meteor_from_stats(per_item["METEOR_stats"])
    for picks in ([0, 0, 3, 5, 5, 5], [1, 2, 2, 4]):
        want = ec.evaluate_caption([GOLD[i] for i in picks], [PRED[i] for i in picks])["METEOR"]
        assert ec.meteor_from_stats([per_item["METEOR_stats"][i] for i in picks]) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="no METEOR statistics"):
        ec.meteor_from_stats([])


def test_evaluate_caption_cli_module_reexports_and_baselines():
    import evaluate_caption

    assert evaluate_caption.evaluate_caption is ec.evaluate_caption  # tasks/captioner.py imports it from there
    base = evaluate_caption.baseline_captions(["misc", "chair", "table"])
    assert base["category"] == ["an object", "a chair", "a table"]  # the CATEGORY_NOUNS noun, with a/an
    assert base["generic"] == [evaluate_caption.GENERIC_CAPTION] * 3
