"""Loading OpenAI CLIP (or a tiny random one for tests), train.py checkpoints, and a wrapper that makes freezing
explicit.

    model, preprocess = load_clip("ViT-B/32", device)                    # pretrained, downloads once to ~/.cache/clip
    model, preprocess = load_clip("ViT-B/32", device, weights="ViT-B-32.pt")  # a local weights file
    model, preprocess = load_clip("tiny", device)                        # random init, for tests / offline demo
    wrapper, preprocess, ckpt = load_checkpoint("weights/<run>/best.pt", device)
    wrapper = CLIPWrapper(model, "linear")   # zero_shot | linear | full | image | text

A weights file is OpenAI's TorchScript archive or a torch.save'd state dict; the architecture comes from the
tensors' shapes, and a model name that disagrees with them is an error. A checkpoint holding every tensor loads on
its own; a linear probe's (only what it trains) loads over its base weights, checked against the
weights_fingerprint recorded at training time.

The wrapper splits each tower into a frozen-able backbone and its projection, so that a linear probe can cache
the backbone's (pre-projection) features once and train only the projections and the temperature.
"""
import contextlib
import weakref
import os
from pathlib import Path

import torch
from torch import nn

# clip comes through models.clip_weights: it imports it under a guard against openai-clip's pkg_resources warning
from models.clip_weights import (OPENAI_ARCHS, arch_name, build_clip, clip, describe, describe_arch, openai_args,
                                 read_weights, safe_load, state_args, weights_fingerprint)

TINY = "tiny"
TINY_LABEL = "tiny (random init, trained from scratch)"
TRAIN_MODES = ("zero_shot", "linear", "full", "image", "text")
# The tiny CLIP: a 4-layer ViT on 64 px images and a 3-layer text transformer, with CLIP's real BPE tokenizer.
TINY_ARGS = dict(embed_dim=128, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=4,
                 transformer_layers=3)
CLIP_CACHE = os.path.expanduser("~/.cache/clip")  # where clip.load downloads OpenAI's files


def model_label(name):
    """How results name a model: a tiny model is never called CLIP."""
    return TINY_LABEL if name == TINY else f"CLIP {name}"


def weights_path(name, weights=None):
    """The file load_clip(name, weights=weights) reads: `weights`, else OpenAI's download; None for tiny."""
    if name == TINY:
        return None
    return Path(weights) if weights else Path(CLIP_CACHE) / os.path.basename(clip.clip._MODELS[name])


def clip_fingerprint(name, weights=None):
    """weights_fingerprint of the base file load_clip(name, weights=weights) reads, or None for tiny."""
    path = weights_path(name, weights)
    return weights_fingerprint(path) if path else None


def load_clip(name="ViT-B/32", device="cpu", weights=None, seed=0):
    """(model in fp32 on `device`, preprocess). Never falls back to random weights for a pretrained name, and a
    weights file must hold the architecture `name` says."""
    if name == TINY:
        if weights:
            raise ValueError("--clip_weights is for OpenAI checkpoints; the tiny model has none")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = clip.model.CLIP(**TINY_ARGS)
        return model.float().to(device), clip.clip._transform(TINY_ARGS["image_resolution"])
    if name not in clip.available_models():
        raise ValueError(f"unknown CLIP model {name!r}; available: {', '.join(clip.available_models())}, "
                         f"or '{TINY}' (random init, for tests)")
    try:
        path = weights or clip.clip._download(clip.clip._MODELS[name], CLIP_CACHE)
        state = read_weights(path)
        args = state_args(state, path)
    except Exception as e:
        where = f"the file {weights}" if weights else f"{name} (download to {CLIP_CACHE})"
        raise RuntimeError(
            f"could not load pretrained CLIP from {where}: {type(e).__name__}: {e}\n"
            f"  Without network, download the OpenAI checkpoint elsewhere and pass --clip_weights=PATH,\n"
            f"  or run with --clip_model=tiny (random init, trained from scratch; for trying the pipeline)."
        ) from None
    if arch_name(args) != name:
        raise ValueError(f"--clip_model={name}, but --clip_weights={path} holds {describe_arch(args)} weights")
    return build_clip(args, state, path).to(device), clip.clip._transform(args["image_resolution"])


