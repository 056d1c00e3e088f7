"""Post-hoc logit adjustment: A. K. Menon, S. Jayasumana, A. S. Rawat, H. Jain, A. Veit,
S. Kumar, *Long-Tail Learning via Logit Adjustment*, ICLR 2021.

A model trained on the long-tailed prior pi predicts argmax_j (z_j - tau * log pi_j)
instead of argmax_j z_j; tau = 1 is the paper's default (the Bayes rule for the
balanced error when the softmax estimates p(y | x)), other values are tuned on held-out data.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from fsa_lt.errors import ConfigError

__all__ = ["posthoc_adjust"]


def posthoc_adjust(logits: Tensor, counts, tau: float = 1.0) -> Tensor:
    """z - tau * log pi, with pi_j = n_j / N from the training counts `counts` (K).

    `logits` is B x K; tau >= 0 (`ConfigError` otherwise; 0 returns the logits
    unchanged).  Every class needs a training count >= 1 (its log prior is otherwise
    -inf).  log pi is computed in float64, then used in the logits' dtype and device.
    """
    t = float(tau) if isinstance(tau, numbers.Real) and not isinstance(tau, bool) else float("nan")
    if not (t >= 0 and math.isfinite(t)):
        raise ConfigError(f"post-hoc logit adjustment: tau must be a number >= 0, got {tau!r}")
    n = np.asarray(torch.as_tensor(counts).cpu(), dtype=np.float64).reshape(-1)
    if logits.dim() != 2 or logits.shape[1] != n.size:
        raise ValueError(f"posthoc_adjust: logits must be B x {n.size}, got shape {tuple(logits.shape)}")
    if not np.all(n >= 1):
        raise ValueError(f"posthoc_adjust: every class needs a training count >= 1, got {n.tolist()}")
    log_pi = torch.as_tensor(np.log(n / n.sum()), device=logits.device)
    return logits - (t * log_pi).to(logits.dtype)
