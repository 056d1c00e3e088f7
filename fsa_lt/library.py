"""Feature Space Augmentation inside your own training code (see docs/LIBRARY.md).

The three phases of fsa-lt as functions over any PyTorch model whose network is a
backbone yielding a final feature map (``B x C x H x W``), global average pooling and one
linear classifier (``K x C`` weight):

1. train the model as you do (the long-tailed Phase I);
2. ``store = collect(model, loader)``: one pass in eval mode over the training data
   gives every sample's feature map, its class activation map for its own class and the
   mean softmax scores of each class; ``plan = store.plan(h_r=0.9, n_f=3)`` is the
   head / tail split and the confusing classes of each tail class;
3. ``FSABatches(store, plan)`` yields balanced batches of pooled features and labels with
   synthetic tail samples (the paper's Algorithm 1) to fine-tune the classifier on, for
   example with `finetune_classifier`.

`OnlineFSA` is the variant for data whose maps do not fit in memory: it draws the indices
of a batch, you compute the maps of those images (under your own augmentation), and it
fuses them.  `synthesize_from_maps` is the fusion alone.

A model with ``forward_features(x)`` (the map) and ``get_classifier()`` (the linear
layer), such as fsa-lt's own models or timm's, is used as it is; anything else is wrapped
by ``FSAModel(features=..., classifier=...)`` or `adapt`.

This module uses only `fsa_lt.method`, `fsa_lt.errors`, torch and numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from fsa_lt.errors import ConfigError, DataError
from fsa_lt.method import (
    FSASampler,
    build_batch,
    cam_weights,
    check_gamma_range,
    class_activation_maps,
    confusing_classes,
    head_tail_split,
    normalize_cams,
    synthesize,
    usable_masks,
)

__all__ = [
    "FSAModel",
    "adapt",
    "FeatureStore",
    "FSAPlan",
    "collect",
    "plan",
    "FSABatches",
    "OnlineDraw",
    "OnlineFSA",
    "synthesize_from_maps",
    "finetune_classifier",
]


# ------------------------------------------------------------------------------ models
class FSAModel(nn.Module):
    """A model split into ``features`` (images -> ``B x C x H x W`` maps) and a linear
    ``classifier`` (``B x C`` -> ``B x K`` logits), with global average pooling between.

    ``forward(x) = classifier(features(x).mean((2, 3)))``; the classifier must have a
    ``weight`` of shape ``K x C`` (an ``nn.Linear``): the CAMs are computed from it.
    ``features`` should be an ``nn.Module`` (then ``train()`` / ``eval()`` reach it); a plain
    function is accepted, and its mode is then the caller's business.
    """

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        if not callable(features):
            raise ConfigError(f"FSAModel: features must be a module or callable, got {type(features).__name__}")
        _linear_weight(classifier)
        self.features = features
        self.classifier = classifier

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, fmap: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = fmap.mean(dim=(2, 3))
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier


def adapt(model: nn.Module, features: Optional[nn.Module] = None, classifier: Optional[nn.Module] = None) -> nn.Module:
    """``model`` if it already has ``forward_features`` and ``get_classifier`` (and no part is
    given), else an `FSAModel` of the given parts (each defaulting to the model's own
    ``forward_features`` / ``get_classifier()`` where it has them)."""
    has_f = callable(getattr(model, "forward_features", None))
    has_c = callable(getattr(model, "get_classifier", None))
    if features is None and classifier is None and has_f and has_c:
        _linear_weight(model.get_classifier())
        return model
    if features is None:
        if not has_f:
            raise ConfigError(f"adapt: {type(model).__name__} has no forward_features; pass features=<the module "
                              f"that maps images to the final B x C x H x W feature map>")
        features = _ForwardFeatures(model)
    if classifier is None:
        if not has_c:
            raise ConfigError(f"adapt: {type(model).__name__} has no get_classifier; pass classifier=<its final "
                              f"linear layer>")
        classifier = model.get_classifier()
    return FSAModel(features, classifier)


class _ForwardFeatures(nn.Module):
    """``model.forward_features`` as a sub-module, so that train / eval mode reaches the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def _linear_weight(classifier) -> Tensor:
    w = getattr(classifier, "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ConfigError(f"the classifier must be linear with a K x C weight (nn.Linear), got {type(classifier).__name__}")
    return w


def _logits(model, fmap: Tensor) -> Tensor:
    if callable(getattr(model, "forward_head", None)):
        return model.forward_head(fmap)
    return model.get_classifier()(fmap.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------ store
@dataclass
class FeatureStore:
    """What one eval-mode pass over the training data gives (`collect`).

    ``labels`` N; ``fmaps`` N x C x H x W (None with ``keep_maps=False``); ``cams`` N x H x W,
    each sample's min-max normalised CAM for its own class (None without maps); ``pooled``
    N x C average-pooled features; ``scores`` K x K, row c the mean softmax of the samples
    of class c; ``class_counts`` K; ``weight`` the classifier weight the CAMs were made with.
    """

    labels: Tensor
    fmaps: Optional[Tensor]
    cams: Optional[Tensor]
    pooled: Tensor
    scores: Tensor
    class_counts: np.ndarray
    weight: Tensor

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[0])

    def plan(self, h_r: float = 0.9, n_f: int = 3) -> "FSAPlan":
        return plan(self.class_counts, self.scores, h_r=h_r, n_f=n_f)


@torch.no_grad()
def collect(model: nn.Module, loader, device=None, keep_maps: bool = True,
            dtype: torch.dtype = torch.float32) -> FeatureStore:
    """Run ``model`` (in eval mode; every module's mode is restored afterwards) over ``loader``, whose
    batches are ``(images, labels, ...)``, and keep what FSA needs.

    Use a loader without augmentation and without shuffling if you want the store's order
    to be the data set's.  ``device``: default, the device of the model's parameters.
    ``dtype``: of the stored maps and CAMs (float16 halves the memory).
    """
    model = adapt(model)
    _linear_weight(model.get_classifier())
    weight = cam_weights(model.get_classifier()).clone()  # a copy: fine-tuning moves the original
    k, c = weight.shape
    if device is None:
        p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    modes = [(m, m.training) for m in model.modules()]  # restored module by module afterwards
    model.eval()
    labels, fmaps, cams, pooled = [], [], [], []
    score_sum = torch.zeros(k, k, dtype=torch.float64, device=device)
    try:
        for n, batch in enumerate(loader):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise DataError(f"collect: batch {n} is not (images, labels, ...)")
            x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device).long().reshape(-1)
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise DataError(f"collect: batch {n} has label {int(y.max()) if int(y.max()) >= k else int(y.min())} "
                                f"outside the classifier's {k} classes")
            f = model.forward_features(x)
            if f.dim() != 4 or f.shape[1] != c:
                raise ConfigError(f"collect: the features must be B x {c} x H x W maps (the classifier has {c} "
                                  f"inputs), got shape {tuple(f.shape)}")
            f = f.float()
            probs = torch.softmax(_logits(model, f).float(), dim=1)
            score_sum.index_add_(0, y, probs.double())
            labels.append(y.cpu())
            pooled.append(f.mean(dim=(2, 3)).cpu())
            if keep_maps:
                cams.append(normalize_cams(class_activation_maps(f, weight.to(f.device), y)).to(dtype).cpu())
                fmaps.append(f.to(dtype).cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    if not labels:
        raise DataError("collect: the loader yielded no batch")
    labels_t = torch.cat(labels)
    counts = np.bincount(labels_t.numpy(), minlength=k)
    scores = (score_sum.cpu() / torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)[:, None]).float()
    return FeatureStore(labels=labels_t, fmaps=torch.cat(fmaps) if keep_maps else None,
                        cams=torch.cat(cams) if keep_maps else None, pooled=torch.cat(pooled), scores=scores,
                        class_counts=counts, weight=weight.cpu())