class CLIPWrapper(nn.Module):
    """CLIP with an explicit train mode:
    zero_shot: nothing trains | linear: image/text projections + temperature | full: everything |
    image: image tower + temperature | text: text tower + temperature.
    """

    def __init__(self, model, train_mode="full"):
        super().__init__()
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"unknown train_mode {train_mode!r}; expected one of {TRAIN_MODES}")
        self.model, self.train_mode = model, train_mode
        self.is_vit = isinstance(model.visual, clip.model.VisionTransformer)
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in model.named_parameters():
            p.requires_grad_(self._trains(name))

    def _trains(self, name):
        if self.train_mode == "zero_shot":
            return False
        if self.train_mode == "full" or name == "logit_scale":
            return True
        is_image = name.startswith("visual.")
        if self.train_mode == "image":
            return is_image
        if self.train_mode == "text":
            return not is_image
        return name in self.projection_names()  # linear

    def projection_names(self):
        image = ["visual.proj"] if self.is_vit else ["visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"]
        return set(image + ["text_projection"])

    def parameter_counts(self):
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, total

    def summary(self):
        trainable, total = self.parameter_counts()
        return f"train_mode={self.train_mode}: trainable {trainable:,} / {total:,} parameters ({100 * trainable / total:.2f}%)"

    def trainable_state_dict(self):
        """Only what training changes: the checkpoint stores this; the rest comes from the base weights."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in names}

    @property
    def logit_scale(self):
        return self.model.logit_scale

    # ---- towers split into backbone (cacheable when frozen) + projection
    def image_backbone(self, images):
        v = self.model.visual
        images = images.type(self.model.dtype)
        if self.is_vit:
            x = v.conv1(images).flatten(2).permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            x = v.ln_pre(x).permute(1, 0, 2)
            x = v.transformer(x).permute(1, 0, 2)
            return v.ln_post(x[:, 0, :])
        with _identity_output_projection(v.attnpool):
            return v(images)

    def project_image(self, features):
        v = self.model.visual
        return features @ v.proj if self.is_vit else v.attnpool.c_proj(features)

    def text_backbone(self, tokens):
        m = self.model
        x = m.token_embedding(tokens).type(m.dtype) + m.positional_embedding.type(m.dtype)
        x = m.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = m.ln_final(x).type(m.dtype)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # features at the end-of-text token

    def project_text(self, features):
        return features @ self.model.text_projection

    def encode_image(self, images):
        return self.project_image(self.image_backbone(images))

    def encode_text(self, tokens):
        return self.project_text(self.text_backbone(tokens))

    def forward(self, images, tokens):
        """Both embeddings (un-normalised); DistributedDataParallel calls this."""
        return self.encode_image(images), self.encode_text(tokens)


class _IdentityProjection(nn.Module):
    """Stands in for an attention pool's c_proj (weight I, bias 0) without drawing random numbers, as building an
    nn.Linear would (that would shift the training RNG stream on every forward)."""

    def __init__(self, c_proj):
        super().__init__()
        dim, kw = c_proj.in_features, dict(device=c_proj.weight.device, dtype=c_proj.weight.dtype)
        self.register_buffer("weight", torch.eye(dim, **kw), persistent=False)
        self.register_buffer("bias", torch.zeros(dim, **kw), persistent=False)


@contextlib.contextmanager
def _identity_output_projection(attnpool):
    """Run a ModifiedResNet's attention pool with c_proj = identity, exposing its pre-projection output."""
    c_proj = attnpool.c_proj
    eye = _EYES.get(c_proj)
    if eye is None or eye.weight.device != c_proj.weight.device or eye.weight.dtype != c_proj.weight.dtype:
        eye = _EYES[c_proj] = _IdentityProjection(c_proj)
    attnpool.c_proj = eye
    try:
        yield
    finally:
        attnpool.c_proj = c_proj


_EYES = weakref.WeakKeyDictionary()  # one identity per attention pool projection, kept while the model lives


def tokenize(texts, context_length=77):
    return clip.tokenize(texts, context_length=context_length, truncate=True)


CHECKPOINT = "a train.py CLIP checkpoint"


