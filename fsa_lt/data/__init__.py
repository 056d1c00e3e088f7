"""Data sets by config name, and the loaders the phases iterate over.

`build_dataset(cfg, split, augment)` returns a data set object (see
docs/ARCHITECTURE.md for the contract); `make_loader(...)` returns an `EpochLoader`
whose `set_epoch(e)` makes epoch e's order and augmentation a function of
(seed, e) alone, for the GPU-resident fast path and the plain DataLoader alike.

On the DataLoader path each training sample is read with torch's CPU generator seeded from
(seed, epoch, index) (`sample_seed`), in whichever process reads it: the augmentation of epoch
e does not depend on the epochs run before it in the process, nor on `dataset.num_workers`, so
a resumed Phase I is bit-identical to an uninterrupted one with any number of workers.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from ..errors import DataError
from ..engine import distributed as dist

IN_MEMORY = ("cifar10", "cifar100", "digits")
OWN_DATA = ("imagefolder", "csv")  # see image_folder.py
# Standard split files under dataset.root and class counts (the OLTR / iNaturalist releases).
LIST_DEFAULTS = {
    "imagenet_lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 1000),
    "places_lt": ("Places_LT_train.txt", "Places_LT_test.txt", 365),
    "inat2018": ("train2018.json", "val2018.json", 8142),
}
# The official validation lists (20 images a class in both); iNaturalist 2018's val list is the
# test set, so it has none.
VAL_LIST_DEFAULTS = {"imagenet_lt": "ImageNet_LT_val.txt", "places_lt": "Places_LT_val.txt", "inat2018": None}


def _check_classes(ds, cfg, split: str):
    want = cfg.dataset.num_classes
    if want is not None and ds.num_classes != want:
        raise DataError(f"{cfg.dataset.name} {split} split has {ds.num_classes} classes, "
                        f"dataset.num_classes says {want}")
    return ds


def build_dataset(cfg, split: str = "train", augment: bool | None = None):
    """The `split` ('train', 'val' or 'test') of the configured data set.

    augment: training-time augmentation (default: True for 'train').  In-memory data
    sets ignore it when the device loader does the augmentation itself.  'val' is the
    validation split of `dataset.validation` (see `validation_source`), evaluated like 'test'.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"build_dataset: split must be train, val or test, got {split!r}")
    d = cfg.dataset
    train = split == "train"
    augment = train if augment is None else augment
    root = cfg.data_root
    if split == "val":
        validation_source(cfg)  # a data set without one is a one-line DataError
    if d.name in IN_MEMORY:
        from .transforms import cifar_eval_transform, cifar_train_transform

        val = dict(val_per_class=d.val_per_class, val_seed=d.val_seed) if split == "val" else {}
        pool = split in ("train", "val")  # the validation images come from the training pool
        if d.name == "digits":
            from .digits import DigitsLT

            ds = DigitsLT(root=root, train=pool, imb_ratio=d.imb_ratio, imb_type=d.imb_type, seed=d.subset_seed, **val)
        else:
            from .cifar import CIFARLT

            ds = CIFARLT(root, name=d.name, train=pool, imb_ratio=d.imb_ratio if pool else 1,
                         imb_type=d.imb_type, seed=d.subset_seed, download=d.download, **val)
        ds.transform = cifar_train_transform(ds.mean, ds.std) if augment else cifar_eval_transform(ds.mean, ds.std)
        return _check_classes(ds, cfg, split)

    from .image_transforms import imagenet_eval_transform, imagenet_train_transform
    from .image_list import inat_dataset, oltr_dataset

    size = d.image_size
    tf = imagenet_train_transform(size=size) if augment else imagenet_eval_transform(resize=int(round(size * 256 / 224)), size=size)
    if d.name in OWN_DATA:  # image folders, CSV lists
        from .image_folder import build_own_dataset

        return _check_classes(build_own_dataset(cfg, split, tf), cfg, split)
    train_file, test_file, k = LIST_DEFAULTS[d.name]
    k = d.num_classes or k
    if split == "val":
        rel = validation_source(cfg)
    else:
        rel = (d.train_list or train_file) if train else (d.test_list or test_file)
    list_path = Path(rel) if os.path.isabs(rel) else Path(root) / rel
    make = inat_dataset if d.name == "inat2018" else oltr_dataset
    ds = make(root, str(list_path), k, tf, train)
    return _check_classes(ds, cfg, split)


