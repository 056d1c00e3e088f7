"""Your own images: a folder per class, or a CSV list.

Image folders follow torchvision's ``ImageFolder`` convention::

    ROOT/train/<class name>/<any sub-folders>/<image files>
    ROOT/val/<class name>/...            (or ROOT/test/..., the evaluation split)

Class ids are the positions of the training split's folder names in sorted order
(Python's string order, as torchvision sorts them); within a class, images are in
sorted path order.  The evaluation split uses the training split's ids: a class folder
that exists only there is an error, a training class without an evaluation folder is a
warning (its accuracy is reported as null).  An empty class folder, a file whose
extension is not an image format (`IMAGE_EXTENSIONS`) or a file directly under a split
folder is an error naming the path.  Hidden entries (names starting with ``.``, such as
``.DS_Store`` or ``.ipynb_checkpoints``) and ``Thumbs.db`` / ``desktop.ini`` are ignored.

CSV lists have a header row and one image per row; the columns are ``path`` and
either ``label`` (integer class ids 0..K-1) or ``class_name`` (names, mapped to ids by the
sorted names of the training CSV); other columns are ignored.  Paths are relative to the
data set root (absolute paths are used as they are).  Errors name ``FILE:LINE``.

Both readers return an `ImageSetLT`, an `ImageListLT` whose class list comes from the
training split, so the same files give the same data set whichever way they are listed.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from .image_list import ImageListLT

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSetLT",
    "is_image_file",
    "scan_image_folder",
    "eval_split_dir",
    "image_folder_dataset",
    "read_csv_list",
    "csv_dataset",
]

# torchvision's IMG_EXTENSIONS plus .gif; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
EVAL_SPLITS = ("val", "test")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


# --------------------------------------------------------------------------- data set


class ImageSetLT(ImageListLT):
    """Images by relative path with labels 0..K-1, K and class names fixed by the training split.

    Unlike `ImageListLT`, an evaluation split may lack some classes (``num_classes`` is
    still the training split's K).  ``lines[i]`` is the line of sample i in ``source``
    (CSV lists) or None (folders); ``warnings`` holds what the reader found worth saying
    (a class missing from this split) without stopping.
    """

    def __init__(
        self,
        root,
        paths: Sequence[str],
        labels,
        classes: Sequence[str],
        transform: Optional[Callable] = None,
        source: str = "",
        lines=None,
        warnings: Sequence[str] = (),
    ):
        Dataset.__init__(self)
        self.root = os.fspath(root)
        self.paths = [str(p) for p in paths]
        self.targets = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        self.num_classes = len(self.classes)
        self.transform = transform
        self.source = str(source)
        self.lines = None if lines is None else np.asarray(lines, dtype=np.int64)
        self.warnings = list(warnings)
        if len(self.targets) != len(self.paths):
            raise DataError(f"{self.source}: {len(self.paths)} paths but {len(self.targets)} labels")
        if len(self.paths) == 0:
            raise DataError(f"{self.source}: no images")
        if self.targets.min() < 0 or self.targets.max() >= self.num_classes:
            raise DataError(f"{self.source}: labels outside 0..{self.num_classes - 1}")

    def where(self, index: int) -> str:
        """How messages name sample ``index``: ``SOURCE:LINE`` for lists, else the source."""
        if self.lines is not None:
            return f"{self.source}:{int(self.lines[index])}"
        return self.source


# --------------------------------------------------------------------------- folders


def _scandir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"folder not found: {path}") from None
    except NotADirectoryError:
        raise DataError(f"not a folder: {path}") from None
    except OSError as e:
        raise DataError(f"cannot list folder {path}: {e.strerror or e}") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _class_images(class_dir: str, root: str) -> list[str]:
    """Image paths under ``class_dir`` (any depth), relative to ``root`` with '/' separators,
    in torchvision's order (sorted folders, sorted names)."""
    found = []

    def onerror(e: OSError):
        raise DataError(f"cannot list folder {e.filename}: {e.strerror or e}")

    walk = sorted(os.walk(class_dir, followlinks=True, onerror=onerror))
    for dirpath, dirnames, filenames in walk:
        rel_dir = os.path.relpath(dirpath, class_dir)
        if any(_ignored(part) for part in rel_dir.split(os.sep) if part != "."):
            continue
        for name in sorted(filenames):
            if _ignored(name):
                continue
            full = os.path.join(dirpath, name)
            if not is_image_file(name):
                raise DataError(f"{full}: not an image file (extension not one of "
                                f"{' '.join(IMAGE_EXTENSIONS)})")
            found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return found


def scan_image_folder(root, split: str, classes: Optional[Sequence[str]] = None):
    """Read one split folder ``root/split``.

    Returns ``(paths, labels, classes, missing)``: image paths relative to ``root``,
    int64 labels, the class names and the class names without a folder in this split.
    ``classes=None`` (the training split): the sorted sub-folder names.  Otherwise (an
    evaluation split) the training classes: a folder not among them is an error.
    """
    root = os.fspath(root)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"image folder split not found: {split_dir} (expected {split_dir}{os.sep}<class>{os.sep}<images>)")
    folders = []
    for e in _scandir(split_dir):
        if _ignored(e.name):
            continue
        if not _is_dir(e):
            raise DataError(f"{e.path}: file outside a class folder (images go in {split_dir}{os.sep}<class>{os.sep})")
        folders.append(e.name)
    if not folders:
        raise DataError(f"{split_dir}: no class folders")
    if classes is None:
        classes = sorted(folders)
    else:
        classes = list(classes)
        known = set(classes)
        for name in folders:
            if name not in known:
                raise DataError(f"{os.path.join(split_dir, name)}: class '{name}' is not in the training split")
    index = {c: k for k, c in enumerate(classes)}
    paths, labels = [], []
    for name in sorted(folders):
        class_dir = os.path.join(split_dir, name)
        found = _class_images(class_dir, root)
        if not found:
            raise DataError(f"{class_dir}: empty class folder (no image files)")
        paths += found
        labels += [index[name]] * len(found)
    present = set(folders)
    missing = [c for c in classes if c not in present]
    # sorted folder names are in class-id order for the training split and its subsets alike
    return paths, np.asarray(labels, dtype=np.int64), classes, missing


