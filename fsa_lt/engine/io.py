"""Atomic file writes and the environment record every run saves.

Nothing is written half: each file goes to a temporary name in the same folder and
is renamed over the target (`os.replace` is atomic on POSIX and Windows).
"""
from __future__ import annotations

import functools
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import faults


def _atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            if faults.due("kill_in_write", str(path)):  # fault injection: die half-way through this file
                f.write(data[: len(data) // 2])
                f.flush()
                faults.kill_now()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return _atomic_write(path, data)


def write_text(path, text: str) -> Path:
    return _atomic_write(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def torch_save(path, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _atomic_write(path, buf.getvalue())


def processor_name() -> str:
    """The CPU model as the operating system names it (Linux: /proc/cpuinfo's "model name"),
    else what `platform` knows; a run's speed means little without it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpus_available() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one: containers and
    `taskset` give fewer than `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# module name (the key in the record) -> the distribution pip installs it from
LIBRARIES = {"yaml": "PyYAML", "tensorboard": "tensorboard", "PIL": "pillow", "sklearn": "scikit-learn",
             "matplotlib": "matplotlib", "torchvision": "torchvision", "timm": "timm"}


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict:
    """The installed versions of the optional libraries, read from the package metadata: importing
    them to ask (torchvision, scikit-learn, matplotlib...) cost seconds in every process that records
    a run. A library that is not installed is left out."""
    from importlib import metadata

    out = {}
    for mod, dist_name in LIBRARIES.items():
        try:
            out[mod] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment() -> dict:
    """Versions and machine a run depends on, saved with every run."""
    import fsa_lt

    env = {
        "fsa_lt": fsa_lt.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "processor": processor_name(),
        "cpus_available": cpus_available(),
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    env.update(_library_versions())
    try:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            env["git_commit"] = rev.stdout.strip()
    except Exception:
        pass
    # plain JSON types only (torch.__version__ is a str subclass that the weights_only
    # unpickler refuses), so the record also fits inside a checkpoint
    return json.loads(json.dumps(env, default=str))
