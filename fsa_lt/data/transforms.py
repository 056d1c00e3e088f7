"""Image transforms on uint8 H x W x 3 numpy arrays (no torchvision).

The CIFAR pipeline is the standard one: ``RandomCrop(32, padding=4)`` (zero
padding in pixel space), ``RandomHorizontalFlip(0.5)``, to float CHW in [0, 1],
normalise by ``mean`` / ``std``.

Randomness comes from a `torch.Generator` when one is given, otherwise from the
global torch RNG, which DataLoader seeds per worker (``torch.initial_seed()``),
so a seeded DataLoader gives reproducible augmentation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "to_tensor",
    "Normalize",
    "CifarTrainTransform",
    "CifarEvalTransform",
    "cifar_train_transform",
    "cifar_eval_transform",
    "pad_image",
]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C (or H x W) -> float32 C x H x W in [0, 1]."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)


def pad_image(img: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pad an H x W x C image by ``padding`` pixels on every side."""
    if padding <= 0:
        return np.asarray(img)
    return np.pad(np.asarray(img), ((padding, padding), (padding, padding), (0, 0)), mode="constant")


class Normalize:
    """``(x - mean) / std`` per channel on a float C x H x W tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class CifarEvalTransform:
    """uint8 HWC -> normalised float32 CHW."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.normalize = Normalize(mean, std)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return self.normalize(to_tensor(img))

    def __repr__(self) -> str:
        return f"CifarEvalTransform({self.normalize!r})"


class CifarTrainTransform:
    """Random crop (zero padding ``padding``, output the input size), horizontal flip
    with probability ``flip_p``, to float CHW, normalise."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = 4,
        generator: Optional[torch.Generator] = None,
        flip_p: float = 0.5,
    ):
        self.padding = int(padding)
        self.generator = generator
        self.flip_p = float(flip_p)
        self.normalize = Normalize(mean, std)

    def params(self) -> tuple[int, int, bool]:
        """Draw ``(top, left, flip)`` offsets into the padded image."""
        p = self.padding
        r = torch.randint(0, 2 * p + 1, (2,), generator=self.generator) if p > 0 else torch.zeros(2, dtype=torch.long)
        flip = bool(torch.rand((), generator=self.generator) < self.flip_p)
        return int(r[0]), int(r[1]), flip

    def apply(self, img: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
        a = np.asarray(img)
        h, w = a.shape[:2]
        padded = pad_image(a, self.padding)
        out = padded[top:top + h, left:left + w]
        if flip:
            out = out[:, ::-1]
        return self.normalize(to_tensor(out))

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return self.apply(img, *self.params())

    def __repr__(self) -> str:
        return f"CifarTrainTransform(padding={self.padding}, flip_p={self.flip_p}, {self.normalize!r})"


def cifar_train_transform(mean, std, padding: int = 4, generator: Optional[torch.Generator] = None):
    """Random crop 32 (zero padding ``padding``) + horizontal flip + normalise."""
    return CifarTrainTransform(mean, std, padding=padding, generator=generator)


def cifar_eval_transform(mean, std):
    """To float CHW + normalise."""
    return CifarEvalTransform(mean, std)
