"""Why does this shape match the text? Relevance maps over a shape's rendered views.

    maps = relevance_maps(wrapper, preprocess, "a tall white bookcase", images, device)   # [n_views, H, W] in [0, 1]
    relevance_figure(images, maps, "explain.png", title="a tall white bookcase")

The explained number is the match score evaluation ranks shapes by: the cosine between the text embedding and the
shape embedding, the normalised mean of the normalised view embeddings (metrics.retrieval.aggregate_views, "mean").
Every view's map comes from that one score, so the maps say which pixels of which views the match depends on, and
they share one scale: all maps are divided by the largest value over all views, so a view that matters little is
dim everywhere (relevance_figure prints each view's share of the total beside it).

- ViT image towers: gradient-weighted attention rollout (Chefer, Gur and Wolf 2021, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", rule 6 and eq. 13). With A_l the
  attention probabilities of block l (heads x tokens x tokens) and grad_l = d score / d A_l,
      R = I;  for each block l from start_layer on:  R = R + mean_heads(max(grad_l * A_l, 0)) @ R,
  and the relevance of each image patch is R[CLS, patch]. The class token's row is what the projection reads, so
  it is where the score enters. OpenAI's blocks call nn.MultiheadAttention with need_weights=False, which returns
  no probabilities; a forward hook on each block's attention module recomputes its output from the module's own
  in_proj / out_proj weights, keeping the probabilities in the autograd graph (the installed clip package is not
  changed, and the hooks are removed afterwards).
- ResNet image towers (ModifiedResNet): Grad-CAM (Selvaraju et al. 2017) on the last residual stage, layer4: each
  channel weighted by the spatial mean of the score's gradient, summed, negative parts set to zero.

The patch grid (or layer4's grid) is scaled bilinearly onto the square the preprocess crops from each image (CLIP's
preprocess resizes the shorter side and crops the centre); what lies outside that square was never seen and gets 0.
Nothing of the model changes: it runs in eval mode (BatchNorm of a ResNet would otherwise use and update batch
statistics) and returns to its previous mode; gradients are taken with torch.autograd.grad for the hooked tensors
only, so no parameter gets a .grad; nothing random is drawn.
"""
import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

FIGURE_COLUMNS = 6   # views per row of relevance_figure
OVERLAY_ALPHA = 0.5  # share of the heat colour in a view's overlay


def relevance_maps(wrapper, preprocess, text, images, device="cpu", start_layer=0):
    """[n_views, H, W] float32 relevance in [0, 1] at the images' own resolution (all views one size) for how well
    the shape shown by `images` (PIL images of its views) matches `text`. start_layer: the first ViT block the
    rollout goes through (0: all of them, as Chefer et al.; -1: the last only); ignored for ResNets. All zero when
    nothing raises the score (Grad-CAM of an untrained ResNet can be negative everywhere)."""
    if not images:
        raise ValueError("no views to explain")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"the views must share one size to stack their maps, got sizes {sorted(sizes)}")
    (width, height), = sizes
    model = wrapper.model
    pixels = torch.stack([preprocess(im.convert("RGB")) for im in images]).to(device, model.dtype)
    modes = {m: m.training for m in wrapper.modules()}  # restored one by one: a frozen part may sit in eval mode
    wrapper.eval()
    try:
        with torch.enable_grad():
            text_embedding = _text_embedding(wrapper, text, device)
            if wrapper.is_vit:
                grid = vit_token_relevance(wrapper, pixels, text_embedding, start_layer)
            else:
                grid = gradcam(wrapper, pixels, text_embedding)
    finally:
        for m, training in modes.items():
            m.train(training)
    maps = _onto_images(grid.float(), width, height)
    top = maps.max()
    return (maps / top if top > 0 else maps).cpu().numpy().astype(np.float32)


def shape_text_score(wrapper, preprocess, text, images, device="cpu"):
    """The score relevance_maps explains: match_score of the views (PIL images) and the text, as a float."""
    pixels = torch.stack([preprocess(im.convert("RGB")) for im in images]).to(device, wrapper.model.dtype)
    with torch.no_grad():
        return match_score(wrapper.encode_image(pixels), _text_embedding(wrapper, text, device)).item()


def match_score(view_embeddings, text_embedding):
    """Cosine of the text and the shape pooled as evaluation pools it (mean of the normalised views)."""
    shape = F.normalize(F.normalize(view_embeddings.float(), dim=-1).mean(0), dim=-1)
    return shape @ F.normalize(text_embedding.float(), dim=-1)


def _text_embedding(wrapper, text, device):
    from models.clip_wrapper import tokenize

    with torch.no_grad():
        return wrapper.encode_text(tokenize([text], wrapper.model.context_length).to(device))[0]