def read_checkpoint(path):
    """The dict of a train.py CLIP checkpoint (weights_only: no pickled code runs). Anything else is an error
    naming the file, what it holds and what was expected."""
    ckpt = safe_load(path, CHECKPOINT)
    if isinstance(ckpt, dict) and (ckpt.get("kind") == "captioner" or "decoder_args" in ckpt):
        raise ValueError(f"{path}: a captioner checkpoint (train_captioner.py), not {CHECKPOINT}; "
                         f"a captioner goes to --captioner_checkpoint")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path}: a bare state dict of {len(ckpt)} tensors, not {CHECKPOINT} "
                         f"(a weights file goes to --clip_weights)")
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: expected {CHECKPOINT} (a dict with 'model' and 'config'), found {describe(ckpt)}")
    missing = [k for k in ("clip_model", "train_mode") if k not in cfg]
    if missing:
        raise ValueError(f"{path}: its config lacks {missing}; expected {CHECKPOINT}")
    if cfg["clip_model"] != TINY and cfg["clip_model"] not in OPENAI_ARCHS:
        raise ValueError(f"{path}: unknown clip_model {cfg['clip_model']!r} in its config")
    if cfg["train_mode"] not in TRAIN_MODES:
        raise ValueError(f"{path}: unknown train_mode {cfg['train_mode']!r}; expected one of {TRAIN_MODES}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its 'model' holds non-tensors; expected {{name: tensor}}")
    return ckpt


def load_checkpoint(path, device="cpu", clip_weights=None):
    """(wrapper, preprocess, checkpoint dict) from a train.py checkpoint.

    A checkpoint holding every tensor of its CLIP is rebuilt from them alone (its base weights file may be gone).
    One holding exactly what its train_mode trains (a linear probe) loads over its base weights: `clip_weights`
    when given, else the file its config names, either checked against the checkpoint's clip_fingerprint. Any
    other set of tensors is an error naming the file."""
    ckpt = read_checkpoint(path)
    cfg, state, expected = ckpt["config"], ckpt["model"], ckpt.get("clip_fingerprint")
    name, mode = cfg["clip_model"], cfg["train_mode"]
    args = TINY_ARGS if name == TINY else openai_args(name)
    with torch.device("meta"):  # tensor names only: no memory, no random init
        meta = CLIPWrapper(clip.model.CLIP(**args), mode).model
    names = set(meta.state_dict())
    whole = names <= set(state)
    if not whole:
        _check_trained_only(path, cfg, set(state), names, {n for n, p in meta.named_parameters() if p.requires_grad})
    if clip_weights:
        if name == TINY:
            raise ValueError(f"{path}: a tiny-model checkpoint has no base weights; --clip_weights is for CLIP")
        if not Path(clip_weights).is_file():
            raise FileNotFoundError(f"--clip_weights={clip_weights}: not found")
        _check_base(path, expected, clip_weights)
        if whole and not isinstance(expected, dict):
            print(f"{path} holds every tensor of its model: --clip_weights={clip_weights} is not read "
                  f"(and the checkpoint records no fingerprint to compare it with)")
    if whole:
        model = build_clip(args, state, path)
    else:
        model = _base_model(path, cfg, expected, clip_weights)
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"{path}: its tensors do not fit its base {model_label(name)}: {e}") from None
    preprocess = clip.clip._transform(args["image_resolution"])
    return CLIPWrapper(model.float().to(device), mode).eval(), preprocess, ckpt


def _check_trained_only(path, cfg, got, names, trained):
    """A checkpoint that is not the whole model must hold exactly the tensors its train_mode trains."""
    # photo2shape without supcon freezes the temperature: its trained tensors then lack logit_scale
    if got in (trained, trained - {"logit_scale"}):
        return
    unknown = sorted(got - names)
    if unknown:
        raise ValueError(f"{path}: holds tensors a {model_label(cfg['clip_model'])} model lacks: {unknown[:5]}")
    raise ValueError(f"{path}: a partial checkpoint: it holds {len(got)} of its model's {len(names)} tensors, "
                     f"neither all of them nor exactly the {len(trained)} that train_mode={cfg['train_mode']} "
                     f"trains (missing e.g. {sorted(trained - got)[:3]})")


