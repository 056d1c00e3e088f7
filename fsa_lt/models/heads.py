"""The classifier side of every model: `FeatureHeadMixin` (pooling, ``fc``, resetting it) and
the cosine classifier LDAM is trained with.

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

__all__ = ["CosineClassifier", "FeatureHeadMixin"]


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


class FeatureHeadMixin:
    """forward_head / classifier handling shared by all models (expects ``self.fc``).

    The classifier is ``nn.Linear`` (the default) or a `CosineClassifier`
    (``use_cosine_classifier``); `reset_classifier` rebuilds the kind in use.
    """

    num_features: int
    fc: nn.Module
    classifier_kind: str = "linear"  # class defaults; use_cosine_classifier sets them per model
    cosine_scale: float = 30.0

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = fmap.mean(dim=(2, 3))  # global average pooling -> B x C
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def new_classifier(self, num_classes: int) -> nn.Module:
        """A freshly initialised ``num_features -> num_classes`` head of the kind in use, beside ``fc``
        (same device and dtype; the model's own initialisation); the model is not changed."""
        where = dict(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        if self.classifier_kind == "cosine":
            return CosineClassifier(self.num_features, num_classes, self.cosine_scale).to(**where)
        fc = nn.Linear(self.num_features, num_classes).to(**where)
        self._init_classifier(fc)
        return fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised ``num_features -> num_classes`` head of the same kind."""
        self.fc = self.new_classifier(num_classes)
        self.num_classes = num_classes

    def use_cosine_classifier(self, scale: float = 30.0) -> None:
        """Switch to a freshly initialised cosine classifier (LDAM's ``NormedLinear``), ``scale * cos``."""
        self.classifier_kind = "cosine"
        self.cosine_scale = float(scale)
        self.reset_classifier(self.fc.out_features)

    def _init_classifier(self, fc: nn.Linear) -> None:  # default nn.Linear init
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
