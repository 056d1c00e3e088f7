"""Classifier re-balancing on a frozen backbone: B. Kang, S. Xie, M. Rohrbach, Z. Yan,
A. Gordo, J. Feng, Y. Kalantidis, *Decoupling Representation and Classifier for
Long-Tailed Recognition*, ICLR 2020.

Given the Phase I representation, the classifier alone is re-balanced:

* class-balanced sampling (their p_j = n_j^q / sum_i n_i^q with q = 0): every class equally likely, then
  every image of the class equally likely (`ClassBalancedSampler`, independent draws), and the
  class-aware sampler their code uses (`ClassAwareSampler`: classes in shuffled rounds, a few
  images of a class in a row);
* cRT: a re-initialised classifier trained on class-balanced batches;
* tau-normalisation: w_j <- w_j / |w_j|^tau, no bias, no training;
* LWS: logits z_j <- f_j z_j with one learnt scale f_j per class, trained on
  class-balanced batches, the classifier frozen.

Pure tensor code: the training loops belong to the caller; `recipe_lr` and `recipe_steps_per_epoch`
give the schedule of their published recipe (cls_crt.yaml / cls_lws.yaml, run_networks.py).
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
import torch.nn as nn
from torch import Tensor

from fsa_lt.errors import ConfigError
from fsa_lt.models.heads import CosineClassifier

__all__ = [
    "ClassAwareSampler",
    "recipe_lr",
    "recipe_steps_per_epoch",
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


class ClassAwareSampler:
    """Class-aware sampling as the decoupling authors' code draws it (their ``ClassAwareSampler``,
    ``num_samples_cls``): a stream of sample indices made of *visits*; a visit picks the next class
    of a cycle over all classes (a new random order of the classes each round) and yields the next
    `samples_per_class` images of that class from the class's own cycle (a new random order of its
    images each time it is used up).  So every class is visited once per round, and within a class
    no image repeats before all have been seen.

    The stream continues across `sample` calls (a batch may end inside a visit), as one long
    sampler does over epochs.  `generator` is a CPU ``torch.Generator`` (the draws are on the CPU;
    the result is moved to the labels' device).
    """

    def __init__(self, labels, samples_per_class: int = 4, generator: torch.Generator | None = None):
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() == 0:
            raise ValueError("ClassAwareSampler: no labels")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"ClassAwareSampler: labels must be integers, got {labels.dtype}")
        if int(samples_per_class) < 1:
            raise ValueError(f"ClassAwareSampler: samples_per_class must be >= 1, got {samples_per_class}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("ClassAwareSampler: the generator must be a CPU generator")
        self.device = labels.device
        self.m = int(samples_per_class)
        self.generator = generator
        y = labels.cpu()
        self.classes = torch.unique(y)
        self.members = [torch.nonzero(y == c).reshape(-1) for c in self.classes]
        self._class_cycle = _Cycle(len(self.members), generator)
        self._cycles = [_Cycle(len(m), generator) for m in self.members]
        self._pending: list[int] = []  # the rest of a visit a batch ended inside

    def sample(self, n: int) -> Tensor:
        """The next `n` indices of the stream (int64, on the labels' device)."""
        if n < 0:
            raise ValueError(f"ClassAwareSampler: n must be >= 0, got {n}")
        out = self._pending[:n]
        self._pending = self._pending[n:]
        while len(out) < n:
            c = self._class_cycle.next()
            visit = [int(self.members[c][self._cycles[c].next()]) for _ in range(self.m)]
            take = n - len(out)
            out.extend(visit[:take])
            self._pending = visit[take:]
        return torch.tensor(out, dtype=torch.long).to(self.device)


class _Cycle:
    """0..n-1 in a random order, a new order each time it is used up (their RandomCycleIter)."""

    def __init__(self, n: int, generator):
        self.n, self.generator, self.order, self.i = n, generator, None, n

    def next(self) -> int:
        if self.i == self.n:
            self.order, self.i = torch.randperm(self.n, generator=self.generator).tolist(), 0
        self.i += 1
        return self.order[self.i - 1]


def recipe_steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Steps of an epoch in their code: ``int(N / batch_size)`` (the sampler could go on for ever;
    an epoch is the training set's size in samples, rounded down), at least one."""
    return max(1, int(num_samples) // int(batch_size))


def recipe_lr(base_lr: float, epoch: int, epochs: int, eta_min: float = 0.0) -> float:
    """The learning rate of 1-based `epoch` of `epochs` in their recipe: cosine annealing to
    `eta_min` (``CosineAnnealingLR(T_max=epochs)``) stepped at the *start* of each epoch, as their
    training loop does, so epoch e runs at eta_min + (base - eta_min) (1 + cos(pi e / E)) / 2: the
    first epoch already a step down, the last at eta_min."""
    if not 1 <= epoch <= epochs:
        raise ValueError(f"recipe_lr: epoch must be in [1, {epochs}], got {epoch}")
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


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

