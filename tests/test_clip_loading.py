"""CLIP weights files in the forms users hold (OpenAI's TorchScript archive, a torch.save'd state dict) and train.py
checkpoints that load on their own or over a moved base file. No download here: random-init models stand in for
OpenAI's, at the real ViT-B/32 size where the path differs from the tiny one."""
import copy
import hashlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from models.clip_weights import (OPENAI_ARCHS, clip, clip_args, load_weights, openai_args, read_weights,
                                 weights_fingerprint)
from models.clip_wrapper import TINY_ARGS, load_checkpoint, load_clip, load_for_eval, tokenize

ROOT = Path(__file__).resolve().parents[1]
TOKENS = tokenize(["a red chair", "a tall white bookcase"])


def embed(model, resolution):
    torch.manual_seed(1)
    images = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(TOKENS)


def save_torchscript(model, path):
    """As OpenAI's files are: a traced CLIP whose state dict also holds three constants (loads with clip.load)."""
    m = copy.deepcopy(model)
    for key, value in {"input_resolution": m.visual.input_resolution, "context_length": 77, "vocab_size": 49408}.items():
        m.__dict__.pop(key, None)  # a plain int attribute of clip.model.CLIP
        m.register_buffer(key, torch.tensor(value))
    images = torch.randn(1, 3, m.visual.input_resolution, m.visual.input_resolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and TorchScript deprecation warnings of writing the fixture
        torch.jit.save(torch.jit.trace(m, (images, TOKENS)), str(path))


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """The tiny architecture with width/64 text heads (OpenAI's rule: shapes cannot tell heads), saved both ways."""
    torch.manual_seed(0)
    model = clip.model.CLIP(**dict(TINY_ARGS, transformer_heads=TINY_ARGS["transformer_width"] // 64)).eval()
    root = tmp_path_factory.mktemp("tiny_arch")
    torch.save(model.state_dict(), root / "state_dict.pt")
    save_torchscript(model, root / "torchscript.pt")
    return model, root / "state_dict.pt", root / "torchscript.pt"


@pytest.fixture(scope="module")
def b32(tmp_path_factory):
    """A ViT-B/32-size state dict in fp16 as OpenAI ships weights, and the embeddings it must give."""
    torch.manual_seed(0)
    model = clip.model.CLIP(**openai_args("ViT-B/32")).eval()
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("b32") / "ViT-B-32.pt"
    torch.save(state, path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return path, embed(model, 224)


def test_state_dict_and_torchscript_give_the_same_model(tiny_arch):
    model, state_dict, torchscript = tiny_arch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert clip.load(str(torchscript), device="cpu", jit=False)[0] is not None  # the fixture is OpenAI's format
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = [load_weights(state_dict), load_weights(torchscript)]
    assert not [w for w in caught if "torch.jit" in str(w.message)]  # the deprecation warning is silenced
    want = embed(model, 64)
    for m, preprocess, name in loaded:
        assert name is None  # no OpenAI architecture
        assert next(m.parameters()).dtype == torch.float32
        for got, ref in zip(embed(m, 64), want):
            assert torch.allclose(got, ref, atol=1e-5)
    assert "input_resolution" not in read_weights(torchscript)


def test_resnet_state_dict_keeps_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = clip.model.CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                            vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                            transformer_heads=1, transformer_layers=1).eval()
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_()  # not the defaults, so a lost buffer shows
    torch.save(model.state_dict(), tmp_path / "rn.pt")
    loaded, _, _ = load_weights(tmp_path / "rn.pt")
    for got, ref in zip(embed(loaded, 64), embed(model, 64)):
        assert torch.allclose(got, ref, atol=1e-5)


def test_shapes_name_every_openai_model():
    assert set(OPENAI_ARCHS) == set(clip.available_models())
    for name in OPENAI_ARCHS:
        with torch.device("meta"):  # shapes only: no memory for RN50x64
            state = clip.model.CLIP(**openai_args(name)).state_dict()
        assert clip_args(state) == openai_args(name), name


def test_vit_b32_state_dict_loads_and_a_wrong_name_is_an_error(b32):
    path, want = b32
    model, _ = load_clip("ViT-B/32", weights=str(path))
    assert next(model.parameters()).dtype == torch.float32
    for got, ref in zip(embed(model, 224), want):
        assert torch.allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError) as err:
        load_for_eval(clip_model="ViT-L/14", clip_weights=str(path))
    assert "ViT-L/14" in str(err.value) and "ViT-B/32" in str(err.value) and str(path) in str(err.value)
    _, _, label, _ = load_for_eval(clip_model="ViT-B/32", clip_weights=str(path))
    assert re.fullmatch(r"CLIP ViT-B/32 \(ViT-B-32\.pt, sha256 of its first MB [0-9a-f]{12}\), zero-shot", label)


def test_weights_fingerprint(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "a.pt").write_bytes(data)
    (tmp_path / "b.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # differs past the first MB only
    fa, fb = weights_fingerprint(tmp_path / "a.pt"), weights_fingerprint(tmp_path / "b.pt")
    assert fa == {"file": "a.pt", "sha256_first_mb": hashlib.sha256(data[:1 << 20]).hexdigest(), "bytes": 3 << 20}
    assert fb["sha256_first_mb"] == fa["sha256_first_mb"]  # the first MB is all it reads


def write_checkpoint(path, state, train_mode, clip_model="tiny", clip_weights=None, fingerprint=None, **config):
    """A checkpoint in train.py's format: every tensor (full/image/text) or the trained ones (linear)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {"clip_model": clip_model, "clip_weights": clip_weights, "train_mode": train_mode, "seed": 0,
           "data_jsonl": "data/x.jsonl", **config}
    torch.save({"kind": "clip", "model": state, "config": cfg, "clip_fingerprint": fingerprint, "epoch": 1}, path)
    return path


def test_full_checkpoint_loads_after_its_base_file_is_deleted(b32, tmp_path):
    path, want = b32
    base = tmp_path / "base" / "ViT-B-32.pt"
    base.parent.mkdir()
    os.link(path, base)
    state = read_weights(base)
    state["logit_scale"] = torch.tensor(3.0)
    ckpt = write_checkpoint(tmp_path / "weights/run1/best.pt", state, "full", "ViT-B/32", str(base),
                            weights_fingerprint(base), logs_dir="/elsewhere", run_name="../../evil")
    base.unlink()
    wrapper, _, label, run = load_for_eval(str(ckpt))
    assert re.fullmatch(r"CLIP ViT-B/32 \(ViT-B-32\.pt, sha256 of its first MB [0-9a-f]{12}\), full \(run1/best\.pt\)",
                        label)  # names the weights file the run started from, although that file is gone
    assert run["run_dir"] == Path("logs") / "run1"  # from the command line, not from the file
    assert wrapper.logit_scale.item() == 3.0
    for got, ref in zip(embed(wrapper.model, 224), want):
        assert torch.allclose(got, ref, atol=1e-4)


def test_linear_checkpoint_needs_its_base_file_and_takes_the_override(b32, tiny_arch, tmp_path):
    path, _ = b32
    torch.manual_seed(2)
    state = {"visual.proj": torch.randn(768, 512), "text_projection": torch.randn(512, 512),
             "logit_scale": torch.tensor(2.0)}
    moved = tmp_path / "moved_away" / "ViT-B-32.pt"
    ckpt = write_checkpoint(tmp_path / "weights/probe/best.pt", state, "linear", "ViT-B/32", str(moved),
                            weights_fingerprint(path))
    with pytest.raises(FileNotFoundError) as err:
        load_for_eval(str(ckpt))
    assert str(moved) in str(err.value) and "--clip_weights" in str(err.value) and str(ckpt) in str(err.value)
    wrapper, _, _, _ = load_for_eval(str(ckpt), clip_weights=str(path))
    assert torch.equal(wrapper.model.visual.proj, state["visual.proj"])
    assert torch.equal(wrapper.model.visual.conv1.weight, read_weights(path)["visual.conv1.weight"].float())
    with pytest.raises(ValueError) as err:  # another file than the one it was trained from
        load_checkpoint(ckpt, clip_weights=str(tiny_arch[1]))
    assert "ViT-B-32.pt" in str(err.value) and str(tiny_arch[1]) in str(err.value)


def test_tiny_checkpoints_whole_linear_and_partial(tmp_path):
    base = load_clip("tiny", seed=0)[0].state_dict()
    full = {k: v + 0.01 for k, v in base.items()}
    wrapper, _, _ = load_checkpoint(write_checkpoint(tmp_path / "full.pt", full, "full"))
    assert all(torch.equal(wrapper.model.state_dict()[k], v) for k, v in full.items())
    linear = {k: full[k] for k in ("visual.proj", "text_projection", "logit_scale")}
    wrapper, _, _ = load_checkpoint(write_checkpoint(tmp_path / "linear.pt", linear, "linear"))
    got = wrapper.model.state_dict()
    assert torch.equal(got["visual.proj"], full["visual.proj"]) and torch.equal(got["ln_final.weight"],
                                                                               base["ln_final.weight"])
    image = {k: v for k, v in full.items() if k.startswith("visual.")}  # photo2shape froze the temperature
    load_checkpoint(write_checkpoint(tmp_path / "image.pt", image, "image"))
    one = write_checkpoint(tmp_path / "one.pt", {"visual.proj": full["visual.proj"]}, "full")
    with pytest.raises(ValueError, match=r"one\.pt: a partial checkpoint: it holds 1 of its model's 98 tensors"):
        load_checkpoint(one)
    del image["visual.conv1.weight"]
    with pytest.raises(ValueError, match=r"image\.pt: a partial checkpoint"):
        load_checkpoint(write_checkpoint(tmp_path / "image.pt", image, "image"))


def test_unreadable_checkpoints_name_the_file(tiny_arch, tmp_path):
    good = write_checkpoint(tmp_path / "good.pt", load_clip("tiny")[0].state_dict(), "full").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[:len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"kind": "captioner", "model": {"w": torch.zeros(1)}, "decoder_args": {"width": 8},
                "config": {"clip_checkpoint": "weights/run/best.pt"}}, tmp_path / "captioner.pt")
    cases = {"truncated.pt": "truncated", "empty.pt": "empty file", "captioner.pt": "a captioner checkpoint",
             str(tiny_arch[1]): "--clip_weights"}
    for name, why in cases.items():
        with pytest.raises(ValueError) as err:
            load_for_eval(str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and why in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_for_eval(str(tmp_path / "missing.pt"))


def test_import_changes_no_warning_filters():
    code = ("import warnings, torch; before = list(warnings.filters); import models.clip_wrapper; "
            "assert warnings.filters == before, warnings.filters[:2]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
