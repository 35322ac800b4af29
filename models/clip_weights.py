"""CLIP weights files: OpenAI's TorchScript archives or torch.save'd state dicts, any architecture.

    model, preprocess, name = load_weights("ViT-B-32.pt")   # name: the OpenAI model the tensors are, or None
    state = read_weights("ViT-B-32.pt")                     # {name: tensor}
    clip_args(state)                                        # the clip.model.CLIP(...) arguments its shapes describe
    weights_fingerprint("ViT-B-32.pt")                      # {"file", "sha256_first_mb", "bytes"}

The architecture comes from the tensors' shapes, as clip.model.build_model infers it; model names are matched
against OpenAI's published architectures, so a file is never run under another model's name.
"""
import hashlib
import warnings
import zipfile
from pathlib import Path

import torch

with warnings.catch_warnings():  # openai-clip 1.0.1 imports pkg_resources; the deprecation warning is noise for users
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip

# OpenAI's models as (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# transformer_width); all have a 12-layer text transformer of width/64 heads, 77 tokens, 49408 words.
OPENAI_ARCHS = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 768),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 1024),
    "ViT-B/32": (512, 224, 12, 768, 32, 512),
    "ViT-B/16": (512, 224, 12, 768, 16, 512),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768),
}


def openai_args(name):
    """The clip.model.CLIP(...) arguments of an OpenAI model name."""
    embed, resolution, layers, width, patch, text_width = OPENAI_ARCHS[name]
    return dict(embed_dim=embed, image_resolution=resolution, vision_layers=layers, vision_width=width,
                vision_patch_size=patch, context_length=77, vocab_size=49408, transformer_width=text_width,
                transformer_heads=text_width // 64, transformer_layers=12)


def clip_args(state):
    """The clip.model.CLIP(...) arguments a state dict's shapes describe, inferred as clip.model.build_model does
    (text heads are width / 64, OpenAI's choice; shapes cannot tell). KeyError when a tower is missing."""
    if "visual.proj" in state:
        width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
        layers = len([k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        resolution = patch * round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    else:
        layers = tuple(len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
        width, patch = state["visual.layer1.0.conv1.weight"].shape[0], None
        resolution = 32 * round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    return dict(embed_dim=state["text_projection"].shape[1], image_resolution=resolution, vision_layers=layers,
                vision_width=width, vision_patch_size=patch, context_length=state["positional_embedding"].shape[0],
                vocab_size=state["token_embedding.weight"].shape[0], transformer_width=text_width,
                transformer_heads=max(1, text_width // 64),
                transformer_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}))


def arch_name(args):
    """The OpenAI model name with these CLIP(...) arguments, or None."""
    return next((name for name in OPENAI_ARCHS if openai_args(name) == args), None)


def describe_arch(args):
    name = arch_name(args)
    if name:
        return f"CLIP {name}"
    vision = f"ViT/{args['vision_patch_size']}" if args["vision_patch_size"] else "ResNet"
    return (f"a CLIP of no OpenAI architecture ({vision} width {args['vision_width']}, {args['image_resolution']} px, "
            f"text width {args['transformer_width']}, embed_dim {args['embed_dim']})")


def describe(obj):
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


def safe_load(path, what):
    """torch.load(weights_only=True) of `path`; every failure names the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected {what})")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes); expected {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not readable as {what} (truncated, or another format?): "
                         f"{type(e).__name__}: {e}") from None


def _is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path):
    """{name: tensor} from a CLIP weights file: OpenAI's TorchScript archive or a torch.save'd state dict.

    Reading by path, not through one open file: clip.load's torch.jit.load reads the file to its end and its
    torch.load fallback then meets an empty EOFError."""
    what = "CLIP weights (OpenAI's TorchScript archive or a torch.save'd state dict)"
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript, but it is the format OpenAI publishes
                warnings.filterwarnings("ignore", message="`torch.jit.load`", category=FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise ValueError(f"{path}: not readable as {what}: {type(e).__name__}: {e}") from None
    else:
        state = safe_load(path, what)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected {what}, found {describe(state)}")
    state = dict(state)
    for key in ("input_resolution", "context_length", "vocab_size"):  # constants in OpenAI's archives, not weights
        state.pop(key, None)
    return state


def build_clip(args, state, source):
    """clip.model.CLIP(**args) in fp32 holding `state` (strict). Not clip.model.build_model: it casts the model to
    fp16 before loading, which rounds fine-tuned fp32 weights."""
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG as it was
        model = clip.model.CLIP(**args).float()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{source}: its tensors do not fit {describe_arch(args)}: {e}") from None
    return model.eval()


def state_args(state, source):
    """clip_args of a state dict that must be a whole CLIP; an error naming `source` otherwise."""
    try:
        return clip_args(state)
    except KeyError as e:
        raise ValueError(f"{source}: not a whole CLIP state dict (no tensor {e})") from None


def load_weights(path, device="cpu"):
    """(model in fp32 on `device`, preprocess, OpenAI name or None) from a weights file of any CLIP architecture."""
    state = read_weights(path)
    args = state_args(state, path)
    model = build_clip(args, state, path)
    return model.to(device), clip.clip._transform(args["image_resolution"]), arch_name(args)


def weights_fingerprint(path):
    """What identifies a weights file cheaply: its name, size and the sha256 of its first MB."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return {"file": path.name, "sha256_first_mb": hashlib.sha256(head).hexdigest(), "bytes": path.stat().st_size}
