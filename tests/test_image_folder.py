"""Your own data: image folders, CSV lists, `fsa-lt data`, and all three phases on an image folder.

The tree written here (PNG, 24 x 24) has eight classes whose sorted names do not follow their
sizes, so every id, count and split below is worked out by hand from the table:

    class   train  val     sorted id
    Zebu     25     5      0   (upper case sorts first)
    ant      60     5      1
    bee      15     5      2
    cod       6     5      3
    eel       4     -      4   (no validation folder: a warning)
    moth     40     5      5
    wolf    120     5      6   (20 of them in a sub-folder)
    yak      10     5      7
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsa_lt import cli
from fsa_lt.data.image_folder import (
    ImageSetLT,
    csv_dataset,
    eval_split_dir,
    image_folder_dataset,
    read_csv_list,
)
from fsa_lt.data.image_transforms import imagenet_eval_transform
from fsa_lt.errors import DataError
from image_files import write_images

CONFIG = "imagefolder_resnet50"
TRAIN = {"wolf": 120, "ant": 60, "moth": 40, "Zebu": 25, "bee": 15, "yak": 10, "cod": 6, "eel": 4}
VAL = {name: 5 for name in TRAIN if name != "eel"}
CLASSES = ["Zebu", "ant", "bee", "cod", "eel", "moth", "wolf", "yak"]  # Python's sorted order, by hand
COUNTS = [25, 60, 15, 6, 4, 40, 120, 10]  # by id
VAL_COUNTS = [5, 5, 5, 5, 0, 5, 5, 5]
# head at h_r 0.9 of 280 images (252): wolf 120, ant 60, moth 40, Zebu 25, bee 15 -> 260 >= 252
HEAD, TAIL = [0, 1, 2, 5, 6], [3, 4, 7]


def _items(split: str, counts: dict) -> list[tuple[str, int]]:
    out = []
    for name, n in counts.items():
        label = CLASSES.index(name)
        ext = "PNG" if name == "ant" else "png"  # extensions are matched case-insensitively
        for i in range(n):
            sub = "sub/" if name == "wolf" and i >= 100 else ""
            out.append((f"{split}/{name}/{sub}{i:04d}.{ext}", label))
    return out


def write_tree(root: Path) -> dict:
    train, val = _items("train", TRAIN), _items("val", VAL)
    write_images(root, train, size=(24, 24), seed=0)
    write_images(root, val, size=(24, 24), seed=1)
    # ignored: hidden files and folders, Thumbs.db
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "moth" / ".cache").mkdir()
    (root / "train" / "moth" / ".cache" / "notes.txt").write_text("x")
    (root / "val" / "yak" / "Thumbs.db").write_bytes(b"\0")
    return {"train": train, "val": val}


def expected_order(items: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """By class id, then by path (within 'wolf' the sub-folder's files follow the top-level ones)."""
    return sorted(items, key=lambda t: (t[1], t[0].count("/"), t[0]))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "pets"
    items = write_tree(root)
    return root, items


def write_csv(path: Path, rows, header=("path", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def fresh_warnings():
    """Warnings are printed once per process: forget the ones earlier tests printed."""
    from fsa_lt.data import image_folder

    image_folder._warned.clear()


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------ the folder reader
def test_folder_reader_ids_order_and_images(tree):
    root, items = tree
    ds = image_folder_dataset(root, "train", transform=imagenet_eval_transform(resize=37, size=32))
    assert isinstance(ds, ImageSetLT) and ds.classes == CLASSES and ds.num_classes == 8
    assert np.bincount(ds.targets, minlength=8).tolist() == COUNTS
    want = expected_order(items["train"])
    assert ds.paths == [p for p, _ in want] and ds.targets.tolist() == [y for _, y in want]
    assert ds.paths[0] == "train/Zebu/0000.png" and "train/wolf/sub/0100.png" in ds.paths
    for p, y in zip(ds.paths, ds.targets):  # the label is the class folder's sorted position
        assert CLASSES[y] == p.split("/")[1]
    x, y = ds[len(ds) - 1]
    assert tuple(x.shape) == (3, 32, 32) and y == 7

    val = image_folder_dataset(root, "test")
    assert val.num_classes == 8 and val.classes == CLASSES  # the training split's classes
    assert np.bincount(val.targets, minlength=8).tolist() == VAL_COUNTS
    assert len(val.warnings) == 1 and "'eel'" in val.warnings[0] and "null" in val.warnings[0]


def test_eval_split_choice(tmp_path):
    write_images(tmp_path, [("train/a/1.png", 0), ("train/b/1.png", 1), ("test/a/1.png", 0), ("test/b/1.png", 1)])
    assert eval_split_dir(tmp_path) == "test"
    write_images(tmp_path, [("val/a/1.png", 0)])
    assert eval_split_dir(tmp_path) == "val"  # val first, as torchvision's convention has it
    assert eval_split_dir(tmp_path, "test") == "test"
    assert len(image_folder_dataset(tmp_path, "test", test_dir="test")) == 2
    shutil.rmtree(tmp_path / "val")
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DataError, match="no evaluation split"):
        image_folder_dataset(tmp_path, "test")
    with pytest.raises(DataError, match="evaluation split is the training split"):
        image_folder_dataset(tmp_path, "test", test_dir="train")


# ------------------------------------------------------------------------------ CSV = folders
def test_csv_and_folder_readers_give_the_same_data_set(tree, tmp_path):
    root, items = tree
    for csv_split in ("train", "val"):
        rows = expected_order(items[csv_split])
        write_csv(tmp_path / f"{csv_split}_label.csv", rows)
        write_csv(tmp_path / f"{csv_split}_name.csv", [(p, p.split("/")[1]) for p, _ in rows],
                            header=("path", "class_name"))
    for kind in ("label", "name"):
        for split, csv_split in (("train", "train"), ("test", "val")):
            folder = image_folder_dataset(root, split)
            c = csv_dataset(root, tmp_path / f"train_{kind}.csv", tmp_path / f"val_{kind}.csv", split=split)
            assert c.paths == folder.paths, (kind, split)
            assert c.targets.tolist() == folder.targets.tolist(), (kind, split)
            assert c.classes == folder.classes == CLASSES, (kind, split)
            assert c.num_classes == folder.num_classes == 8
    # rows in any order: the same (path, label) pairs and classes
    rows = [(p, p.split("/")[1]) for p, _ in items["train"]]
    random.Random(0).shuffle(rows)
    shuffled = csv_dataset(root, write_csv(tmp_path / "shuffled.csv", rows, header=("path", "class_name")))
    assert shuffled.classes == CLASSES
    assert sorted(zip(shuffled.paths, shuffled.targets.tolist())) == sorted(items["train"])


def test_csv_details(tmp_path):
    write_images(tmp_path, [("img/a 1.png", 0), ("img/b,2.png", 1), ("img/c.png", 2)])
    p = tmp_path / "l.csv"
    # BOM, quoted comma, extra column, CRLF, trailing blank lines
    p.write_bytes('\ufeffpath,note,label\r\n"img/a 1.png",x,0\r\n"img/b,2.png",y,1\r\nimg/c.png,,2\r\n\r\n,\r\n'
                  .encode("utf-8"))
    lst = read_csv_list(p)
    assert lst.paths == ["img/a 1.png", "img/b,2.png", "img/c.png"] and lst.labels.tolist() == [0, 1, 2]
    assert lst.lines == [2, 3, 4]
    ds = csv_dataset(tmp_path, p)
    assert ds.classes == ["0", "1", "2"]  # one folder for all classes: names are the ids
    assert ds.where(1) == f"{p}:3"


@pytest.mark.parametrize("text, message", [
    ("file,label\na.png,0\n", r"l\.csv:1: expected a header with 'path' and one of 'label' or 'class_name'"),
    ("path,label,class_name\na.png,0,x\n", r"l\.csv:1: expected a header"),
    ("path,label\na.png,0\nb.png\n", r"l\.csv:3: expected 2 fields \(path,label\), got 1"),
    ("path,label\na.png,zero\n", r"l\.csv:2: label 'zero' is not an integer class id"),
    ("path,label\na.png,-1\n", r"l\.csv:2: label -1 is negative"),
    ("path,label\na.png,0\n\nb.png,1\n", r"l\.csv:3: empty row"),
    ("path,label\n,0\n", r"l\.csv:2: empty path"),
    ("path,label\na.png,0\nb.png,1\na.png,1\n", r"l\.csv:4: a\.png is also listed on line 2 with another class"),
    ("path,label\n", r"l\.csv: no images listed"),
    ("", r"l\.csv: empty list"),
])
def test_csv_malformed(tmp_path, text, message):
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        read_csv_list(p)


def test_csv_class_rules(tmp_path):
    write_images(tmp_path, [("a/1.png", 0), ("b/1.png", 1), ("c/1.png", 2)])
    train = write_csv(tmp_path / "t.csv", [("a/1.png", 0), ("c/1.png", 2)])
    with pytest.raises(DataError, match=r"t\.csv:3: label 2 is beyond class id 1, which no training row has"):
        csv_dataset(tmp_path, train)
    # a typo (99 for 2) names its own line, not the 97 empty classes it makes
    train = write_csv(tmp_path / "t.csv", [("a/1.png", 0), ("b/1.png", 1), ("c/1.png", 99)])
    with pytest.raises(DataError, match=r"t\.csv:4: label 99 is beyond class ids 2\.\.98, which no training row has"):
        csv_dataset(tmp_path, train)
    train = write_csv(tmp_path / "t.csv", [("a/1.png", 0), ("b/1.png", 1)])
    test = write_csv(tmp_path / "v.csv", [("a/1.png", 0), ("c/1.png", 2)])
    with pytest.raises(DataError, match=r"v\.csv:3: label 2 is not a class of the training list"):
        csv_dataset(tmp_path, train, test, split="test")
    with pytest.raises(DataError, match=r"t\.csv has 2 classes, config says 3"):
        csv_dataset(tmp_path, train, num_classes=3)
    names = write_csv(tmp_path / "n.csv", [("a/1.png", "a")], header=("path", "class_name"))
    with pytest.raises(DataError, match=r"n\.csv: has a 'class_name' column but the training list .*t\.csv has 'label'"):
        csv_dataset(tmp_path, train, names, split="test")


# ------------------------------------------------------------------------------ fsa-lt data
def test_data_command_profile(tree, tmp_path, capsys, fresh_warnings):
    root, _ = tree
    rc, out, err = _cli(capsys, "data", "--config", CONFIG, "--workdir", tmp_path, f"dataset.root={root}")
    assert rc == 0, err
    folder = tmp_path / "log" / "data" / CONFIG
    prof = json.loads((folder / "profile.json").read_text())
    assert prof["splits"]["train"]["images"] == 280 and prof["splits"]["train"]["classes"] == 8
    assert prof["splits"]["test"]["images"] == 35 and prof["splits"]["test"]["classes"] == 7
    assert prof["splits"]["test"]["missing_classes"] == ["eel"]
    assert prof["classes"] == CLASSES and prof["train_counts"] == COUNTS and prof["test_counts"] == VAL_COUNTS
    assert prof["largest"] == {"id": 6, "name": "wolf", "images": 120}
    assert prof["smallest"] == {"id": 4, "name": "eel", "images": 4}
    assert prof["imbalance_ratio"] == 30.0
    g = prof["shot_groups"]  # many > 100: wolf; 20..100: ant, moth, Zebu; < 20: bee, yak, cod, eel
    assert [g[k]["classes"] for k in ("many", "medium", "few")] == [1, 3, 4]
    assert [g[k]["images"] for k in ("many", "medium", "few")] == [120, 125, 35]
    ht = prof["head_tail"]
    assert ht["h_r"] == 0.9 and ht["head_ids"] == HEAD and ht["tail_ids"] == TAIL
    assert (ht["head"]["images"], ht["tail"]["images"]) == (260, 20)
    d = prof["duplicates"]
    assert d["listed_twice_train"]["entries"] == 0 and d["in_both_splits"]["files"] == 0
    assert d["same_content"] is None and prof["unreadable"] is None and prof["verified"] is False
    assert len(prof["warnings"]) == 1 and "'eel'" in prof["warnings"][0]
    # printed: the same figures
    assert "train: 280 images, 8 classes" in out and "test:  35 images, 7 of 8 classes" in out
    assert "no test images for 'eel'" in out
    assert "largest class 'wolf' (id 6): 120 images; smallest 'eel' (id 4): 4; imbalance ratio 30" in out
    assert "many-shot (>100): 1 class, medium (20-100): 3, few-shot (<20): 4" in out
    assert "5 head classes (260 images, 92.9%), 3 tail classes (20 images)" in out
    assert "fsa-lt: warning:" in err and "'eel'" in err
    with Image.open(folder / "class_sizes.png") as im:
        assert im.size == (1000, 520)


def test_class_size_plot(tree):
    from fsa_lt.config import load_config
    from fsa_lt.data import build_dataset
    from fsa_lt.data.profile import plot_class_sizes, profile_datasets

    root, _ = tree
    cfg = load_config(CONFIG, "phase_ii", [f"dataset.root={root}", "extract.h_r=0.8"])
    prof = profile_datasets(cfg, build_dataset(cfg, "train", augment=False), build_dataset(cfg, "test", augment=False))
    # h_r 0.8 of 280 = 224: 120 + 60 + 40 = 220 < 224 <= 245: 4 head classes
    assert prof["head_tail"]["head"]["classes"] == 4
    fig = plot_class_sizes(prof)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    vlines = [ln.get_xdata() for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert [float(v[0]) for v in vlines] == [4.0]  # the head / tail boundary after the 4th largest class
    assert [t.get_text() for t in ax.get_xticklabels()] == ["wolf", "ant", "moth", "Zebu", "bee", "yak", "cod", "eel"]
    fills = [p for p in ax.patches]  # head and tail areas, each over its classes in size order
    assert len(fills) == 2


def test_data_verify_unreadable_and_duplicates(tmp_path, capsys):
    root = tmp_path / "d"
    write_images(root, [(f"train/a/{i}.png", 0) for i in range(4)] + [(f"train/b/{i}.png", 1) for i in range(2)]
                 + [("val/a/0.png", 0), ("val/b/0.png", 1)], size=(12, 12))
    shutil.copy(root / "train/a/0.png", root / "train/b/copy.png")  # same content, another class
    shutil.copy(root / "train/a/1.png", root / "val/a/1.png")  # and across splits
    args = ["data", "--config", CONFIG, "--out", tmp_path / "out", f"dataset.root={root}"]
    rc, out, _ = _cli(capsys, *args)
    assert rc == 0 and "same content: not checked" in out
    # 2 classes of 4 and 3 images: the head (>= 0.9 x 7) takes both; too few classes for N_f = 3
    assert "warning: no tail class at extract.h_r=0.9" in out
    assert "warning: extract.n_f=3 confusing classes need more than 3 classes; this data set has 2" in out
    rc, out, err = _cli(capsys, *args, "--verify")
    assert rc == 0, err
    prof = json.loads((tmp_path / "out" / "profile.json").read_text())
    same = prof["duplicates"]["same_content"]
    assert same["groups"] == 2 and same["extra_files"] == 2 and same["groups_across_splits"] == 1
    assert prof["unreadable"] == []
    assert "same content: 2 extra files in 2 groups (1 across splits)" in out

    (root / "train" / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # a broken PNG
    rc, _, _ = _cli(capsys, *args)
    assert rc == 0  # without --verify no pixel is read
    rc, out, err = _cli(capsys, *args, "--verify")
    assert rc == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsa-lt: error: cannot read image ")
    assert str(root / "train" / "a" / "3.png") in lines[0]
    prof = json.loads((tmp_path / "out" / "profile.json").read_text())  # the whole profile, with the list
    assert [u["path"] for u in prof["unreadable"]] == [str(root / "train" / "a" / "3.png")]


def test_data_command_other_data_sets(tmp_path, capsys, fake_cifar10):
    """The profile for an in-memory set (generated CIFAR-10 files, LDAM-DRW rule)."""
    rc, out, err = _cli(capsys, "data", "--config", "cifar10-LT_resnet32", "--out", tmp_path,
                        f"dataset.root={fake_cifar10}", "dataset.imb_ratio=10", "dataset.download=false")
    assert rc == 0, err
    prof = json.loads((tmp_path / "profile.json").read_text())
    want = [int(60 * 0.1 ** (i / 9)) for i in range(10)]  # n_i = int(n_max (1/IR)^(i/(K-1)))
    assert prof["train_counts"] == want and prof["test_counts"] == [20] * 10
    assert prof["imbalance_ratio"] == want[0] / want[-1]
    assert prof["duplicates"]["listed_twice_train"] is None


def test_data_command_lists_json_and_digits(tmp_path, capsys):
    from image_files import write_image_tree, write_inat_json, write_oltr_list

    root = tmp_path / "lists"
    train = write_image_tree(root, [7, 3, 2, 1], size=(8, 8), split="train")
    test = write_image_tree(root, [2, 2, 2, 2], size=(8, 8), split="val", seed=1)
    # one training image listed twice, one training image also listed as a test image
    write_oltr_list(root / "ImageNet_LT_train.txt", train + [train[0]])
    write_oltr_list(root / "ImageNet_LT_test.txt", test + [train[-1]])
    ov = [f"dataset.root={root}", "dataset.num_classes=4"]
    rc, out, err = _cli(capsys, "data", "--config", "imageNet-LT_resnet10", "--out", tmp_path / "a", *ov)
    assert rc == 0, err
    prof = json.loads((tmp_path / "a" / "profile.json").read_text())
    assert prof["train_counts"] == [8, 3, 2, 1] and prof["test_counts"] == [2, 2, 2, 3]
    assert prof["imbalance_ratio"] == 8.0 and prof["largest"]["name"] == "class_000"
    d = prof["duplicates"]
    assert d["listed_twice_train"]["entries"] == 1 and d["listed_twice_test"]["entries"] == 0
    assert d["in_both_splits"]["files"] == 1
    assert "listed twice: train 1, test 0; in both splits: 1" in out

    write_inat_json(root / "train2018.json", train, 4, id_offset=100)
    write_inat_json(root / "val2018.json", test, 4, id_offset=100)
    rc, out, err = _cli(capsys, "data", "--config", "iNat2018_resnet50", "--out", tmp_path / "b", *ov)
    assert rc == 0, err
    prof = json.loads((tmp_path / "b" / "profile.json").read_text())
    assert prof["train_counts"] == [7, 3, 2, 1] and prof["classes"][0] == "species_000"
    # 13 images, 0.9 x 13 = 11.7: 7 + 3 = 10 < 11.7 <= 12: head 0, 1, 2
    assert prof["head_tail"]["head_ids"] == [0, 1, 2] and prof["head_tail"]["tail_ids"] == [3]

    rc, out, err = _cli(capsys, "data", "--config", "digits-LT_resnet20", "--out", tmp_path / "c")
    assert rc == 0, err
    prof = json.loads((tmp_path / "c" / "profile.json").read_text())
    # the demo's training set (docs/RESULTS.md): 351 images, 104 to 5 a class
    assert prof["splits"]["train"]["images"] == 351 and sum(prof["train_counts"]) == 351
    assert prof["largest"]["images"] == 104 and prof["smallest"]["images"] == 5


# ------------------------------------------------------------------------------ bad data
def _bad_tree(base: Path, case: str) -> tuple[Path, list[str], str]:
    """A small tree with one defect; returns (root, extra overrides, text the error must name)."""
    root = base / case
    write_images(root, [("train/a/0.png", 0), ("train/a/1.png", 0), ("train/b/0.png", 1),
                        ("val/a/0.png", 0), ("val/b/0.png", 1)], size=(8, 8))
    extra: list[str] = []
    if case == "empty_class_folder":
        (root / "train" / "c").mkdir()
        named = str(root / "train" / "c") + ": empty class folder"
    elif case == "non_image_file":
        (root / "train" / "b" / "labels.txt").write_text("b")
        named = str(root / "train" / "b" / "labels.txt") + ": not an image file"
    elif case == "class_only_in_val":
        write_images(root, [("val/zz/0.png", 0)], size=(8, 8))
        named = str(root / "val" / "zz") + ": class 'zz' is not in the training split"
    elif case == "file_outside_class_folder":
        write_images(root, [("train/loose.png", 0)], size=(8, 8))
        named = str(root / "train" / "loose.png") + ": file outside a class folder"
    elif case == "csv_missing_file":
        write_csv(root / "train.csv", [("train/a/0.png", "a"), ("train/a/9.png", "a"), ("train/b/0.png", "b")],
                  header=("path", "class_name"))
        write_csv(root / "test.csv", [("val/a/0.png", "a")], header=("path", "class_name"))
        extra = ["dataset.name=csv"]
        named = f"{root / 'train.csv'}:3: image not found: {root / 'train/a/9.png'}"
    elif case == "csv_unknown_class":
        write_csv(root / "train.csv", [("train/a/0.png", "a"), ("train/b/0.png", "b")], header=("path", "class_name"))
        write_csv(root / "test.csv", [("val/a/0.png", "a"), ("val/b/0.png", "c")], header=("path", "class_name"))
        extra = ["dataset.name=csv"]
        named = f"{root / 'test.csv'}:3: class 'c' is not in the training list"
    else:
        raise AssertionError(case)
    return root, extra, named


BAD = ["empty_class_folder", "non_image_file", "class_only_in_val", "file_outside_class_folder",
       "csv_missing_file", "csv_unknown_class"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_one_line_exit_3(tmp_path, capsys, case):
    root, extra, named = _bad_tree(tmp_path, case)
    out_dir = tmp_path / "out"
    rc, out, err = _cli(capsys, "data", "--config", CONFIG, "--out", out_dir, f"dataset.root={root}", *extra)
    assert rc == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsa-lt: error: "), err
    assert named in lines[0]
    assert not out_dir.exists()  # nothing written


def test_bad_data_stops_training_before_any_checkpoint(tmp_path, capsys):
    root, extra, named = _bad_tree(tmp_path, "empty_class_folder")
    work = tmp_path / "work"
    rc, _, err = _cli(capsys, "train", "--config", CONFIG, "--note", "bad", "--workdir", work, "--device", "cpu",
                      f"dataset.root={root}", "dataset.num_workers=0")
    assert rc == 3 and named in err and len(err.strip().splitlines()) == 1
    assert not list(work.rglob("*.pt"))


# ------------------------------------------------------------------------------ all three phases
def test_three_phases_on_an_image_folder(tree, tmp_path, capsys, fresh_warnings):
    root, _ = tree
    work = tmp_path / "work"
    tiny = [f"dataset.root={root}", "dataset.image_size=32", "dataset.num_workers=0", "model.name=resnet8",
            "train.epochs=1", "train.batch_size=64", "train.lr=0.05", "train.warmup_epochs=0", "train.eval_every=1",
            "train.save_every=1", "train.eval_batch_size=64", "extract.batch_size=64", "extract.dtype=float32",
            "finetune.n_t=4", "finetune.iterations=10", "finetune.eval_every=5", "finetune.save_every=10"]
    rc, out, err = _cli(capsys, "run", "--config", CONFIG, "--note", "e2e", "--workdir", work, "--device", "cpu", *tiny)
    assert rc == 0, err[-3000:]
    assert err.count("fsa-lt: warning:") == 1 and "'eel'" in err  # once per process
    m1 = json.loads((work / "log" / "phase_i" / CONFIG / "e2e" / "metrics.json").read_text())
    m3 = json.loads((work / "log" / "phase_iii" / CONFIG / "e2e" / "metrics.json").read_text())
    for m in (m1, m3):
        f = m["final"]
        assert f["num_test"] == 35 and len(f["per_class"]) == 8
        assert f["per_class"][4] is None  # eel: no validation image
        assert all(v is not None for i, v in enumerate(f["per_class"]) if i != 4)
    index = json.loads((work / "feature" / CONFIG / "e2e" / "index.json").read_text())
    assert index["class_counts"] == COUNTS and index["head"] == HEAD and index["tail"] == TAIL
    assert set(index["confusing"]) == {str(c) for c in TAIL}
    assert (work / "checkpoints" / "phase_iii" / CONFIG / "e2e" / "last.pt").is_file()


def test_extensions_cover_torchvisions():
    """Every extension torchvision's ImageFolder accepts is an image here too (plus .gif)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from fsa_lt.data.image_folder import IMAGE_EXTENSIONS

    assert set(IMG_EXTENSIONS) <= set(IMAGE_EXTENSIONS)
    assert set(IMAGE_EXTENSIONS) - set(IMG_EXTENSIONS) == {".gif"}