# ------------------------------------------------------------------------------ plan
@dataclass
class FSAPlan:
    """Head and tail classes (ascending ids) and ``confusing``, a ``len(tail) x n_f`` LongTensor:
    row i holds the confusing classes of ``tail[i]``, most confusing first."""

    head: np.ndarray
    tail: np.ndarray
    confusing: Tensor

    def confusing_of(self) -> dict[int, list[int]]:
        """``{tail class: [confusing classes]}``."""
        return {int(c): self.confusing[i].tolist() for i, c in enumerate(self.tail)}


def plan(class_counts, scores: Tensor, h_r: float = 0.9, n_f: int = 3) -> FSAPlan:
    """Head / tail split of the training counts at ``h_r`` and the ``n_f`` confusing classes of
    each tail class (row-wise: what that class's samples are mistaken for)."""
    counts = np.asarray(class_counts.cpu() if isinstance(class_counts, Tensor) else class_counts)
    head, tail = head_tail_split(counts, h_r)
    if len(tail) == 0:
        raise DataError(f"no tail class at h_r={h_r}: the head takes every class "
                        f"(counts {counts.tolist()[:10]}{'...' if len(counts) > 10 else ''}); raise h_r")
    conf = confusing_classes(torch.as_tensor(scores).float(), tail, n_f)
    return FSAPlan(head=head, tail=tail, confusing=conf.cpu())


