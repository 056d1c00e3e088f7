"""scikit-learn's bundled digits (no download) as a small long-tailed data set.

1,797 8 x 8 grey images of 10 classes. Pixels (0..16) are scaled to uint8,
upsampled to 32 x 32 (nearest, exact 4x) and repeated to 3 channels so that the
CIFAR models and the device loader take them unchanged. A fixed stratified
train/test split (``seed``); the training part is made long-tailed with the same
``exp``/``step`` rule as CIFAR-LT, with ``img_max`` = the smallest per-class
training count, and the same seeded per-class selection.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from .base import InMemoryLT, validation_indices

from fsa_lt.errors import DataError
from fsa_lt.data.cifar import long_tailed_indices

__all__ = ["DigitsLT", "load_digits_arrays", "digits_split"]

_CACHE: dict = {}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(uint8 N x 32 x 32 x 3, int64 labels)``."""
    if "all" not in _CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover
            raise DataError("the digits demo data needs scikit-learn: pip install scikit-learn") from exc
        d = load_digits()
        img = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # N x 8 x 8
        img = img.repeat(4, axis=1).repeat(4, axis=2)  # N x 32 x 32, nearest
        img = np.ascontiguousarray(np.repeat(img[:, :, :, None], 3, axis=3))
        _CACHE["all"] = (img, d.target.astype(np.int64))
    return _CACHE["all"]


def digits_split(seed: int = 0, test_fraction: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the digits: ``(train positions, test positions)``, both sorted.

    Per class, a ``RandomState(seed)`` permutation; the first ``round(n_c * test_fraction)``
    go to test.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    _, y = load_digits_arrays()
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        n_test = int(round(len(idx) * float(test_fraction)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class DigitsLT(InMemoryLT):
    """Long-tailed digits with the CIFARLT attributes.

    ``indices`` are positions in the (balanced) training split for ``train=True``,
    positions in the test split (``arange``) otherwise; ``source_indices`` are
    positions in scikit-learn's ``load_digits()`` order. ``mean``/``std`` are measured
    on the balanced training split (the same for train and test objects).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        train: bool = True,
        imb_ratio: float = 10,
        imb_type: str = "exp",
        seed: int = 0,
        transform: Optional[Callable] = None,
        test_fraction: float = 0.4,
        val_per_class: Optional[int] = None,
        val_seed: int = 0,
    ):
        """``val_per_class`` (with ``train=True``): the validation split instead, from the training
        split's images outside the long-tailed subset (as `CIFARLT`)."""
        self.root = root  # unused: the data ship with scikit-learn
        self.train = bool(train)
        self.imb_ratio = imb_ratio
        self.imb_type = imb_type
        self.seed = seed
        self.transform = transform
        self.num_classes = 10
        self.classes = [str(i) for i in range(10)]
        x_all, y_all = load_digits_arrays()
        tr, te = digits_split(seed, test_fraction)
        train_x = x_all[tr]
        m = train_x.reshape(-1, 3).astype(np.float64) / 255.0
        self.mean = tuple(float(v) for v in m.mean(0))
        self.std = tuple(float(v) for v in m.std(0))
        if self.train:
            y_tr = y_all[tr]
            n_max = int(np.bincount(y_tr, minlength=10).min())
            self.indices = long_tailed_indices(y_tr, 10, imb_ratio, imb_type, seed, n_max=n_max)
            if val_per_class is not None:
                self.indices = validation_indices(y_tr, self.indices, val_per_class, val_seed, 10)
                self.val_counts = np.bincount(y_tr[self.indices], minlength=10)
            self.source_indices = tr[self.indices]
        else:
            self.indices = np.arange(len(te), dtype=np.int64)
            self.source_indices = te
        self.data = np.ascontiguousarray(x_all[self.source_indices])
        self.targets = y_all[self.source_indices].astype(np.int64)

    def __repr__(self) -> str:
        split = f"train, IR {self.imb_ratio} {self.imb_type}, seed {self.seed}" if self.train else "test"
        return f"DigitsLT({split}, {len(self)} images)"
