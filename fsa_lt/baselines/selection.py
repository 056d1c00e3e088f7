"""Choosing a baseline's tau on a validation split: images no model trained on, never the test set.

Kang et al. (ICLR 2020) pick tau-normalisation's tau on a validation set and Menon et al.
(ICLR 2021) tune the post-hoc tau likewise. A slice of the images Phase I trained on is not a
validation split (a model that fits them looks balanced there, and the choice drifts to "no
adjustment"), so the split comes from the data set (`fsa_lt.data.build_dataset(cfg, "val")`);
this module only scores a grid of tau on it (`choose_tau`) by class-balanced accuracy.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from fsa_lt.errors import ConfigError

__all__ = ["TauChoice", "balanced_accuracy", "choose_tau"]


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
    accuracy: float  # its class-balanced accuracy on the validation split, percent
    curve: list  # [(tau, accuracy)] for every tau of the grid, ascending tau


def choose_tau(score_fn: Callable[[float], Tensor], grid: Sequence[float], val_labels) -> TauChoice:
    """The tau of `grid` whose scores give the best class-balanced accuracy on the validation split.

    ``score_fn(tau)`` returns the M x K scores (logits) of the M validation samples under
    that tau; prediction is their argmax, accuracy is `balanced_accuracy` (every class
    present in the split counts the same, as the balanced test sets do).  The grid is
    evaluated in ascending order; a tie (within 1e-9 %) goes to the smaller tau, the
    smaller change to the Phase I classifier (tau = 0 is the classifier itself for
    tau-normalisation and for post-hoc adjustment).  The whole curve is returned so that
    the choice can be recorded.
    """
    grid = list(grid)
    if not grid or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(t) for t in grid):
        raise ConfigError(f"tau grid must be a non-empty list of numbers, got {grid!r}")
    taus = sorted(float(t) for t in grid)
    labels = torch.as_tensor(val_labels).reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("choose_tau: empty validation split")
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
