"""Classifier re-balancing on a frozen backbone: B. Kang, S. Xie, M. Rohrbach, Z. Yan,
A. Gordo, J. Feng, Y. Kalantidis, *Decoupling Representation and Classifier for
Long-Tailed Recognition*, ICLR 2020.

Given the Phase I representation, the classifier alone is re-balanced:

* class-balanced sampling (their p_j = n_j^q / sum_i n_i^q with q = 0): every class equally likely, then
  every image of the class equally likely;
* cRT: a re-initialised classifier trained on class-balanced batches;
* tau-normalisation: w_j <- w_j / |w_j|^tau, no bias, no training;
* LWS: logits z_j <- f_j z_j with one learnt scale f_j per class, trained on
  class-balanced batches, the classifier frozen.

Pure tensor code: the training loops (optimiser, iterations) belong to the caller.
"""
from __future__ import annotations

import copy
import numbers

import torch
import torch.nn as nn
from torch import Tensor

from fsa_lt.errors import ConfigError
from fsa_lt.models.heads import CosineClassifier

__all__ = [
    "ClassBalancedSampler",
    "class_balanced_indices",
    "crt_classifier",
    "tau_normalize",
    "tau_normalized_classifier",
    "LearnableWeightScaling",
]


class ClassBalancedSampler:
    """Class-balanced sampling (Kang et al. 2020; p_j = 1 / K'): a class drawn
    uniformly among the K' classes that have samples, then one of its samples uniformly.

    So each sample i of class y_i is drawn with probability 1 / (K' n_{y_i}).  Draws are
    independent (with replacement), vectorised, on the labels' device; `generator`, if
    given, must live on that device.  The sorting is done once here, so `sample` costs
    two random draws and a gather.
    """

    def __init__(self, labels, generator: torch.Generator | None = None):
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() == 0:
            raise ValueError("ClassBalancedSampler: no labels")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"ClassBalancedSampler: labels must be integers, got {labels.dtype}")
        self.device = labels.device
        self.generator = generator
        self.order = torch.argsort(labels, stable=True)  # sample indices grouped by class
        self.classes, self.counts = torch.unique_consecutive(labels[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.num_present = int(self.classes.numel())

    def sample(self, n: int) -> Tensor:
        """`n` sample indices (int64, on the labels' device)."""
        if n < 0:
            raise ValueError(f"ClassBalancedSampler: n must be >= 0, got {n}")
        c = torch.randint(self.num_present, (n,), generator=self.generator, device=self.device)
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        size = self.counts[c]
        within = torch.minimum((u * size).long(), size - 1)  # uniform in [0, n_c)
        return self.order[self.starts[c] + within]


def class_balanced_indices(labels, n: int, generator: torch.Generator | None = None) -> Tensor:
    """`n` indices into `labels` drawn class-balanced: a class uniformly (among those with
    samples), then a sample of it uniformly; see `ClassBalancedSampler` (reuse one of
    those when drawing many batches from the same labels)."""
    return ClassBalancedSampler(labels, generator).sample(n)


def crt_classifier(source: nn.Module, num_classes: int | None = None) -> nn.Module:
    """cRT's classifier (Kang et al. 2020): a freshly initialised one of the same kind.

    `source` is a model with ``new_classifier`` (the `fsa_lt.models` models: the head
    kind in use, with the model's own initialisation) or a head: ``nn.Linear`` (a new
    one with PyTorch's default initialisation, bias if the source has one) or a
    `CosineClassifier` (a new one, same scale, LDAM-DRW's initialisation).  Same
    device and dtype as the source's classifier; draws from the global torch RNG.
    """
    if hasattr(source, "new_classifier"):
        k = num_classes if num_classes is not None else source.get_classifier().out_features
        return source.new_classifier(k)
    if not isinstance(source, (CosineClassifier, nn.Linear)):
        raise ValueError(f"crt_classifier: no fresh classifier for {type(source).__name__}")
    k = num_classes if num_classes is not None else source.out_features
    where = dict(device=source.weight.device, dtype=source.weight.dtype)
    if isinstance(source, CosineClassifier):
        return CosineClassifier(source.in_features, k, source.scale).to(**where)
    return nn.Linear(source.in_features, k, bias=source.bias is not None).to(**where)


def _check_tau(tau: float) -> float:
    t = float(tau) if isinstance(tau, numbers.Real) and not isinstance(tau, bool) else float("nan")
    if not (0.0 <= t <= 1.0):
        raise ConfigError(f"tau-normalisation: tau must be in [0, 1], got {tau!r}")
    return t


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """tau-normalised classifier weights (Kang et al. 2020): w_j / |w_j|^tau.

    `weight` is K x C (one class per row); tau in [0, 1] (`ConfigError` otherwise):
    0 leaves the weights as they are, 1 gives unit rows.  The bias is not part of the
    method (the normalised classifier has none).  A zero row stays zero.  Computed in
    float32, returned in the weight's dtype, without gradient history.
    """
    tau = _check_tau(tau)
    w = weight.detach().float()
    norm = w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (w / norm.pow(tau)).to(weight.dtype)


def tau_normalized_classifier(classifier: nn.Module, tau: float) -> nn.Module:
    """The tau-normalised copy of `classifier`: a bias-free ``nn.Linear`` with weights
    `tau_normalize` (W, tau).

    A `CosineClassifier` already divides every w_j by |w_j|, so rescaling its rows
    changes none of its outputs: its tau-normalised copy is a plain copy.
    """
    tau = _check_tau(tau)
    if isinstance(classifier, CosineClassifier):
        return copy.deepcopy(classifier)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(f"tau_normalized_classifier: expected nn.Linear or CosineClassifier, got "
                         f"{type(classifier).__name__}")
    w = classifier.weight
    fc = nn.Linear(classifier.in_features, classifier.out_features, bias=False).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fc.weight.copy_(tau_normalize(w, tau))
    return fc


class LearnableWeightScaling(nn.Module):
    """LWS (Kang et al. 2020): logits f_j * z_j, z the frozen classifier's logits.

    Holds a frozen copy of `classifier` (``requires_grad`` off, the caller's module is
    left alone) and one scale per class, ``scales``, initialised to 1 (so it starts as
    the classifier itself); only ``scales`` is meant to be trained, on class-balanced
    batches.  For a linear classifier, f_j (w_j x + b_j) is the linear layer with rows
    f_j w_j and bias f_j b_j: see `folded`.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = copy.deepcopy(classifier)
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        w = self.classifier.weight
        self.scales = nn.Parameter(torch.ones(w.shape[0], device=w.device, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x) * self.scales

    def folded(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (linear classifiers only: a cosine head divides
        f_j w_j by its norm, so no cosine head gives f_j z_j)."""
        c = self.classifier
        if not isinstance(c, nn.Linear):
            raise ValueError(f"LearnableWeightScaling.folded: only an nn.Linear folds, got {type(c).__name__}")
        fc = nn.Linear(c.in_features, c.out_features, bias=c.bias is not None).to(
            device=c.weight.device, dtype=c.weight.dtype)
        with torch.no_grad():
            f = self.scales.detach()
            fc.weight.copy_(c.weight * f[:, None])
            if c.bias is not None:
                fc.bias.copy_(c.bias * f)
        return fc

