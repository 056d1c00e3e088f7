"""CIFAR-10 / CIFAR-100 from the official "python version" pickles, made long-tailed.

Layout under ``root`` (the folders inside the official archives)::

    root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    root/cifar-100-python/{train, test, meta}

The long-tailed training subset follows the LDAM-DRW rule exactly (Cao et al.,
NeurIPS 2019), so that the selected images are the ones everybody else uses:

* ``img_max = n_train / C``;
* ``exp``:  ``n_i = int(img_max * (1 / IR) ** (i / (C - 1)))``;
* ``step``: the first ``C // 2`` classes keep ``int(img_max)``, the rest
  ``int(img_max * (1 / IR))``;
* one legacy numpy RNG seeded once (``np.random.RandomState(seed)``, the same
  stream as ``np.random.seed(seed)``); for each class in label order its indices
  are shuffled and the first ``n_i`` kept.

Sizes this gives: CIFAR-10-LT 12,406 / 13,996 / 20,431 and CIFAR-100-LT
10,847 / 12,608 / 19,573 images at IR 100 / 50 / 10.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from typing import Callable, Optional, Sequence

import numpy as np
from .base import InMemoryLT, validation_indices

from fsa_lt.errors import DataError

__all__ = [
    "CIFAR_SPECS",
    "CIFARLT",
    "class_sizes",
    "long_tailed_indices",
    "load_cifar_arrays",
    "download_cifar",
]

# name -> description of the official archive and its contents
CIFAR_SPECS = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "files": "data_batch_1..5, test_batch, batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "num_classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2023, 0.1994, 0.2010),
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "files": "train, test, meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "num_classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}

_ALIASES = {
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar10_lt": "cifar10", "cifar10-lt": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100", "cifar100_lt": "cifar100", "cifar100-lt": "cifar100",
}


def _spec(name: str) -> dict:
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise DataError(f"unknown CIFAR data set {name!r}: expected 'cifar10' or 'cifar100'")
    return CIFAR_SPECS[key]


# --------------------------------------------------------------------------- split rule
def class_sizes(n_max: float, num_classes: int, imb_ratio: float, imb_type: str = "exp") -> list[int]:
    """Per-class image counts of the LDAM-DRW long-tailed profile.

    ``n_max`` is ``img_max`` (for CIFAR ``n_train / C``, e.g. 5000.0). ``imb_ratio`` is the
    imbalance ratio IR = n_max / n_min (>= 1; 1 means balanced).
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise DataError(f"class_sizes: num_classes must be >= 1, got {num_classes}")
    if not imb_ratio or float(imb_ratio) < 1:
        raise DataError(f"imbalance ratio must be >= 1 (n_max / n_min), got {imb_ratio!r}")
    imb_factor = 1.0 / float(imb_ratio)  # LDAM-DRW's `imb_factor` (0.01 for IR 100)
    img_max = float(n_max)
    if imb_type == "exp":
        if num_classes == 1:
            return [int(img_max)]
        return [int(img_max * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    if imb_type == "step":
        half = num_classes // 2
        return [int(img_max)] * half + [int(img_max * imb_factor)] * (num_classes - half)
    raise DataError(f"unknown imbalance type {imb_type!r}: expected 'exp' or 'step'")


def long_tailed_indices(
    targets: Sequence[int] | np.ndarray,
    num_classes: int,
    imb_ratio: float,
    imb_type: str = "exp",
    seed: int = 0,
    n_max: Optional[float] = None,
) -> np.ndarray:
    """Positions (into ``targets``) of the long-tailed subset, in LDAM-DRW order.

    The result is grouped by class in label order, each group in the shuffled order
    LDAM-DRW keeps (so ``data[result]`` equals their ``self.data`` row for row).
    ``n_max`` defaults to ``len(targets) / num_classes`` (LDAM-DRW's ``img_max``).
    """
    targets_np = np.asarray(targets, dtype=np.int64)
    if targets_np.ndim != 1:
        raise DataError(f"targets must be one-dimensional, got shape {targets_np.shape}")
    img_max = len(targets_np) / num_classes if n_max is None else n_max
    sizes = class_sizes(img_max, num_classes, imb_ratio, imb_type)
    rng = np.random.RandomState(seed)
    classes = np.unique(targets_np)
    selected = []
    for the_class, the_img_num in zip(classes, sizes):
        idx = np.where(targets_np == the_class)[0]
        rng.shuffle(idx)
        selected.append(idx[:the_img_num])
    if not selected:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(selected).astype(np.int64)


# --------------------------------------------------------------------------- files
def _missing_message(spec: dict, root: str, missing: str) -> str:
    folder = os.path.join(root, spec["folder"])
    files = spec["files"]
    return (
        f"{spec['title']} not found: expected {os.path.join(folder, missing)} "
        f"({files} in {folder}) - put the official 'python version' there "
        f"({os.path.basename(spec['url'])}, extracted) or set dataset.root / FSA_DATA_ROOT"
    )


def _first_missing(spec: dict, root: str) -> Optional[str]:
    folder = os.path.join(root, spec["folder"])
    for f in spec["train"] + spec["test"] + [spec["meta"]]:
        if not os.path.isfile(os.path.join(folder, f)):
            return f
    return None


def _md5(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download_cifar(name: str, root: str, timeout: float = 30.0) -> str:
    """Download, md5-check and extract the official archive into ``root``.

    Writes to temporary names and renames at the end, so an interrupted download
    never leaves a half-written folder. Returns the data folder. Raises `DataError`.
    """
    spec = _spec(name)
    root = os.path.abspath(os.path.expanduser(root))
    folder = os.path.join(root, spec["folder"])
    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, os.path.basename(spec["url"]))
    if not (os.path.isfile(archive) and _md5(archive) == spec["md5"]):
        fd, tmp_archive = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=root)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec["url"], timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            digest = _md5(tmp_archive)
            if digest != spec["md5"]:
                raise DataError(
                    f"{spec['title']} download from {spec['url']} has md5 {digest}, expected {spec['md5']}"
                )
            os.replace(tmp_archive, archive)
        except DataError:
            raise
        except Exception as exc:  # network errors, timeouts, disk full ...
            raise DataError(
                _missing_message(spec, root, spec["train"][0])
                + f" (download from {spec['url']} failed: {type(exc).__name__}: {exc})".replace("\n", " ")
            ) from exc
        finally:
            if os.path.exists(tmp_archive):
                os.unlink(tmp_archive)
    tmp_dir = tempfile.mkdtemp(prefix=".extract-", dir=root)
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers()
                           if m.name.startswith(spec["folder"] + "/") and (m.isfile() or m.isdir())
                           and ".." not in m.name.split("/")]
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp_dir, members=members, filter="data")
                else:  # pragma: no cover - older Pythons
                    tar.extractall(tmp_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{spec['title']} archive {archive} cannot be extracted: {exc}") from exc
        extracted = os.path.join(tmp_dir, spec["folder"])
        if not os.path.isdir(extracted):
            raise DataError(f"{spec['title']} archive {archive} has no folder {spec['folder']}/")
        if os.path.isdir(folder):  # a partial folder from earlier: replace it
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return folder


def _str(x) -> str:
    return x.decode("latin1") if isinstance(x, (bytes, bytearray)) else str(x)


# What the official "python version" batches hold besides dicts, lists, strings and numbers: numpy
# arrays (and their dtypes); a protocol-2 pickle written by Python 3 also spells bytes as
# _codecs.encode(text, 'latin1'). Nothing else is admitted, so a crafted file in a data root cannot
# run code when a run starts (a plain pickle.load would call whatever the file names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _Refused(Exception):
    pass


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"{module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 moved numpy.core
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return getattr(importlib.import_module(module), name)


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as exc:
        raise DataError(
            f"{path} is not a CIFAR batch from the official archive: it asks to load {exc}, and a CIFAR batch "
            "holds only dicts, lists, strings, numbers and numpy arrays; refused without running it"
        ) from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ...
        raise DataError(
            f"corrupt CIFAR file {path}: {type(exc).__name__}: {exc}".replace("\n", " ")
            + " - replace it with the file from the official archive"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR file {path}: expected a dict, found {type(obj).__name__}")
    return {_str(k): v for k, v in obj.items()}


def _load_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(f"corrupt CIFAR file {path}: keys 'data' and {label_key!r} expected, found {sorted(d)}")
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"corrupt CIFAR file {path}: {type(exc).__name__}: {exc}") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"corrupt CIFAR file {path}: data must be N x 3072 uint8, found {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"corrupt CIFAR file {path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"corrupt CIFAR file {path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_arrays(name: str, root: str, train: bool, download: bool = False):
    """``(images uint8 N x 32 x 32 x 3, labels int64, class names)`` in file order."""
    spec = _spec(name)
    root = os.path.abspath(os.path.expanduser(root))
    missing = _first_missing(spec, root)
    if missing is not None:
        if not download:
            raise DataError(_missing_message(spec, root, missing))
        download_cifar(name, root)
        missing = _first_missing(spec, root)
        if missing is not None:
            raise DataError(_missing_message(spec, root, missing) + " (the downloaded archive lacks it)")
    folder = os.path.join(root, spec["folder"])
    images, labels = [], []
    for f in spec["train"] if train else spec["test"]:
        x, y = _load_batch(os.path.join(folder, f), spec["label_key"], spec["num_classes"])
        images.append(x)
        labels.append(y)
    meta_path = os.path.join(folder, spec["meta"])
    meta = _load_pickle(meta_path)
    names = meta.get(spec["names_key"])
    if names is None or len(names) != spec["num_classes"]:
        raise DataError(f"corrupt CIFAR file {meta_path}: {spec['names_key']!r} must list {spec['num_classes']} names")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), [_str(n) for n in names]


def default_root() -> str:
    return os.environ.get("FSA_DATA_ROOT") or "data"


# --------------------------------------------------------------------------- data set
class CIFARLT(InMemoryLT):
    """CIFAR-10-LT / CIFAR-100-LT (training split long-tailed, test split full).

    Attributes: ``data`` (uint8 N x 32 x 32 x 3), ``targets`` (int64), ``indices``
    (positions in the original training/test set), ``num_classes``, ``classes``,
    ``mean``/``std`` (per channel, [0, 1] units), ``imb_ratio``, ``imb_type``, ``seed``.
    ``__getitem__`` returns ``(transform(uint8 HWC image), int label)``; without a
    transform, a float32 CHW tensor in [0, 1].
    """

    def __init__(
        self,
        root: Optional[str] = None,
        name: str = "cifar10",
        train: bool = True,
        imb_ratio: float = 100,
        imb_type: str = "exp",
        seed: int = 0,
        transform: Optional[Callable] = None,
        download: bool = False,
        val_per_class: Optional[int] = None,
        val_seed: int = 0,
    ):
        """``val_per_class`` (with ``train=True``): the validation split instead, up to that many
        images of each class from the training images outside the long-tailed subset
        (`validation_indices`, drawn with ``val_seed``); ``val_counts`` holds the per-class sizes."""
        spec = _spec(name)
        self.name = _ALIASES[str(name).lower()]
        self.root = os.path.abspath(os.path.expanduser(root if root is not None else default_root()))
        self.train = bool(train)
        self.imb_ratio = imb_ratio
        self.imb_type = imb_type
        self.seed = seed
        self.transform = transform
        self.num_classes = spec["num_classes"]
        self.mean = tuple(spec["mean"])
        self.std = tuple(spec["std"])
        data, targets, self.classes = load_cifar_arrays(self.name, self.root, self.train, download)
        self.split = "test" if not self.train else ("train" if val_per_class is None else "val")
        if self.train:
            self.indices = long_tailed_indices(targets, self.num_classes, imb_ratio, imb_type, seed)
            if val_per_class is not None:
                self.indices = validation_indices(targets, self.indices, val_per_class, val_seed, self.num_classes)
                self.val_counts = np.bincount(targets[self.indices], minlength=self.num_classes)
            self.data = np.ascontiguousarray(data[self.indices])
            self.targets = targets[self.indices].astype(np.int64)
        else:
            self.indices = np.arange(len(targets), dtype=np.int64)
            self.data = data
            self.targets = targets.astype(np.int64)

    def __repr__(self) -> str:
        split = f"{self.split}, IR {self.imb_ratio} {self.imb_type}, seed {self.seed}" if self.train else "test"
        return f"CIFARLT({self.name}, {split}, {len(self)} images, root={self.root})"
