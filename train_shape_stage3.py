"""Photo -> shape, stage 3: fine-tune both towers with supervised contrastive loss (SupCon), where the photos,
renders and captions of one 3D model are all positives; warm-started from stage 2 (CLIP-FH's stage 3).

    python train_shape_stage3.py --init_from=weights/<stage 2 run>/best.pt
    python train_shape_stage3.py --clip_model=tiny --lr=2e-4 --init_from=weights/<stage 2 run>/best.pt
Any config key of train.py can be overridden as --key=value. This file only states what differs from
train.py's defaults; the loop is train.py's. (Each preset is its own few-line script on purpose: one command per
stage, as the README lists them.)
"""
import train

PRESET = dict(
    task="photo2shape",
    train_mode="full",
    shape_loss="supcon",
    epochs=20,
    warmup_steps=20,
    augment=True,
)

if __name__ == "__main__":
    train.main(preset=PRESET)
