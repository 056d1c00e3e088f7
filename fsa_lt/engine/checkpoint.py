"""Checkpoints: atomic saves, safe loads (``weights_only=True``), clear errors.

A checkpoint is a dict with ``format`` = FORMAT, ``phase``, ``model_name``,
``num_classes``, ``model`` (state dict) and, for resuming, ``optimizer``,
``scheduler``, ``scaler``, ``rng`` and ``epoch``/``iteration``.  Everything is
tensors, numbers, strings, lists and dicts, so the restricted unpickler of
``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .io import torch_save

FORMAT = "fsa-lt/1"


def save_checkpoint(path, state: dict) -> Path:
    state = dict(state)
    state["format"] = FORMAT
    return torch_save(path, state)


def load_error_reason(path: Path, exc: Exception, origin: str = "so it was not written by fsa-lt") -> str:
    """Why `torch.load(path, weights_only=True)` failed, as one whole clause (not PyTorch's
    multi-paragraph text cut at some length, nor its advice to turn the safe loading off).
    origin: what a file holding Python objects is, said after them."""
    import re
    import zipfile

    try:
        size = path.stat().st_size
    except OSError:
        size = None
    text = str(exc)
    if size == 0:
        return "the file is empty (0 bytes)"
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m or ("Weights only load failed" in text and zipfile.is_zipfile(path)):
        what = f" (it names {m.group(1)})" if m else ""
        return ("it holds Python objects other than tensors and plain data" + what +
                f", {origin}; it was refused without running its code")
    if not zipfile.is_zipfile(path):
        if "central directory" in text or "zip archive" in text:
            return f"the file is truncated or corrupt ({size} bytes, its zip archive is incomplete)"
        return f"it is not a PyTorch checkpoint ({size} bytes, not a zip archive)"
    first = re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else f"the file is corrupt ({type(exc).__name__})"


def load_checkpoint(path, expect_phase: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # PyTorch's pickle-protocol notes: the error says what matters
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {load_error_reason(path, exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not an fsa-lt checkpoint (no '{FORMAT}' format tag)")
    if expect_phase is not None and state.get("phase") != expect_phase:
        raise CheckpointError(f"{path} is a {state.get('phase')} checkpoint, expected {expect_phase}")
    return state


def check_compatible(state: dict, path, model_name: str, num_classes: int) -> None:
    if state.get("model_name") != model_name:
        raise CheckpointError(
            f"{path} holds model '{state.get('model_name')}', the config says '{model_name}'"
        )
    if state.get("num_classes") != num_classes:
        raise CheckpointError(
            f"{path} has {state.get('num_classes')} classes, the data set has {num_classes}"
        )


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path} does not fit the model: {' '.join(first[:2])[:300]}") from None


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
