"""Training speed: linear probing on cached features vs re-encoding every epoch, and fp32 vs bf16 autocast.

    .venv/bin/python bench/bench_train.py [--images 128] [--threads 2]

Uses the ViT-B/32 architecture with random weights (speed does not depend on the weights; no download).
(a) one linear-probe epoch over N images and their captions: re-running the frozen encoders every epoch (what
    a naive probe does) vs train.py's way, projections on features cached once.
(b) image-embedding throughput of ViT-B/32 in fp32 vs bf16 autocast on the CPU, and the cosine between the two.
The last line prints the headline ratios.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.clip_wrapper import CLIPWrapper, clip, tokenize  # noqa: E402
from models.losses import build_loss  # noqa: E402
from train import autocast_dtype  # noqa: E402

VIT_B_32 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


def linear_epoch(wrapper, opt, loss_fn, image_feats, text_feats, batch):
    for i in range(0, len(image_feats), batch):
        img = wrapper.project_image(image_feats[i:i + batch])
        txt = wrapper.project_text(text_feats[i:i + batch])
        loss = loss_fn(img, txt, wrapper.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = clip.model.CLIP(**VIT_B_32).float().eval()
    wrapper = CLIPWrapper(model, "linear")
    images = torch.randn(args.images, 3, 224, 224)
    tokens = tokenize([f"a {c} chair with {n} legs" for c, n in zip(["red", "white", "brown", "black"] * 999,
                                                                  range(args.images))])
    opt = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = build_loss("clip")

    # (a) re-encoding every epoch: the frozen towers run again before the same projection step
    t0 = time.perf_counter()
    with torch.no_grad():
        img_f = torch.cat([wrapper.image_backbone(images[i:i + args.batch]) for i in range(0, args.images, args.batch)])
        txt_f = torch.cat([wrapper.text_backbone(tokens[i:i + args.batch]) for i in range(0, args.images, args.batch)])
    linear_epoch(wrapper, opt, loss_fn, img_f, txt_f, args.batch)
    reencode = time.perf_counter() - t0
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        linear_epoch(wrapper, opt, loss_fn, img_f, txt_f, args.batch)
    cached = (time.perf_counter() - t0) / reps
    print(f"linear-probe epoch, {args.images} images + captions: re-encode {reencode:.2f} s, "
          f"cached features {cached * 1000:.1f} ms  -> {reencode / cached:.0f}x")

    # (b) fp32 vs bf16 autocast image embedding on the CPU
    x = images[:32]
    with torch.no_grad():
        model.encode_image(x[:4])
        t0 = time.perf_counter()
        e32 = model.encode_image(x)
        fp32 = len(x) / (time.perf_counter() - t0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_image(x[:4])
            t0 = time.perf_counter()
            e16 = model.encode_image(x).float()
        bf16 = len(x) / (time.perf_counter() - t0)
    cos = torch.nn.functional.cosine_similarity(e32, e16).min().item()
    native = autocast_dtype("cpu", True) is not None
    print(f"ViT-B/32 image embedding on CPU: fp32 {fp32:.1f} img/s, bf16 autocast {bf16:.1f} img/s "
          f"({bf16 / fp32:.2f}x), min cosine {cos:.4f}; native bf16 on this CPU: {native}"
          + ("" if native else " (no avx512_bf16/AMX: bf16 is emulated, so train.py keeps fp32 here)"))
    print(f"linear probe cached vs re-encode: {reencode / cached:.0f}x; bf16 vs fp32: {bf16 / fp32:.2f}x at cosine {cos:.4f}")


if __name__ == "__main__":
    main()
