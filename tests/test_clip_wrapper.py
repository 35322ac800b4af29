import clip
import pytest
import torch

from models.clip_wrapper import TINY_LABEL, CLIPWrapper, load_clip, model_label, tokenize


def small_resnet_clip():
    torch.manual_seed(0)
    return clip.model.CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                           vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=32,
                           transformer_heads=2, transformer_layers=1).float()


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_split_towers_equal_clip_encoders(arch):
    model = load_clip("tiny")[0] if arch == "vit" else small_resnet_clip()
    wrapper = CLIPWrapper(model, "linear").eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = tokenize(["a red chair", "a tall white bookcase with five shelves", "a bed"])
    with torch.no_grad():
        assert torch.allclose(wrapper.encode_image(images), model.encode_image(images), atol=1e-5)
        assert torch.allclose(wrapper.encode_text(tokens), model.encode_text(tokens), atol=1e-5)


def test_resnet_backbone_draws_no_random_numbers():
    """The ResNet backbone's pre-projection features must not consume the RNG (a training run's stream would shift
    with every forward) nor change the model's parameters."""
    model = small_resnet_clip()
    wrapper = CLIPWrapper(model, "linear").eval()
    names = [n for n, _ in model.named_parameters()]
    state = torch.get_rng_state()
    with torch.no_grad():
        wrapper.image_backbone(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        wrapper.image_backbone(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(torch.get_rng_state(), state)
    assert [n for n, _ in model.named_parameters()] == names and "visual.attnpool.c_proj.weight" in names


def test_train_modes_freeze_exactly_what_they_say():
    model, _ = load_clip("tiny")
    counts = {}
    for mode in ("zero_shot", "linear", "full", "image", "text"):
        w = CLIPWrapper(model, mode)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        counts[mode] = w.parameter_counts()[0]
        if mode == "zero_shot":
            assert trainable == set()
        elif mode == "linear":
            assert trainable == {"visual.proj", "text_projection", "logit_scale"}
        elif mode == "full":
            assert trainable == {n for n, _ in model.named_parameters()}
        elif mode == "image":
            assert all(n.startswith("visual.") or n == "logit_scale" for n in trainable)
            assert "visual.conv1.weight" in trainable
        else:
            assert not any(n.startswith("visual.") for n in trainable) and "token_embedding.weight" in trainable
        assert mode in w.summary() and f"{counts[mode]:,}" in w.summary()
    assert counts["zero_shot"] < counts["linear"] < counts["image"] < counts["full"]
    assert counts["image"] + counts["text"] == counts["full"] + 1  # logit_scale counted in both


def test_unknown_mode_and_model_raise():
    model, _ = load_clip("tiny")
    with pytest.raises(ValueError, match="train_mode"):
        CLIPWrapper(model, "lora")
    with pytest.raises(ValueError, match="ViT-B/32"):
        load_clip("ViT-X/99")


def test_missing_pretrained_weights_stop_with_clear_message(tmp_path):
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-B/32", weights=str(tmp_path / "missing.pt"))
    msg = str(err.value)
    assert "--clip_weights" in msg and "--clip_model=tiny" in msg and "missing.pt" in msg


def test_tiny_is_labelled_and_deterministic():
    a, pre = load_clip("tiny", seed=1)
    b, _ = load_clip("tiny", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert model_label("tiny") == TINY_LABEL and "CLIP" not in TINY_LABEL
    assert next(a.parameters()).dtype == torch.float32
