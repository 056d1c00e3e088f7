"""Learning-rate schedules as a multiplier of the base lr per iteration (LambdaLR)."""
from __future__ import annotations

import math


def lr_factor(it: int, iters_per_epoch: int, cfg) -> float:
    """Multiplier of train.lr at iteration `it` (0-based) under the TrainConfig `cfg`.

    Warm-up is linear per iteration from lr/warmup_iters to lr over `warmup_epochs`.
    """
    epoch = it / iters_per_epoch  # fractional epoch
    warm_iters = cfg.warmup_epochs * iters_per_epoch
    if warm_iters and it < warm_iters:
        return (it + 1) / warm_iters
    whole = it // iters_per_epoch
    if cfg.schedule == "multistep":
        f = 1.0
        for m, fac in zip(cfg.milestones, cfg.lr_factors):
            if whole >= m:
                f = fac
        return f
    if cfg.schedule == "step":
        return cfg.step_gamma ** (whole // cfg.step_size)
    if cfg.schedule == "cosine":
        total = cfg.epochs - cfg.warmup_epochs
        t = (epoch - cfg.warmup_epochs) / max(total, 1e-9)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    raise ValueError(cfg.schedule)
