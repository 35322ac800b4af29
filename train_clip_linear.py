"""Linear probing: CLIP frozen, only the image/text projections and the temperature train, on cached features.

    python train_clip_linear.py                       # ViT-B/32, pretrained
    python train_clip_linear.py --clip_model=tiny     # offline: a tiny random-init model
Any config key of train.py can be overridden as --key=value. This file only chooses a preset; the loop is train.py's.
"""
import train

PRESET = dict(
    train_mode="linear",
    lr=1e-3,           # projections from a frozen backbone take a much larger step than full fine-tuning
    weight_decay=0.0,
    epochs=30,
    batch_size=128,
    warmup_steps=20,
    patience=8,
)

if __name__ == "__main__":
    train.main(preset=PRESET)
