"""Phase I losses: cross-entropy, focal, and class-balanced (effective number) variants."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def class_balanced_weights(counts, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), scaled to sum to the class count."""
    counts = np.asarray(counts, dtype=np.float64)
    effective = 1.0 - np.power(beta, counts)
    w = (1.0 - beta) / np.maximum(effective, 1e-12)
    w = w / w.sum() * len(counts)
    return torch.tensor(w, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Softmax focal loss, -w_y (1 - p_y)^gamma log p_y, averaged over the batch."""

    def __init__(self, gamma: float = 1.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - logp.exp()).clamp_min(0).pow(self.gamma)) * logp
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def build_loss(name: str, class_counts, focal_gamma: float = 1.0, cb_beta: float = 0.9999) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "focal":
        return FocalLoss(focal_gamma)
    w = class_balanced_weights(class_counts, cb_beta)
    if name == "cb_ce":
        return nn.CrossEntropyLoss(weight=w)
    if name == "cb_focal":
        return FocalLoss(focal_gamma, weight=w)
    raise ValueError(name)
