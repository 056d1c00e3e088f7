"""Image-file data sets: OLTR text lists (ImageNet-LT, Places-LT) and iNaturalist 2018 JSON.

OLTR split files hold one ``relative/path label`` line per image (paths relative to the
ImageNet / Places365 root).  iNaturalist 2018 ships COCO-style JSON files with ``images``
(``id``, ``file_name``), ``annotations`` (``image_id``, ``category_id``) and ``categories``
(``id``, ``name``).  Both are read into ``(paths, labels)`` and wrapped by `ImageListLT`,
which validates everything a user can get wrong up front and reports it as a one-line
`DataError` that names the file and the line.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fsa_lt.errors import DataError

__all__ = [
    "read_oltr_list",
    "read_inat_json",
    "ImageListLT",
    "oltr_dataset",
    "inat_dataset",
    "list_statistics",
]


# --------------------------------------------------------------------------- readers


def read_oltr_list(path) -> tuple[list[str], np.ndarray]:
    """Read an OLTR split file of ``relative/path label`` lines.

    Fields are whitespace separated; blank lines at the end of the file are ignored, so
    the i-th returned sample comes from line i + 1.  Returns ``(paths, labels)`` with
    labels as int64.  Any other malformed line (wrong field count, non-integer label,
    blank line in the middle) raises `DataError` ``PATH:LINENO: expected 'relative/path
    label', got '...'``.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"list file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"list file is a directory: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e.reason})") from None
    except OSError as e:
        raise DataError(f"cannot read list file {path}: {e.strerror or e}") from None

    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()

    paths: list[str] = []
    labels: list[int] = []
    append_path = paths.append
    append_label = labels.append
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) != 2 or "_" in fields[1]:
            _bad_line(path, lineno, line)
        try:
            label = int(fields[1])
        except ValueError:
            _bad_line(path, lineno, line)
        append_path(fields[0])
        append_label(label)
    return paths, np.asarray(labels, dtype=np.int64)


def _bad_line(path: str, lineno: int, line: str):
    shown = line if len(line) <= 200 else line[:200] + "..."
    raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {shown!r}")


