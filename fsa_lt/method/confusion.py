"""Confusing classes of each tail class (paper's definition: row-wise).

Row ``c`` of the score matrix is the mean softmax of the training samples whose
true class is ``c``; the confusing classes of tail class ``c`` are the classes
with the highest scores in that row (what samples of ``c`` are mistaken for),
excluding ``c`` itself. The public unofficial implementation uses the column
(the transpose); this module deliberately does not.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fsa_lt.errors import ConfigError

__all__ = ["mean_scores_by_class", "confusing_classes"]


def mean_scores_by_class(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean softmax score vector of each true class.

    Args:
        probs: ``N x K`` softmax scores (any float dtype; computed in float32).
        labels: ``N`` true class ids.
        num_classes: ``K``.

    Returns:
        ``K x K`` float32; row ``c`` is the mean of ``probs`` over the samples with
        ``labels == c`` (all zeros for a class with no sample).
    """
    k = int(num_classes)
    if probs.dim() != 2 or probs.shape[1] != k:
        raise ConfigError(f"mean_scores_by_class: probs must be N x {k}, got shape {tuple(probs.shape)}")
    labels = torch.as_tensor(labels, device=probs.device).long().reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ConfigError(f"mean_scores_by_class: {labels.shape[0]} labels for {probs.shape[0]} score rows")
    p = probs.float()
    sums = torch.zeros(k, k, dtype=torch.float32, device=p.device).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=k)[:k].to(torch.float32)
    return sums / counts.clamp(min=1.0)[:, None]


def confusing_classes(score_matrix: Tensor, tail_classes, n_f: int) -> Tensor:
    """Top-``n_f`` confusing classes of each tail class.

    For tail class ``c``: row ``c`` of ``score_matrix``, class ``c`` itself
    excluded, the ``n_f`` highest scores; ties go to the lower class id.

    Args:
        score_matrix: ``K x K`` (as from :func:`mean_scores_by_class`).
        tail_classes: tail class ids (sequence, numpy array or tensor).
        n_f: number of confusing classes, ``1 <= n_f < K``.

    Returns:
        LongTensor ``len(tail_classes) x n_f`` on ``score_matrix``'s device, row
        ``i`` for ``tail_classes[i]``, most confusing first.
    """
    if score_matrix.dim() != 2 or score_matrix.shape[0] != score_matrix.shape[1]:
        raise ConfigError(f"confusing_classes: score matrix must be K x K, got shape {tuple(score_matrix.shape)}")
    k = score_matrix.shape[0]
    n_f = int(n_f)
    if n_f < 1 or n_f >= k:
        raise ConfigError(f"n_f must be in [1, K-1] = [1, {k - 1}], got {n_f}")
    if isinstance(tail_classes, Tensor):
        tail = tail_classes.to(device=score_matrix.device, dtype=torch.long).reshape(-1)
    else:
        tail = torch.as_tensor(np.asarray(tail_classes, dtype=np.int64).reshape(-1), device=score_matrix.device)
    if tail.numel() and (int(tail.min()) < 0 or int(tail.max()) >= k):
        raise ConfigError(f"confusing_classes: tail class ids must be in [0, {k - 1}]")
    rows = score_matrix.float()[tail].clone()  # T x K
    rows[torch.arange(tail.numel(), device=rows.device), tail] = float("-inf")
    # stable descending sort: equal scores keep ascending class-id order
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    return order[:, :n_f].contiguous()
