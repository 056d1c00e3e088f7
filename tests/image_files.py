"""Test helpers: write tiny image trees, OLTR list files and iNaturalist-style JSON.

Images are small JPEGs (or PNGs) whose colour depends on the class, plus a little seeded
noise, so a loader test can tell classes apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for a class."""
    rng = np.random.RandomState(1000 + int(label))
    return tuple(int(v) for v in rng.randint(30, 226, size=3))


def write_images(root, items: Iterable[tuple[str, int]], size=(40, 48), seed: int = 0) -> list[tuple[str, int]]:
    """Write one image per ``(relpath, label)`` under ``root``; ``size`` is (width, height).

    The format follows the extension (JPEG for .jpg/.jpeg/.JPEG).  Returns the items.
    """
    root = Path(root)
    rng = np.random.RandomState(seed)
    w, h = size
    items = [(str(p), int(y)) for p, y in items]
    for rel, label in items:
        base = np.array(class_colour(label), dtype=np.int16)
        noise = rng.randint(-12, 13, size=(h, w, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(arr, "RGB")
        ext = out.suffix.lower()
        if ext in (".jpg", ".jpeg"):
            img.save(out, format="JPEG", quality=90)
        else:
            img.save(out)
    return items


def write_image_tree(
    root, counts: Sequence[int], size=(40, 48), split: str = "train", ext: str = "jpg", seed: int = 0
) -> list[tuple[str, int]]:
    """Write ``counts[c]`` images for each class c as ``root/SPLIT/class_CCC/NNNN.EXT``.

    Returns ``[(relative path, label), ...]`` in class order.
    """
    items = [
        (f"{split}/class_{c:03d}/{n:04d}.{ext}", c)
        for c, count in enumerate(counts)
        for n in range(int(count))
    ]
    return write_images(root, items, size=size, seed=seed)


def write_oltr_list(path, items: Iterable[tuple[str, int]]) -> Path:
    """Write ``relative/path label`` lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rel, label in items:
            f.write(f"{rel} {int(label)}\n")
    return path


def make_inat_dict(items: Sequence[tuple[str, int]], num_classes: int, id_offset: int = 0) -> dict:
    """A COCO-style iNaturalist dict; category ids are ``label + id_offset``."""
    return {
        "info": {"description": "fsa-lt test data"},
        "images": [{"id": 10 * i + 7, "file_name": rel, "width": 0, "height": 0} for i, (rel, _) in enumerate(items)],
        "annotations": [
            {"id": i, "image_id": 10 * i + 7, "category_id": int(label) + id_offset}
            for i, (_, label) in enumerate(items)
        ],
        "categories": [{"id": c + id_offset, "name": f"species_{c:03d}"} for c in range(num_classes)],
    }


def write_inat_json(path, items: Sequence[tuple[str, int]], num_classes: int, id_offset: int = 0) -> dict:
    """Write `make_inat_dict` to ``path`` and return the dict."""
    data = make_inat_dict(items, num_classes, id_offset=id_offset)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return data