def read_inat_json(path) -> tuple[list[str], np.ndarray, list[str]]:
    """Read an iNaturalist 2018 COCO-style JSON file.

    Returns ``(paths, labels, class_names)`` in the order of ``images``.  Category ids
    are mapped to 0..K-1 in sorted id order (identity for iNat 2018, whose ids already
    run 0..8141); ``class_names[k]`` is the name of the k-th category.  An image without
    an annotation, an annotation for an unknown image or category, or a missing key
    raises `DataError` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read annotation file {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or invalid '{key}' list")

    try:
        cat_ids = sorted({int(c["id"]) for c in data["categories"]})
        cat_index = {cid: k for k, cid in enumerate(cat_ids)}
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed category entry ({_describe(e)})") from None
    if len(cat_ids) != len(data["categories"]):
        raise DataError(f"{path}: duplicate category ids")
    class_names = [names[cid] for cid in cat_ids]

    try:
        image_ids = [img["id"] for img in data["images"]]
        file_names = [str(img["file_name"]) for img in data["images"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: malformed image entry ({_describe(e)})") from None
    position = {}
    for i, iid in enumerate(image_ids):
        if iid in position:
            raise DataError(f"{path}: duplicate image id {iid} ({file_names[i]})")
        position[iid] = i

    labels = np.full(len(image_ids), -1, dtype=np.int64)
    for n, ann in enumerate(data["annotations"]):
        try:
            iid = ann["image_id"]
            cid = int(ann["category_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed annotation #{n} ({_describe(e)})") from None
        i = position.get(iid)
        if i is None:
            raise DataError(f"{path}: annotation #{n} refers to unknown image id {iid}")
        k = cat_index.get(cid)
        if k is None:
            raise DataError(f"{path}: annotation #{n} (image id {iid}) refers to unknown category id {cid}")
        if labels[i] >= 0 and labels[i] != k:
            raise DataError(
                f"{path}: image {file_names[i]} (id {iid}) has conflicting annotations "
                f"(categories {cat_ids[labels[i]]} and {cid})"
            )
        labels[i] = k

    missing = np.flatnonzero(labels < 0)
    if missing.size:
        i = int(missing[0])
        more = f" (and {missing.size - 1} more)" if missing.size > 1 else ""
        raise DataError(f"{path}: image {file_names[i]} (id {image_ids[i]}) has no annotation{more}")
    return file_names, labels, class_names


def _describe(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing key {e.args[0]!r}"
    return str(e)


# --------------------------------------------------------------------------- data set


class ImageListLT(Dataset):
    """Images listed by relative path, with integer labels 0..K-1.

    Parameters
    ----------
    root: folder the paths are relative to.
    paths, labels: one entry per sample (labels are converted to int64).
    num_classes: K from the config; ``None`` infers ``max label + 1``.  When given, every
        label must lie in [0, K) and the split must span exactly K classes.
    transform: callable on a PIL RGB image; ``None`` returns a float CHW tensor in [0, 1].
    source: how error messages name the list (usually the list file); ``SOURCE:N`` in a
        message is the N-th sample, which is line N of an OLTR list file.
    check_files: check up front that every image file exists.
    classes: class names (length K); default: the folder name of each class's first image
        when those are distinct, else ``"0".."K-1"``.
    require_all_classes: run `check_training_classes` (use for training splits).
    """

    def __init__(
        self,
        root,
        paths: Sequence[str],
        labels,
        num_classes: Optional[int] = None,
        transform: Optional[Callable] = None,
        source: str = "<list file>",
        check_files: bool = True,
        classes: Optional[Sequence[str]] = None,
        require_all_classes: bool = False,
    ):
        self.root = os.fspath(root)
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.source = str(source)
        targets = np.asarray(labels)
        if targets.ndim != 1 or len(targets) != len(self.paths):
            raise DataError(
                f"{self.source}: {len(self.paths)} paths but labels of shape {tuple(targets.shape)}"
            )
        if targets.size and not np.issubdtype(targets.dtype, np.integer):
            raise DataError(f"{self.source}: labels must be integers, got dtype {targets.dtype}")
        self.targets = targets.astype(np.int64, copy=False)
        if len(self.targets) == 0:
            raise DataError(f"{self.source}: no images listed")

        if num_classes is not None:
            num_classes = int(num_classes)
            if num_classes <= 0:
                raise DataError(f"{self.source}: num_classes must be positive, got {num_classes}")
            bad = np.flatnonzero((self.targets < 0) | (self.targets >= num_classes))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{self.source}:{i + 1}: label {int(self.targets[i])} out of range "
                    f"for num_classes {num_classes}"
                )
            found = int(self.targets.max()) + 1
            if found != num_classes:
                raise DataError(f"{self.source} has {found} classes, config says {num_classes}")
        else:
            bad = np.flatnonzero(self.targets < 0)
            if bad.size:
                i = int(bad[0])
                raise DataError(f"{self.source}:{i + 1}: label {int(self.targets[i])} is negative")
            num_classes = int(self.targets.max()) + 1
        self.num_classes = num_classes

        if classes is None:
            self.classes = self._default_class_names()
        else:
            self.classes = [str(c) for c in classes]
            if len(self.classes) != self.num_classes:
                raise DataError(
                    f"{self.source}: {len(self.classes)} class names for {self.num_classes} classes"
                )

        if require_all_classes:
            self.check_training_classes()
        if check_files:
            self.check_files()

    # -- validation -------------------------------------------------------------------

    def check_training_classes(self) -> None:
        """Raise `DataError` if some class 0..K-1 has no image in this split."""
        counts = np.bincount(self.targets, minlength=self.num_classes)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            more = f" (and {empty.size - 1} more classes)" if empty.size > 1 else ""
            raise DataError(f"{self.source}: class {int(empty[0])} has no training image{more}")

    def where(self, index: int) -> str:
        """How messages name sample ``index``: ``LIST:LINE`` (one line per image)."""
        return f"{self.source}:{index + 1}"

    def check_files(self) -> None:
        """Raise `DataError` for the first listed image that does not exist."""
        exists, join, root = os.path.exists, os.path.join, self.root
        missing = [i for i, p in enumerate(self.paths) if not exists(join(root, p))]
        if missing:
            i = missing[0]
            more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise DataError(f"{self.where(i)}: image not found: {join(root, self.paths[i])}{more}")

    def _default_class_names(self) -> list[str]:
        first = {}
        for i, t in enumerate(self.targets.tolist()):
            if t not in first:
                first[t] = i
                if len(first) == self.num_classes:
                    break
        names = []
        for c in range(self.num_classes):
            if c not in first:
                return [str(k) for k in range(self.num_classes)]
            names.append(os.path.basename(os.path.dirname(self.paths[first[c]])))
        if any(not n for n in names) or len(set(names)) != len(names):
            return [str(k) for k in range(self.num_classes)]
        return names

    # -- Dataset ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The index-th image as a PIL RGB image (no transform)."""
        full = os.path.join(self.root, self.paths[index])
        try:
            with Image.open(full) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"{self.where(index)}: image not found: {full}") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {full} ({self.where(index)}): {e}") from None

    def __getitem__(self, index: int):
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        else:
            img = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, root={self.root!r}, "
            f"images={len(self)}, num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- constructors