def _base_model(path, cfg, expected, clip_weights):
    """The base CLIP a linear probe's tensors load over, from `clip_weights` or the file the config names."""
    name, base = cfg["clip_model"], clip_weights or cfg.get("clip_weights") or None
    if base and not Path(base).is_file():
        trained_on = f" ({expected['file']})" if isinstance(expected, dict) and "file" in expected else ""
        raise FileNotFoundError(
            f"{path}: this train_mode={cfg['train_mode']} checkpoint holds only what it trains and loads over its "
            f"base weights, and {base} is not found; pass --clip_weights=PATH to the file it was trained "
            f"from{trained_on}")
    model, _ = load_clip(name, "cpu", weights=base, seed=cfg.get("seed", 0))
    if name != TINY and not clip_weights:
        _check_base(path, expected, weights_path(name, base))
    return model


def _check_base(path, expected, base):
    """The base weights must be the file the checkpoint was trained from (size and first MB; the name may change)."""
    if not isinstance(expected, dict):
        return  # a tiny model, or a checkpoint from before fingerprints were recorded
    got = weights_fingerprint(base)
    if any(got[k] != expected.get(k) for k in ("sha256_first_mb", "bytes")):
        raise ValueError(f"{path} was trained from {expected.get('file')} ({expected.get('bytes')} bytes, sha256 of "
                         f"its first MB {str(expected.get('sha256_first_mb'))[:12]}), but {base} is another file "
                         f"({got['bytes']} bytes, {got['sha256_first_mb'][:12]})")


DEFAULT_JSONL = "data/pix3d_toy/usable_samples.jsonl"


def add_model_args(ap):
    """The arguments every evaluation CLI takes to name its model: a checkpoint, or a CLIP for zero-shot."""
    ap.add_argument("--checkpoint", help="weights/<run>/best.pt from train.py")
    ap.add_argument("--clip_model", help="zero-shot without a checkpoint: a CLIP name, or 'tiny'")
    ap.add_argument("--clip_weights", default=None,
                    help="local CLIP weights file (OpenAI's .pt or a torch.save'd state dict): for --clip_model, or "
                         "the base weights of a --checkpoint that holds only what it trains (a linear probe)")
    ap.add_argument("--data_jsonl", default=None, help=f"default: the checkpoint's, else {DEFAULT_JSONL}")
    ap.add_argument("--device", default="auto")


def check_model_args(ap, args):
    if bool(args.checkpoint) == bool(args.clip_model):
        ap.error("give --checkpoint PATH, or --clip_model NAME for zero-shot")


def load_for_eval(checkpoint=None, clip_model=None, clip_weights=None, device="cpu"):
    """The model an evaluation script scores: a train.py checkpoint, or a CLIP as it is (zero-shot).

    Returns (wrapper, preprocess, label, run) where run = {"data_jsonl", "run_dir", "config"}: the checkpoint's
    data and logs/<the checkpoint's folder name>/, or the toy data and logs/zero_shot-<model>/ for zero-shot
    (config None). The run folder comes from the command line, never from the loaded file, so that a checkpoint
    cannot choose where reports are written."""
    if checkpoint:
        wrapper, preprocess, ckpt = load_checkpoint(checkpoint, device, clip_weights=clip_weights)
        cfg = ckpt["config"]
        run_name = Path(checkpoint).resolve().parent.name
        label = (f"{model_label(cfg['clip_model'])}{weights_note(ckpt.get('clip_fingerprint'))}, {cfg['train_mode']} "
                 f"({run_name}/{Path(checkpoint).name})")
        run = {"data_jsonl": cfg.get("data_jsonl", DEFAULT_JSONL), "run_dir": Path("logs") / run_name, "config": cfg}
        return wrapper, preprocess, label, run
    model, preprocess = load_clip(clip_model, device, weights=clip_weights)
    run = {"data_jsonl": DEFAULT_JSONL, "run_dir": Path("logs") / f"zero_shot-{clip_model.replace('/', '-')}",
           "config": None}
    label = f"{model_label(clip_model)}{weights_note(clip_fingerprint(clip_model, clip_weights))}, zero-shot"
    return CLIPWrapper(model, "zero_shot").eval(), preprocess, label, run


def weights_note(fingerprint):
    """' (ViT-B-32.pt, sha256 of its first MB 1a2b3c4d5e6f)': which weights file a label's model came from."""
    if not fingerprint:
        return ""
    return f" ({fingerprint['file']}, sha256 of its first MB {fingerprint['sha256_first_mb'][:12]})"
