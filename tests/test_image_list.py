"""Image-list data sets (OLTR lists, iNaturalist JSON) and the ImageNet-style transforms (torchvision v2)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsa_lt.data.image_list import (
    ImageListLT,
    inat_dataset,
    list_statistics,
    oltr_dataset,
    read_inat_json,
    read_oltr_list,
)
from fsa_lt.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_eval_geometry,
    imagenet_eval_transform,
    imagenet_train_transform,
    to_tensor,
    v2,
)
from fsa_lt.errors import DataError

try:
    from tests.image_files import make_inat_dict, write_image_tree, write_images, write_inat_json, write_oltr_list
except ImportError:  # tests/ itself on sys.path
    from image_files import make_inat_dict, write_image_tree, write_images, write_inat_json, write_oltr_list


def _oltr_dir() -> Path:
    shared = os.environ.get("FSA_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return base / "data" / "oltr"


OLTR = _oltr_dir()


def _real_list(name: str) -> Path:
    p = OLTR / name
    if not p.is_file():
        pytest.skip(f"real OLTR split file not available: {p} (set FSA_SHARED_DIR)")
    return p


# --------------------------------------------------------------------------- real split lists


@pytest.mark.parametrize(
    "name, lines, classes, per_class",
    [
        ("ImageNet_LT_test.txt", 50_000, 1000, 50),
        ("ImageNet_LT_val.txt", 20_000, 1000, 20),
        ("Places_LT_val.txt", 7_300, 365, 20),
        ("Places_LT_test.txt", 36_500, 365, 100),
    ],
)
def test_real_balanced_lists(name, lines, classes, per_class):
    paths, labels = read_oltr_list(_real_list(name))
    assert len(paths) == lines and labels.dtype == np.int64 and labels.shape == (lines,)
    stats = list_statistics(labels)
    assert stats["num_images"] == lines
    assert stats["num_classes"] == classes
    assert stats["max"] == stats["min"] == per_class
    # labels-only data set: all classes present, names from the folders
    ds = ImageListLT("/nonexistent-root", paths, labels, num_classes=classes, source=name,
                     check_files=False, require_all_classes=True)
    assert ds.num_classes == classes and len(ds.classes) == classes
    if name.startswith("ImageNet"):
        assert ds.classes[0] == "n01440764"
    else:
        assert ds.classes[0] == "airfield"


def test_real_places_train():
    path = _real_list("Places_LT_train.txt")
    paths, labels = read_oltr_list(path)
    assert paths[0] == "train/airfield/00004851.jpg" and labels[0] == 0
    stats = list_statistics(labels, many=100, few=20)
    assert stats == dict(num_images=62_500, num_classes=365, max=4980, min=5, many=131, medium=163, few=71)

    oltr_path = OLTR / "places_lt_oltr_paths" / "Places_LT_train.txt"
    if not oltr_path.is_file():
        pytest.skip(f"OLTR-path variant not available: {oltr_path}")
    paths2, labels2 = read_oltr_list(oltr_path)
    assert paths2[0] == "data_256/a/airfield/00004851.jpg"
    np.testing.assert_array_equal(labels, labels2)
    assert [os.path.basename(p) for p in paths] == [os.path.basename(p) for p in paths2]


def test_real_places_train_with_images(tmp_path):
    """First lines of the real Places-LT train list for 3 classes, backed by tiny JPEGs."""
    paths, labels = read_oltr_list(_real_list("Places_LT_train.txt"))
    items = []
    for c in range(3):
        idx = np.flatnonzero(labels == c)[:4]
        items += [(paths[i], int(labels[i])) for i in idx]
    root = tmp_path / "places365"
    write_images(root, items)
    lst = write_oltr_list(tmp_path / "Places_LT_train_small.txt", items)

    ds = oltr_dataset(root, lst, num_classes=3, transform=imagenet_eval_transform(), train=True)
    assert len(ds) == 12 and ds.num_classes == 3
    assert ds.classes == [p.split("/")[1] for p, y in items[::4]]
    assert ds.classes[0] == "airfield"
    np.testing.assert_array_equal(ds.targets, [0] * 4 + [1] * 4 + [2] * 4)
    x, y = ds[5]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1


def test_read_oltr_list_speed(tmp_path):
    """ImageNet-LT train is 115,846 lines; reading must take well under a second."""
    p = tmp_path / "big.txt"
    n = 115_846
    with open(p, "w") as f:
        for i in range(n):
            f.write(f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG {i % 1000}\n")
    t0 = time.perf_counter()
    paths, labels = read_oltr_list(p)
    elapsed = time.perf_counter() - t0
    assert len(paths) == n and labels[-1] == (n - 1) % 1000
    assert elapsed < 1.0, f"read_oltr_list took {elapsed:.2f} s for {n} lines"


# --------------------------------------------------------------------------- synthetic image trees


@pytest.fixture
def tree(tmp_path):
    counts = [6, 3, 2]
    items = write_image_tree(tmp_path / "root", counts)
    lst = write_oltr_list(tmp_path / "train.txt", items)
    return tmp_path / "root", lst, items


def test_image_tree_roundtrip(tree):
    root, lst, items = tree
    assert items[0] == ("train/class_000/0000.jpg", 0)
    assert (root / "train/class_002/0001.jpg").is_file()
    ds = oltr_dataset(root, lst, num_classes=3, train=True)
    assert isinstance(ds.targets, np.ndarray) and ds.targets.dtype == np.int64
    assert ds.classes == ["class_000", "class_001", "class_002"]
    assert ds.paths == [p for p, _ in items] and ds.root == os.fspath(root)
    x, y = ds[0]  # no transform: float CHW in [0, 1]
    assert x.shape == (3, 48, 40) and y == 0 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # class-dependent colours survive JPEG
    assert not torch.allclose(ds[0][0].mean((1, 2)), ds[6][0].mean((1, 2)), atol=0.05)
    # inferred class count
    paths, labels = read_oltr_list(lst)
    assert ImageListLT(root, paths, labels, source=str(lst)).num_classes == 3


def test_dataloader_workers(tree):
    root, lst, _ = tree
    torch.manual_seed(0)
    ds = oltr_dataset(root, lst, 3, imagenet_train_transform(size=32), train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    assert torch.cat(xs).shape == (11, 3, 32, 32)
    assert torch.cat(ys).tolist() == ds.targets.tolist()


def test_inat_json_roundtrip(tmp_path):
    items = write_image_tree(tmp_path / "inat", [3, 2, 1, 2], split="train_val2018")
    js = tmp_path / "train2018.json"
    write_inat_json(js, items, num_classes=4)
    paths, labels, names = read_inat_json(js)
    assert paths == [p for p, _ in items]
    assert labels.dtype == np.int64 and labels.tolist() == [y for _, y in items]
    assert names == ["species_000", "species_001", "species_002", "species_003"]
    ds = inat_dataset(tmp_path / "inat", js, num_classes=4, transform=imagenet_eval_transform(64, 56), train=True)
    assert ds.classes == names and ds.num_classes == 4
    x, y = ds[len(ds) - 1]
    assert x.shape == (3, 56, 56) and y == 3

    # non-contiguous category ids map to 0..K-1 by sorted id; images listed in any order
    data = make_inat_dict(items, 4)
    for cat, new_id in zip(data["categories"], [40, 10, 30, 20]):
        cat["id"] = new_id
    old_to_new = {0: 40, 1: 10, 2: 30, 3: 20}
    for ann in data["annotations"]:
        ann["category_id"] = old_to_new[ann["category_id"]]
    data["annotations"].reverse()
    js2 = tmp_path / "shuffled.json"
    js2.write_text(json.dumps(data))
    paths2, labels2, names2 = read_inat_json(js2)
    assert paths2 == paths
    sorted_index = {10: 0, 20: 1, 30: 2, 40: 3}
    assert labels2.tolist() == [sorted_index[old_to_new[y]] for _, y in items]
    assert names2 == ["species_001", "species_003", "species_002", "species_000"]


# --------------------------------------------------------------------------- malformed inputs


def test_missing_image(tree):
    root, lst, items = tree
    os.remove(root / items[4][0])
    with pytest.raises(DataError, match=rf"train\.txt:5: image not found: .*class_000/0004\.jpg"):
        oltr_dataset(root, lst, 3, train=True)
    # without the up-front check it fails on load, naming the file
    ds = oltr_dataset(root, lst, 3, train=True, check_files=False)
    with pytest.raises(DataError, match=r"train\.txt:5: image not found: .*0004\.jpg"):
        ds[4]


def test_corrupt_image(tree):
    root, lst, items = tree
    (root / items[1][0]).write_bytes(b"this is not a jpeg")
    ds = oltr_dataset(root, lst, 3)
    with pytest.raises(DataError, match=r"cannot read image .*class_000/0001\.jpg"):
        ds[1]


def test_label_out_of_range(tmp_path, tree):
    root, _, items = tree
    bad = list(items)
    bad[7] = (bad[7][0], 5)
    lst = write_oltr_list(tmp_path / "bad.txt", bad)
    with pytest.raises(DataError, match=r"bad\.txt:8: label 5 out of range for num_classes 3"):
        oltr_dataset(root, lst, 3)
    bad[7] = (bad[7][0], -1)
    lst = write_oltr_list(tmp_path / "bad.txt", bad)
    with pytest.raises(DataError, match=r"bad\.txt:8: label -1 out of range for num_classes 3"):
        oltr_dataset(root, lst, 3)


def test_class_without_training_image(tmp_path, tree):
    root, _, items = tree
    no_class_1 = [(p, y) for p, y in items if y != 1]
    lst = write_oltr_list(tmp_path / "gap.txt", no_class_1)
    with pytest.raises(DataError, match=r"gap\.txt: class 1 has no training image"):
        oltr_dataset(root, lst, 3, train=True)
    ds = oltr_dataset(root, lst, 3, train=False)  # fine for an evaluation split ...
    with pytest.raises(DataError, match=r"class 1 has no training image"):
        ds.check_training_classes()  # ... but not for training


def test_class_count_disagrees_with_config(tree):
    root, lst, _ = tree
    with pytest.raises(DataError, match=r"train\.txt has 3 classes, config says 4"):
        oltr_dataset(root, lst, 4, train=True)
    with pytest.raises(DataError, match=r"train\.txt:7: label 1 out of range for num_classes 1"):
        oltr_dataset(root, lst, 1)


@pytest.mark.parametrize(
    "text, lineno, shown",
    [
        ("a.jpg 0\nb.jpg\n", 2, "b.jpg"),
        ("a.jpg 0\nb.jpg 1\nc.jpg 1 extra\n", 3, "c.jpg 1 extra"),
        ("a.jpg zero\n", 1, "a.jpg zero"),
        ("a.jpg 1.5\n", 1, "a.jpg 1.5"),
        ("a.jpg 0\n\nb.jpg 1\n", 2, ""),
    ],
)
def test_malformed_line(tmp_path, text, lineno, shown):
    p = tmp_path / "list.txt"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        read_oltr_list(p)
    assert str(e.value) == f"{p}:{lineno}: expected 'relative/path label', got {shown!r}"


def test_list_tolerates_trailing_blank_lines_and_crlf(tmp_path):
    p = tmp_path / "list.txt"
    p.write_bytes(b"a/x.jpg 0\r\nb/y.jpg\t2\r\n\r\n  \n")
    paths, labels = read_oltr_list(p)
    assert paths == ["a/x.jpg", "b/y.jpg"] and labels.tolist() == [0, 2]


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match=r"list file not found: .*nope\.txt"):
        read_oltr_list(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"annotation file not found: .*nope\.json"):
        read_inat_json(tmp_path / "nope.json")


def test_inat_malformed(tmp_path):
    items = [("a/1.jpg", 0), ("a/2.jpg", 0), ("b/3.jpg", 1)]
    data = make_inat_dict(items, 2)
    p = tmp_path / "x.json"

    d = json.loads(json.dumps(data))
    del d["annotations"][1]
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"x\.json: image a/2\.jpg \(id 17\) has no annotation"):
        read_inat_json(p)

    d = json.loads(json.dumps(data))
    d["annotations"][0]["image_id"] = 999
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"unknown image id 999"):
        read_inat_json(p)

    d = json.loads(json.dumps(data))
    d["annotations"][2]["category_id"] = 7
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"unknown category id 7"):
        read_inat_json(p)

    d = json.loads(json.dumps(data))
    del d["categories"]
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"missing or invalid 'categories'"):
        read_inat_json(p)

    p.write_text("{not json")
    with pytest.raises(DataError, match=r"x\.json:1: invalid JSON"):
        read_inat_json(p)

    write_inat_json(p, items, 2)
    with pytest.raises(DataError, match=r"x\.json has 2 classes, config says 3"):
        inat_dataset(tmp_path, p, num_classes=3, check_files=False)


def test_list_statistics_thresholds():
    counts = [101, 100, 20, 19, 5]
    labels = np.repeat(np.arange(5), counts)
    s = list_statistics(labels)
    assert s == dict(num_images=sum(counts), num_classes=5, max=101, min=5, many=1, medium=2, few=2)


# --------------------------------------------------------------------------- transforms


def _gradient_image(w=300, h=200) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def test_transform_output_shapes():
    img = _gradient_image()
    torch.manual_seed(0)
    for t in (imagenet_train_transform(), imagenet_eval_transform()):
        x = t(img)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert type(x) is torch.Tensor  # a plain tensor, not a torchvision tv_tensors.Image
    assert imagenet_train_transform(size=112, jitter=0)(img).shape == (3, 112, 112)
    assert not any(isinstance(s, v2.ColorJitter) for s in imagenet_train_transform(jitter=0).transforms)
    # small and grey images too
    grey = Image.new("L", (20, 30), 77)
    x = imagenet_eval_transform()(grey)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], x[2] * IMAGENET_STD[2] + IMAGENET_MEAN[2])


def _reference_crop_and_flip(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """The random-resized-crop box (top, left, h, w) and the flip, drawn from torch's global RNG
    in the order the project's own implementation drew them before torchvision's took over:
    up to 10 tries of (area fraction, log aspect ratio), then top and left; else the
    centred crop with the ratio clamped; then one draw for the flip."""
    import math

    area = width * height
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*scale))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)))
            left = int(torch.randint(0, width - w + 1, (1,)))
            break
    else:
        in_ratio = width / height
        w, h = width, height
        if in_ratio < ratio[0]:
            h = int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            w = int(round(h * ratio[1]))
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1) < 0.5)
    return (top, left, h, w), flip


def test_seeded_crops_and_flips_are_those_of_before():
    """Without colour jitter the training transform draws exactly what the earlier Pillow
    implementation drew: for a seed, the same box and the same flip; the output is that box
    cropped, resized bilinearly and mirrored, then normalised."""
    img = _gradient_image(300, 200)
    t = imagenet_train_transform(size=48, jitter=0)
    for seed in range(60):
        torch.manual_seed(seed)
        (top, left, h, w), flip = _reference_crop_and_flip(300, 200)
        expect = img.crop((left, top, left + w, top + h)).resize((48, 48), Image.BILINEAR)
        if flip:
            expect = expect.transpose(Image.FLIP_LEFT_RIGHT)
        torch.manual_seed(seed)
        torch.testing.assert_close(t(img), to_tensor()(expect), rtol=0, atol=0)


def test_random_resized_crop_box_within_bounds():
    img = _gradient_image(300, 200)
    area = 300 * 200
    t = v2.RandomResizedCrop(size=(64, 48), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    torch.manual_seed(1)
    for _ in range(300):
        p = t.make_params([img])
        top, left, h, w = p["top"], p["left"], p["height"], p["width"]
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
        slack = (h + w + 1) / area  # rounding of w and h to whole pixels
        assert 0.08 - slack <= h * w / area <= 1.0 + 1e-9
        assert 3 / 4 - 1.0 / min(h, w) <= w / h <= 4 / 3 + 1.0 / min(h, w)
    assert t(img).size == (48, 64)  # PIL in, PIL out, (width, height)


def test_random_resized_crop_fallback_and_seed():
    # a 1000 x 10 strip never fits a crop within the ratio bounds -> centred fallback
    t = v2.RandomResizedCrop(size=8, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    p = t.make_params([Image.new("RGB", (1000, 10))])
    assert (p["height"], p["width"]) == (10, 13) and p["top"] == 0 and p["left"] == (1000 - 13) // 2
    # reproducible through torch's RNG, jitter included
    img = _gradient_image()
    tr = imagenet_train_transform()
    torch.manual_seed(123)
    a = tr(img)
    torch.manual_seed(123)
    b = tr(img)
    torch.manual_seed(124)
    c = tr(img)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_transform_deterministic():
    img = _gradient_image(300, 400)
    resize = imagenet_eval_geometry(256, 224).transforms[0]
    assert resize(img).size == (256, 341)  # shorter side to 256, the other truncated
    assert resize(_gradient_image(400, 300)).size == (341, 256)
    t = imagenet_eval_transform()
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(99)
    b = t(img)
    assert torch.equal(a, b)
    # the geometry is Pillow's bilinear resize of the shorter side, then the centre crop
    expect = img.resize((256, 341), Image.BILINEAR).crop((16, 58, 240, 282))
    assert np.array_equal(np.asarray(imagenet_eval_geometry()(img)), np.asarray(expect))
    torch.testing.assert_close(a, to_tensor()(expect), rtol=0, atol=0)
    c = v2.CenterCrop(4)(Image.fromarray(np.arange(10 * 8 * 3, dtype=np.uint8).reshape(8, 10, 3)))
    np.testing.assert_array_equal(np.asarray(c), np.arange(240, dtype=np.uint8).reshape(8, 10, 3)[2:6, 3:7])


def test_horizontal_flip():
    img = _gradient_image(30, 20)
    arr = np.asarray(img)
    assert np.array_equal(np.asarray(v2.RandomHorizontalFlip(p=1.0)(img)), arr[:, ::-1])
    assert np.array_equal(np.asarray(v2.RandomHorizontalFlip(p=0.0)(img)), arr)
    torch.manual_seed(0)
    flips = sum(np.array_equal(np.asarray(v2.RandomHorizontalFlip()(img)), arr[:, ::-1]) for _ in range(400))
    assert 140 < flips < 260


def test_normalisation():
    img = Image.new("RGB", (5, 4), (255, 0, 128))
    x = to_tensor()(img)
    assert x.shape == (3, 4, 5) and type(x) is torch.Tensor and x.dtype == torch.float32
    expect = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((4, 5), expect[c]), atol=1e-6)
    raw = to_tensor(mean=None, std=None)(img)
    assert raw.min() == 0.0 and raw.max() == 1.0
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="both mean and std"):
        to_tensor(mean=IMAGENET_MEAN, std=None)


def test_color_jitter():
    """Brightness, contrast and saturation each by a factor in [1 - j, 1 + j], no hue change."""
    img = _gradient_image(40, 30)
    jit = [s for s in imagenet_train_transform(jitter=0.4).transforms if isinstance(s, v2.ColorJitter)]
    assert len(jit) == 1
    j = jit[0]
    assert j.brightness == j.contrast == j.saturation == pytest.approx((0.6, 1.4)) and j.hue is None
    torch.manual_seed(0)
    out = j(img)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img))
    # a grey image has no saturation or hue to change: only brightness and contrast act on it
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    torch.manual_seed(1)
    g = np.asarray(j(grey))
    assert (g == g[0, 0, 0]).all()
