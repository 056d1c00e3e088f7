"""CIFAR-LT files, the LDAM-DRW split rule, CIFAR transforms and the digits demo set."""
import io
import os
import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from cifar_files import write_fake_cifar10, write_fake_cifar100  # noqa: E402

from fsa_lt.data import cifar as cifar_mod  # noqa: E402
from fsa_lt.data.cifar import CIFARLT, class_sizes, long_tailed_indices  # noqa: E402
from fsa_lt.data.digits import DigitsLT, digits_split  # noqa: E402
from fsa_lt.data.transforms import cifar_eval_transform, cifar_train_transform  # noqa: E402
from fsa_lt.errors import DataError  # noqa: E402

C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar"))
    write_fake_cifar10(root, n_per_class=50, n_test_per_class=10, seed=0)
    write_fake_cifar100(root, n_per_class=20, n_test_per_class=4, seed=1)
    return root


# --------------------------------------------------------------------------- split rule
@pytest.mark.parametrize("num_classes,ir,total", [
    (10, 100, 12406), (10, 50, 13996), (10, 10, 20431),
    (100, 100, 10847), (100, 50, 12608), (100, 10, 19573),
])
def test_class_sizes_totals(num_classes, ir, total):
    sizes = class_sizes(50000 / num_classes, num_classes, ir, "exp")
    assert len(sizes) == num_classes
    assert sum(sizes) == total
    assert sizes[0] == 50000 // num_classes and sizes[-1] == 50000 // num_classes // ir
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))


