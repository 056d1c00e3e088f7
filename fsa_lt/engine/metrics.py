"""Accuracy measures of the long-tailed literature.

top-1 over the test set; per-class accuracy; many/medium/few-shot accuracy (more than
100 / 20..100 / fewer than 20 training images, OLTR's definition) and head/tail accuracy
(the h_r split), each the mean of the per-class accuracies of the classes in the group.
A group with no class is reported as None (null), never 0.
"""
from __future__ import annotations

import numpy as np
import torch

from ..method.split import head_tail_split, shot_groups


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """K x K counts, rows = true class, columns = prediction; stays on the tensors' device."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return acc


def group_accuracy(per_class: np.ndarray, classes) -> float | None:
    classes = np.asarray(classes, dtype=np.int64)
    if classes.size == 0:
        return None
    vals = per_class[classes]
    vals = vals[~np.isnan(vals)]
    return None if vals.size == 0 else float(vals.mean() * 100.0)


def summarize(cm, train_counts, h_r: float = 0.9) -> dict:
    """The metrics.json entry: top1, many, medium, few, head, tail, per_class (percent)."""
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.int64)
    counts = np.asarray(train_counts)
    per_class = per_class_accuracy(cm)
    groups = shot_groups(counts)
    head, tail = head_tail_split(counts, h_r)
    total = cm.sum()
    return {
        "top1": float(np.trace(cm) / total * 100.0) if total else None,
        "many": group_accuracy(per_class, groups["many"]),
        "medium": group_accuracy(per_class, groups["medium"]),
        "few": group_accuracy(per_class, groups["few"]),
        "head": group_accuracy(per_class, head),
        "tail": group_accuracy(per_class, tail),
        "per_class": [None if np.isnan(a) else float(a * 100.0) for a in per_class],
        "num_test": int(total),
    }


def logit_sums(logits: torch.Tensor, is_head: torch.Tensor) -> torch.Tensor:
    """Sums over the rows of `logits` (N x K) of three views of a classifier's prior, for a boolean
    K-vector `is_head`: [prediction in a head class (0/1), the logit vector's L2 norm, the mean
    head logit minus the mean tail logit]. `logit_stats` turns the sums of all batches into means."""
    z = logits.float()
    pred_head = is_head[z.argmax(1)].float().sum()
    gap = (z[:, is_head].mean(1) - z[:, ~is_head].mean(1)).sum() if bool(is_head.any()) and not bool(is_head.all()) \
        else z.new_tensor(float("nan"))
    return torch.stack([pred_head, z.norm(dim=1).sum(), gap]).double().cpu()


def logit_stats(sums: torch.Tensor, n: int) -> dict:
    """`logit_sums` totals over `n` samples -> pred_head (% of predictions that are head classes),
    logit_norm (mean L2 norm of the logits), head_tail_gap (mean head minus mean tail logit)."""
    s = (sums / max(n, 1)).tolist()
    return {"pred_head": s[0] * 100.0, "logit_norm": s[1], "head_tail_gap": None if s[2] != s[2] else s[2]}


def relative_shift(params: dict, ref: dict) -> float | None:
    """||theta - theta_0|| / ||theta_0|| over the tensors of `ref` (name -> tensor) found in `params`:
    how far a classifier moved from where it started. None when they share no tensor."""
    num = den = 0.0
    for name, p0 in ref.items():
        p = params.get(name)
        if p is None or p.shape != p0.shape:
            continue
        num += float((p.detach().double() - p0.double()).pow(2).sum())
        den += float(p0.double().pow(2).sum())
    return None if den == 0 else (num / den) ** 0.5


def fmt(v) -> str:
    return "  -  " if v is None else f"{v:5.2f}"


def one_line(m: dict) -> str:
    return (f"top1 {fmt(m['top1'])} | many {fmt(m['many'])} medium {fmt(m['medium'])} "
            f"few {fmt(m['few'])} | head {fmt(m['head'])} tail {fmt(m['tail'])}")
