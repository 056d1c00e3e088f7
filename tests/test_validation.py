"""The validation split every Phase III choice is made on: images no model trained on, never the
test set. CIFAR-LT and digits draw it from the training images outside the long-tailed subset;
ImageNet-LT / Places-LT read their official val lists; own data names a folder or a list;
iNaturalist 2018 has none. Turning it on never changes the training subset (LDAM-DRW's)."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from cifar_files import write_fake_cifar10  # noqa: E402
from image_files import write_images, write_oltr_list  # noqa: E402

from fsa_lt.config import load_config  # noqa: E402
from fsa_lt.data import build_dataset, validation_source  # noqa: E402
from fsa_lt.data.base import validation_indices  # noqa: E402
from fsa_lt.data.cifar import CIFARLT, class_sizes, load_cifar_arrays  # noqa: E402
from fsa_lt.errors import ConfigError, DataError  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("c10"))
    write_fake_cifar10(r, n_per_class=50, n_test_per_class=10, seed=0)
    return r


def _cfg(root, *extra):
    return load_config("cifar10-LT_resnet32", "phase_iii", [f"dataset.root={root}", "dataset.download=false",
                                                             "dataset.validation=true", *extra])


def test_validation_indices_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    subset = np.array([0, 1, 9, 2, 5])  # class 0 all used; class 1 keeps 3, 4 spare; class 2 keeps 6, 7, 8 spare
    v = validation_indices(y, subset, per_class=2, seed=0, num_classes=3)
    assert np.bincount(y[v], minlength=3).tolist() == [0, 2, 2]
    assert set(v[:2]) == {3, 4} and set(v[2:]).issubset({6, 7, 8})
    assert not set(v) & set(subset)
    # a function of the seed; a smaller split is part of a larger one (one permutation per class)
    assert np.array_equal(v, validation_indices(y, subset, 2, 0, 3))
    assert set(validation_indices(y, subset, 1, 0, 3)) <= set(v)
    assert {tuple(validation_indices(y, subset, 1, s, 3)) for s in range(20)} != {tuple(validation_indices(y, subset, 1, 0, 3))}
    with pytest.raises(ValueError, match="per_class"):
        validation_indices(y, subset, 0, 0, 3)


def test_cifar_validation_is_outside_the_training_subset(root):
    cfg = _cfg(root, "dataset.imb_ratio=10", "dataset.val_per_class=20")
    train, val, test = (build_dataset(cfg, s) for s in ("train", "val", "test"))
    # the training subset is the one without validation, index for index (LDAM-DRW's)
    plain = CIFARLT(root, "cifar10", train=True, imb_ratio=10, seed=0)
    assert np.array_equal(train.indices, plain.indices)
    assert not set(val.indices) & set(train.indices)
    sizes = class_sizes(50, 10, 10)  # 50 images a class in the fake files
    want = [min(20, 50 - n) for n in sizes]
    assert want[0] == 0 and np.bincount(val.targets, minlength=10).tolist() == want
    assert val.val_counts.tolist() == want
    x, y, _ = load_cifar_arrays("cifar10", root, train=True)
    assert np.array_equal(val.data, x[val.indices]) and np.array_equal(val.targets, y[val.indices])
    assert len(test) == 100 and val.split == "val"  # evaluated like the test split: no augmentation
    assert val.transform is not None and len(val[0]) == 2
    # another val_seed, another draw of the same size
    other = build_dataset(_cfg(root, "dataset.imb_ratio=10", "dataset.val_per_class=20", "dataset.val_seed=1"), "val")
    assert not np.array_equal(np.sort(other.indices), np.sort(val.indices))
    assert np.bincount(other.targets, minlength=10).tolist() == want


def test_real_cifar10_lt_validation_if_available():
    data = os.environ.get("FSA_DATA_ROOT")
    if not data or not os.path.isfile(os.path.join(data, "cifar-10-batches-py", "data_batch_1")):
        pytest.skip("FSA_DATA_ROOT does not hold a real cifar-10-batches-py (set it to check real CIFAR-10-LT)")
    cfg = _cfg(data, "dataset.val_per_class=500")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 12406 and not set(val.indices) & set(train.indices)
    # imbalance 100: 5000, 2997, ..., 50 kept; every class but the largest has >= 2003 spare images
    assert np.bincount(val.targets, minlength=10).tolist() == [0] + [500] * 9


def test_digits_validation():
    cfg = load_config("digits-LT_resnet20", "phase_iii", ["dataset.validation=true", "dataset.val_per_class=15"])
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert not set(val.source_indices) & set(train.source_indices)
    test = build_dataset(cfg, "test")
    assert not set(val.source_indices) & set(test.source_indices)
    counts = np.bincount(val.targets, minlength=10)
    assert counts.max() <= 15 and counts.sum() > 0


def test_oltr_val_lists_are_the_validation_split(tmp_path):
    train = [(f"train/n{c}/{i}.jpg", c) for c in range(3) for i in range(3 - c + 1)]
    val = [(f"val/n{c}/{i}.jpg", c) for c in range(3) for i in range(2)]
    test = [(f"test/n{c}/{i}.jpg", c) for c in range(3) for i in range(2)]
    write_images(tmp_path, train + val + test, size=(8, 8))
    for name, items in (("ImageNet_LT_train.txt", train), ("ImageNet_LT_val.txt", val), ("ImageNet_LT_test.txt", test)):
        write_oltr_list(tmp_path / name, items)
    cfg = load_config("imageNet-LT_resnet10", "phase_iii", [f"dataset.root={tmp_path}", "dataset.validation=true",
                                                            "dataset.num_classes=3"])
    assert validation_source(cfg) == "ImageNet_LT_val.txt"
    ds = build_dataset(cfg, "val")
    assert sorted(ds.paths) == sorted(p for p, _ in val)


def test_inaturalist_has_no_validation_split():
    with pytest.raises(ConfigError, match="inat2018 has no validation split"):
        load_config("iNat2018_resnet50", "phase_iii", ["dataset.validation=true"])
    # its own held-out list is accepted
    cfg = load_config("iNat2018_resnet50", "phase_iii", ["dataset.validation=true", "dataset.val_list=held_out.json"])
    assert validation_source(cfg) == "held_out.json"


def test_no_validation_split_is_an_error_where_one_is_asked_for(root):
    cfg = load_config("cifar10-LT_resnet32", "phase_iii", [f"dataset.root={root}", "dataset.download=false",
                                                           "dataset.validation=false"])
    with pytest.raises(DataError, match="no validation split"):
        build_dataset(cfg, "val")


def test_image_folder_validation_and_test_folders(tmp_path):
    items = [(f"{split}/{c}/{i}.png", k) for split, n in (("train", 4), ("val", 2), ("test", 3))
             for k, c in enumerate(("cat", "dog")) for i in range(n)]
    write_images(tmp_path, items, size=(8, 8))
    base = [f"dataset.root={tmp_path}", "dataset.num_workers=0"]
    cfg = load_config("imagefolder_resnet50", "phase_iii", base + ["dataset.validation=true"])
    val, test = build_dataset(cfg, "val"), build_dataset(cfg, "test")
    assert len(val) == 4 and all(p.startswith("val/") for p in val.paths)
    assert len(test) == 6 and all(p.startswith("test/") for p in test.paths)
    # without validation the evaluation folder is val (as before)
    plain = build_dataset(load_config("imagefolder_resnet50", "phase_iii", base), "test")
    assert all(p.startswith("val/") for p in plain.paths)
    bad = load_config("imagefolder_resnet50", "phase_iii", base + ["dataset.validation=true", "dataset.test_dir=val"])
    with pytest.raises(DataError, match="the validation folder is the test folder"):
        build_dataset(bad, "val")


def test_csv_validation_list(tmp_path):
    items = [(f"img/{k}_{i}.png", k) for k in range(2) for i in range(6)]
    write_images(tmp_path, items, size=(8, 8))
    for name, rows in (("train.csv", items[0:4] + items[6:10]), ("val.csv", items[4:5] + items[10:11]),
                       ("test.csv", items[5:6] + items[11:12])):
        Path(tmp_path / name).write_text("path,label\n" + "".join(f"{p},{k}\n" for p, k in rows))
    cfg = load_config("imagefolder_resnet50", "phase_iii", [f"dataset.root={tmp_path}", "dataset.name=csv",
                                                            "dataset.validation=true", "dataset.num_workers=0"])
    val = build_dataset(cfg, "val")
    assert sorted(val.paths) == ["img/0_4.png", "img/1_4.png"]
    same = load_config("imagefolder_resnet50", "phase_iii", [f"dataset.root={tmp_path}", "dataset.name=csv",
                                                             "dataset.validation=true", "dataset.val_list=test.csv"])
    with pytest.raises(DataError, match="the validation list is the test list"):
        build_dataset(same, "val")