# ------------------------------------------------------------------------------ batches
class FSABatches:
    """Endless FSA batches from a `FeatureStore` (iterate, or call `next_batch`).

    Each batch is ``(features, labels)``, ``2 n_t (1 + n_a)`` pooled feature vectors: ``n_t``
    real tail samples, ``n_t n_a`` synthetic ones (labelled with their tail sample's class),
    ``n_t (1 + n_a)`` real head samples (``rest_sampling="instance"`` or ``"sqrt"``: drawn from every
    class instead, a variant, see `FSASampler`).  ``augment=False`` is the paper's "No Aug" control
    (real tail samples in place of the synthetic ones).
    """

    def __init__(self, store: FeatureStore, plan: FSAPlan, n_t: int = 16, n_a: int = 3, tau_s: float = 0.8,
                 tau_g: float = 0.2, augment: bool = True, tail_sampling: str = "instance", seed: int = 0,
                 device=None, rest_sampling: str = "head", gamma_range: tuple[float, float] = (0.0, 1.0)):
        if store.fmaps is None or store.cams is None:
            raise ConfigError("FSABatches needs the feature maps: collect(..., keep_maps=True), or use OnlineFSA")
        device = torch.device(device or "cpu")
        self.store, self.tau_s, self.tau_g, self.augment = store, float(tau_s), float(tau_g), bool(augment)
        self.gamma_range = check_gamma_range(gamma_range)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.sampler = FSASampler(store.labels.to(device), plan.head, plan.tail, plan.confusing, n_t=n_t, n_a=n_a,
                                  tail_sampling=tail_sampling, generator=self.generator, device=device,
                                  rest_sampling=rest_sampling)
        # each sample's usable locations once (the same batches as computing them per draw)
        self.masks = usable_masks(store.fmaps, store.cams, self.tau_s, self.tau_g) if self.augment else None

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def next_batch(self) -> tuple[Tensor, Tensor]:
        s = self.store
        return build_batch(self.sampler, s.pooled, s.fmaps, s.cams, self.tau_s, self.tau_g,
                           augment=self.augment, generator=self.generator, masks=self.masks,
                           gamma_range=self.gamma_range)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.next_batch()


