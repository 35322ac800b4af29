"""A generative captioner on top of a frozen CLIP: shape embedding -> K prefix vectors -> transformer decoder.

    from models.caption_decoder import CaptionDecoder, build_vocab, encode_captions, load_captioner
    clip_ids, detok = build_vocab(train_captions)                   # CLIP BPE ids the captions use
    dec = CaptionDecoder(embed_dim=128, clip_ids=clip_ids, detok=detok)
    logits = dec(shape_emb, tokens[:, :-1])                         # teacher forcing; shape_emb (B, D) or (B, V, D)
    dec.generate(shape_emb, decode="beam", beam_size=3)             # -> list of captions
    dec, ckpt = load_captioner("weights/<run>/best.pt")             # a train_captioner.py checkpoint

The design is ClipCap's (CLIP embedding -> mapping network -> prefix for a language model), with a small
decoder trained from scratch instead of GPT-2, so that it trains and runs offline. Tokens are CLIP's own BPE
(it ships inside openai-clip); the decoder's vocabulary is the subset of BPE ids that the training captions use
(plus pad/bos/eos/unk), which keeps the softmax ~100 wide instead of 49,408 and still maps every decoder token
back to a CLIP token, which is what the CLIP-guided loss (`soft_text_embedding`) needs.
A pretrained language model (GPT-2 through `transformers`) is not offered: it would need a download or a cache,
and on short templated captions a from-scratch decoder of ~2M parameters is enough.
"""
import glob
import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # openai-clip imports pkg_resources, whose deprecation warning is noise here
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from clip.clip import _tokenizer  # CLIP's BPE tokenizer, bundled with openai-clip

PAD, BOS, EOS, UNK = 0, 1, 2, 3
N_SPECIAL = 4
SOT_ID, EOT_ID = _tokenizer.encoder["<|startoftext|>"], _tokenizer.encoder["<|endoftext|>"]
MAPPERS = ("mlp", "transformer")
DECODES = ("greedy", "beam", "nucleus")  # the decoding strategies, config key `decode`


# ----------------------------------------------------------------------------- vocabulary
def build_vocab(captions):
    """(clip_ids, detok) from training captions: the sorted CLIP BPE ids they use, and the words that CLIP's
    decoder cannot give back whole ("3d" comes back as "3 d": digits are split into their own word), as
    [decoded, original] pairs that `decode_tokens` puts back."""
    ids, detok = set(), {}
    for c in captions:
        ids.update(_tokenizer.encode(c))
        for word in re.findall(r"[\w'-]+", c.lower()):
            back = _tokenizer.decode(_tokenizer.encode(word)).strip()
            if back != word and " " in back:
                detok[back] = word
    if not ids:
        raise ValueError("build_vocab: no tokens in the captions given")
    return sorted(ids), sorted([k, v] for k, v in detok.items())


def encode_captions(captions, clip_ids, max_len):
    """(N, max_len + 1) LongTensor: BOS, the caption's tokens (at most max_len - 1), EOS, then PAD.
    BPE ids outside the vocabulary become UNK (a validation caption may use a word no training caption has)."""
    index = {c: i + N_SPECIAL for i, c in enumerate(clip_ids)}
    out = torch.full((len(captions), max_len + 1), PAD, dtype=torch.long)
    for n, c in enumerate(captions):
        toks = [BOS] + [index.get(t, UNK) for t in _tokenizer.encode(c)][: max_len - 1] + [EOS]
        out[n, : len(toks)] = torch.tensor(toks)
    return out


def decode_tokens(tokens, clip_ids, detok=()):
    """Decoder token ids -> text, stopping at EOS; specials are dropped."""
    ids = []
    for t in tokens:
        t = int(t)
        if t == EOS:
            break
        if t >= N_SPECIAL:
            ids.append(clip_ids[t - N_SPECIAL])
    text = " ".join(_tokenizer.decode(ids).split())
    text = re.sub(r" ([,.;:!?])", r"\1", text)  # CLIP's decoder puts a space before punctuation
    for back, word in sorted(detok, key=lambda p: -len(p[0])):
        text = re.sub(rf"(?<!\w){re.escape(back)}(?!\w)", word, text)
    return text


def _banned(seq, n):
    """Tokens that would repeat an n-gram already in seq (n-gram blocking); [] when n <= 0."""
    if n <= 0 or len(seq) < n:
        return []
    tail = seq[len(seq) - n + 1:] if n > 1 else []
    return [seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == tail]


