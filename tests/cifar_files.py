"""Fake CIFAR-10 / CIFAR-100 files in the official "python version" layout, for tests.

The pickles are written as the official (Python 2) ones are: protocol 2, byte
strings as Python 2 ``str`` (so keys load as ``b"data"`` with ``encoding="bytes"``
and as ``"data"`` with ``encoding="latin1"``), images N x 3072 uint8 in channel
planes (R, G, B; each 32 x 32 row-major), labels a list of ints.

Images are class-dependent so that a model can learn them: each class has its
own mean colour and a class-specific stripe pattern, plus noise. Labels are in a
shuffled (not sorted) order.
"""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np

__all__ = ["write_fake_cifar10", "write_fake_cifar100", "class_colour", "make_images", "write_py2_pickle"]


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 strings (BINSTRING)."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", n) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def write_py2_pickle(obj, path: str) -> None:
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def class_colour(c: int, num_classes: int) -> np.ndarray:
    """A distinct RGB mean colour for class ``c`` (float, 0..255)."""
    rng = np.random.RandomState(10_000 + c)
    hue = (c / num_classes) * 2 * np.pi
    base = 128 + 90 * np.array([np.cos(hue), np.cos(hue + 2.094), np.cos(hue + 4.189)])
    return np.clip(base + rng.uniform(-20, 20, 3), 20, 235)


def make_images(labels: np.ndarray, num_classes: int, rng: np.random.RandomState) -> np.ndarray:
    """N x 32 x 32 x 3 uint8 images: class colour + class stripe pattern + noise."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        period = 2 + (c % 7)
        stripes = ((xx if (c // 7) % 2 == 0 else yy) // period) % 2  # 32 x 32 in {0, 1}
        img = class_colour(int(c), num_classes)[None, None, :] + 25.0 * (stripes[:, :, None] - 0.5)
        img = img + rng.normal(0, 12, size=(32, 32, 3))
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _to_rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> N x 3072 in the official channel-plane order."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _shuffled_labels(num_classes: int, per_class: int, rng: np.random.RandomState) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    return labels


def write_fake_cifar10(root: str, n_per_class: int = 50, n_test_per_class: int = 10, seed: int = 0) -> str:
    """Write ``root/cifar-10-batches-py/`` (5 training batches, test_batch, batches.meta).

    ``n_per_class`` training and ``n_test_per_class`` test images per class. Returns ``root``.
    """
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = _shuffled_labels(10, n_per_class, rng)
    images = _to_rows(make_images(labels, 10, rng))
    parts = np.array_split(np.arange(len(labels)), 5)
    for b, part in enumerate(parts, start=1):
        write_py2_pickle({
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": [int(v) for v in labels[part]],
            b"data": images[part],
            b"filenames": [f"fake_{int(i):06d}.png".encode() for i in part],
        }, os.path.join(folder, f"data_batch_{b}"))
    t_labels = _shuffled_labels(10, n_test_per_class, rng)
    write_py2_pickle({
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in t_labels],
        b"data": _to_rows(make_images(t_labels, 10, rng)),
        b"filenames": [f"fake_test_{i:06d}.png".encode() for i in range(len(t_labels))],
    }, os.path.join(folder, "test_batch"))
    write_py2_pickle({
        b"num_cases_per_batch": len(parts[0]),
        b"label_names": [n.encode() for n in names],
        b"num_vis": 3072,
    }, os.path.join(folder, "batches.meta"))
    return root


def write_fake_cifar100(root: str, n_per_class: int = 20, n_test_per_class: int = 4, seed: int = 0) -> str:
    """Write ``root/cifar-100-python/`` (train, test, meta). Returns ``root``."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    fine_names = [f"class_{c:02d}" for c in range(100)]
    coarse_names = [f"super_{c:02d}" for c in range(20)]
    for split, per_class in (("train", n_per_class), ("test", n_test_per_class)):
        labels = _shuffled_labels(100, per_class, rng)
        write_py2_pickle({
            b"filenames": [f"fake_{split}_{i:06d}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": _to_rows(make_images(labels, 100, rng)),
        }, os.path.join(folder, split))
    write_py2_pickle({
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }, os.path.join(folder, "meta"))
    return root


def rewrite_cifar10(src_root: str, dst_root: str, edit_train=None, edit_test=None) -> str:
    """A copy of a CIFAR-10 layout with the training and/or test images and labels edited:
    ``edit_*(images N x 32 x 32 x 3 uint8, labels) -> (images, labels)``. Returns ``dst_root``."""
    from fsa_lt.data.cifar import load_cifar_arrays

    folder = os.path.join(dst_root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    x, y, names = load_cifar_arrays("cifar10", src_root, train=True)
    if edit_train is not None:
        x, y = edit_train(x.copy(), y.copy())
    parts = np.array_split(np.arange(len(y)), 5)
    for b, part in enumerate(parts, start=1):
        write_py2_pickle({b"batch_label": f"training batch {b} of 5".encode(), b"labels": [int(v) for v in y[part]],
                          b"data": _to_rows(x[part]), b"filenames": [f"e_{int(i):06d}.png".encode() for i in part]},
                         os.path.join(folder, f"data_batch_{b}"))
    tx, ty, _ = load_cifar_arrays("cifar10", src_root, train=False)
    if edit_test is not None:
        tx, ty = edit_test(tx.copy(), ty.copy())
    write_py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in ty], b"data": _to_rows(tx),
                      b"filenames": [f"e_test_{i:06d}.png".encode() for i in range(len(ty))]},
                     os.path.join(folder, "test_batch"))
    write_py2_pickle({b"num_cases_per_batch": len(parts[0]), b"label_names": [n.encode() for n in names],
                      b"num_vis": 3072}, os.path.join(folder, "batches.meta"))
    return dst_root
