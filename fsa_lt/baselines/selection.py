"""Choosing a baseline's tau on data held out from the training set, never on the test set.

Kang et al. (ICLR 2020) pick tau-normalisation's tau on a validation set and Menon et
al. (ICLR 2021) tune the post-hoc tau likewise; CIFAR-LT has no validation split, so a
class-stratified slice of the long-tailed training set is held out (`holdout_split`)
and the tau with the best class-balanced accuracy on it is kept (`choose_tau`).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from fsa_lt.errors import ConfigError

__all__ = ["HoldoutSplit", "holdout_counts", "holdout_split", "TauChoice", "balanced_accuracy", "choose_tau"]

# fraction * n_j may land a hair under an integer in floating point (0.57 * 100 =
# 56.99999999999999); this much is added before rounding down.
_FLOOR_SLACK = 1e-9


class HoldoutSplit(NamedTuple):
    train_idx: Tensor  # int64, sorted: positions in the labels that stay for training
    holdout_idx: Tensor  # int64, sorted: positions held out
    holdout_counts: Tensor  # int64, K: how many images each class gave to the slice


def _check_fraction(fraction: float) -> float:
    f = float(fraction) if isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) else float("nan")
    if not (0.0 < f < 1.0):
        raise ConfigError(f"held-out slice: fraction must be in (0, 1), got {fraction!r}")
    return f


def holdout_counts(counts, fraction: float = 0.1) -> np.ndarray:
    """How many images of each class the held-out slice takes.

    h_j = min(max(1, floor(fraction * n_j)), n_j - 1) for n_j >= 2, and h_j = 0 for n_j <= 1:
    up to `fraction` of the class, at least one image, and never the whole class, since
    a class must keep a training image.  A class with a single image therefore keeps it
    for training and is absent from the slice (`choose_tau` averages over the classes
    present).  For small classes "at least one" exceeds the fraction (a class of 5 gives
    1 of 5); the counts are returned so that callers can report them.
    """
    f = _check_fraction(fraction)
    n = np.asarray(counts, dtype=np.int64).reshape(-1)
    if np.any(n < 0):
        raise ValueError(f"holdout_counts: negative class count in {n.tolist()}")
    h = np.floor(f * n + _FLOOR_SLACK).astype(np.int64)
    h = np.minimum(np.maximum(h, 1), n - 1)
    return np.where(n >= 2, h, 0)


def holdout_split(labels, fraction: float = 0.1, seed: int = 0, num_classes: int | None = None) -> HoldoutSplit:
    """A class-stratified slice of the training set for choosing tau, drawn with a fixed seed.

    Class j gives `holdout_counts` (n_j, fraction) of its images, chosen uniformly at
    random without replacement: a NumPy ``default_rng(seed)`` draws one key per image
    and each class holds out its images of smallest key.  The split is a function of
    (labels, fraction, seed) alone (not of the torch RNG nor the device).

    Returns `HoldoutSplit` (train_idx, holdout_idx, holdout_counts): sorted int64 CPU
    tensors of positions in `labels` (together a partition of 0..N-1) and the per-class
    held-out counts (length `num_classes`, default max label + 1).
    """
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
    if y.size == 0:
        raise ValueError("holdout_split: no labels")
    if y.min() < 0:
        raise ValueError(f"holdout_split: negative label {int(y.min())}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < int(y.max()) + 1:
        raise ValueError(f"holdout_split: label {int(y.max())} with num_classes={k}")
    n = np.bincount(y, minlength=k)
    h = holdout_counts(n, fraction)
    keys = np.random.default_rng(seed).random(y.size)
    order = np.lexsort((keys, y))  # by class, random within a class
    starts = np.cumsum(n) - n
    rank = np.arange(y.size) - starts[y[order]]  # position within its class
    held = np.zeros(y.size, dtype=bool)
    held[order[rank < h[y[order]]]] = True
    idx = np.arange(y.size)
    return HoldoutSplit(torch.from_numpy(idx[~held]), torch.from_numpy(idx[held]), torch.from_numpy(h))


def balanced_accuracy(pred: Tensor, labels: Tensor) -> float:
    """Class-balanced accuracy in percent: the mean, over the classes present in `labels`,
    of the fraction of that class's samples predicted right."""
    pred = torch.as_tensor(pred).reshape(-1).cpu().long()
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    if pred.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"balanced_accuracy: {pred.numel()} predictions for {labels.numel()} labels")
    k = int(labels.max()) + 1
    total = torch.bincount(labels, minlength=k).double()
    right = torch.bincount(labels[pred == labels], minlength=k).double()
    present = total > 0
    return float((right[present] / total[present]).mean()) * 100.0


class TauChoice(NamedTuple):
    tau: float  # the chosen tau
    accuracy: float  # its class-balanced accuracy on the held-out slice, percent
    curve: list  # [(tau, accuracy)] for every tau of the grid, ascending tau


def choose_tau(score_fn: Callable[[float], Tensor], grid: Sequence[float], holdout_labels) -> TauChoice:
    """The tau of `grid` whose scores give the best class-balanced accuracy on the held-out slice.

    ``score_fn(tau)`` returns the M x K scores (logits) of the M held-out samples under
    that tau; prediction is their argmax, accuracy is `balanced_accuracy` (every class
    present in the slice counts the same, as the balanced test sets do).  The grid is
    evaluated in ascending order; a tie (within 1e-9 %) goes to the smaller tau, the
    smaller change to the Phase I classifier (tau = 0 is the classifier itself for
    tau-normalisation and for post-hoc adjustment).  The whole curve is returned so that
    the choice can be recorded.
    """
    grid = list(grid)
    if not grid or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(t) for t in grid):
        raise ConfigError(f"tau grid must be a non-empty list of numbers, got {grid!r}")
    taus = sorted(float(t) for t in grid)
    labels = torch.as_tensor(holdout_labels).reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("choose_tau: empty held-out slice")
    curve = []
    for t in taus:
        scores = score_fn(t)
        if scores.dim() != 2 or scores.shape[0] != labels.numel():
            raise ValueError(f"choose_tau: score_fn({t}) gave shape {tuple(scores.shape)}, "
                             f"expected {labels.numel()} x K")
        curve.append((t, balanced_accuracy(scores.argmax(1), labels)))
    best_tau, best_acc = curve[0]
    for t, acc in curve[1:]:
        if acc > best_acc + 1e-9:  # strictly better: ties keep the smaller tau seen first
            best_tau, best_acc = t, acc
    return TauChoice(best_tau, best_acc, curve)
