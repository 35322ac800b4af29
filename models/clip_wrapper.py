"""Loading OpenAI CLIP (or a tiny random one for tests) and a wrapper that makes freezing explicit.

    model, preprocess = load_clip("ViT-B/32", device)                    # pretrained, downloads once to ~/.cache/clip
    model, preprocess = load_clip("ViT-B/32", device, weights="ViT-B-32.pt")  # a local OpenAI checkpoint
    model, preprocess = load_clip("tiny", device)                        # random init, for tests / offline demo
    wrapper = CLIPWrapper(model, "linear")   # zero_shot | linear | full | image | text

The wrapper splits each tower into a frozen-able backbone and its projection, so that a linear probe can cache
the backbone's (pre-projection) features once and train only the projections and the temperature.
"""
import contextlib
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
import clip  # noqa: E402  (openai-clip 1.0.1 imports pkg_resources; the warning is noise for users)
import torch  # noqa: E402
from torch import nn  # noqa: E402

TINY = "tiny"
TINY_LABEL = "tiny (random init, trained from scratch)"
TRAIN_MODES = ("zero_shot", "linear", "full", "image", "text")
# The tiny CLIP: a 4-layer ViT on 64 px images and a 3-layer text transformer, with CLIP's real BPE tokenizer.
TINY_ARGS = dict(embed_dim=128, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=4,
                 transformer_layers=3)


def model_label(name):
    """How results name a model: a tiny model is never called CLIP."""
    return TINY_LABEL if name == TINY else f"CLIP {name}"


def load_clip(name="ViT-B/32", device="cpu", weights=None, seed=0):
    """(model in fp32 on `device`, preprocess). Never falls back to random weights for a pretrained name."""
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
    source = weights or name
    try:
        model, preprocess = clip.load(source, device=device, jit=False)
    except Exception as e:
        where = f"the file {weights}" if weights else f"{name} (download to ~/.cache/clip)"
        raise RuntimeError(
            f"could not load pretrained CLIP from {where}: {type(e).__name__}: {e}\n"
            f"  Without network, download the OpenAI checkpoint elsewhere and pass --clip_weights=PATH,\n"
            f"  or run with --clip_model=tiny (random init, trained from scratch; for trying the pipeline)."
        ) from None
    # clip.load keeps fp16 weights on CUDA; training needs fp32 master weights (AMP handles speed), and fp16
    # on CPU gives NaNs after one step (openai/CLIP issue history).
    return model.float(), preprocess


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


@contextlib.contextmanager
def _identity_output_projection(attnpool):
    """Run a ModifiedResNet's attention pool with c_proj = identity, exposing its pre-projection output."""
    c_proj = attnpool.c_proj
    dim = c_proj.in_features
    eye = nn.Linear(dim, dim).to(c_proj.weight.device, c_proj.weight.dtype)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(dim))
        eye.bias.zero_()
    attnpool.c_proj = eye
    try:
        yield
    finally:
        attnpool.c_proj = c_proj


def tokenize(texts, context_length=77):
    return clip.tokenize(texts, context_length=context_length, truncate=True)


def load_checkpoint(path, device="cpu"):
    """(wrapper, preprocess, checkpoint dict) from a train.py checkpoint. The base CLIP is rebuilt from the
    config stored in the checkpoint, then the trained tensors are loaded over it (weights_only: no pickled code
    runs)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    model, preprocess = load_clip(cfg["clip_model"], device, weights=cfg.get("clip_weights") or None,
                                  seed=cfg.get("seed", 0))
    missing = set(ckpt["model"]) - set(model.state_dict())
    if missing:
        raise ValueError(f"{path}: checkpoint holds tensors this {cfg['clip_model']} model lacks: {sorted(missing)[:5]}")
    model.load_state_dict(ckpt["model"], strict=False)
    wrapper = CLIPWrapper(model.to(device), cfg["train_mode"]).eval()
    return wrapper, preprocess, ckpt


DEFAULT_JSONL = "data/pix3d_toy/usable_samples.jsonl"


def add_model_args(ap):
    """The arguments every evaluation CLI takes to name its model: a checkpoint, or a CLIP for zero-shot."""
    ap.add_argument("--checkpoint", help="weights/<run>/best.pt from train.py")
    ap.add_argument("--clip_model", help="zero-shot without a checkpoint: a CLIP name, or 'tiny'")
    ap.add_argument("--clip_weights", default=None, help="local OpenAI checkpoint file for --clip_model")
    ap.add_argument("--data_jsonl", default=None, help=f"default: the checkpoint's, else {DEFAULT_JSONL}")
    ap.add_argument("--device", default="auto")


def check_model_args(ap, args):
    if bool(args.checkpoint) == bool(args.clip_model):
        ap.error("give --checkpoint PATH, or --clip_model NAME for zero-shot")


def load_for_eval(checkpoint=None, clip_model=None, clip_weights=None, device="cpu"):
    """The model an evaluation script scores: a train.py checkpoint, or a CLIP as it is (zero-shot).

    Returns (wrapper, preprocess, label, run) where run = {"data_jsonl", "run_dir", "config"}: the checkpoint's
    data and log folder, or the toy data and logs/zero_shot-<model>/ for zero-shot (config None)."""
    from pathlib import Path

    if checkpoint:
        wrapper, preprocess, ckpt = load_checkpoint(checkpoint, device)
        cfg = ckpt["config"]
        run_name = cfg.get("run_name") or Path(checkpoint).parent.name
        label = f"{model_label(cfg['clip_model'])}, {cfg['train_mode']} ({run_name}/{Path(checkpoint).name})"
        run = {"data_jsonl": cfg["data_jsonl"], "run_dir": Path(cfg.get("logs_dir", "logs")) / run_name, "config": cfg}
        return wrapper, preprocess, label, run
    model, preprocess = load_clip(clip_model, device, weights=clip_weights)
    run = {"data_jsonl": DEFAULT_JSONL, "run_dir": Path("logs") / f"zero_shot-{clip_model.replace('/', '-')}",
           "config": None}
    return CLIPWrapper(model, "zero_shot").eval(), preprocess, f"{model_label(clip_model)}, zero-shot", run