def vit_token_relevance(wrapper, pixels, text_embedding, start_layer=0):
    """[n_views, g, g] rollout relevance of each image patch (module docstring) for preprocessed `pixels`."""
    blocks = list(wrapper.model.visual.transformer.resblocks)
    pixels = pixels.detach().requires_grad_(True)  # a graph to the attention even when every parameter is frozen
    with _attention_probabilities([b.attn for b in blocks]) as probs:
        score = match_score(wrapper.encode_image(pixels), text_embedding)
    grads = torch.autograd.grad(score, probs)
    n, _, tokens, _ = probs[0].shape
    rollout = torch.eye(tokens, dtype=probs[0].dtype, device=pixels.device).expand(n, tokens, tokens)
    for attention, grad in list(zip(probs, grads))[start_layer:]:
        cam = (grad * attention).detach().clamp(min=0).mean(1)  # mean over heads
        rollout = rollout + cam @ rollout
    side = math.isqrt(tokens - 1)
    return rollout[:, 0, 1:].reshape(n, side, side)


@contextlib.contextmanager
def _attention_probabilities(attention_modules):
    """While open, each nn.MultiheadAttention of `attention_modules` computes its output from its own weights and
    appends its attention probabilities (batch x heads x tokens x tokens, in the graph) to the yielded list."""
    probs = []

    def hook(mha, args, kwargs, output):
        packed = not mha.batch_first and mha.in_proj_weight is not None
        if not packed or len(args) != 3 or kwargs.get("key_padding_mask") is not None:
            raise ValueError("expected CLIP's self-attention call: sequence-first, one packed in_proj, (x, x, x) and "
                             "keyword options, no padding mask")
        x, mask = args[0], kwargs.get("attn_mask")
        length, batch, width = x.shape
        heads = mha.num_heads
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(length, batch * heads, width // heads).transpose(0, 1) for t in (q, k, v))
        logits = q @ k.transpose(1, 2) / math.sqrt(width // heads)
        if mask is not None:  # CLIP's masks are additive float masks
            logits = logits + mask
        p = logits.softmax(-1).reshape(batch, heads, length, length)
        probs.append(p)  # the very tensor the output is computed from, so that gradients reach it
        out = (p.reshape(batch * heads, length, length) @ v).transpose(0, 1).reshape(length, batch, width)
        return F.linear(out, mha.out_proj.weight, mha.out_proj.bias), None

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules]
    try:
        yield probs
    finally:
        for h in handles:
            h.remove()


def gradcam(wrapper, pixels, text_embedding):
    """[n_views, h, w] Grad-CAM of a ModifiedResNet's layer4 for preprocessed `pixels` (module docstring)."""
    pixels = pixels.detach().requires_grad_(True)
    activations = []
    handle = wrapper.model.visual.layer4.register_forward_hook(lambda module, args, out: activations.append(out))
    try:
        score = match_score(wrapper.encode_image(pixels), text_embedding)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, activations)
    weights = grad.mean((2, 3), keepdim=True)
    return (weights * activations[0]).sum(1).detach().clamp(min=0)


def _onto_images(grid, width, height):
    """[n, g, g] -> [n, height, width]: bilinear onto the centred square the preprocess crops, zero outside."""
    side = min(width, height)
    square = F.interpolate(grid[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    maps = square.new_zeros(len(grid), height, width)
    top, left = round((height - side) / 2), round((width - side) / 2)
    maps[:, top: top + side, left: left + side] = square.clamp(min=0)
    return maps


def relevance_figure(images, maps, path, title=None, thumb=160):
    """A PNG grid of the views (FIGURE_COLUMNS per row, each `thumb` px) with the relevance as a heat overlay
    (matplotlib's 'jet': blue for none, red for the most) and each view's share of the total relevance under it;
    `title` may hold several lines. Returns path."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    pad, label_h = 6, 14
    title_h = 14 * len(title.splitlines()) + 4 if title else 0  # a line of PIL's default font is ~11 px high
    cols = min(FIGURE_COLUMNS, len(images))
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (pad + cols * (thumb + pad), pad + title_h + rows * (thumb + label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.multiline_text((pad, pad), title, fill="black")
    heat = colormaps["jet"]
    total = float(np.sum(maps)) or 1.0
    for i, (image, m) in enumerate(zip(images, maps)):
        colour = Image.fromarray((heat(m)[..., :3] * 255).astype(np.uint8))
        view = Image.blend(image.convert("RGB"), colour, OVERLAY_ALPHA).resize((thumb, thumb))
        x = pad + (i % cols) * (thumb + pad)
        y = pad + title_h + (i // cols) * (thumb + label_h + pad)
        sheet.paste(view, (x, y))
        draw.text((x, y + thumb + 1), f"view {i}: {100 * float(np.sum(m)) / total:.0f}%", fill="black")
    sheet.save(path)
    return path