def eval_split_dir(root, test_dir: Optional[str] = None) -> str:
    """The evaluation split's folder name: ``test_dir`` if given, else ``val``, else ``test``."""
    if test_dir:
        return test_dir
    for name in EVAL_SPLITS:
        if os.path.isdir(os.path.join(os.fspath(root), name)):
            return name
    raise DataError(f"{os.fspath(root)}: no evaluation split (expected a folder 'val' or 'test' "
                    f"beside 'train', or set dataset.test_dir)")


def _missing_warning(source: str, missing: Sequence[str]) -> list[str]:
    if not missing:
        return []
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    n = len(missing)
    return [f"{source}: {n} training class{'es' if n > 1 else ''} without evaluation images "
            f"({shown}); {'their' if n > 1 else 'its'} accuracy is reported as null"]


def image_folder_dataset(root, split: str = "train", train_dir: str = "train", test_dir: Optional[str] = None,
                         transform: Optional[Callable] = None) -> ImageSetLT:
    """The training (``split='train'``) or evaluation split of an image-folder data set."""
    root = os.fspath(root)
    if split == "train":
        paths, labels, classes, _ = scan_image_folder(root, train_dir)
        return ImageSetLT(root, paths, labels, classes, transform, source=os.path.join(root, train_dir))
    train_path = os.path.join(root, train_dir)
    if not os.path.isdir(train_path):
        raise DataError(f"image folder split not found: {train_path}")
    classes = sorted(e.name for e in _scandir(train_path) if not _ignored(e.name) and _is_dir(e))
    if not classes:
        raise DataError(f"{train_path}: no class folders")
    name = eval_split_dir(root, test_dir)
    if os.path.normpath(name) == os.path.normpath(train_dir):
        raise DataError(f"{os.path.join(root, name)}: the evaluation split is the training split")
    paths, labels, classes, missing = scan_image_folder(root, name, classes)
    source = os.path.join(root, name)
    return ImageSetLT(root, paths, labels, classes, transform, source=source,
                      warnings=_missing_warning(source, missing))


# --------------------------------------------------------------------------- CSV lists


@dataclass
class CsvList:
    """One CSV list as read: ``labels`` (int ids) or ``names`` (class names), one per row."""

    path: str
    paths: list[str]
    lines: list[int]
    labels: Optional[np.ndarray] = None
    names: Optional[list[str]] = None
    column: str = "label"
    extra: dict = field(default_factory=dict)


def _row_text(row: list[str]) -> str:
    text = ",".join(row)
    return text if len(text) <= 200 else text[:200] + "..."


