"""The Phase II feature store under ``feature/<config>/<note>/``.

    index.json        what Phase III needs to know: mode, sizes, dtype, the Phase I
                      checkpoint used, class counts, head/tail split, confusing classes,
                      tau_s/tau_g/h_r/n_f, and the list of shards (written last: a store
                      without index.json is incomplete)
    confusion.pt      the K x K matrix of mean softmax scores by true class (row-wise)
    shard_RRR.pt      (cached mode) for a contiguous range of training samples:
                      fmaps N x C x H x W (fp16 by default), cams N x H x W (normalised,
                      for the sample's own class), labels N, start
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..engine.checkpoint import load_error_reason
from ..engine.io import torch_save, write_json
from ..errors import CheckpointError

STORE_FORMAT = "fsa-lt-store/1"


def shard_name(rank: int) -> str:
    return f"shard_{rank:03d}.pt"


def write_shard(folder: Path, rank: int, start: int, fmaps, cams, labels) -> Path:
    return torch_save(folder / shard_name(rank), {
        "format": STORE_FORMAT, "start": int(start),
        "fmaps": fmaps, "cams": cams, "labels": labels,
    })


def write_index(folder: Path, index: dict) -> Path:
    index = dict(index, format=STORE_FORMAT)
    return write_json(folder / "index.json", index)


def is_complete(folder: Path) -> bool:
    idx = folder / "index.json"
    if not idx.is_file():
        return False
    try:
        index = json.loads(idx.read_text())
    except ValueError:
        return False
    return all((folder / s["file"]).is_file() for s in index.get("shards", []))


def read_index(folder: Path) -> dict:
    path = folder / "index.json"
    if not path.is_file():
        raise CheckpointError(f"feature store not found: {path} (run Phase II first: fsa-lt extract)")
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt feature-store index ({exc})") from None
    if index.get("format") != STORE_FORMAT:
        raise CheckpointError(f"{path} is not an fsa-lt feature store")
    return index


def check_shards(folder: Path, index: dict) -> None:
    """Every shard the index lists is there with the size it was written with (cheap: no read)."""
    for s in index.get("shards", []):
        path = folder / s["file"]
        if not path.is_file():
            raise CheckpointError(f"feature store shard missing: {path} (the store of {folder / 'index.json'} is incomplete)")
        if "bytes" in s and path.stat().st_size != s["bytes"]:
            raise CheckpointError(f"feature store shard {path} has {path.stat().st_size} bytes, its index says "
                                  f"{s['bytes']}: it was changed or cut short; extract again (fsa-lt extract --force)")


def load_shards(folder: Path, index: dict) -> dict:
    """Concatenate the shards in sample order: fmaps, cams, labels (CPU tensors)."""
    check_shards(folder, index)
    parts = []
    for s in sorted(index["shards"], key=lambda s: s["start"]):
        path = folder / s["file"]
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"feature store shard missing: {path}") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read feature store shard {path}: {load_error_reason(path, exc)}") from None
        if d.get("format") != STORE_FORMAT or d.get("start") != s["start"]:
            raise CheckpointError(f"{path} does not belong to the store of {folder / 'index.json'}")
        parts.append(d)
    out = {k: torch.cat([p[k] for p in parts]) for k in ("fmaps", "cams", "labels")}
    if out["labels"].shape[0] != index["num_samples"]:
        raise CheckpointError(f"{folder}: shards hold {out['labels'].shape[0]} samples, index says {index['num_samples']}")
    return out


def load_confusion(folder: Path) -> torch.Tensor:
    return torch.load(folder / "confusion.pt", map_location="cpu", weights_only=True)


def save_confusion(folder: Path, scores: torch.Tensor) -> Path:
    return torch_save(folder / "confusion.pt", scores)
