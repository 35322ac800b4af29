"""Composed retrieval, stage 2: one Combiner epoch on features cached once vs re-encoding the frozen CLIP each epoch.

    .venv/bin/python bench/bench_composed.py [--pairs 64] [--batch 32] [--threads 2] [--repeats 2]
                                             [--models tiny,ViT-B/32]

Random weights (speed does not depend on them; no download): the tiny model and the ViT-B/32 architecture.
Per model, over N (reference image, target image, caption) pairs of random pixels:
(a) an epoch that re-encodes: each batch runs the frozen image tower on the references and targets and the text
    tower on the captions, then one Combiner step (what training without a cache costs every epoch);
(b) the one-off encoding train_composed.py --stage=2 does once (features.feature_cache);
(c) an epoch of Combiner steps on those cached features.
(a) and (c) for combiner and moe_combiner, each the fastest of --repeats runs.
The last line prints the headline ratios, re-encoding epoch / cached epoch.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.clip_weights import openai_args  # noqa: E402
from models.clip_wrapper import TINY_ARGS, CLIPWrapper, clip, tokenize  # noqa: E402
from models.combiner import build_combiner  # noqa: E402
from tasks.composed import CombinerLoss  # noqa: E402

COLOURS = ["red", "white", "brown", "black", "green", "blue"]


def combiner_step(module, opt, ref, txt, tgt, ids):
    loss = module(ref, txt, tgt, ids)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def encode(wrapper, images, tokens, batch):
    """(image features, text features) in batches; no tokens: no text features."""
    img = torch.cat([wrapper.encode_image(images[i:i + batch]) for i in range(0, len(images), batch)])
    txt = [wrapper.encode_text(tokens[i:i + batch]) for i in range(0, len(tokens), batch)]
    return img, torch.cat(txt) if txt else None


def best_of(f, repeats):
    """The fastest of `repeats` timed runs of f() (other jobs on shared cores only ever add time)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_model(name, args):
    torch.manual_seed(0)
    arch = TINY_ARGS if name == "tiny" else openai_args(name)
    wrapper = CLIPWrapper(clip.model.CLIP(**arch).float(), "zero_shot").eval()
    n, res, batch = args.pairs, arch["image_resolution"], args.batch
    refs, tgts = torch.randn(n, 3, res, res), torch.randn(n, 3, res, res)
    tokens = tokenize([f"make it {COLOURS[i % 6]} and give it {i % 5} legs" for i in range(n)])
    ids = torch.arange(n)
    out = {}
    t0 = time.perf_counter()
    ref_f, txt_f = encode(wrapper, refs, tokens, batch)
    tgt_f, _ = encode(wrapper, tgts, tokens[:0], batch)
    out["encode_once_s"] = time.perf_counter() - t0
    for kind in ("combiner", "moe_combiner"):
        module = CombinerLoss(build_combiner(kind, arch["embed_dim"]))
        opt = torch.optim.AdamW(module.parameters(), lr=2e-5)
        combiner_step(module, opt, ref_f[:batch], txt_f[:batch], tgt_f[:batch], ids[:batch])  # warm-up

        def reencode_epoch():
            for i in range(0, n, batch):
                ref, txt = encode(wrapper, refs[i:i + batch], tokens[i:i + batch], batch)
                tgt, _ = encode(wrapper, tgts[i:i + batch], tokens[:0], batch)
                combiner_step(module, opt, ref, txt, tgt, ids[i:i + batch])

        def cached_epoch():
            for i in range(0, n, batch):
                combiner_step(module, opt, ref_f[i:i + batch], txt_f[i:i + batch], tgt_f[i:i + batch], ids[i:i + batch])
        out[f"{kind}_reencode_s"] = best_of(reencode_epoch, args.repeats)
        out[f"{kind}_cached_s"] = best_of(cached_epoch, args.repeats)
        out[f"{kind}_params"] = sum(p.numel() for p in module.parameters())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each epoch; the fastest counts")
    ap.add_argument("--models", default="tiny,ViT-B/32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.pairs} pairs, batches of {args.batch}, {args.threads} threads, fp32")
    heads = []
    for name in args.models.split(","):
        r = bench_model(name, args)
        print(f"{name}: one-off encoding of {args.pairs} pairs {r['encode_once_s']:.2f} s")
        for kind in ("combiner", "moe_combiner"):
            ratio = r[f"{kind}_reencode_s"] / r[f"{kind}_cached_s"]
            print(f"  {kind} ({r[f'{kind}_params']:,} parameters): epoch re-encoding {r[f'{kind}_reencode_s']:.2f} s, "
                  f"on cached features {r[f'{kind}_cached_s']:.3f} s ({ratio:.0f}x)")
            heads.append(f"{name} {kind} {ratio:.0f}x")
    print("stage-2 epoch, re-encoding / cached: " + ", ".join(heads))


if __name__ == "__main__":
    main()
