"""Finding and reading the last.pt of a run to resume: the newest of its kind, or the one named, with errors that
name the file."""
import glob
import os
import warnings
from pathlib import Path

import torch


def checkpoint_kind(ckpt):
    return ckpt.get("kind") or ("captioner" if "decoder_args" in ckpt else "clip")


def load_resume(path, kind):
    """A last.pt to continue: an error naming the file when it is missing, unreadable or of another kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume={path}: not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--resume={path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "config" not in ckpt:
        raise ValueError(f"--resume={path}: not a last.pt of a training run (best.pt keeps only the model; "
                         f"resume from last.pt)")
    if checkpoint_kind(ckpt) != kind:
        raise ValueError(f"--resume={path}: a {checkpoint_kind(ckpt)} run, not a {kind} run")
    return ckpt


def find_latest(weights_root, kind):
    """The newest readable <weights_root>/*/last.pt of a run of this kind; unreadable ones are skipped with a
    warning (the checkpoint is memory-mapped: only its small entries are read)."""
    for path in sorted(glob.glob(os.path.join(weights_root, "*", "last.pt")), key=os.path.getmtime, reverse=True):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            warnings.warn(f"--resume=latest: skipping {path}: unreadable ({type(e).__name__})")
            continue
        if checkpoint_kind(ckpt) == kind:
            print(f"--resume=latest: {path}")
            return Path(path)
    raise FileNotFoundError(f"--resume=latest: no readable {weights_root}/*/last.pt of a {kind} run")
