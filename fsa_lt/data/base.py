"""What the in-memory data sets (CIFAR-LT, digits) share."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def validation_indices(pool_targets, subset, per_class: int, seed: int, num_classes: int) -> np.ndarray:
    """A validation split of an in-memory data set: up to `per_class` positions of each class among
    the positions of `pool_targets` that the training subset `subset` does not use.

    Each class's spare positions are put in a random order by one ``numpy.random.default_rng(seed)``
    (classes in label order) and the first `per_class` kept, so the split is a function of (pool,
    subset, per_class, seed) alone and a smaller `per_class` gives a subset of a larger one. A class
    with fewer spare positions gives all it has (none when the subset uses all its images).
    Returned grouped by class, each group sorted.
    """
    y = np.asarray(pool_targets, dtype=np.int64).reshape(-1)
    if int(per_class) < 1:
        raise ValueError(f"validation_indices: per_class must be >= 1, got {per_class}")
    used = np.zeros(y.size, dtype=bool)
    used[np.asarray(subset, dtype=np.int64)] = True
    rng = np.random.default_rng(int(seed))
    out = []
    for c in range(int(num_classes)):
        spare = np.flatnonzero((y == c) & ~used)
        out.append(np.sort(rng.permutation(spare)[: int(per_class)]))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


class InMemoryLT(Dataset):
    """A data set held as ``data`` (uint8 N x H x W x 3) and ``targets`` (int64).

    Subclasses set ``data``, ``targets``, ``num_classes``, ``classes``, ``mean``, ``std``
    and ``transform``. ``__getitem__`` returns ``(transform(uint8 HWC image), label)``;
    without a transform, a float32 CHW tensor in [0, 1].
    """

    data: np.ndarray
    targets: np.ndarray
    num_classes: int
    transform = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = self.data[i]
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x, int(self.targets[i])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=self.num_classes)