def oltr_dataset(
    root,
    list_file,
    num_classes: Optional[int] = None,
    transform: Optional[Callable] = None,
    train: bool = False,
    check_files: bool = True,
) -> ImageListLT:
    """An ImageNet-LT / Places-LT split from its OLTR list file.

    ``train=True`` also requires every class to have at least one image.
    """
    paths, labels = read_oltr_list(list_file)
    return ImageListLT(
        root,
        paths,
        labels,
        num_classes=num_classes,
        transform=transform,
        source=os.fspath(list_file),
        check_files=check_files,
        require_all_classes=train,
    )


def inat_dataset(
    root,
    json_file,
    num_classes: Optional[int] = None,
    transform: Optional[Callable] = None,
    train: bool = False,
    check_files: bool = True,
) -> ImageListLT:
    """An iNaturalist 2018 split from its COCO-style JSON (class names from ``categories``).

    The class count is that of ``categories`` unless ``num_classes`` is given.
    """
    paths, labels, class_names = read_inat_json(json_file)
    if num_classes is not None and int(num_classes) != len(class_names):
        raise DataError(f"{os.fspath(json_file)} has {len(class_names)} classes, config says {num_classes}")
    return ImageListLT(
        root,
        paths,
        labels,
        num_classes=len(class_names) if num_classes is None else num_classes,
        transform=transform,
        source=os.fspath(json_file),
        check_files=check_files,
        classes=class_names,
        require_all_classes=train,
    )


# --------------------------------------------------------------------------- statistics


def list_statistics(labels, many: int = 100, few: int = 20, num_classes: Optional[int] = None) -> dict:
    """Per-class count summary of a label list.

    Classes are 0..max label (or 0..num_classes-1); many-shot: more than ``many`` images,
    few-shot: fewer than ``few``, medium: the rest (``few``..``many`` inclusive).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"list_statistics: negative label {int(labels.min())}")
    k = num_classes if num_classes is not None else (int(labels.max()) + 1 if labels.size else 0)
    counts = np.bincount(labels, minlength=k)
    n_many = int((counts > many).sum())
    n_few = int((counts < few).sum())
    return dict(
        num_images=int(labels.size),
        num_classes=int(len(counts)),
        max=int(counts.max()) if len(counts) else 0,
        min=int(counts.min()) if len(counts) else 0,
        many=n_many,
        medium=int(len(counts)) - n_many - n_few,
        few=n_few,
    )
