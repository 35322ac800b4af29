"""Shared helpers: seeding, device, distributed set-up, AMP, RNG state, atomic files, jsonl, and the configurator.

Every script imports from here; nothing in this file has side effects at import time.
"""
import ast
import contextlib
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent


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


# ----------------------------------------------------------------------------- distributed, AMP, RNG state
def setup_distributed(device="auto"):
    """(rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; each rank takes its local GPU (a
    --device=cuda:N under torchrun would put every rank on GPU N)."""
    import datetime
    import warnings

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = get_device(device)
    if world == 1:
        return 0, 1, dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.startswith("cuda"):
        if dev not in ("cuda", f"cuda:{local_rank}"):
            warnings.warn(f"--device={dev} under torchrun: local rank {local_rank} uses cuda:{local_rank}")
        torch.cuda.set_device(local_rank)
        dev = f"cuda:{local_rank}"
    if not dist.is_initialized():
        # generous: ranks wait at barriers while rank 0 alone builds a feature cache or downloads weights
        dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo", timeout=datetime.timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size(), dev


@contextlib.contextmanager
def rank_zero_first(rank, world):
    """Rank 0 runs the block first and the other ranks after it: a download or a cache is written once, then
    read by the others (concurrent writers of one file corrupt it)."""
    import torch.distributed as dist

    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def autocast_dtype(dev, enabled=True):
    """The AMP dtype for this hardware, or None (fp32): bf16 where it runs natively, fp16 (with grad scaling)
    on GPUs without fast bf16, nothing on CPUs without bf16 instructions."""
    import torch

    if not enabled:
        return None
    if dev.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def rng_state():
    """Python, numpy, torch and CUDA generator states, as tensors and plain values (weights_only-loadable)."""
    import torch

    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}


def set_rng_state(state):
    """Restore rng_state(); CUDA states only for the devices this machine has (a run may resume on fewer)."""
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


@contextlib.contextmanager
def torch_threads(n, dev):
    """torch's intra-op threads set to n on a CPU for the duration (0 = leave as is). Small matrices on shared
    cores run faster on one thread than on two that wait for each other."""
    import torch

    before = torch.get_num_threads()
    if dev == "cpu" and n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def param_groups(module, weight_decay):
    """AdamW groups: no weight decay on biases, norm gains, 1-d parameters and the temperature."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "ln_" in name or "bn" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup, total):
    """LambdaLR factor: linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# ----------------------------------------------------------------------------- atomic files
def _umask():
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the permissions open() would
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
    """nanoGPT-style configurator: `--key=value` (or `--key value`; a bare `--flag` sets a bool key to True)
    overrides entries of `config` (a dict), type-checked.

    A bare argument ending in .json or .py is read as a config file first; its values are type-checked like the
    command line's. Unknown keys raise, so a typo (--lerning_rate=...) fails instead of silently training with
    the default. Returns a new dict.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = dict(config)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            for key, value in _config_file(arg).items():
                if key not in config:
                    raise ValueError(f"{arg}: unknown config key {key!r}")
                config[key] = _check_type(value, config[key], key, arg)
            continue
        key, has_value, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in config:
            close = [k for k in config if k.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key --{key}{hint}")
        if not has_value:
            if isinstance(config[key], bool) and (i == len(argv) or argv[i].startswith("--")):
                config[key] = True
                continue
            if i == len(argv):
                raise ValueError(f"--{key}: expected a value (--{key}=VALUE or --{key} VALUE)")
            raw, i = argv[i], i + 1
        config[key] = _parse_value(raw, config[key], key)
    return config


def _config_file(arg):
    path = Path(arg)
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if path.suffix == ".py":
        scope = {}
        exec(path.read_text(), scope)
        return {k: v for k, v in scope.items() if not k.startswith("_")}
    raise ValueError(f"unexpected argument {arg!r}: use --key=value or a .json/.py config file")


def _check_type(value, default, key, source):
    """A value from a config file, checked against the default's type as a command-line value is."""
    if default is None or type(value) is type(default):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{source}: {key}={value!r}: expected {type(default).__name__}, got {type(value).__name__}")