def test_class_sizes_cifar10_ir100_by_hand():
    # n_i = int(5000 * 0.01 ** (i / 9)): 5000, 5000*0.599484, ...
    assert class_sizes(5000.0, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_class_sizes_step_and_balanced():
    assert class_sizes(5000.0, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert class_sizes(500.0, 100, 10, "step") == [500] * 50 + [50] * 50
    assert class_sizes(5000.0, 10, 1) == [5000] * 10
    with pytest.raises(DataError):
        class_sizes(5000.0, 10, 100, "linear")
    with pytest.raises(DataError):
        class_sizes(5000.0, 10, 0.5)


def _ldam_drw_reference(targets, imb_factor, imb_type="exp", cls_num=10):
    """LDAM-DRW's IMBALANCECIFAR10, re-written in its original style (global numpy RNG)."""
    np.random.seed(0)
    img_max = len(targets) / cls_num
    img_num_per_cls = []
    if imb_type == "exp":
        for cls_idx in range(cls_num):
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
            img_num_per_cls.append(int(num))
    elif imb_type == "step":
        for cls_idx in range(cls_num // 2):
            img_num_per_cls.append(int(img_max))
        for cls_idx in range(cls_num // 2):
            img_num_per_cls.append(int(img_max * imb_factor))
    new_idx = []
    new_targets = []
    targets_np = np.array(targets, dtype=np.int64)
    classes = np.unique(targets_np)
    for the_class, the_img_num in zip(classes, img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selec_idx = idx[:the_img_num]
        new_idx.extend(list(selec_idx))
        new_targets.extend([the_class, ] * the_img_num)
    return np.array(new_idx), np.array(new_targets), img_num_per_cls


@pytest.mark.parametrize("imb_type,ir", [("exp", 100), ("exp", 10), ("step", 50)])
def test_indices_match_ldam_drw_reference(imb_type, ir):
    rng = np.random.RandomState(123)
    targets = rng.permutation(np.repeat(np.arange(10), 600))  # shuffled, 600 a class
    ref_idx, ref_targets, ref_sizes = _ldam_drw_reference(targets, 1.0 / ir, imb_type)
    got = long_tailed_indices(targets, 10, ir, imb_type, seed=0)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref_idx)
    np.testing.assert_array_equal(targets[got], ref_targets)
    assert np.bincount(targets[got], minlength=10).tolist() == ref_sizes == class_sizes(600, 10, ir, imb_type)
    assert len(np.unique(got)) == len(got)


def test_indices_depend_on_seed():
    targets = np.random.RandomState(5).permutation(np.repeat(np.arange(10), 300))
    a = long_tailed_indices(targets, 10, 100, seed=0)
    b = long_tailed_indices(targets, 10, 100, seed=1)
    assert np.bincount(targets[a]).tolist() == np.bincount(targets[b]).tolist()
    assert not np.array_equal(np.sort(a), np.sort(b))
    np.testing.assert_array_equal(a, long_tailed_indices(targets, 10, 100, seed=0))


# --------------------------------------------------------------------------- CIFARLT on fake files
def test_cifar10_lt_fake(fake_root):
    ds = CIFARLT(fake_root, "cifar10", train=True, imb_ratio=10, seed=0)
    sizes = class_sizes(50, 10, 10)
    assert np.bincount(ds.targets, minlength=10).tolist() == sizes
    assert len(ds) == sum(sizes)
    assert ds.data.dtype == np.uint8 and ds.data.shape == (sum(sizes), 32, 32, 3)
    assert ds.targets.dtype == np.int64
    assert ds.num_classes == 10 and ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert ds.mean == C10_MEAN and ds.std == C10_STD
    # indices point into the original training set, in LDAM-DRW order
    orig_x, orig_y, _ = cifar_mod.load_cifar_arrays("cifar10", fake_root, train=True)
    full = CIFARLT(fake_root, "cifar10", train=True, imb_ratio=1)
    assert len(full) == 500
    np.testing.assert_array_equal(np.sort(full.indices), np.arange(500))
    np.testing.assert_array_equal(ds.indices, long_tailed_indices(orig_y, 10, 10, seed=0))
    np.testing.assert_array_equal(ds.data, orig_x[ds.indices])
    np.testing.assert_array_equal(ds.targets, orig_y[ds.indices])
    # labels in the fake files are shuffled, so selected indices are not contiguous per class
    assert not np.array_equal(orig_y, np.sort(orig_y))
    x, y = ds[0]
    assert isinstance(y, int) and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255.0, ds.data[0], atol=1e-3)


def test_cifar_pixel_layout(fake_root):
    """Rows of 3072 are R, G, B planes: images come out HWC with the class colour."""
    path = os.path.join(fake_root, "cifar-10-batches-py", "data_batch_1")
    with open(path, "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    x, y, _ = cifar_mod.load_cifar_arrays("cifar10", fake_root, train=True)
    row = np.asarray(raw[b"data"][0])
    np.testing.assert_array_equal(x[0, :, :, 0].reshape(-1), row[:1024])
    np.testing.assert_array_equal(x[0, :, :, 2].reshape(-1), row[2048:])
    assert y[0] == raw[b"labels"][0]


def test_cifar_test_split_full_and_balanced(fake_root):
    te = CIFARLT(fake_root, "cifar10", train=False)
    assert len(te) == 100 and np.bincount(te.targets).tolist() == [10] * 10
    np.testing.assert_array_equal(te.indices, np.arange(100))
    te100 = CIFARLT(fake_root, "cifar100", train=False)
    assert len(te100) == 400 and np.bincount(te100.targets, minlength=100).tolist() == [4] * 100


def test_cifar100_lt_fake(fake_root):
    ds = CIFARLT(fake_root, "cifar100", train=True, imb_ratio=10)
    assert ds.num_classes == 100 and len(ds.classes) == 100 and ds.classes[3] == "class_03"
    assert np.bincount(ds.targets, minlength=100).tolist() == class_sizes(20, 100, 10)
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    assert ds.data.shape[1:] == (32, 32, 3)


def test_latin1_keys_are_read(tmp_path, fake_root):
    """A copy written with str keys (what a latin1 round trip gives) loads the same."""
    root = tmp_path / "r"
    src = os.path.join(fake_root, "cifar-10-batches-py")
    dst = root / "cifar-10-batches-py"
    dst.mkdir(parents=True)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        with open(dst / f, "wb") as fh:
            pickle.dump(d, fh, protocol=4)
    a = CIFARLT(str(root), "cifar10", imb_ratio=10)
    b = CIFARLT(fake_root, "cifar10", imb_ratio=10)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.classes == b.classes


def test_missing_folder_message(tmp_path):
    with pytest.raises(DataError) as ei:
        CIFARLT(str(tmp_path), "cifar10", download=False)
    msg = str(ei.value)
    assert "\n" not in msg and "CIFAR-10 not found" in msg
    assert os.path.join(str(tmp_path), "cifar-10-batches-py", "data_batch_1") in msg
    assert "FSA_DATA_ROOT" in msg
    with pytest.raises(DataError) as ei:
        CIFARLT(str(tmp_path), "cifar100")
    assert os.path.join(str(tmp_path), "cifar-100-python", "train") in str(ei.value)


def test_one_missing_file_is_named(tmp_path):
    root = write_fake_cifar10(str(tmp_path), n_per_class=5, n_test_per_class=2)
    os.remove(os.path.join(root, "cifar-10-batches-py", "test_batch"))
    with pytest.raises(DataError, match="test_batch"):
        CIFARLT(root, "cifar10", train=False)


def test_corrupt_pickle_names_file(tmp_path):
    root = write_fake_cifar10(str(tmp_path), n_per_class=5, n_test_per_class=2)
    bad = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(bad, "rb") as fh:
        blob = fh.read()
    with open(bad, "wb") as fh:
        fh.write(blob[: len(blob) // 2])  # truncated
    with pytest.raises(DataError) as ei:
        CIFARLT(root, "cifar10")
    assert bad in str(ei.value) and "\n" not in str(ei.value)


def test_wrong_shape_names_file(tmp_path):
    root = write_fake_cifar10(str(tmp_path), n_per_class=5, n_test_per_class=2)
    bad = os.path.join(root, "cifar-10-batches-py", "test_batch")
    with open(bad, "wb") as fh:
        pickle.dump({b"data": np.zeros((20, 1024), np.uint8), b"labels": [0] * 20}, fh, protocol=2)
    with pytest.raises(DataError, match="test_batch.*3072"):
        CIFARLT(root, "cifar10", train=False)


def test_unknown_name():
    with pytest.raises(DataError):
        CIFARLT("/nonexistent", "cifar11")


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as ei:
        CIFARLT(str(tmp_path), "cifar10", download=True)
    msg = str(ei.value)
    assert "cifar-10-batches-py" in msg and "download" in msg and "\n" not in msg
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers


def _fake_archive(tmp_path):
    src = write_fake_cifar10(str(tmp_path / "src"), n_per_class=5, n_test_per_class=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(os.path.join(src, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    import hashlib

    blob = _fake_archive(tmp_path)
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(blob))
    dest = tmp_path / "dest"
    # the official md5 does not match the fake archive -> refused
    with pytest.raises(DataError, match="md5"):
        CIFARLT(str(dest), "cifar10", download=True)
    assert not (dest / "cifar-10-batches-py").exists()
    spec = dict(cifar_mod.CIFAR_SPECS["cifar10"], md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(cifar_mod.CIFAR_SPECS, "cifar10", spec)
    ds = CIFARLT(str(dest), "cifar10", imb_ratio=1, download=True)
    assert len(ds) == 50 and (dest / "cifar-10-batches-py" / "batches.meta").is_file()
    assert not any(p.name.startswith(".") for p in dest.iterdir())


def test_real_cifar10_lt_if_available():
    root = os.environ.get("FSA_DATA_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "cifar-10-batches-py", "data_batch_1")):
        pytest.skip("FSA_DATA_ROOT does not hold a real cifar-10-batches-py (set it to check real CIFAR-10-LT)")
    ds = CIFARLT(root, "cifar10", train=True, imb_ratio=100, seed=0)
    assert len(ds) == 12406
    assert np.bincount(ds.targets, minlength=10).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    te = CIFARLT(root, "cifar10", train=False)
    assert len(te) == 10000 and np.bincount(te.targets).tolist() == [1000] * 10


# --------------------------------------------------------------------------- transforms
def _pattern_image(seed=0):
    return np.random.RandomState(seed).randint(1, 256, size=(32, 32, 3)).astype(np.uint8)


def test_eval_transform_shape_and_values():
    img = _pattern_image()
    x = cifar_eval_transform(C10_MEAN, C10_STD)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    ref = (img.astype(np.float64) / 255.0 - np.array(C10_MEAN)) / np.array(C10_STD)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_normalisation_statistics():
    """Images drawn with the given per-channel mean/std come out ~ zero-mean, unit-std."""
    rng = np.random.RandomState(0)
    mean, std = (0.3, 0.5, 0.7), (0.1, 0.15, 0.05)
    imgs = np.clip(rng.normal(np.array(mean) * 255, np.array(std) * 255, size=(64, 32, 32, 3)), 0, 255)
    imgs = np.rint(imgs).astype(np.uint8)
    t = cifar_eval_transform(mean, std)
    x = torch.stack([t(im) for im in imgs])
    m = x.mean(dim=(0, 2, 3))
    s = x.std(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=0.02), m
    assert torch.allclose(s, torch.ones(3), atol=0.03), s


def test_train_transform_is_shifted_window_of_padded_image():
    img = _pattern_image(1)  # all pixels >= 1, so padding zeros are recognisable
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    t = cifar_train_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), generator=torch.Generator().manual_seed(0))
    seen_offsets, seen_flip = set(), set()
    for _ in range(200):
        x = t(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        out = np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        match = None
        for top in range(9):
            for left in range(9):
                win = padded[top:top + 32, left:left + 32]
                if np.array_equal(out, win):
                    match = (top, left, False)
                elif np.array_equal(out, win[:, ::-1]):
                    match = (top, left, True)
                if match:
                    break
            if match:
                break
        assert match is not None
        seen_offsets.add(match[:2])
        seen_flip.add(match[2])
    assert seen_flip == {False, True}
    assert len(seen_offsets) > 30  # offsets spread over the 9 x 9 grid


def test_train_transform_flip_and_apply():
    img = _pattern_image(2)
    t = cifar_train_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    a = t.apply(img, 4, 4, False)
    b = t.apply(img, 4, 4, True)
    torch.testing.assert_close(b, a.flip(-1))
    torch.testing.assert_close(a, cifar_eval_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(img))


def test_train_transform_reproducible_with_torch_seed():
    img = _pattern_image(3)
    t = cifar_train_transform(C10_MEAN, C10_STD)
    torch.manual_seed(7)
    a = torch.stack([t(img) for _ in range(10)])
    torch.manual_seed(7)
    b = torch.stack([t(img) for _ in range(10)])
    torch.testing.assert_close(a, b)


def test_dataset_with_transform(fake_root):
    ds = CIFARLT(fake_root, "cifar10", imb_ratio=10, transform=cifar_eval_transform(C10_MEAN, C10_STD))
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == int(ds.targets[3])


# --------------------------------------------------------------------------- digits
def test_digits_lt():
    tr = DigitsLT(train=True, imb_ratio=10, seed=0)
    te = DigitsLT(train=False, seed=0)
    assert tr.num_classes == 10 and tr.classes == [str(i) for i in range(10)]
    assert tr.data.dtype == np.uint8 and tr.data.shape[1:] == (32, 32, 3)
    assert tr.targets.dtype == np.int64 and te.targets.dtype == np.int64
    counts = np.bincount(tr.targets, minlength=10)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    # img_max = smallest per-class count of the balanced training split
    full = DigitsLT(train=True, imb_ratio=1, seed=0)
    n_max = int(np.bincount(full.targets).min())
    assert counts.tolist() == class_sizes(n_max, 10, 10)
    assert counts[0] == n_max and counts[-1] == int(n_max / 10)
    # test split: stratified, ~40 %, disjoint from training
    assert abs(len(te) / 1797 - 0.4) < 0.01
    assert np.bincount(te.targets).min() >= 65
    train_pos, test_pos = digits_split(seed=0, test_fraction=0.4)
    assert len(train_pos) + len(test_pos) == 1797 and not set(train_pos) & set(test_pos)
    np.testing.assert_array_equal(te.source_indices, test_pos)
    assert set(tr.source_indices) <= set(train_pos) and set(full.source_indices) <= set(train_pos)
    np.testing.assert_array_equal(tr.source_indices, train_pos[tr.indices])
    assert len(full) == 10 * n_max  # IR 1: every class cut to img_max
    # grey -> 3 equal channels, same mean/std on both splits
    assert np.array_equal(tr.data[..., 0], tr.data[..., 1])
    assert tr.mean == te.mean and tr.std == te.std and len(tr.mean) == 3
    x, y = tr[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    # deterministic; different seed -> different split
    again = DigitsLT(train=True, imb_ratio=10, seed=0)
    np.testing.assert_array_equal(again.source_indices, tr.source_indices)
    other = DigitsLT(train=True, imb_ratio=10, seed=1)
    assert not np.array_equal(other.source_indices, tr.source_indices)
    step = DigitsLT(train=True, imb_ratio=10, imb_type="step")
    assert np.bincount(step.targets).tolist() == class_sizes(n_max, 10, 10, "step")


# --------------------------------------------------------------------------- the subset is not the training seed
def test_training_seed_keeps_the_subset_and_subset_seed_changes_it(fake_root):
    """`seed` trains differently on the same images; `dataset.subset_seed` (default 0, LDAM-DRW's)
    picks the images: its default is the subset the LDAM-DRW rule gives with seed 0."""
    from fsa_lt.config import load_config
    from fsa_lt.data import build_dataset
    from fsa_lt.data.cifar import load_cifar_arrays

    ov = [f"dataset.root={fake_root}", "dataset.imb_ratio=10", "dataset.download=false"]
    base = build_dataset(load_config("cifar10-LT_resnet32", "phase_i", ov), "train")
    _, labels, _ = load_cifar_arrays("cifar10", fake_root, True)
    ref_idx, _, _ = _ldam_drw_reference(labels, 0.1)
    np.testing.assert_array_equal(base.indices, ref_idx)  # today's default subset, index for index
    other_seed = build_dataset(load_config("cifar10-LT_resnet32", "phase_i", ov + ["seed=1"]), "train")
    np.testing.assert_array_equal(other_seed.indices, base.indices)
    np.testing.assert_array_equal(other_seed.data, base.data)
    other_subset = build_dataset(load_config("cifar10-LT_resnet32", "phase_i", ov + ["dataset.subset_seed=1"]), "train")
    assert np.bincount(other_subset.targets).tolist() == np.bincount(base.targets).tolist()
    assert not np.array_equal(np.sort(other_subset.indices), np.sort(base.indices))
    np.testing.assert_array_equal(other_subset.indices, long_tailed_indices(labels, 10, 10, "exp", seed=1))
