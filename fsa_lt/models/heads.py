"""Classifier heads other than ``nn.Linear``: the cosine classifier LDAM is trained with.

The cosine classifier is what Cao et al. (NeurIPS 2019, LDAM-DRW) call ``NormedLinear``:
the logit of class j is the cosine between the pooled feature x and the class vector w_j,

    z_j = <x / |x|, w_j / |w_j|>   in [-1, 1],   no bias,

and this module returns ``scale * z`` (``scale`` = s = 30 by default).  Putting s in the
head rather than in the loss keeps every consumer of ``model(x)`` / ``forward_head`` on
the same footing as with a linear head: ``argmax`` is that of the cosines, and a softmax
of the output (Phase II's confusion scores, Phase III's cross-entropy) works at the
temperature LDAM trained with instead of on [-1, 1] logits, whose softmax would be
nearly flat.  The LDAM loss then subtracts ``scale * Delta_y`` from the true logit, which
is the paper's ``s * (z_y - Delta_y)`` exactly (see `fsa_lt.engine.losses.LDAMLoss`).

The weight is stored K x C like ``nn.Linear.weight`` (LDAM-DRW stores C x K), so code
that reads ``get_classifier().weight`` (the CAMs) sees class vectors in rows.  For CAMs
the row norms do not matter: a class activation map built from w_j and one built from
w_j / |w_j| differ by the positive factor 1 / |w_j| for every location, which min-max
normalisation removes (`normalized_weight` gives the unit rows where they are wanted).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CosineClassifier"]


class CosineClassifier(nn.Module):
    """``scale * cos(x, w_j)`` for every class j; weight K x C, no bias.

    Initialisation as LDAM-DRW's ``NormedLinear``: a C x K tensor drawn uniform in
    [-1, 1], each class column rescaled to unit length (their ``renorm_(2, 1, 1e-5)
    .mul_(1e5)``), stored transposed.  Drawing C x K (not K x C) keeps the random
    stream the same as theirs, so a seeded draw gives their matrix, transposed.

    The product is computed in float32 with autocast off: under bf16 the cosine would
    carry about 3 significant digits, which times s = 30 is ~0.1 logit, of the order of
    LDAM's smallest margins.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0):
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"CosineClassifier: scale must be a positive number, got {scale!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        w = torch.empty(self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype)
        w.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.weight.copy_(w.t())

    def normalized_weight(self) -> torch.Tensor:
        """The class vectors scaled to unit length, K x C."""
        return F.normalize(self.weight.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            cos = F.normalize(x.float(), dim=1) @ self.normalized_weight().t()
            return self.scale * cos

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"
