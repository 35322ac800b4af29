"""Full fine-tuning: every CLIP parameter trains (AdamW, warmup + cosine, AMP where the hardware has it).

    python train_clip_full.py                         # ViT-B/32, pretrained
    python train_clip_full.py --clip_model=tiny --lr=5e-4   # offline: a tiny random-init model from scratch
    torchrun --nproc_per_node=2 train_clip_full.py    # several GPUs (gloo on CPU)
Any config key of train.py can be overridden as --key=value. This file only states what differs from
train.py's defaults; the loop is train.py's. (Each preset is its own few-line script on purpose: one command per
stage, as the README lists them.)
"""
import train

PRESET = dict(
    train_mode="full",
    augment=True,
)

if __name__ == "__main__":
    train.main(preset=PRESET)