# ----------------------------------------------------------------------------- model
class CaptionDecoder(nn.Module):
    def __init__(self, embed_dim, clip_ids, detok=(), prefix_len=4, width=256, layers=3, heads=4, mapper="mlp",
                 mapper_layers=2, max_len=32, dropout=0.1):
        super().__init__()
        if mapper not in MAPPERS:
            raise ValueError(f"unknown mapper {mapper!r}; expected one of {MAPPERS}")
        self.args = dict(embed_dim=embed_dim, clip_ids=list(clip_ids), detok=[list(p) for p in detok],
                         prefix_len=prefix_len, width=width, layers=layers, heads=heads, mapper=mapper,
                         mapper_layers=mapper_layers, max_len=max_len, dropout=dropout)
        self.clip_ids, self.detok = list(clip_ids), [list(p) for p in detok]
        self.prefix_len, self.width, self.max_len, self.mapper_kind = prefix_len, width, max_len, mapper
        n_vocab = N_SPECIAL + len(self.clip_ids)
        # the CLIP token id of every decoder token (pad/unk -> CLIP's pad id 0), for the CLIP-guided loss
        self.register_buffer("clip_token_ids", torch.tensor([0, SOT_ID, EOT_ID, 0] + self.clip_ids), persistent=False)
        if mapper == "mlp":  # ClipCap's MLP: D -> K*W/2 -> K*W, on the (mean) shape embedding
            self.mapper = nn.Sequential(nn.Linear(embed_dim, prefix_len * width // 2), nn.Tanh(),
                                        nn.Linear(prefix_len * width // 2, prefix_len * width))
        else:  # ClipCap's transformer mapper: K learned queries attend to the projected view embeddings
            self.in_proj = nn.Linear(embed_dim, width)
            self.prefix_const = nn.Parameter(torch.randn(prefix_len, width) * 0.02)
            self.mapper = nn.TransformerEncoder(_layer(width, heads, dropout), mapper_layers, enable_nested_tensor=False)
        self.tok_emb = nn.Embedding(n_vocab, width)
        self.pos_emb = nn.Parameter(torch.randn(prefix_len + max_len + 1, width) * 0.02)
        self.blocks = nn.TransformerEncoder(_layer(width, heads, dropout), layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_vocab, bias=False)
        self.head.weight = self.tok_emb.weight  # tied input/output embeddings
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def prefix(self, x):
        """(B, D) shape embeddings or (B, V, D) view embeddings -> (B, K, W) prefix vectors."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.args["embed_dim"]:
            raise ValueError(f"expected (B, {self.args['embed_dim']}) or (B, V, {self.args['embed_dim']}) "
                             f"embeddings, got {tuple(x.shape)}")
        x = F.normalize(x.float(), dim=-1)
        if self.mapper_kind == "mlp":
            x = F.normalize(x.mean(1), dim=-1) if x.dim() == 3 else x  # views -> their mean, as in evaluation
            return self.mapper(x).view(x.shape[0], self.prefix_len, self.width)
        x = x[:, None] if x.dim() == 2 else x
        h = torch.cat([self.prefix_const.expand(x.shape[0], -1, -1), self.in_proj(x)], dim=1)
        return self.mapper(h)[:, : self.prefix_len]

    def logits(self, prefix, tokens):
        """Logits (B, T, vocab) for the token after each of tokens (B, T), given prefix (B, K, W)."""
        if tokens.shape[1] > self.max_len + 1:
            raise ValueError(f"{tokens.shape[1]} tokens: the decoder was built for at most {self.max_len + 1}")
        h = torch.cat([prefix, self.tok_emb(tokens)], dim=1)
        h = h + self.pos_emb[: h.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(h.shape[1], device=h.device)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.ln_f(h[:, self.prefix_len:]))

    def forward(self, x, tokens):
        return self.logits(self.prefix(x), tokens)

    # ------------------------------------------------------------------------- generation
    def _next_logprobs(self, prefix, seqs, no_repeat_ngram):
        logp = F.log_softmax(self.logits(prefix, torch.tensor(seqs, device=prefix.device))[:, -1].float(), -1)
        logp[:, [PAD, BOS, UNK]] = -float("inf")  # never emitted
        for row, seq in enumerate(seqs):
            banned = _banned(seq[1:], no_repeat_ngram)
            if banned:
                logp[row, banned] = -float("inf")
        return logp

    @torch.no_grad()
    def generate_tokens(self, x, decode="greedy", beam_size=3, length_penalty=0.0, top_p=0.9, temperature=1.0,
                        no_repeat_ngram=3, max_len=None):
        """Token lists (without BOS, ending in EOS unless max_len was reached), one per row of x.

        greedy: argmax each step. beam: `beam_size` hypotheses per shape, finished ones scored by
        sum(log p) / length ** length_penalty (0: raw sum, favours short captions; 1: mean log-prob); width 1
        gives greedy's caption. nucleus: sample from the smallest set of tokens whose probability
        reaches top_p (after dividing logits by temperature), using torch's global RNG.
        no_repeat_ngram=n forbids any n-gram from appearing twice (0 = off)."""
        if decode not in DECODES:
            raise ValueError(f"unknown decode={decode!r}; expected one of {DECODES}")
        max_len = min(max_len or self.max_len, self.max_len)
        was_training = self.training
        self.eval()
        try:
            prefix = self.prefix(x)
            if decode == "beam":
                return [self._beam(prefix[i:i + 1], beam_size, length_penalty, no_repeat_ngram, max_len)
                        for i in range(prefix.shape[0])]
            seqs, done = [[BOS] for _ in range(prefix.shape[0])], [False] * prefix.shape[0]
            for _ in range(max_len):
                alive = [i for i, d in enumerate(done) if not d]
                logp = self._next_logprobs(prefix[alive], [seqs[i] for i in alive], no_repeat_ngram)
                if decode == "greedy":
                    nxt = logp.argmax(-1)
                else:
                    nxt = _nucleus(logp, top_p, temperature)
                for i, t in zip(alive, nxt.tolist()):
                    seqs[i].append(t)
                    done[i] = t == EOS
                if all(done):
                    break
            return [s[1:] for s in seqs]
        finally:
            self.train(was_training)

    def _beam(self, prefix, beam_size, length_penalty, no_repeat_ngram, max_len):
        def norm(seq, s):  # length-normalised score; the length counts generated tokens, the end token included
            return s / (len(seq) - 1) ** length_penalty

        beams, finished = [([BOS], 0.0)], []
        for _ in range(max_len):
            logp = self._next_logprobs(prefix.expand(len(beams), -1, -1), [b[0] for b in beams], no_repeat_ngram)
            scores = (torch.tensor([b[1] for b in beams], device=logp.device)[:, None] + logp).flatten()
            top = scores.topk(min(2 * beam_size, scores.numel()))
            new = []
            for rank, (s, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                if s == -float("inf") or len(new) == beam_size:
                    break
                b, tok = divmod(idx, logp.shape[1])
                seq = beams[b][0] + [tok]
                if tok != EOS:
                    new.append((seq, s))
                elif rank < beam_size:  # an ending only counts when it ranks among the top beam_size
                    finished.append((seq, norm(seq, s)))
            finished = sorted(finished, key=lambda f: -f[1])[:beam_size]
            beams = new
            # Hugging Face's rule: done once beam_size hypotheses have ended and no running one scores better,
            # at its current length, than the worst of them (with beam_size 1 this is exactly greedy decoding)
            if not beams or (len(finished) == beam_size and max(norm(q, s) for q, s in beams) <= finished[-1][1]):
                break
        if not finished:  # max_len reached with no hypothesis ended
            finished = [(seq, norm(seq, s)) for seq, s in beams]
        return max(finished, key=lambda f: f[1])[0][1:]

    def generate(self, x, **kw):
        """Captions (strings), one per row of x; keyword arguments as in generate_tokens."""
        return [decode_tokens(t, self.clip_ids, self.detok) for t in self.generate_tokens(x, **kw)]


def _layer(width, heads, dropout):
    return nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                      norm_first=True)


def _nucleus(logp, top_p, temperature):
    probs = F.softmax(logp / max(temperature, 1e-6), -1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the top token is always kept
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1)
    return order.gather(-1, pick).squeeze(-1)


# ----------------------------------------------------------------------------- CLIP guidance
def soft_text_embedding(clip_model, probs, clip_token_ids, eot_pos):
    """CLIP text embedding of a caption given as token distributions, differentiable in probs.

    probs (B, T, vocab): the decoder's distribution over its vocabulary at each caption position (position T-1
    at most is the end token); clip_token_ids (vocab,): the CLIP id of each decoder token; eot_pos (B,): the
    position in probs of each caption's end token. Each position's input is the probability-weighted mix of
    CLIP's token embeddings; the sequence then goes through CLIP's (frozen) text transformer exactly as
    encode_text does, truncated after the longest caption (the causal mask makes the rest irrelevant).
    With one-hot probs this equals CLIP's encode_text (tests/test_captioner.py checks it).
    """
    table = clip_model.token_embedding.weight
    soft = probs.to(table.dtype) @ table[clip_token_ids]
    sot = table[SOT_ID].expand(soft.shape[0], 1, -1)
    x = torch.cat([sot, soft], dim=1)
    length = x.shape[1]
    x = (x + clip_model.positional_embedding[:length]).permute(1, 0, 2)
    for blk in clip_model.transformer.resblocks:  # ResidualAttentionBlock.forward with a shorter causal mask
        # attn_mask is a plain attribute of CLIP's blocks, not a buffer: model.to(device) leaves it on the CPU
        mask = blk.attn_mask[:length, :length].to(x.device, x.dtype) if blk.attn_mask is not None else None
        h = blk.ln_1(x)
        x = x + blk.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + blk.mlp(blk.ln_2(x))
    x = clip_model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), eot_pos + 1] @ clip_model.text_projection


# ----------------------------------------------------------------------------- inputs and loading
def group_views(view_features, view_model, n_models):
    """(n_models, V, D) unit view embeddings from per-view rows and their model index. A model with fewer views
    than the most has its views repeated in turn (the mean stays close, and the mapper's attention has no order)."""
    feats = F.normalize(view_features.float(), dim=-1)
    rows = [torch.nonzero(view_model == m).flatten() for m in range(n_models)]
    if any(len(r) == 0 for r in rows):
        raise ValueError(f"model {next(m for m, r in enumerate(rows) if len(r) == 0)} has no view embeddings")
    most = max(len(r) for r in rows)
    return torch.stack([feats[r[torch.arange(most) % len(r)]] for r in rows])


def load_captioner(path, device="cpu"):
    """(CaptionDecoder in eval mode, checkpoint dict) from a train_captioner.py checkpoint (weights_only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: captioner checkpoint not found (train one with train_captioner.py)") from None
    if not isinstance(ckpt, dict) or "decoder_args" not in ckpt:
        raise ValueError(f"{path}: not a train_captioner.py checkpoint (no 'decoder_args'); "
                         f"a train.py CLIP checkpoint goes to --checkpoint, not --captioner_checkpoint")
    dec = CaptionDecoder(**ckpt["decoder_args"])
    dec.load_state_dict(ckpt["model"])
    return dec.to(device).eval(), ckpt


def newest_captioner(weights_root="weights", name="last.pt"):
    """The newest <weights_root>/*captioner*/<name> (captioner run names contain "captioner"); an error naming
    the pattern when there is none."""
    found = glob.glob(os.path.join(weights_root, "*captioner*", name))
    if not found:
        raise FileNotFoundError(f"no {weights_root}/*captioner*/{name} found (train one with train_captioner.py)")
    return max(found, key=os.path.getmtime)


def decode_kwargs(cfg, **overrides):
    """generate() settings from a (checkpoint's) config, with the non-None overrides on top."""
    kw = dict(decode=cfg["decode"], beam_size=cfg["beam_size"], length_penalty=cfg["length_penalty"],
              top_p=cfg["top_p"], temperature=cfg["temperature"], no_repeat_ngram=cfg["no_repeat_ngram"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


def resolve_clip_checkpoint(captioner_ckpt, override=None):
    """The CLIP checkpoint a captioner was trained on (a relative path: to the cwd, else to the repository)."""
    path = Path(override or captioner_ckpt["clip_checkpoint"])
    repo = Path(__file__).resolve().parents[1]
    if not path.is_file() and not path.is_absolute() and (repo / path).is_file():
        path = repo / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the CLIP checkpoint this captioner was trained on is missing; "
                                f"pass it with --clip_checkpoint")
    return path


def make_captioner(dec, ckpt, device, views_of=None, **overrides):
    """A function (shape embeddings (N, D), model ids) -> captions, with the checkpoint's decoding settings and
    the non-None overrides (decode=, beam_size=, ...). views_of: {model id: (V, D) view embeddings}, needed when
    the captioner reads views (input_mode=views)."""
    kw = decode_kwargs(ckpt["config"], **overrides)
    by_views = ckpt["config"]["input_mode"] == "views"
    if by_views and views_of is None:
        raise ValueError("this captioner reads view sequences (input_mode=views): pass views_of")

    def captioner(shapes, model_ids):
        x = torch.stack([views_of[m] for m in model_ids]) if by_views else shapes
        return dec.generate(x.to(device), **kw)
    return captioner
