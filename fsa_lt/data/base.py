"""What the in-memory data sets (CIFAR-LT, digits) share."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


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
