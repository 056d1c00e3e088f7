"""Phase III baselines beside FSA: the classifier re-balancing methods of `fsa_lt.baselines` on the
frozen Phase I backbone, and how each one's classifier is saved.

* ``crt``: a freshly initialised classifier of the model's kind, trained on class-balanced batches
  of the training set's pooled features (Kang et al., ICLR 2020);
* ``lws``: the Phase I classifier frozen, one learnt scale per class, class-balanced batches;
* ``tau_norm``: w_j / |w_j|^tau, the bias dropped;
* ``la_posthoc``: logits - tau log(prior) (Menon et al., ICLR 2021).

cRT and LWS train in Phase III's one loop with FSA's optimiser, lr, batch size and iteration
count, so the comparison with FSA is like for like; their features are the un-augmented pooled
features of the training images (the store's), as FSA's real samples are. tau (tau_norm,
la_posthoc) is `finetune.tau` when set, else the tau of a grid with the best class-balanced
accuracy on a held-out slice of the training set (`finetune.holdout_fraction` of every class,
drawn with the Phase III seed); the choice, the slice's size per class and the whole curve go into
the run's metrics. The slice was seen by the Phase I backbone (it is part of the training set),
never the test set.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..baselines import (ClassBalancedSampler, LearnableWeightScaling, choose_tau, crt_classifier, holdout_split,
                         tau_normalized_classifier)

TAU_GRIDS = {"tau_norm": [i / 20 for i in range(21)],      # [0, 1] in steps of 0.05
             "la_posthoc": [i / 10 for i in range(21)]}    # [0, 2] in steps of 0.1 (the paper's default 1 inside)


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


def prepare(f, fc: nn.Module, backbone: nn.Module, pooled_train: torch.Tensor, labels: torch.Tensor, counts,
            batch: int, generator: torch.Generator, seed: int, log=print):
    """The head a baseline evaluates (and, for cRT / LWS, trains), its batch source (None when
    nothing is trained), and what goes into the run's metrics (the tau choice)."""
    dev = pooled_train.device
    labels = labels.to(dev)
    if f.method in ("crt", "lws"):
        sampler = ClassBalancedSampler(labels, generator=generator)

        def next_batch():
            idx = sampler.sample(batch)
            return pooled_train[idx].float(), labels[idx]

        if f.method == "crt":
            head = crt_classifier(backbone).float()
            for p in head.parameters():
                p.requires_grad_(True)
        else:
            head = LearnableWeightScaling(fc)
        log(f"{f.method}: class-balanced batches of {batch} from {len(labels)} training images")
        return head, next_batch, {}

    if f.method == "tau_norm":
        def make(t):
            return tau_normalized_classifier(fc, t)
    else:
        prior = log_prior(counts, dev)

        def make(t):
            return AffineLogits(fc, offset=-t * prior)

    if f.tau is not None:
        tau, info = float(f.tau), {"tau": float(f.tau), "chosen_on": "set by finetune.tau"}
    else:
        split = holdout_split(labels.cpu(), f.holdout_fraction, seed=seed, num_classes=len(counts))
        idx = split.holdout_idx.to(dev)
        hx, hy = pooled_train[idx].float(), labels[idx]
        with torch.no_grad():
            choice = choose_tau(lambda t: make(t)(hx), TAU_GRIDS[f.method], hy)
        tau = choice.tau
        info = {"tau": tau, "chosen_on": "held-out slice of the training set (class-balanced accuracy)",
                "holdout_fraction": f.holdout_fraction, "holdout_seed": seed,
                "holdout_per_class": split.holdout_counts.tolist(), "holdout_accuracy": choice.accuracy,
                "curve": [[t, a] for t, a in choice.curve]}
        log(f"{f.method}: tau {tau:g} chosen on a held-out slice of {int(idx.numel())} training images "
            f"(per class {split.holdout_counts.tolist()}), class-balanced accuracy {choice.accuracy:.2f}")
    return make(tau), None, {"tau": info}


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


__all__ = ["prepare", "head_state", "AffineLogits", "AdjustedModel", "TAU_GRIDS", "log_prior"]
