"""models/relevance.py: attention rollout of ViT CLIPs against a hand-written forward pass (per-head attention from
the blocks' weights, its own autograd graph), Grad-CAM of ResNet CLIPs against layer4 run by hand, and what a
relevance map must be (the views' size, in [0, 1], depends on the text, leaves the model as it was).

Run: .venv/bin/python -m pytest -q tests/test_relevance.py
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from models.clip_wrapper import CLIPWrapper, clip, load_clip, tokenize
from models.relevance import gradcam, match_score, relevance_figure, relevance_maps, vit_token_relevance

TEXTS = ("a red chair with four legs", "a tall blue bookcase")


def views(n=3, size=(96, 72)):
    """Views of one toy shape: a red box and a blue disc, moved a little from view to view."""
    out = []
    for i in range(n):
        im = Image.new("RGB", size, "white")
        d = ImageDraw.Draw(im)
        d.rectangle([10 + 4 * i, 12, 40 + 4 * i, 60], fill=(200, 30, 30))
        d.ellipse([50 - 3 * i, 20, 80 - 3 * i, 50], fill=(40, 70, 200))
        out.append(im)
    return out


def small_clip(vision_layers, seed=0, **kw):
    """A random clip.model.CLIP small enough for a CPU test: a ViT (vision_layers an int; width 128 gives CLIP's
    128 / 64 = 2 heads) or a ModifiedResNet (a tuple of four stage depths)."""
    args = dict(embed_dim=32, image_resolution=32, vision_layers=vision_layers, vision_width=128, vision_patch_size=8,
                context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2, transformer_layers=1)
    args.update(kw)
    torch.manual_seed(seed)
    return clip.model.CLIP(**args).float(), clip.clip._transform(args["image_resolution"])


def snapshot(wrapper):
    return {k: v.clone() for k, v in wrapper.model.state_dict().items()}


def assert_untouched(wrapper, before, rng_before, modes):
    after = wrapper.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and buffers (BatchNorm statistics)
    assert all(p.grad is None for p in wrapper.model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [m.training for m in wrapper.modules()] == modes  # each module back in its own mode
    hooks = [m for m in wrapper.model.modules() if m._forward_hooks]
    assert not hooks  # the hooks are gone


# ----------------------------------------------------------------------------- ViT: rollout by hand
def hand_vit(visual, pixels):
    """The ViT forward pass written out: every head's attention from its slice of in_proj, as OpenAI's
    VisionTransformer computes it. Returns (image embedding, [attention probabilities per block: list of heads])."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], 1) + visual.positional_embedding
    x = visual.ln_pre(x)
    probs = []
    for block in visual.transformer.resblocks:
        mha, h = block.attn, block.ln_1(x)
        width, heads = h.shape[-1], block.attn.num_heads
        d = width // heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        outs, layer = [], []
        for head in range(heads):
            sl = slice(head * d, (head + 1) * d)
            q = h @ w[sl].T + b[sl]
            k = h @ w[width:][sl].T + b[width:][sl]
            v = h @ w[2 * width:][sl].T + b[2 * width:][sl]
            a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
            layer.append(a)
            outs.append(a @ v)
        x = x + mha.out_proj(torch.cat(outs, -1))
        x = x + block.mlp(block.ln_2(x))
        probs.append(layer)
    return visual.ln_post(x[:, 0]) @ visual.proj, probs


def hand_rollout(wrapper, pixels, text_embedding, start_layer=0):
    """Chefer et al.'s rule on the hand-written pass: R = I, then R <- R + mean_heads(max(dS/dA * A, 0)) R."""
    embedding, probs = hand_vit(wrapper.model.visual, pixels.clone().requires_grad_(True))
    score = match_score(embedding, text_embedding)
    flat = [a for layer in probs for a in layer]
    grads = iter(torch.autograd.grad(score, flat))
    n, tokens = len(pixels), flat[0].shape[-1]
    rollout = torch.eye(tokens).expand(n, tokens, tokens)
    for index, layer in enumerate(probs):
        cams = [(next(grads) * a).clamp(min=0) for a in layer]
        if index >= start_layer % len(probs):
            rollout = rollout + torch.stack(cams).mean(0) @ rollout
    return embedding, rollout[:, 0, 1:]


@pytest.mark.parametrize("layers, start_layer", [(1, 0), (3, 0), (3, -1)])
def test_rollout_against_hand_computation(layers, start_layer):
    model, preprocess = small_clip(layers)
    wrapper = CLIPWrapper(model, "zero_shot").eval()
    pixels = torch.stack([preprocess(im) for im in views()])
    with torch.no_grad():
        text = wrapper.encode_text(tokenize([TEXTS[0]]))[0]
        assert torch.allclose(hand_vit(model.visual, pixels)[0], wrapper.encode_image(pixels), atol=1e-5)
    embedding, want = hand_rollout(wrapper, pixels, text, start_layer)
    got = vit_token_relevance(wrapper, pixels, text, start_layer)
    assert got.shape == (3, 4, 4)
    assert torch.allclose(got.reshape(3, -1), want, atol=1e-6, rtol=1e-4)
    assert want.abs().max() > 1e-4  # not all zero: a wrong rule would show
    if layers == 1:  # one block: R = I + cam, so the patches' row is the cam itself
        assert (got >= 0).all()