def read_csv_list(path) -> CsvList:
    """Read a CSV list with a header naming ``path`` and ``label`` or ``class_name``.

    Blank rows at the end are ignored; any other malformed row is a `DataError`
    ``PATH:LINE: ...``.  A path listed twice with different classes is an error (twice
    with the same class is reported by `fsa-lt data`, not refused).
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise DataError(f"list file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"list file is a directory: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read list file {path}: {e.strerror or e}") from None

    while rows and not any(c.strip() for c in rows[-1][1]):
        rows.pop()
    if not rows:
        raise DataError(f"{path}: empty list (expected a header 'path,label' or 'path,class_name')")
    header_line, header = rows[0]
    cols = [c.strip().lower() for c in header]
    if "path" not in cols or ("label" in cols) == ("class_name" in cols):
        raise DataError(f"{path}:{header_line}: expected a header with 'path' and one of 'label' or "
                        f"'class_name', got {_row_text(header)!r}")
    for c in ("path", "label", "class_name"):
        if cols.count(c) > 1:
            raise DataError(f"{path}:{header_line}: column '{c}' appears twice in the header")
    column = "label" if "label" in cols else "class_name"
    ip, iv = cols.index("path"), cols.index(column)
    paths, values, lines = [], [], []
    for lineno, row in rows[1:]:
        if not any(c.strip() for c in row):
            raise DataError(f"{path}:{lineno}: empty row")
        if len(row) != len(cols):
            raise DataError(f"{path}:{lineno}: expected {len(cols)} fields ({','.join(cols)}), "
                            f"got {len(row)}: {_row_text(row)!r}")
        p, v = row[ip].strip(), row[iv].strip()
        if not p:
            raise DataError(f"{path}:{lineno}: empty path")
        if not v:
            raise DataError(f"{path}:{lineno}: empty {column}")
        paths.append(p)
        values.append(v)
        lines.append(lineno)
    if not paths:
        raise DataError(f"{path}: no images listed (only the header)")
    out = CsvList(path, paths, lines, column=column)
    if column == "label":
        labels = []
        for v, lineno in zip(values, lines):
            try:
                labels.append(int(v))
            except ValueError:
                raise DataError(f"{path}:{lineno}: label {v!r} is not an integer class id "
                                f"(use a 'class_name' column for names)") from None
            if labels[-1] < 0:
                raise DataError(f"{path}:{lineno}: label {labels[-1]} is negative")
        out.labels = np.asarray(labels, dtype=np.int64)
    else:
        out.names = values
    key = out.labels.tolist() if out.labels is not None else out.names
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        j = first.setdefault(p, i)
        if j != i and key[j] != key[i]:
            raise DataError(f"{path}:{lines[i]}: {p} is also listed on line {lines[j]} with another class "
                            f"({key[j]!r} there, {key[i]!r} here)")
    return out


def _folder_names(paths: Sequence[str], labels: np.ndarray, k: int) -> list[str]:
    """Class names from the parent folder of each class's first image when those are
    distinct and non-empty, else "0".."K-1" (the rule of `ImageListLT`)."""
    first: dict[int, int] = {}
    for i, t in enumerate(labels.tolist()):
        first.setdefault(t, i)
    names = [os.path.basename(os.path.dirname(paths[first[c]].replace("\\", "/"))) if c in first else ""
             for c in range(k)]
    if any(not n for n in names) or len(set(names)) != len(names):
        return [str(c) for c in range(k)]
    return names


def _csv_classes(train: CsvList, num_classes: Optional[int]) -> list[str]:
    if train.labels is not None:
        k = int(train.labels.max()) + 1
        if num_classes is not None and int(num_classes) != k:
            if k > num_classes:
                i = int(np.argmax(train.labels >= num_classes))
                raise DataError(f"{train.path}:{train.lines[i]}: label {int(train.labels[i])} out of range "
                                f"for num_classes {num_classes}")
            raise DataError(f"{train.path} has {k} classes, config says {num_classes}")
        counts = np.bincount(train.labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # the row to blame: the first whose label lies beyond a missing id (a typo such as 99
            # among 0..3 leaves 4..98 empty; a skipped id leaves a gap below the next label)
            i = int(np.argmax(train.labels > empty[0]))
            gap = (f"ids {int(empty[0])}..{int(empty[-1])}" if empty.size == int(empty[-1]) - int(empty[0]) + 1
                   and empty.size > 1 else f"id {int(empty[0])}" + (f" and {empty.size - 1} more" if empty.size > 1 else ""))
            raise DataError(f"{train.path}:{train.lines[i]}: label {int(train.labels[i])} is beyond class {gap}, "
                            f"which no training row has: labels must be the class ids 0..K-1, every one used "
                            f"(K is the largest label + 1, here {k})")
        return _folder_names(train.paths, train.labels, k)
    return sorted(set(train.names))


def csv_dataset(root, train_csv, test_csv=None, split: str = "train", transform: Optional[Callable] = None,
                num_classes: Optional[int] = None, check_files: bool = True) -> ImageSetLT:
    """The training or evaluation split of a CSV-listed data set.

    Both splits take their classes from the training CSV: with ``label`` columns K is
    the largest training label + 1 and every id 0..K-1 must have a training image; with
    ``class_name`` columns the classes are the sorted training names.  A class in the
    evaluation CSV that the training CSV lacks is an error naming the line.
    """
    root = os.fspath(root)
    train = read_csv_list(train_csv)
    classes = _csv_classes(train, num_classes)
    if split == "train":
        lst = train
    else:
        if test_csv is None:
            raise DataError("csv data set: no evaluation list (set dataset.test_list)")
        lst = read_csv_list(test_csv)
        if lst.column != train.column:
            raise DataError(f"{lst.path}: has a '{lst.column}' column but the training list {train.path} "
                            f"has '{train.column}'")
    if lst.labels is not None:
        labels = lst.labels
        bad = np.flatnonzero(labels >= len(classes))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{lst.path}:{lst.lines[i]}: label {int(labels[i])} is not a class of the training "
                            f"list {train.path} (labels 0..{len(classes) - 1})")
    else:
        index = {c: k for k, c in enumerate(classes)}
        labels = np.empty(len(lst.names), dtype=np.int64)
        for i, name in enumerate(lst.names):
            k = index.get(name)
            if k is None:
                raise DataError(f"{lst.path}:{lst.lines[i]}: class {name!r} is not in the training list {train.path}")
            labels[i] = k
    missing = []
    if lst is not train:
        present = np.bincount(labels, minlength=len(classes)) > 0
        missing = [c for c, p in zip(classes, present) if not p]
    ds = ImageSetLT(root, lst.paths, labels, classes, transform, source=lst.path, lines=lst.lines,
                    warnings=_missing_warning(lst.path, missing))
    if check_files:
        ds.check_files()
    return ds


# --------------------------------------------------------------------------- config


CSV_DEFAULTS = ("train.csv", "test.csv", "val.csv")
_warned: set[str] = set()


def _under(root: str, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(root, rel)


def build_own_dataset(cfg, split: str, transform: Optional[Callable] = None) -> ImageSetLT:
    """`dataset.name: imagefolder | csv` for `fsa_lt.data.build_dataset`.

    A reader's warnings (a class missing from the evaluation split) are printed once per
    process, on rank 0, as ``fsa-lt: warning: ...`` on stderr; they stay in ``ds.warnings``.
    """
    import sys

    from ..engine import distributed as dist

    d = cfg.dataset
    root = cfg.data_root
    if d.name == "imagefolder":
        # With a validation split the evaluation folders are val_dir (default val) and test_dir
        # (default test), and they must differ; without one, test_dir defaults to val, else test.
        val_dir = (d.val_dir or "val") if d.validation else None
        test_dir = d.test_dir or ("test" if d.validation else None)
        if val_dir is not None and os.path.normpath(val_dir) == os.path.normpath(test_dir):
            raise DataError(f"{os.path.join(root, val_dir)}: the validation folder is the test folder "
                            "(set dataset.val_dir and dataset.test_dir to different folders)")
        ds = image_folder_dataset(root, split="train" if split == "train" else "test",
                                  train_dir=d.train_dir or "train", test_dir=val_dir if split == "val" else test_dir,
                                  transform=transform)
    elif d.name == "csv":
        other = (d.val_list or CSV_DEFAULTS[2]) if split == "val" else (d.test_list or CSV_DEFAULTS[1])
        if split == "val" and os.path.normpath(_under(root, other)) == os.path.normpath(
                _under(root, d.test_list or CSV_DEFAULTS[1])):
            raise DataError(f"{_under(root, other)}: the validation list is the test list")
        ds = csv_dataset(root, _under(root, d.train_list or CSV_DEFAULTS[0]), _under(root, other),
                         split="train" if split == "train" else "test", transform=transform, num_classes=d.num_classes)
    else:
        raise DataError(f"build_own_dataset: dataset.name {d.name!r} is not imagefolder or csv")
    for w in ds.warnings:
        if w not in _warned and dist.is_main():
            _warned.add(w)
            print(f"fsa-lt: warning: {w}", file=sys.stderr, flush=True)
    return ds
