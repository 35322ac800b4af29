"""Shared helpers: seeding, device, atomic files, jsonl, and the `--key=value` configurator.

Every script imports from here; nothing in this file has side effects at import time.
"""
import ast
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent
_UMASK = os.umask(0)
os.umask(_UMASK)


# ----------------------------------------------------------------------------- reproducibility / device
def set_seed(seed):
    """Seed python, numpy and torch (all devices) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_device(device="auto"):
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Anything else is passed through."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ----------------------------------------------------------------------------- atomic files
def atomic_write(path, data):
    """Write bytes or str to `path` through a temp file in the same folder + rename.

    A reader (or a crash) never sees a half-written file: the rename is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_image(image, path):
    """Save a PIL image atomically (format from the suffix)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    atomic_write(path, buf.getvalue())


def atomic_torch_save(obj, path):
    """torch.save through a temp file + rename: a checkpoint is never half-written."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def write_jsonl(path, rows):
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- configurator
def _parse_value(raw, default, key):
    """Parse `raw` to the type of `default`; reject values of another type."""
    if isinstance(default, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if default is None:
            return raw  # None defaults accept strings (e.g. paths)
        raise ValueError(f"--{key}={raw}: cannot parse a {type(default).__name__}") from None
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--{key}={raw}: expected True or False")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if type(value) is not type(default):
        raise ValueError(f"--{key}={raw}: expected {type(default).__name__}, got {type(value).__name__}")
    return value


def apply_overrides(config, argv=None):
    """nanoGPT-style configurator: `--key=value` overrides entries of `config` (a dict), type-checked.

    A bare argument ending in .json or .py is read as a config file first. Unknown keys raise, so a
    typo (--lerning_rate=...) fails instead of silently training with the default.
    Returns a new dict.
    """
    argv = sys.argv[1:] if argv is None else argv
    config = dict(config)
    for arg in argv:
        if not arg.startswith("--"):
            path = Path(arg)
            if path.suffix == ".json":
                updates = json.loads(path.read_text())
            elif path.suffix == ".py":
                scope = {}
                exec(path.read_text(), scope)
                updates = {k: v for k, v in scope.items() if not k.startswith("_")}
            else:
                raise ValueError(f"unexpected argument {arg!r}: use --key=value or a .json/.py config file")
            for key, value in updates.items():
                if key not in config:
                    raise ValueError(f"{arg}: unknown config key {key!r}")
                config[key] = value
            continue
        if "=" not in arg:
            raise ValueError(f"{arg}: expected --key=value")
        key, raw = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in config:
            close = [k for k in config if k.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key --{key}{hint}")
        config[key] = _parse_value(raw, config[key], key)
    return config
