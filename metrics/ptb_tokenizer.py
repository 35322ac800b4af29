"""A pure-python imitation of pycocoevalcap's PTBTokenizer, for machines without Java.

    from metrics.ptb_tokenizer import ptb_tokenize_python
    ptb_tokenize_python("Don't sit: it's a (small) stool...")   # -> "do n't sit it 's a -lrb- small -rrb- stool"

metrics.caption uses it only when `java` is missing (and METEOR is off); tests/test_caption_metrics.py checks it
against the Java tokenizer on a list of captions.
"""
import re

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
