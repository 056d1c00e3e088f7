"""Class activation maps (paper Eq. 1) and their class-specific / class-generic masks.

All functions are pure tensor functions: they run on whatever device their inputs
live on, are fully vectorised and never synchronise with the host (argument
validation only looks at shapes and Python numbers).

Shapes: ``B`` samples, ``C`` feature channels, ``H x W`` spatial map,
``L = H * W`` locations, ``K`` classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsa_lt.errors import ConfigError

__all__ = [
    "cam_weights",
    "class_activation_maps",
    "normalize_cams",
    "decompose_masks",
    "usable_locations",
]


def cam_weights(classifier) -> Tensor:
    """The K x C class vectors CAMs are built from: a cosine head's normalised rows
    (``normalized_weight()``, what it compares features with), else ``classifier.weight``.

    After min-max normalisation the two give the same CAM (a positive factor per class does
    not change it); the normalised rows are the head's own geometry [choice]."""
    norm = getattr(classifier, "normalized_weight", None)
    w = norm() if callable(norm) else classifier.weight
    return w.detach().float()


def class_activation_maps(fmap: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """CAM of each sample for its own (ground-truth) class.

    ``M_c(x, y) = sum_k w_{c,k} F_k(x, y)`` with ``c = labels[b]`` and ``w`` the
    rows of the final fully connected layer; the bias is not used (paper Eq. 1).

    Args:
        fmap: final feature map, ``B x C x H x W`` (any float dtype).
        weight: FC weight, ``K x C``.
        labels: ``B`` integer class ids (the true classes).

    Returns:
        ``B x H x W`` float32 maps (not normalised; see :func:`normalize_cams`).
    """
    if fmap.dim() != 4:
        raise ConfigError(f"class_activation_maps: fmap must be B x C x H x W, got shape {tuple(fmap.shape)}")
    if weight.dim() != 2 or weight.shape[1] != fmap.shape[1]:
        raise ConfigError(
            f"class_activation_maps: weight must be K x C with C={fmap.shape[1]}, got shape {tuple(weight.shape)}"
        )
    labels = torch.as_tensor(labels, device=weight.device).long().reshape(-1)
    if labels.shape[0] != fmap.shape[0]:
        raise ConfigError(
            f"class_activation_maps: {labels.shape[0]} labels for {fmap.shape[0]} feature maps"
        )
    rows = weight.float()[labels].to(fmap.device)  # B x C
    return torch.einsum("bchw,bc->bhw", fmap.float(), rows)


def normalize_cams(cams: Tensor) -> Tensor:
    """Per-sample min-max normalisation to ``[0, 1]``.

    [choice] (METHOD.md): each map is scaled independently; a constant map
    (max == min) becomes all zeros, so it has no class-specific location and
    every location is class-generic.

    Args:
        cams: ``B x H x W`` (or ``B x L``) maps, any float dtype.

    Returns:
        float32 tensor of the same shape with values in ``[0, 1]``.
    """
    if cams.dim() < 2:
        raise ConfigError(f"normalize_cams: expected B x H x W maps, got shape {tuple(cams.shape)}")
    x = cams.float()
    flat = x.reshape(x.shape[0], -1)
    lo = flat.amin(dim=1)
    hi = flat.amax(dim=1)
    rng = hi - lo
    ok = rng > 0
    scale = torch.where(ok, rng, torch.ones_like(rng))
    out = (flat - lo[:, None]) / scale[:, None]
    out = torch.where(ok[:, None], out, torch.zeros_like(out)).clamp_(0.0, 1.0)
    return out.reshape(x.shape)


def _check_taus(tau_s: float, tau_g: float) -> None:
    try:
        ts, tg = float(tau_s), float(tau_g)
    except (TypeError, ValueError):
        raise ConfigError(f"tau_s and tau_g must be numbers, got {tau_s!r} and {tau_g!r}") from None
    if not (0.0 <= tg <= ts <= 1.0):
        raise ConfigError(f"need 0 <= tau_g <= tau_s <= 1, got tau_g={tau_g} tau_s={tau_s}")


def decompose_masks(cams_norm: Tensor, tau_s: float = 0.8, tau_g: float = 0.2) -> tuple[Tensor, Tensor]:
    """Class-specific and class-generic location masks of normalised CAMs.

    specific = ``cam > tau_s``, generic = ``cam < tau_g`` (both strict).
    [choice] defaults tau_s = 0.8, tau_g = 0.2 (METHOD.md).

    Returns:
        ``(specific, generic)``: bool tensors shaped like ``cams_norm``.

    Raises:
        ConfigError: unless ``0 <= tau_g <= tau_s <= 1``.
    """
    _check_taus(tau_s, tau_g)
    return cams_norm > float(tau_s), cams_norm < float(tau_g)


def usable_locations(fmap: Tensor, mask: Tensor) -> Tensor:
    """Locations that are in ``mask`` and whose feature vector is non-zero.

    This is METHOD.md's "nonzero vectors of (M > tau) . F": a masked location whose
    C-dimensional vector is all zeros (e.g. a dead post-ReLU location) is not drawn.

    Args:
        fmap: ``B x C x H x W`` feature maps.
        mask: ``B x H x W`` or ``B x L`` bool mask.

    Returns:
        ``B x L`` bool tensor (``L = H * W``, row-major over ``H, W``).
    """
    if fmap.dim() != 4:
        raise ConfigError(f"usable_locations: fmap must be B x C x H x W, got shape {tuple(fmap.shape)}")
    b = fmap.shape[0]
    nonzero = (fmap != 0).any(dim=1).reshape(b, -1)
    m = mask.reshape(mask.shape[0], -1)
    if m.shape != nonzero.shape:
        raise ConfigError(
            f"usable_locations: mask shape {tuple(mask.shape)} does not fit feature map {tuple(fmap.shape)}"
        )
    return m.to(device=nonzero.device, dtype=torch.bool) & nonzero
