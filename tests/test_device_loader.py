"""DeviceLoader: coverage of every sample, label/image pairing, crop+flip against a
per-sample reference, eval mode = eval transform, reproducibility by (seed, epoch)."""
import numpy as np
import pytest
import torch

from fsa_lt.data.device_loader import DeviceLoader
from fsa_lt.data.transforms import cifar_eval_transform
from fsa_lt.errors import DataError

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def index_images(n, seed=0):
    """Image i: R = i % 256, G = i // 256 in the centre 16 x 16 (and random >= 1 elsewhere),
    B random >= 1; no zero pixels, so padding is recognisable."""
    rng = np.random.RandomState(seed)
    imgs = rng.randint(1, 256, size=(n, 32, 32, 3)).astype(np.uint8)
    i = np.arange(n)
    imgs[:, 8:24, 8:24, 0] = (i % 256)[:, None, None]
    imgs[:, 8:24, 8:24, 1] = (i // 256)[:, None, None]
    return imgs


def decode(x):
    """Index of each image of a batch from its centre pixel (mean 0, std 1 loaders)."""
    px = torch.round(x[:, :, 16, 16] * 255).to(torch.int64)
    return px[:, 0] + 256 * px[:, 1]


def collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def reference_crop_flip(img, top, left, flip, padding=4):
    padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)))
    out = padded[top:top + 32, left:left + 32]
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("train", [True, False])
def test_every_sample_once_and_labels_match(train):
    n = 300
    imgs = index_images(n)
    targets = np.random.RandomState(1).randint(0, 10, n)
    dl = DeviceLoader(imgs, targets, 64, "cpu", (0, 0, 0), (1, 1, 1), train=train, seed=3)
    assert len(dl) == 5 and dl.num_samples == n
    batches = list(dl)
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]
    x, y = collect(batches)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (n, 3, 32, 32)
    ids = decode(x)
    assert sorted(ids.tolist()) == list(range(n))
    np.testing.assert_array_equal(y.numpy(), targets[ids.numpy()])
    if train:
        assert ids.tolist() != list(range(n))  # shuffled
    else:
        assert ids.tolist() == list(range(n))  # eval: shuffle off by default


def test_drop_last_and_shuffle_override():
    imgs = index_images(100)
    dl = DeviceLoader(imgs, np.zeros(100, np.int64), 32, "cpu", (0, 0, 0), (1, 1, 1), train=True, drop_last=True)
    assert len(dl) == 3 and sum(len(y) for _, y in dl) == 96
    dl = DeviceLoader(imgs, np.zeros(100, np.int64), 32, "cpu", (0, 0, 0), (1, 1, 1), train=False, shuffle=True)
    ids = decode(collect(dl)[0])
    assert ids.tolist() != list(range(100)) and sorted(ids.tolist()) == list(range(100))


def test_crop_and_flip_match_per_sample_reference():
    n = 200
    imgs = index_images(n, seed=4)
    dl = DeviceLoader(imgs, np.arange(n) % 10, 48, "cpu", (0, 0, 0), (1, 1, 1), train=True, seed=11)
    dl.set_epoch(5)
    plan = dl.epoch_plan(5)
    x, y = collect(dl)
    got = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    order = plan["order"].numpy()
    flips = plan["flip"].numpy()
    assert 0 < flips.sum() < n  # both flipped and unflipped samples
    offsets = set()
    for k in range(n):
        i, top, left = order[k], int(plan["top"][k]), int(plan["left"][k])
        assert 0 <= top <= 8 and 0 <= left <= 8
        offsets.add((top, left))
        np.testing.assert_array_equal(got[k], reference_crop_flip(imgs[i], top, left, bool(flips[k])))
    assert len(offsets) > 30


def test_normalisation_and_channels_last():
    imgs = index_images(40)
    dl = DeviceLoader(imgs, np.zeros(40, np.int64), 16, "cpu", MEAN, STD, train=True, seed=0)
    dl.set_epoch(0)
    plan = dl.epoch_plan(0)
    x, _ = next(iter(dl))
    assert x.is_contiguous(memory_format=torch.channels_last)
    k = 0
    ref = reference_crop_flip(imgs[int(plan["order"][k])], int(plan["top"][k]), int(plan["left"][k]), bool(plan["flip"][k]))
    ref = (ref.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[k].permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)
    dl2 = DeviceLoader(imgs, np.zeros(40, np.int64), 16, "cpu", MEAN, STD, train=True, channels_last=False)
    assert next(iter(dl2))[0].is_contiguous()


def test_eval_is_deterministic_unaugmented_and_equals_eval_transform():
    n = 70
    imgs = index_images(n, seed=2)
    targets = np.arange(n) % 7
    dl = DeviceLoader(imgs, targets, 32, "cpu", MEAN, STD, train=False)
    a, ya = collect(dl)
    b, yb = collect(dl)  # the next epoch: still identical
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    t = cifar_eval_transform(MEAN, STD)
    ref = torch.stack([t(im) for im in imgs])
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ya.numpy(), targets)


def test_same_seed_and_epoch_identical_other_epochs_differ():
    imgs = index_images(128)
    targets = np.arange(128) % 10

    def epoch(seed, e):
        dl = DeviceLoader(imgs, targets, 32, "cpu", MEAN, STD, train=True, seed=seed)
        dl.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in dl]

    a, b = epoch(0, 3), epoch(0, 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = epoch(0, 4)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    d = epoch(1, 3)
    assert not all(torch.equal(ya, yd) for (_, ya), (_, yd) in zip(a, d))


def test_epoch_advances_and_resume():
    imgs = index_images(64)
    targets = np.zeros(64, np.int64)
    dl = DeviceLoader(imgs, targets, 16, "cpu", (0, 0, 0), (1, 1, 1), train=True, seed=9)
    e0 = decode(collect(dl)[0])
    e1 = decode(collect(dl)[0])  # no set_epoch: the loader moved on to epoch 1
    assert not torch.equal(e0, e1)
    fresh = DeviceLoader(imgs, targets, 16, "cpu", (0, 0, 0), (1, 1, 1), train=True, seed=9)
    fresh.set_epoch(1)  # resume at epoch 1
    assert torch.equal(decode(collect(fresh)[0]), e1)


def test_from_dataset_and_bad_input():
    class Mem:
        data = index_images(10)
        targets = np.arange(10, dtype=np.int64)
        mean, std = MEAN, STD

    dl = DeviceLoader.from_dataset(Mem(), 4, "cpu", train=False)
    assert len(dl) == 3 and dl.data.shape == (10, 32, 32, 3)
    with pytest.raises(DataError):
        DeviceLoader(np.zeros((4, 32, 32, 3), np.float32), np.zeros(4), 2, "cpu", MEAN, STD)
    with pytest.raises(DataError):
        DeviceLoader(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(5), 2, "cpu", MEAN, STD)
    with pytest.raises(DataError):
        DeviceLoader.from_dataset(object(), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    imgs = index_images(100)
    targets = np.arange(100) % 10
    cpu = DeviceLoader(imgs, targets, 32, "cpu", MEAN, STD, train=True, seed=2)
    gpu = DeviceLoader(imgs, targets, 32, "cuda", MEAN, STD, train=True, seed=2)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)
