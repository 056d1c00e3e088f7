"""ImageNet-style transforms: torchvision's ``transforms.v2``, composed for training and evaluation.

Training: ``RandomResizedCrop(size)`` (scale 0.08-1, aspect ratio 3/4-4/3, bilinear),
``RandomHorizontalFlip()``, ``ColorJitter(j, j, j)`` (no hue; left out when j = 0), then
`to_tensor`.  Evaluation: ``Resize`` of the shorter side, ``CenterCrop``, `to_tensor`.
The geometric and colour steps work on the PIL image the data sets load (Pillow's
resampling and ``ImageEnhance``); `to_tensor` makes it a plain float C x H x W tensor,
RGB, in [0, 1], normalised per channel.

torchvision draws every random number from torch's global RNG, so ``torch.manual_seed``,
a DataLoader's per-worker seeding and `fsa_lt.data.EpochLoader`'s per-epoch reseeding make
the augmentation reproducible, as before.  The CIFAR transforms (`fsa_lt.data.transforms`)
and the GPU-resident loader (`fsa_lt.data.device_loader`) are not torchvision's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._vision import load

v2 = load("torchvision.transforms.v2")

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "to_tensor",
    "imagenet_train_transform",
    "imagenet_eval_geometry",
    "imagenet_eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(mean: Optional[Sequence[float]] = IMAGENET_MEAN,
              std: Optional[Sequence[float]] = IMAGENET_STD) -> "v2.Compose":
    """PIL image (any mode) -> plain float32 3 x H x W tensor in [0, 1], then ``(x - mean) / std``.

    ``mean=None`` and ``std=None`` skip the normalisation (both or neither).
    """
    if (mean is None) != (std is None):
        raise ValueError("to_tensor: give both mean and std, or neither")
    steps = [v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def imagenet_train_transform(size: int = 224, jitter: float = 0.4) -> "v2.Compose":
    """RandomResizedCrop(size), horizontal flip, colour jitter (skipped if 0), `to_tensor`."""
    steps = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()]
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps.append(to_tensor())
    return v2.Compose(steps)


def imagenet_eval_geometry(resize: int = 256, size: int = 224) -> "v2.Compose":
    """Resize the shorter side to ``resize`` (bilinear), centre crop ``size``; PIL in, PIL out."""
    return v2.Compose([v2.Resize(resize), v2.CenterCrop(size)])


def imagenet_eval_transform(resize: int = 256, size: int = 224) -> "v2.Compose":
    """`imagenet_eval_geometry`, then `to_tensor`."""
    return v2.Compose([*imagenet_eval_geometry(resize, size).transforms, to_tensor()])
