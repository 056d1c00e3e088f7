"""Head / tail split by the sample ratio h_r, and many / medium / few-shot groups.

Pure numpy; class ids are never assumed to be in frequency order.
"""

from __future__ import annotations

import numpy as np

from fsa_lt.errors import ConfigError

__all__ = ["head_tail_split", "shot_groups", "frequency_order"]


def _counts(class_counts) -> np.ndarray:
    try:
        if hasattr(class_counts, "detach"):  # torch tensor
            class_counts = class_counts.detach().cpu().numpy()
        c = np.asarray(class_counts)
    except Exception:  # pragma: no cover - defensive
        raise ConfigError(f"class counts must be a 1-d array of integers, got {type(class_counts).__name__}") from None
    if c.ndim != 1 or c.size == 0:
        raise ConfigError(f"class counts must be a non-empty 1-d array, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.number) or np.any(c < 0) or np.any(c != np.round(c)):
        raise ConfigError("class counts must be non-negative integers")
    return c.astype(np.int64)


def frequency_order(class_counts) -> np.ndarray:
    """Class ids sorted by count, descending; ties broken by the lower class id."""
    c = _counts(class_counts)
    return np.argsort(-c, kind="stable").astype(np.int64)


def head_tail_split(class_counts, h_r: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Split classes into head and tail (METHOD.md "Head and tail classes").

    Classes are sorted by training count, descending (ties: lower class id
    first). The head is the smallest prefix of that order whose samples make up
    at least ``h_r`` of all samples; every other class is tail.

    Args:
        class_counts: ``K`` training sample counts, indexed by class id.
        h_r: head sample ratio, ``0 < h_r <= 1`` (paper: 0.9).

    Returns:
        ``(head, tail)``: int64 arrays of class ids, each sorted by ascending id.
    """
    try:
        hr = float(h_r)
    except (TypeError, ValueError):
        raise ConfigError(f"h_r must be a number in (0, 1], got {h_r!r}") from None
    if not (0.0 < hr <= 1.0):
        raise ConfigError(f"h_r must be in (0, 1], got {h_r}")
    c = _counts(class_counts)
    total = int(c.sum())
    if total <= 0:
        raise ConfigError("class counts sum to zero: no training samples")
    order = np.argsort(-c, kind="stable")
    cum = np.cumsum(c[order])
    # exact integer comparison: cum / total >= h_r  <=>  cum >= h_r * total
    n_head = int(np.argmax(cum >= hr * total)) + 1
    head = np.sort(order[:n_head]).astype(np.int64)
    tail = np.sort(order[n_head:]).astype(np.int64)
    return head, tail


def shot_groups(class_counts, many: int = 100, few: int = 20) -> dict[str, np.ndarray]:
    """Many / medium / few-shot class groups (OLTR convention).

    many: count > ``many``; few: count < ``few``; medium: ``few <= count <= many``
    (a class with exactly 20 or exactly 100 images is medium).

    Returns:
        ``{"many": ids, "medium": ids, "few": ids}``, int64 arrays sorted by id;
        an empty group is an empty array.
    """
    if few > many:
        raise ConfigError(f"shot_groups: few ({few}) must not exceed many ({many})")
    c = _counts(class_counts)
    ids = np.arange(c.size, dtype=np.int64)
    return {
        "many": ids[c > many],
        "medium": ids[(c >= few) & (c <= many)],
        "few": ids[c < few],
    }
