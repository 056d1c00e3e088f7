"""ImageNet-style image transforms written with Pillow and torch.

All randomness is drawn from torch's global RNG (``torch.rand`` and friends), so a
DataLoader's per-worker seeding and ``torch.manual_seed`` make them reproducible.
Transforms take and return PIL images, except `ToTensorNormalize`, which returns a float
C x H x W tensor.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "ColorJitter",
    "Resize",
    "CenterCrop",
    "ToTensorNormalize",
    "imagenet_train_transform",
    "imagenet_eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size) -> tuple[int, int]:
    """``size`` as (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi).item())


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,)).item())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class RandomResizedCrop:
    """Crop a random area and aspect ratio, then resize to ``size`` (bilinear).

    Up to 10 attempts draw an area fraction uniformly from ``scale`` and a log-uniform
    aspect ratio (w / h) from ``ratio``; the first crop that fits in the image is used.
    If none fits, the largest centred crop with the aspect ratio clamped to ``ratio``.
    ``last_params`` holds the last crop box as (top, left, height, width).
    """

    def __init__(self, size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
        self.size = _pair(size)
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got {scale}, {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.attempts = attempts
        self.last_params: Optional[tuple[int, int, int, int]] = None

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop box (top, left, height, width) for an image of the given size."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = _randint(0, height - h + 1)
                left = _randint(0, width - w + 1)
                return top, left, h, w
        # fallback: centre crop of the whole image, aspect ratio clamped into `ratio`
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w = width
            h = int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h = height
            w = int(round(h * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, h, w = self.get_params(*img.size)
        self.last_params = (top, left, h, w)
        out_h, out_w = self.size
        return img.resize((out_w, out_h), Image.BILINEAR, box=(left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1).item() < self.p:
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast, saturation (and hue) in that fixed order.

    Each factor is drawn uniformly from [max(0, 1 - v), 1 + v] and applied with
    ``PIL.ImageEnhance``; hue shifts the HSV hue by a fraction in [-hue, hue]
    (hue <= 0.5).  A zero strength leaves that property untouched.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)

    @staticmethod
    def _factor(v: float) -> float:
        return _uniform(max(0.0, 1.0 - v), 1.0 + v)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.brightness > 0:
            img = ImageEnhance.Brightness(img).enhance(self._factor(self.brightness))
        if self.contrast > 0:
            img = ImageEnhance.Contrast(img).enhance(self._factor(self.contrast))
        if self.saturation > 0:
            img = ImageEnhance.Color(img).enhance(self._factor(self.saturation))
        if self.hue > 0:
            shift = _uniform(-self.hue, self.hue)
            mode = img.mode
            hsv = np.array(img.convert("HSV"), dtype=np.uint8)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
            img = Image.fromarray(hsv, "HSV").convert(mode)
        return img

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )


class Resize:
    """Resize bilinearly: an int resizes the shorter side to it (aspect kept),
    a (height, width) pair resizes to exactly that."""

    def __init__(self, size=256):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, (int, np.integer)):
            s = int(self.size)
            if w <= h:
                new_w, new_h = s, int(s * h / w)
            else:
                new_w, new_h = int(s * w / h), s
        else:
            new_h, new_w = _pair(self.size)
        if (new_w, new_h) == (w, h):
            return img
        return img.resize((new_w, new_h), Image.BILINEAR)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class CenterCrop:
    """Crop the centre ``size`` (int or (height, width)); pads with black if the image is smaller."""

    def __init__(self, size=224):
        self.size = _pair(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        ch, cw = self.size
        w, h = img.size
        if w < cw or h < ch:
            canvas = Image.new(img.mode, (max(w, cw), max(h, ch)))
            canvas.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
            img = canvas
            w, h = img.size
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        return img.crop((left, top, left + cw, top + ch))

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class ToTensorNormalize:
    """PIL image -> float C x H x W tensor in [0, 1], then ``(x - mean) / std`` per channel.

    ``mean=None`` / ``std=None`` skip the normalisation.
    """

    def __init__(self, mean: Optional[Sequence[float]] = IMAGENET_MEAN, std: Optional[Sequence[float]] = IMAGENET_STD):
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        if self.mean is not None:
            x.sub_(self.mean)
        if self.std is not None:
            x.div_(self.std)
        return x.contiguous()

    def __repr__(self) -> str:
        m = None if self.mean is None else tuple(round(v, 4) for v in self.mean.flatten().tolist())
        s = None if self.std is None else tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"ToTensorNormalize(mean={m}, std={s})"


def imagenet_train_transform(size: int = 224, jitter: float = 0.4) -> Compose:
    """RandomResizedCrop(size), horizontal flip, colour jitter (skipped if 0), normalise."""
    steps: list[Callable] = [RandomResizedCrop(size), RandomHorizontalFlip()]
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter, 0.0))
    steps.append(ToTensorNormalize())
    return Compose(steps)


def imagenet_eval_transform(resize: int = 256, size: int = 224) -> Compose:
    """Resize the shorter side to ``resize``, centre crop ``size``, normalise."""
    return Compose([Resize(resize), CenterCrop(size), ToTensorNormalize()])