def synthesize_from_maps(fmap_tail: Tensor, labels_tail: Tensor, fmap_donor: Tensor, labels_donor: Tensor,
                         weight: Tensor, tau_s: float = 0.8, tau_g: float = 0.2,
                         generator: Optional[torch.Generator] = None,
                         gamma_range: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Synthetic tail samples from maps you computed: the CAMs come from the classifier
    ``weight`` (``K x C``, no bias) for each map's own label.  Donor rows ``i n_a .. i n_a +
    n_a - 1`` pair with tail row ``i``.  Returns ``(pooled features, labels)`` with one row
    per donor, labelled with its tail sample's class."""
    w = weight.detach().float()
    fmap_tail, fmap_donor = fmap_tail.float(), fmap_donor.float()
    cam_t = normalize_cams(class_activation_maps(fmap_tail, w.to(fmap_tail.device), labels_tail))
    cam_d = normalize_cams(class_activation_maps(fmap_donor, w.to(fmap_donor.device), labels_donor))
    feats, _ = synthesize(fmap_tail, cam_t, fmap_donor, cam_d, tau_s, tau_g, generator=generator,
                          gamma_range=gamma_range)
    rep = fmap_donor.shape[0] // fmap_tail.shape[0]
    labels = torch.as_tensor(labels_tail, device=feats.device).long().reshape(-1).repeat_interleave(rep)
    return feats, labels


@dataclass
class OnlineDraw:
    """The images one online batch needs: ``indices`` into the training set, in the order
    [tail (n_t), donors or extra tail (n_t n_a), head (n_t (1 + n_a))], and their ``labels``."""

    indices: Tensor
    labels: Tensor
    n_t: int
    n_mid: int
    tail_labels: Tensor


class OnlineFSA:
    """FSA without a store: `draw` picks the images of a batch, you compute their maps
    (``model.forward_features`` on your augmented images, in that order), `batch` fuses.

    ``labels``: the training set's labels (N); ``plan``: from a `FeatureStore` made with
    ``keep_maps=False``, or from your own counts and score matrix via `plan`.
    """

    def __init__(self, labels, plan: FSAPlan, n_t: int = 16, n_a: int = 3, tau_s: float = 0.8, tau_g: float = 0.2,
                 augment: bool = True, tail_sampling: str = "instance", seed: int = 0, device=None,
                 rest_sampling: str = "head", gamma_range: tuple[float, float] = (0.0, 1.0)):
        device = torch.device(device or "cpu")
        self.tau_s, self.tau_g, self.augment = float(tau_s), float(tau_g), bool(augment)
        self.gamma_range = check_gamma_range(gamma_range)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        labels = labels.detach() if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
        self.sampler = FSASampler(labels.to(device).long(), plan.head, plan.tail,
                                  plan.confusing, n_t=n_t, n_a=n_a, tail_sampling=tail_sampling,
                                  generator=self.generator, device=device, rest_sampling=rest_sampling)

    def draw(self) -> OnlineDraw:
        s = self.sampler
        d = s.sample()
        mid = d["donor_idx"].reshape(-1) if self.augment else s.draw_tail(s.n_t * s.n_a)
        idx = torch.cat([d["tail_idx"], mid, d["head_idx"]])
        return OnlineDraw(indices=idx, labels=s.labels[idx], n_t=s.n_t, n_mid=int(mid.numel()),
                          tail_labels=d["tail_labels"])

    def batch(self, draw: OnlineDraw, fmaps: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, labels)`` of the batch from the maps of ``draw.indices`` (same order)."""
        if fmaps.dim() != 4 or fmaps.shape[0] != draw.indices.numel():
            raise ConfigError(f"OnlineFSA.batch: expected {draw.indices.numel()} maps (B x C x H x W) in the order "
                              f"of draw.indices, got shape {tuple(fmaps.shape)}")
        fm = fmaps.float()
        nt, nm = draw.n_t, draw.n_mid
        labels = draw.labels.to(fm.device)
        pooled = fm.mean(dim=(2, 3))
        if self.augment:
            mid, mid_labels = synthesize_from_maps(fm[:nt], labels[:nt], fm[nt:nt + nm], labels[nt:nt + nm], weight,
                                                   self.tau_s, self.tau_g, generator=self.generator,
                                                   gamma_range=self.gamma_range)
        else:
            mid, mid_labels = pooled[nt:nt + nm], labels[nt:nt + nm]
        return (torch.cat([pooled[:nt], mid.to(pooled.device), pooled[nt + nm:]]),
                torch.cat([labels[:nt], mid_labels.to(labels.device), labels[nt + nm:]]))


# ------------------------------------------------------------------------------ fine-tuning
def finetune_classifier(classifier: nn.Module, batches, iterations: int, lr: float = 0.001, momentum: float = 0.9,
                        weight_decay: float = 0.0) -> list[float]:
    """Phase III's optimisation: ``iterations`` SGD steps of cross-entropy on the classifier
    alone over ``(features, labels)`` batches (an `FSABatches`, or any iterable of them).
    Returns the loss of every step.  The classifier's train / eval mode is not changed."""
    if iterations < 1:
        raise ConfigError(f"finetune_classifier: iterations must be >= 1, got {iterations}")
    params = [p for p in classifier.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    device = _linear_weight(classifier).device
    losses = []
    it = iter(batches)
    for _ in range(int(iterations)):
        feats, labels = next(it)
        loss = nn.functional.cross_entropy(classifier(feats.to(device)), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
