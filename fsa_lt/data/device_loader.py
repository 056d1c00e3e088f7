"""Device-resident loader for small in-memory image sets (CIFAR, digits).

The images live once on the device as a uint8 N x H x W x 3 tensor. Each epoch
draws, from a CPU `torch.Generator` seeded by ``(seed, epoch)`` only, the sample
order and every sample's crop offsets and flip, and moves them to the device in
one copy. Each batch is then one gather (``index_select`` of pixel rows): the crop of the zero-padded
image is read straight from the unpadded images, the padding positions pointing
at one extra all-zero pixel row (no padded copy of the data), the flip is folded into the column indices, and conversion to
float plus normalisation is one fused multiply-add. The gathered batch is NHWC,
so ``permute(0, 3, 1, 2)`` is already in ``channels_last`` memory format.

No host synchronisation happens while iterating (no ``.item()`` / ``.cpu()``), and
the augmentation is identical on every device type for the same ``(seed, epoch)``.
It is the same transform as `fsa_lt.data.transforms.cifar_train_transform`
(zero-pad in pixel space, crop, flip, normalise) with a different random stream.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from fsa_lt.errors import DataError

__all__ = ["DeviceLoader", "epoch_generator"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator whose stream is a function of ``(seed, epoch)`` only."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFFFFFF, 0x46534C54])
    g = torch.Generator(device="cpu")
    g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return g


class DeviceLoader:
    """Iterate ``(x float32 B x 3 x H x W, y int64 B)`` batches on ``device``.

    ``shuffle`` defaults to ``train``; augmentation (random crop with zero padding
    ``padding`` + horizontal flip) only when ``train``. ``set_epoch(e)`` fixes the
    next epoch's order and augmentation to a function of ``(seed, e)``; every
    ``__iter__`` then advances the epoch by one, so a loop without ``set_epoch``
    still sees a fresh order each epoch.
    """

    def __init__(
        self,
        data_uint8_nhwc,
        targets,
        batch_size: int,
        device="cpu",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        train: bool = True,
        shuffle: Optional[bool] = None,
        drop_last: bool = False,
        padding: int = 4,
        channels_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.device = torch.device(device)
        data = torch.as_tensor(data_uint8_nhwc)
        if data.dtype != torch.uint8 or data.dim() != 4:
            raise DataError(f"DeviceLoader: images must be uint8 N x H x W x C, got {tuple(data.shape)} {data.dtype}")
        y = torch.as_tensor(np.asarray(targets, dtype=np.int64) if not torch.is_tensor(targets) else targets)
        if y.dim() != 1 or y.shape[0] != data.shape[0]:
            raise DataError(f"DeviceLoader: {data.shape[0]} images but targets of shape {tuple(y.shape)}")
        if int(batch_size) < 1:
            raise DataError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
        n, h, w, c = (int(v) for v in data.shape)
        # The only copy of the images: N*H*W pixel rows plus one all-zero row that the
        # padding positions of a crop point at; `data` is a view of the first N*H*W rows.
        flat = torch.zeros(n * h * w + 1, c, dtype=torch.uint8, device=self.device)
        flat[:-1].copy_(data.reshape(n * h * w, c))
        self._flat = flat
        self._zero_row = n * h * w
        self.data = flat[:-1].view(n, h, w, c)  # N x H x W x C
        self.targets = y.to(dtype=torch.int64).to(self.device)
        self.num_samples = int(data.shape[0])
        self.height, self.width, self.channels = (int(s) for s in data.shape[1:])
        if len(mean) != self.channels or len(std) != self.channels:
            raise DataError(f"DeviceLoader: mean/std need {self.channels} values, got {len(mean)}/{len(std)}")
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)
        self.padding = int(padding) if self.train else 0
        self.channels_last = bool(channels_last)
        self.seed = int(seed)
        # Data parallel: every rank draws the same plan (same seed) and takes every
        # world_size-th position of it, so the ranks see disjoint parts of each epoch.
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # x_norm = (u8 / 255 - mean) / std = u8 * scale + shift, per channel (last dim of NHWC)
        std_t = torch.tensor(self.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).to(self.device)
        self._shift = (-torch.tensor(self.mean, dtype=torch.float32) / std_t).to(self.device)
        self._ar_h = torch.arange(self.height, device=self.device)
        self._ar_w = torch.arange(self.width, device=self.device)

    @classmethod
    def from_dataset(cls, dataset, batch_size: int, device="cpu", **kwargs) -> "DeviceLoader":
        """Build from an in-memory data set exposing ``data``, ``targets``, ``mean``, ``std``."""
        for attr in ("data", "targets", "mean", "std"):
            if not hasattr(dataset, attr):
                raise DataError(f"DeviceLoader: {type(dataset).__name__} has no {attr!r} (not an in-memory set)")
        return cls(dataset.data, dataset.targets, batch_size, device, dataset.mean, dataset.std, **kwargs)

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def _local_samples(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        n = self._local_samples
        if self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def augment_indices(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-augmented, normalised images of the samples `idx` (on the device),
        with crop offsets and flips drawn from `generator` (a generator on this device)."""
        idx = idx.to(self.device)
        b, p = idx.shape[0], self.padding
        top = torch.randint(0, 2 * p + 1, (b,), device=self.device, generator=generator)
        left = torch.randint(0, 2 * p + 1, (b,), device=self.device, generator=generator)
        flip = torch.rand(b, device=self.device, generator=generator) < 0.5
        return self._finish(self._augment(idx, top, left, flip))

    def epoch_plan(self, epoch: int) -> dict:
        """Order and per-sample (top, left, flip) of ``epoch`` (CPU tensors, by position in the order)."""
        g = epoch_generator(self.seed, epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        plan = {"order": order}
        if self.train:
            p = self.padding
            if p > 0:
                plan["top"] = torch.randint(0, 2 * p + 1, (n,), generator=g)
                plan["left"] = torch.randint(0, 2 * p + 1, (n,), generator=g)
            else:
                plan["top"] = torch.zeros(n, dtype=torch.long)
                plan["left"] = torch.zeros(n, dtype=torch.long)
            plan["flip"] = torch.rand(n, generator=g) < 0.5
        return plan

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ------------------------------------------------------------------ batches
    def _finish(self, xb: torch.Tensor) -> torch.Tensor:
        # xb: B x H x W x C uint8 -> float, normalised, B x C x H x W (channels_last strides)
        x = torch.addcmul(self._shift, xb.to(torch.float32), self._scale)
        x = x.permute(0, 3, 1, 2)
        return x if self.channels_last else x.contiguous()

    def _augment(self, idx, top, left, flip) -> torch.Tensor:
        """Crop of the zero-padded images + flip, as one gather of pixel rows (B x H x W x C)."""
        p, h, w = self.padding, self.height, self.width
        rows = top[:, None] - p + self._ar_h  # B x H, rows in the unpadded image
        cols_fwd = left[:, None] - p + self._ar_w  # B x W
        cols_rev = left[:, None] - p + (w - 1 - self._ar_w)
        cols = torch.where(flip[:, None], cols_rev, cols_fwd)
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        lin = (idx * (h * w))[:, None, None] + (rows.clamp(0, h - 1) * w)[:, :, None] + cols.clamp(0, w - 1)[:, None, :]
        lin = torch.where(valid, lin, self._zero_row)
        return self._flat.index_select(0, lin.reshape(-1)).view(idx.shape[0], h, w, self.channels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch = epoch + 1
        plan = self.epoch_plan(epoch)
        if self.world_size > 1:
            plan = {k: v[self.rank::self.world_size] for k, v in plan.items()}
        plan = {k: self._to_device(v) for k, v in plan.items()}
        order = plan["order"]
        n, bs = order.shape[0], self.batch_size
        for b in range(len(self)):
            s, e = b * bs, min((b + 1) * bs, n)
            idx = order[s:e]
            if self.train:
                xb = self._augment(idx, plan["top"][s:e], plan["left"][s:e], plan["flip"][s:e])
            else:
                xb = self.data.index_select(0, idx)
            yield self._finish(xb), self.targets[idx]

    def __repr__(self) -> str:
        return (f"DeviceLoader({self.num_samples} images, batch {self.batch_size}, device={self.device}, "
                f"train={self.train}, shuffle={self.shuffle}, padding={self.padding}, seed={self.seed})")