def validation_source(cfg) -> str:
    """What the validation split of `cfg` is made of, in words (in-memory sets) or as the list /
    folder it is read from; a `DataError` when the data set has none."""
    d = cfg.dataset
    if not d.validation:
        raise DataError("no validation split: dataset.validation is false")
    if d.name in IN_MEMORY:
        return (f"up to {d.val_per_class} images a class from the training images outside the long-tailed subset "
                f"(val_seed {d.val_seed})")
    if d.name == "imagefolder":
        return d.val_dir or "val"
    if d.name == "csv":
        return d.val_list or "val.csv"
    rel = d.val_list or VAL_LIST_DEFAULTS[d.name]
    if rel is None:
        raise DataError(f"{d.name} has no validation split (its val list is the test set): give a held-out list "
                        "of your own as dataset.val_list, or run without dataset.validation")
    return rel


def class_counts(ds, num_classes: int | None = None) -> np.ndarray:
    return np.bincount(np.asarray(ds.targets), minlength=num_classes or ds.num_classes)


def use_fast_path(ds, cfg, device: torch.device) -> bool:
    mode = cfg.train.fast_path
    if mode == "off" or not hasattr(ds, "data"):
        return False
    return True  # 'auto' and 'on': in-memory data sets (CIFAR, digits), CPU or GPU, any world size


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of training sample `index` in `epoch` of a run with `seed` (well mixed in its low
    32 bits, the ones torch's CPU generator keeps)."""
    x = 0
    for v in (seed, epoch, index):
        x = _splitmix64(x ^ (int(v) & _M64))
    return x


class _EpochKeys(torch.utils.data.Sampler):
    """The wrapped sampler's indices as (epoch, index) keys, for `_SeededSamples`."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _SeededSamples(torch.utils.data.Dataset):
    """A training set read by (epoch, index) keys: torch's CPU generator, which the transforms
    draw from, is seeded by `sample_seed` before each sample (and given back afterwards in the
    main process, where other code may draw from it)."""

    def __init__(self, ds, seed: int):
        self.ds, self.seed = ds, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        epoch, index = key
        gen = torch.default_generator
        keep = gen.get_state() if torch.utils.data.get_worker_info() is None else None
        gen.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self.ds[index]
        finally:
            if keep is not None:
                gen.set_state(keep)


class EpochLoader:
    """One interface over the device loader and a DataLoader: set_epoch, len, iter."""

    def __init__(self, inner, sampler=None, seed: int = 0, keys: _EpochKeys | None = None, fast: bool = False):
        self.inner, self.sampler, self.seed, self.fast = inner, sampler, seed, fast
        self.keys = keys
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        elif self.sampler is not None and getattr(self.sampler, "generator", None) is not None:
            self.sampler.generator.manual_seed(self.seed * 100003 + epoch)
        if self.keys is not None:  # the augmentation of each sample: (seed, epoch, index)
            self.keys.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


def make_loader(ds, cfg, device: torch.device, train: bool, batch_size: int, seed: int | None = None,
                fast: bool | None = None, drop_last: bool = False, shard: bool = True) -> EpochLoader:
    """batch_size is per process. shard=False gives every rank the whole set (Phase II)."""
    seed = cfg.seed if seed is None else seed
    fast = use_fast_path(ds, cfg, device) if fast is None else fast
    world, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    if fast:
        from .device_loader import DeviceLoader

        data, targets = ds.data, np.asarray(ds.targets)
        inner = DeviceLoader(data, targets, batch_size, device, ds.mean, ds.std, train=train,
                             shuffle=train, drop_last=drop_last, seed=seed,
                             rank=rank, world_size=world)
        return EpochLoader(inner, seed=seed, fast=True)
    workers = cfg.dataset.num_workers
    if world > 1 and train:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=seed, drop_last=drop_last)
    elif world > 1:
        # Evaluation: every sample exactly once over the ranks. DistributedSampler would pad
        # the shards to equal length with repeated samples, which the summed metrics count twice.
        sampler = range(rank, len(ds), world)
    elif train:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(ds)
    gen = torch.Generator().manual_seed(seed)
    keys = _EpochKeys(sampler) if train else None
    inner = DataLoader(_SeededSamples(ds, seed) if train else ds, batch_size=batch_size,
                       sampler=keys if train else sampler, num_workers=workers,
                       pin_memory=device.type == "cuda", drop_last=drop_last,
                       persistent_workers=workers > 0, generator=gen)
    return EpochLoader(inner, sampler=sampler, seed=seed, keys=keys)
