"""Phase III baselines beside FSA: the classifier re-balancing methods of `fsa_lt.baselines` on the
frozen Phase I backbone, where each makes its choices, and how each one's classifier is saved.

* ``crt``: a freshly initialised classifier of the model's kind (drawn with the Phase III seed);
* ``lws``: the Phase I classifier frozen, one learnt scale per class;
* ``tau_norm``: w_j / |w_j|^tau, the bias dropped; not applicable to a cosine head (no tau changes it);
* ``la_posthoc``: logits - tau log(prior) (Menon et al., ICLR 2021).

cRT and LWS train on (``baseline.input``):
* ``images`` (the default, Kang et al.'s published recipe, as their code runs it): the training images
  under the training augmentation through the frozen backbone, class-aware batches of
  ``baseline.batch_size`` (``samples_per_class`` images of a class in a row), SGD ``baseline.lr`` with
  momentum and weight decay, cosine to 0 stepped per epoch (`recipe_lr`), ``crt_epochs`` /
  ``lws_epochs`` epochs of ``int(N / batch)`` steps; the backbone's BatchNorm in train mode while
  they train (``baseline.bn``, what their code does), so the model is evaluated with the updated
  running statistics;
* ``store``: the stored un-augmented pooled features with FSA's optimiser, batch and iterations, like
  for like with FSA's real samples (class-balanced independent draws).

Every tau is a fixed value (``finetune.tau``), the method's default (1 for post-hoc LA) or chosen on the
validation split (`choose_on_validation`): never on the test set, never on images Phase I trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..baselines import (ClassAwareSampler, ClassBalancedSampler, LearnableWeightScaling, balanced_accuracy, choose_tau,
                         crt_classifier, recipe_lr, recipe_steps_per_epoch, tau_normalized_classifier)
from ..models.heads import CosineClassifier

TAU_GRIDS = {"tau_norm": [i / 20 for i in range(21)],      # [0, 1] in steps of 0.05
             "la_posthoc": [i / 10 for i in range(21)]}    # [0, 2] in steps of 0.1 (0 and the paper's 1 inside)
LA_DEFAULT_TAU = 1.0  # Menon et al.: the Bayes rule for the balanced error when softmax estimates p(y | x)


class AffineLogits(nn.Module):
    """``head(x) * scale + offset``, per class (scale or offset may be None): post-hoc logit
    adjustment, and a saved LWS / adjustment that the model's own head cannot express."""

    def __init__(self, head: nn.Module, scale: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        super().__init__()
        self.head = head
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self.register_buffer("offset", None if offset is None else offset.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(x)
        if self.scale is not None:
            z = z * self.scale
        return z if self.offset is None else z + self.offset


def log_prior(counts, device) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64)
    return torch.log(n / n.sum()).float().to(device)


def posthoc(head: nn.Module, counts, tau: float, device) -> AffineLogits:
    """`head` with post-hoc logit adjustment: z - tau log(prior)."""
    return AffineLogits(head, offset=-float(tau) * log_prior(counts, device))


@torch.no_grad()
def choose_on_validation(make: Callable[[float], nn.Module], grid, val_feats: torch.Tensor,
                         val_labels: torch.Tensor, val_counts) -> dict:
    """The tau of `grid` with the best class-balanced accuracy of ``make(tau)`` on the validation
    features (ties to the smaller tau), as a record: the tau, its accuracy, the whole curve and the
    validation split's size per class."""
    choice = choose_tau(lambda t: make(t)(val_feats.float()), grid, val_labels)
    return {"tau": choice.tau, "chosen_on": "validation", "validation_accuracy": choice.accuracy,
            "validation_per_class": [int(c) for c in val_counts], "curve": [[t, a] for t, a in choice.curve]}


class ValidationSelect:
    """``finetune.select: validation``: of the classifiers a Phase III run passes through (before
    training, every ``eval_every`` iterations, the last), the one with the best class-balanced accuracy
    on the validation split, ties to the earlier iteration; `offer` scores the head as it is now,
    `restore` loads the chosen one back into it and says what was chosen. An early stop chosen on
    images no model trained on, never on the test set."""

    def __init__(self, head: nn.Module, val_feats: torch.Tensor, val_labels: torch.Tensor):
        self.head, self.feats, self.labels = head, val_feats, val_labels
        self.curve: list[list[float]] = []
        self.best: tuple[int, float] | None = None
        self.state: dict | None = None

    @torch.no_grad()
    def offer(self, iteration: int) -> float:
        pred = torch.cat([self.head(f.float()).argmax(1) for f in self.feats.split(8192)])
        acc = balanced_accuracy(pred, self.labels)
        self.curve.append([int(iteration), acc])
        if self.best is None or acc > self.best[1]:
            self.best = (int(iteration), acc)
            self.state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return acc

    @property
    def chosen(self) -> int | None:
        """The iteration chosen so far (None before any offer)."""
        return None if self.best is None else self.best[0]

    def restore(self) -> dict:
        if self.state is None:
            raise RuntimeError("ValidationSelect.restore before any offer")
        self.head.load_state_dict(self.state)
        return {"on": "validation", "iteration": self.best[0], "validation_accuracy": self.best[1],
                "curve": self.curve}


def fixed_head(f, fc: nn.Module, counts, val, log=print) -> tuple[nn.Module, dict]:
    """tau-norm's or post-hoc LA's classifier (nothing to train) and where its tau came from.

    `val`: (features, labels, per-class counts) of the validation split, or None."""
    dev = next(fc.parameters()).device
    if f.method == "tau_norm":
        if isinstance(fc, CosineClassifier):
            log("tau_norm: not applicable to a cosine classifier (w_j / |w_j|^tau changes none of its outputs); "
                "the Phase I classifier is kept")
            return tau_normalized_classifier(fc, 0.0), {"tau": None, "chosen_on": "not applicable (cosine head)"}

        def make(t):
            return tau_normalized_classifier(fc, t)
    else:
        prior = log_prior(counts, dev)

        def make(t):
            return AffineLogits(fc, offset=-t * prior)
    if f.tau is not None:
        return make(float(f.tau)), {"tau": float(f.tau), "chosen_on": "set (finetune.tau)"}
    if f.method == "la_posthoc" and f.tau_from == "default":
        return make(LA_DEFAULT_TAU), {"tau": LA_DEFAULT_TAU, "chosen_on": "default (Menon et al.: tau = 1)"}
    if val is None:  # tau_norm without a tau and without a validation split (checked before any work)
        raise RuntimeError("tau-normalisation needs a validation split or finetune.tau")
    info = choose_on_validation(make, TAU_GRIDS[f.method], *val)
    log(f"{f.method}: tau {info['tau']:g} chosen on the validation split ({len(val[1])} images, per class "
        f"{info['validation_per_class']}), class-balanced accuracy {info['validation_accuracy']:.2f}")
    return make(info["tau"]), info


def baseline_head(method: str, fc: nn.Module, backbone: nn.Module, seed: int) -> nn.Module:
    """cRT's fresh classifier (its initialisation drawn with the Phase III `seed`) or LWS's scales
    over the frozen Phase I classifier."""
    if method == "crt":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = crt_classifier(backbone).float()
        for p in head.parameters():
            p.requires_grad_(True)
        return head
    return LearnableWeightScaling(fc)


@dataclass
class Plan:
    """How the one Phase III loop trains a head: SGD(lr, momentum, weight_decay) for `iterations`,
    the learning rate of iteration it (1-based) ``lr_at(it)`` when given, the test evaluated every
    `eval_every` iterations (None: only at the end, by the caller), the loss logged every `log_every`."""

    lr: float
    momentum: float
    weight_decay: float
    iterations: int
    eval_every: int | None
    log_every: int
    lr_at: Callable[[int], float] | None = None
    what: str = ""
    loss: Callable = nn.functional.cross_entropy


def fsa_plan(f) -> Plan:
    return Plan(f.lr, f.momentum, f.weight_decay, f.iterations, f.eval_every, f.eval_every,
                what=f"SGD lr {f.lr:g} (constant), momentum {f.momentum:g}, weight decay {f.weight_decay:g}, "
                     f"{f.iterations} iterations, loss {f.loss}")


def fsa_loss(cfg, counts, head, tail, device) -> tuple[nn.Module, dict]:
    """Phase III's loss on FSA's batches (`finetune.loss`) and what to record of it."""
    from ..engine.losses import LDAMLoss, LogitAdjustedLoss
    from ..method import batch_prior

    f = cfg.finetune
    if f.loss == "ce":
        return nn.CrossEntropyLoss(), {"loss": "ce"}
    if f.loss == "ldam":
        return (LDAMLoss(counts, cfg.train.ldam_max_margin, cfg.model.cosine_scale).to(device),
                {"loss": "ldam", "max_margin": cfg.train.ldam_max_margin, "scale": cfg.model.cosine_scale})
    q = (batch_prior(counts, head, tail, f.tail_sampling, f.rest_sampling) if f.loss_prior == "batch"
         else torch.as_tensor(counts, dtype=torch.float64) / float(sum(counts)))
    q = q.clamp_min(torch.finfo(torch.float64).tiny)  # a class the batches never draw: a huge offset, not -inf
    return (LogitAdjustedLoss(q.numpy() / q.min().item(), f.loss_tau).to(device),
            {"loss": "la", "tau": f.loss_tau, "prior": f.loss_prior, "q": [float(v) for v in q]})


def recipe_plan(b, method: str, num_samples: int, world: int) -> Plan:
    """Kang et al.'s recipe for cRT / LWS over `num_samples` training images."""
    epochs = b.crt_epochs if method == "crt" else b.lws_epochs
    steps = recipe_steps_per_epoch(num_samples, b.batch_size)
    return Plan(b.lr, b.momentum, b.weight_decay, epochs * steps, None, steps,
                lr_at=lambda it: recipe_lr(b.lr, (it - 1) // steps + 1, epochs),
                what=f"their recipe: {epochs} epochs x {steps} steps of {b.batch_size} ({b.batch_size // world} per rank), "
                     f"class-aware ({b.samples_per_class} a class in a row), SGD lr {b.lr:g} cosine to 0 per epoch, "
                     f"momentum {b.momentum:g}, weight decay {b.weight_decay:g}, backbone BatchNorm {b.bn} mode")


def store_batches(pooled_train: torch.Tensor, labels: torch.Tensor, batch: int, generator: torch.Generator):
    """The like-for-like input: class-balanced draws of the stored pooled features."""
    labels = labels.to(pooled_train.device)
    sampler = ClassBalancedSampler(labels, generator=generator)

    def next_batch():
        idx = sampler.sample(batch)
        return pooled_train[idx].float(), labels[idx]

    return next_batch


class RecipeBatches:
    """The recipe's input: class-aware batches of training images under the training augmentation,
    through the frozen backbone (BatchNorm in train mode when ``bn == 'train'``: batch statistics,
    running statistics updated), pooled. In-memory sets are augmented on the device; image files go
    through a DataLoader with the training transform, whose batches are the sampler's draws."""

    def __init__(self, backbone: nn.Module, train_set, labels: torch.Tensor, batch: int, samples_per_class: int,
                 bn: str, device, seed: int, rank: int, make_loader_set: Callable | None, num_workers: int):
        self.backbone, self.bn, self.device, self.batch = backbone, bn, device, batch
        cpu_gen = torch.Generator().manual_seed(seed * 7919 + 17 + rank)
        self.sampler = ClassAwareSampler(labels.cpu(), samples_per_class, generator=cpu_gen)
        self.labels = labels.to(device)
        if hasattr(train_set, "data"):
            from ..data.device_loader import DeviceLoader

            self.images = DeviceLoader(train_set.data, train_set.targets, 1, device, train_set.mean, train_set.std,
                                       train=True, seed=seed)
            self.gen = torch.Generator(device=device).manual_seed(seed * 7919 + 29 + rank)
            self._it = None
        else:
            self.images = None
            pending = self._pending = []
            sampler = self.sampler

            class _Batches:
                def __iter__(self_inner):
                    while True:
                        idx = sampler.sample(batch)
                        pending.append(idx)
                        yield idx.tolist()

                def __len__(self_inner):
                    return 2**62

            loader = torch.utils.data.DataLoader(make_loader_set(), batch_sampler=_Batches(), num_workers=num_workers,
                                                 pin_memory=torch.device(device).type == "cuda")
            self._it = iter(loader)

    @torch.no_grad()
    def __call__(self):
        if self.images is not None:
            idx = self.sampler.sample(self.batch)
            x = self.images.augment_indices(idx, self.gen)
        else:
            x = next(self._it)[0].to(self.device, non_blocking=True)
            idx = self._pending.pop(0)
        x = x.contiguous(memory_format=torch.channels_last)
        self.backbone.train(self.bn == "train")
        feats = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True).float()
        self.backbone.eval()
        return feats, self.labels[idx.to(self.labels.device)]


@torch.no_grad()
def head_state(head: nn.Module, target: nn.Module) -> tuple[dict, dict | None]:
    """The state dict that makes `target` (the model's own classifier, of the Phase I kind) compute
    `head`, and the per-class ``logit_adjust`` ({'scale', 'offset'}) where it cannot (a cosine head
    cannot hold a per-class scale or an offset); test mode applies that adjustment."""
    cpu = {k: v.detach().cpu() for k, v in target.state_dict().items()}
    if isinstance(head, LearnableWeightScaling):
        if isinstance(head.classifier, nn.Linear):
            return _linear_state(head.folded(), cpu), None
        return _copy(head.classifier), {"scale": head.scales.detach().float().cpu(), "offset": None}
    if isinstance(head, AffineLogits):
        inner, adjust = head_state(head.head, target)
        if adjust is None and isinstance(target, nn.Linear) and "bias" in inner:
            w, b = inner["weight"], inner["bias"]
            scale = head.scale.cpu() if head.scale is not None else torch.ones(w.shape[0])
            offset = head.offset.cpu() if head.offset is not None else torch.zeros(w.shape[0])
            return {"weight": w * scale[:, None], "bias": b * scale + offset}, None
        return inner, {"scale": None if head.scale is None else head.scale.cpu(),
                       "offset": None if head.offset is None else head.offset.cpu()}
    if isinstance(head, nn.Linear):
        return _linear_state(head, cpu), None
    return _copy(head), None


def _copy(m: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


def _linear_state(lin: nn.Linear, target_state: dict) -> dict:
    st = _copy(lin)
    if "bias" in target_state and "bias" not in st:  # tau-norm drops the bias: a zero bias computes the same
        st["bias"] = torch.zeros_like(target_state["bias"])
    return st


class AdjustedModel(nn.Module):
    """A model whose logits get a saved per-class `logit_adjust` (test mode of a baseline's checkpoint)."""

    def __init__(self, model: nn.Module, adjust: dict):
        super().__init__()
        self.model = model
        self.affine = AffineLogits(nn.Identity(), adjust.get("scale"), adjust.get("offset"))

    def forward(self, x):
        return self.affine(self.model(x))


__all__ = ["fixed_head", "baseline_head", "choose_on_validation", "posthoc", "store_batches", "RecipeBatches", "Plan",
           "fsa_plan", "recipe_plan", "head_state", "AffineLogits", "AdjustedModel", "TAU_GRIDS", "LA_DEFAULT_TAU",
           "log_prior"]