def test_hooked_forward_is_the_models_forward():
    """The hooks recompute each block's attention output; the image embedding must not move."""
    from models.relevance import _attention_probabilities

    model, preprocess = load_clip("tiny")
    wrapper = CLIPWrapper(model, "zero_shot").eval()
    pixels = torch.stack([preprocess(im) for im in views(2)])
    with torch.no_grad():
        plain = wrapper.encode_image(pixels)
        with _attention_probabilities([b.attn for b in model.visual.transformer.resblocks]) as probs:
            hooked = wrapper.encode_image(pixels)
    assert torch.allclose(plain, hooked, atol=1e-5)
    assert len(probs) == 4 and probs[0].shape == (2, 2, 65, 65)  # views, heads, 1 + 8 x 8 tokens twice
    assert torch.allclose(probs[0].sum(-1), torch.ones(2, 2, 65))


# ----------------------------------------------------------------------------- what a map must be
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_maps_have_the_views_shape_depend_on_the_text_and_leave_the_model_alone(kind):
    if kind == "vit":
        model, preprocess = load_clip("tiny")
    else:
        model, preprocess = small_clip((1, 1, 1, 1), image_resolution=128, vision_width=16)  # a 4 x 4 layer4
    wrapper = CLIPWrapper(model, "full")  # every parameter requires grad: none may get a .grad
    wrapper.train()  # a ResNet's BatchNorm would update its statistics in train mode
    wrapper.model.transformer.eval()  # a part in eval mode stays so
    before, rng, modes = snapshot(wrapper), torch.get_rng_state(), [m.training for m in wrapper.modules()]
    assert True in modes and False in modes
    images = views(3, size=(96, 72))
    maps = [relevance_maps(wrapper, preprocess, text, images, "cpu") for text in TEXTS]
    assert_untouched(wrapper, before, rng, modes)
    for m in maps:
        assert m.shape == (3, 72, 96) and m.dtype == np.float32
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() == pytest.approx(1)
        # the preprocess crops the centred 72 x 72 square: the 12 columns either side were never seen
        assert not m[:, :, :12].any() and not m[:, :, -12:].any() and m[:, :, 12:-12].any()
    assert np.abs(maps[0] - maps[1]).max() > 1e-3  # another text, another map
    # one scale for all views (the largest value over all of them is 1), not one per view
    assert (maps[0].reshape(3, -1).max(1) < 0.999).any()
    again = relevance_maps(wrapper, preprocess, TEXTS[0], images, "cpu")
    assert np.array_equal(again, maps[0])  # deterministic


def test_gradcam_against_layer4_by_hand():
    model, preprocess = small_clip((1, 1, 1, 1), image_resolution=128, vision_width=16)
    wrapper = CLIPWrapper(model, "zero_shot").eval()
    v = model.visual
    pixels = torch.stack([preprocess(im) for im in views(2)])
    with torch.no_grad():
        text = wrapper.encode_text(tokenize([TEXTS[1]]))[0]
    x = pixels.clone().requires_grad_(True)
    for conv, bn in ((v.conv1, v.bn1), (v.conv2, v.bn2), (v.conv3, v.bn3)):
        x = F.relu(bn(conv(x)))
    acts = v.layer4(v.layer3(v.layer2(v.layer1(v.avgpool(x)))))
    score = match_score(v.attnpool(acts), text)
    (grad,) = torch.autograd.grad(score, acts)
    want = F.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1))
    got = gradcam(wrapper, pixels, text)
    assert got.shape == (2, 4, 4) and torch.allclose(got, want, atol=1e-7, rtol=1e-4)
    assert (want > 0).any() and (want == 0).any()  # positive evidence somewhere, and ReLU's zeros elsewhere


def test_views_of_different_sizes_are_refused():
    model, preprocess = load_clip("tiny")
    with pytest.raises(ValueError, match="one size"):
        relevance_maps(CLIPWrapper(model, "zero_shot"), preprocess, "a chair", views(1) + views(1, (64, 64)))


def test_figure_writes_a_png_of_the_expected_size(tmp_path):
    images = views(7, size=(64, 64))
    rng = np.random.default_rng(0)
    maps = rng.random((7, 64, 64)).astype(np.float32)
    path = relevance_figure(images, maps, tmp_path / "explain.png", title="a red chair", thumb=50)
    with Image.open(path) as im:
        # 6 columns of 50 px and 2 rows of 50 px + a 14 px label, 6 px apart, and an 18 px title
        assert im.size == (6 + 6 * 56, 6 + 18 + 2 * (50 + 14 + 6))
        hot = np.asarray(im.convert("RGB"))[24:74, 6:56].astype(int)
    assert np.abs(hot - np.asarray(images[0].resize((50, 50)))).max() > 50  # the heat is drawn over the view


def test_explain_match_script(tmp_path, capsys):
    from scripts import explain_match

    folder = tmp_path / "chair_01"
    folder.mkdir()
    for i, im in enumerate(views(3, size=(64, 64))):
        im.save(folder / f"view_{i:02d}.png")
    (folder / "views.json").write_text("{}")  # not an image: left out
    out = tmp_path / "why.png"
    assert explain_match.main(["--clip_model", "tiny", "--text", TEXTS[0], "--views", str(folder), "--out", str(out),
                               "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "view_00.png" in printed and "view_02.png" in printed and f"wrote {out}" in printed
    with Image.open(out) as im:
        assert im.size == (6 + 3 * 166, 6 + 32 + 160 + 14 + 6)  # 3 views of 160 px, a two-line title
    with pytest.raises(SystemExit):
        explain_match.main(["--clip_model", "tiny", "--text", "a chair", "--views", str(tmp_path / "missing")])
