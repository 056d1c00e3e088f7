"""Phase I losses.

* ``ce``, ``focal``, ``cb_ce``, ``cb_focal``: cross-entropy, focal loss, and their
  class-balanced (effective number, Cui et al. 2019) weighted forms.
* ``ldam``: label-distribution-aware margin loss (Cao et al. 2019), for the cosine head.
* ``la``: logit-adjusted loss (Menon et al. 2021).
* ``balanced_softmax``: balanced softmax (Ren et al. 2020).
* DRW, deferred re-weighting (Cao et al. 2019), on top of ce / ldam / la /
  balanced_softmax: class-balanced weights from a given epoch on.

Every module `build_loss` returns has ``set_epoch(epoch)``; Phase I calls it at the
start of each epoch (a no-op except under DRW).  The adjustments act on the loss
only: predictions stay ``argmax`` of the model's logits.
"""
from __future__ import annotations

from typing import Optional

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


class CrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` (unchanged) with the ``set_epoch`` every Phase I loss has."""

    def set_epoch(self, epoch: int) -> None:
        pass


class FocalLoss(nn.Module):
    """Softmax focal loss, -w_y (1 - p_y)^gamma log p_y, averaged over the batch."""

    def __init__(self, gamma: float = 1.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def set_epoch(self, epoch: int) -> None:
        pass

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - logp.exp()).clamp_min(0).pow(self.gamma)) * logp
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def _counts(class_counts, what: str) -> np.ndarray:
    n = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if n.size == 0 or not np.all(n >= 1):
        raise ValueError(f"{what}: every class needs at least one training sample, got counts {n.tolist()}")
    return n


def ldam_margins(class_counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM's per-class margins (Cao et al., NeurIPS 2019), in cosine units.

    Delta_j = C / n_j^(1/4), with C chosen so that the largest margin (the rarest
    class's) is `max_margin`: C = max_margin * min_j n_j^(1/4).
    """
    n = _counts(class_counts, "ldam_margins")
    m = n ** -0.25
    return torch.tensor(m * (max_margin / m.max()), dtype=torch.float32)


def log_prior(class_counts) -> torch.Tensor:
    """log pi_j with pi_j = n_j / N, the training label prior."""
    n = _counts(class_counts, "log_prior")
    return torch.tensor(np.log(n / n.sum()), dtype=torch.float32)


class AdjustedCrossEntropy(nn.Module):
    """Cross-entropy on adjusted logits, with optional deferred re-weighting (DRW).

    loss_i = CE(z_i + b - m_{y_i} e_{y_i}, y_i): ``offset`` b (K) is added to every
    row, ``margin`` m (K) is taken off the true class's logit only.  The subclasses
    set b and m (LDAM, logit adjustment, balanced softmax); with neither it is plain CE.

    DRW (Cao et al. 2019): with ``drw_weight`` w and ``drw_epoch`` E, epochs
    E, E+1, ... (0-based, as passed to `set_epoch`) weight sample i by w_{y_i}; earlier
    epochs are unweighted.  The weighted batch loss is sum_i w_{y_i} l_i / sum_i w_{y_i},
    the weighted mean of ``F.cross_entropy(weight=w)``: that is what LDAM-DRW's
    ``cifar_train.py`` computes (``nn.CrossEntropyLoss(weight=per_cls_weights)`` and
    ``LDAMLoss``, which ends in ``F.cross_entropy(..., weight=self.weight)``), and its rule
    ``betas[epoch // 160]`` with 0-based epochs switches at E = 160.
    """

    def __init__(self, offset: Optional[torch.Tensor] = None, margin: Optional[torch.Tensor] = None,
                 drw_weight: Optional[torch.Tensor] = None, drw_epoch: Optional[int] = None):
        super().__init__()
        if (drw_weight is None) != (drw_epoch is None):
            raise ValueError("AdjustedCrossEntropy: drw_weight and drw_epoch go together")
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("margin", margin, persistent=False)
        self.register_buffer("drw_weight", drw_weight, persistent=False)
        self.drw_epoch = drw_epoch
        self.drw_active = False

    def set_epoch(self, epoch: int) -> None:
        """Switch DRW on for 0-based epochs >= drw_epoch (no-op without DRW)."""
        self.drw_active = self.drw_epoch is not None and epoch >= self.drw_epoch

    def extra_repr(self) -> str:
        return f"drw_epoch={self.drw_epoch}, drw_active={self.drw_active}"

    def adjust(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The adjusted logits the cross-entropy is taken of (float32)."""
        z = logits.float()
        if self.offset is not None:
            z = z + self.offset
        if self.margin is not None:
            z = z.scatter_add(1, target[:, None], -self.margin[target][:, None])
        return z

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.drw_weight if self.drw_active else None
        return F.cross_entropy(self.adjust(logits, target), target, weight=weight)


class LDAMLoss(AdjustedCrossEntropy):
    """LDAM (Cao et al., NeurIPS 2019): CE(s * z'), z'_y = z_y - Delta_y, other logits as they are.

    z are cosines (the cosine head's ``<x/|x|, w_j/|w_j|>``) and Delta = `ldam_margins`.
    The head already returns s * z (s = `scale`, `fsa_lt.models.heads.CosineClassifier`),
    so this loss takes ``s * Delta_y`` off the true logit:

        CE(s*z - s*Delta_y e_y) = CE(s * (z - Delta_y e_y)) = CE(s * z'),

    the paper's loss exactly, provided `scale` is the head's scale.
    """

    def __init__(self, class_counts, max_margin: float = 0.5, scale: float = 30.0, **drw):
        super().__init__(margin=float(scale) * ldam_margins(class_counts, max_margin), **drw)
        self.scale, self.max_margin = float(scale), float(max_margin)


class LogitAdjustedLoss(AdjustedCrossEntropy):
    """Logit-adjusted loss (Menon et al., ICLR 2021): CE(z + tau * log pi), pi_j = n_j / N."""

    def __init__(self, class_counts, tau: float = 1.0, **drw):
        super().__init__(offset=float(tau) * log_prior(class_counts), **drw)
        self.tau = float(tau)


class BalancedSoftmaxLoss(AdjustedCrossEntropy):
    """Balanced softmax (Ren et al., NeurIPS 2020): CE(z + log n_j).

    Since log n_j = log pi_j + log N and a softmax ignores a constant added to every
    logit, this is the logit-adjusted loss with tau = 1; both names exist because
    users look for both.
    """

    def __init__(self, class_counts, **drw):
        n = _counts(class_counts, "BalancedSoftmaxLoss")
        super().__init__(offset=torch.tensor(np.log(n), dtype=torch.float32), **drw)


DRW_LOSSES = ("ce", "ldam", "la", "balanced_softmax")


def build_loss(name: str, class_counts, focal_gamma: float = 1.0, cb_beta: float = 0.9999, *,
               ldam_max_margin: float = 0.5, ldam_scale: float = 30.0, la_tau: float = 1.0,
               drw_epoch: Optional[int] = None) -> nn.Module:
    """The Phase I loss `name` for a training set with `class_counts` images per class.

    `ldam_scale` must be the cosine head's scale (``model.cosine_scale``); `drw_epoch`
    (None: off) adds DRW with class-balanced weights of `cb_beta` to ce / ldam / la /
    balanced_softmax.  ce, focal, cb_ce and cb_focal without DRW are the modules they
    always were.
    """
    if drw_epoch is not None:
        if name not in DRW_LOSSES:
            raise ValueError(f"DRW combines with {', '.join(DRW_LOSSES)}, not {name!r}")
        drw = {"drw_weight": class_balanced_weights(class_counts, cb_beta), "drw_epoch": int(drw_epoch)}
    else:
        drw = {}
    if name == "ce":
        return AdjustedCrossEntropy(**drw) if drw else CrossEntropy()
    if name == "ldam":
        return LDAMLoss(class_counts, ldam_max_margin, ldam_scale, **drw)
    if name == "la":
        return LogitAdjustedLoss(class_counts, la_tau, **drw)
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(class_counts, **drw)
    if name == "focal":
        return FocalLoss(focal_gamma)
    w = class_balanced_weights(class_counts, cb_beta)
    if name == "cb_ce":
        return CrossEntropy(weight=w)
    if name == "cb_focal":
        return FocalLoss(focal_gamma, weight=w)
    raise ValueError(name)


def loss_from_config(cfg, class_counts) -> nn.Module:
    """`build_loss` with every option read from a `fsa_lt.config.Config` (train.*, model.cosine_scale)."""
    t = cfg.train
    return build_loss(t.loss, class_counts, t.focal_gamma, t.cb_beta, ldam_max_margin=t.ldam_max_margin,
                      ldam_scale=cfg.model.cosine_scale, la_tau=t.la_tau, drw_epoch=t.drw_epoch)
