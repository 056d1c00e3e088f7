"""Pooled features of an evaluation split (test, validation) through a frozen Phase I backbone,
computed once and kept beside the Phase II store.

Every Phase III run over one Phase I model evaluates its classifier on the same backbone
features of the test set (and of the validation split): the backbone is frozen and identical
for FSA, its control and the baselines that keep Phase I's BatchNorm statistics. Computing
them once saves a pass over the split per run (about 37 s of a 63 s CIFAR-10-LT FSA run on
two CPU cores).

A cached file is used only when its key matches: the SHA-256 of the Phase I checkpoint, the
split's name and contents (the images' bytes and labels for in-memory sets; the paths, labels,
sizes and modification times of image files), the model and the precision (always fp32: every
evaluation is). Anything else recomputes. The file is written atomically, so two runs
computing it at once leave one whole file. It is a cache, not a result: no record names it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..engine import distributed as dist
from ..engine.io import torch_save
from . import records

FORMAT = "fsa-lt-eval-features/1"


def split_fingerprint(ds) -> str:
    """SHA-256 of what an evaluation split's features depend on (see the module docstring)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(ds.targets, dtype=np.int64)).tobytes())
    if hasattr(ds, "data"):
        h.update(np.ascontiguousarray(ds.data).tobytes())
        h.update(repr((tuple(ds.mean), tuple(ds.std))).encode())
    else:
        root = Path(ds.root)
        for p in ds.paths:
            try:
                st = os.stat(root / p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def cache_key(checkpoint: Path, split: str, ds, model_name: str) -> dict:
    return {"format": FORMAT, "checkpoint_sha256": records.sha256_file(checkpoint), "split": split,
            "data": split_fingerprint(ds), "model": model_name, "precision": "fp32"}


def _path(folder: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / "eval" / f"{key['split']}-{digest}.pt"


def load(folder: Path, key: dict, n: int):
    """The cached (features, labels) for `key`, or None (absent, another key, wrong size, unreadable)."""
    path = _path(folder, key)
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if obj.get("key") != key or obj["features"].shape[0] != n or obj["labels"].shape[0] != n:
        return None
    return obj["features"], obj["labels"]


def store(folder: Path, key: dict, features: torch.Tensor, labels: torch.Tensor) -> None:
    if dist.is_main():
        torch_save(_path(folder, key), {"key": key, "features": features.detach().float().cpu(),
                                        "labels": labels.detach().long().cpu()})


def pooled(compute, folder: Path | None, key: dict | None, n: int, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(features, labels, from_cache) of a split of `n` samples: the cache under `folder` when `key`
    matches, else ``compute()`` (then cached). `folder` None: always compute, cache nothing."""
    if folder is not None and key is not None:
        hit = load(folder, key, n)
        # under torchrun every rank must take the same branch (compute is collective)
        misses = dist.all_reduce_sum(torch.tensor(float(hit is None), device=device)) if dist.world_size() > 1 else None
        if hit is not None and (misses is None or float(misses) == 0):
            return hit[0].to(device), hit[1].to(device), True
    feats, labels = compute()
    if folder is not None and key is not None:
        store(folder, key, feats, labels)
    return feats, labels, False


__all__ = ["pooled", "cache_key", "split_fingerprint", "load", "store", "FORMAT"]
