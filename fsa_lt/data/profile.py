"""`fsa-lt data`: the long-tail profile of a configured data set, before any training.

For any data set the configs name (CIFAR, digits, OLTR lists, iNaturalist JSON, image
folders, CSV lists) it reports: images and classes per split, the largest and smallest
class, the imbalance ratio, the many / medium / few-shot class counts (more than 100 /
20 to 100 / fewer than 20 training images), the head / tail split at ``extract.h_r``,
paths listed more than once, and with ``verify=True`` (which opens every image) images
that cannot be decoded and files with identical contents.  It writes ``profile.json``
and ``class_sizes.png`` (training images per class, classes sorted by size, log-scale
y, the head / tail boundary marked).

Without ``verify`` nothing but the lists and folder listings is read (and, for the
in-memory sets, their array files).  Bad data stops with one `DataError` line before
anything is written; unreadable images found by ``verify`` are all listed in the
profile, which is written, and then reported as one `DataError` line.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from ..method.split import head_tail_split, shot_groups

__all__ = ["profile_datasets", "format_profile", "plot_class_sizes", "run_profile", "MANY", "FEW", "EXAMPLES"]

MANY, FEW = 100, 20  # many-shot: > MANY training images; few-shot: < FEW (OLTR)
EXAMPLES = 20  # duplicate / unreadable examples kept in the JSON beyond the counts


# --------------------------------------------------------------------------- helpers


def _files(ds) -> Optional[list[str]]:
    """Full paths of a file-backed data set's images (None for in-memory sets)."""
    if hasattr(ds, "paths") and hasattr(ds, "root"):
        return [os.path.normpath(os.path.join(ds.root, p)) for p in ds.paths]
    return None


def _source(ds, cfg) -> str:
    if hasattr(ds, "source"):
        return str(ds.source)
    if cfg.dataset.name == "digits":
        return "scikit-learn digits (bundled)"
    return os.path.abspath(cfg.data_root)


def _class_ref(k: int, names: list[str], counts: np.ndarray) -> dict:
    return {"id": int(k), "name": names[k], "images": int(counts[k])}


def _check_image(path: str) -> tuple[Optional[str], Optional[str]]:
    """(sha1 of the file's bytes, None) or (hash or None, why it cannot be decoded)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    digest = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return digest, str(e) or type(e).__name__
    return digest, None


def _listed_twice(files: list[str]) -> tuple[int, list[str]]:
    """(entries beyond the first of each repeated path, the repeated paths)."""
    c = Counter(files)
    rep = [p for p, n in c.items() if n > 1]
    return sum(c[p] - 1 for p in rep), rep


# --------------------------------------------------------------------------- profile


def profile_datasets(cfg, train, test, verify: bool = False, workers: Optional[int] = None) -> dict:
    """The profile dict of a training and an evaluation data set (see the module doc)."""
    k = int(train.num_classes)
    names = [str(c) for c in getattr(train, "classes", range(k))]
    counts = np.bincount(np.asarray(train.targets, dtype=np.int64), minlength=k)
    test_counts = np.bincount(np.asarray(test.targets, dtype=np.int64), minlength=k)
    h_r = float(cfg.extract.h_r)
    head, tail = head_tail_split(counts, h_r)
    groups = shot_groups(counts, many=MANY, few=FEW)
    largest = int(np.argmax(counts))  # ties: the lower class id
    smallest = int(np.argmin(counts))
    missing = [names[c] for c in np.flatnonzero(test_counts == 0)]
    n = int(counts.sum())

    def split_entry(ds, cnt):
        return {"source": _source(ds, cfg), "images": int(len(ds.targets)), "classes": int((cnt > 0).sum())}

    prof = {
        "config": cfg.name,
        "dataset": cfg.dataset.name,
        "root": os.path.abspath(cfg.data_root),
        "verified": bool(verify),
        "num_classes": k,
        "splits": {"train": split_entry(train, counts),
                   "test": dict(split_entry(test, test_counts), missing_classes=missing)},
        "largest": _class_ref(largest, names, counts),
        "smallest": _class_ref(smallest, names, counts),
        "imbalance_ratio": float(counts[largest] / counts[smallest]) if counts[smallest] > 0 else None,
        "shot_groups": {g: {"classes": int(len(ids)), "images": int(counts[ids].sum())} for g, ids in groups.items()},
        "shot_rule": f"many: more than {MANY} training images, medium: {FEW} to {MANY}, few: fewer than {FEW}",
        "head_tail": {"h_r": h_r,
                      "head": {"classes": int(len(head)), "images": int(counts[head].sum()),
                               "fraction": float(counts[head].sum() / n)},
                      "tail": {"classes": int(len(tail)), "images": int(counts[tail].sum()),
                               "fraction": float(counts[tail].sum() / n)},
                      "head_ids": head.tolist(), "tail_ids": tail.tolist()},
        "classes": names,
        "train_counts": counts.tolist(),
        "test_counts": test_counts.tolist(),
        "warnings": list(getattr(train, "warnings", [])) + list(getattr(test, "warnings", [])),
    }
    if len(tail) == 0:
        prof["warnings"].append(f"no tail class at extract.h_r={h_r:g} (the head holds every class): "
                                f"FSA has nothing to augment; raise extract.h_r")
    if k <= cfg.extract.n_f:
        prof["warnings"].append(f"extract.n_f={cfg.extract.n_f} confusing classes need more than {cfg.extract.n_f} "
                                f"classes; this data set has {k}")

    # duplicates and unreadable files
    files = {"train": _files(train), "test": _files(test)}
    dup: dict = {}
    if files["train"] is not None and files["test"] is not None:
        for s in ("train", "test"):
            extra, rep = _listed_twice(files[s])
            dup[f"listed_twice_{s}"] = {"entries": extra, "examples": rep[:EXAMPLES]}
        both = sorted(set(files["train"]) & set(files["test"]))
        dup["in_both_splits"] = {"files": len(both), "examples": both[:EXAMPLES]}
    else:
        dup["listed_twice_train"] = dup["listed_twice_test"] = None
        dup["in_both_splits"] = None
    unreadable = None
    same = None
    if verify:
        where: dict[str, list[str]] = defaultdict(list)  # content hash -> "split:identifier"
        unreadable = []
        if files["train"] is not None and files["test"] is not None:
            unique = sorted(set(files["train"]) | set(files["test"]))
            nworkers = workers or min(8, os.cpu_count() or 1)
            with ThreadPoolExecutor(max_workers=nworkers) as pool:
                checked = dict(zip(unique, pool.map(_check_image, unique)))
            for s in ("train", "test"):
                seen = set()
                for p in files[s]:
                    if p in seen:
                        continue
                    seen.add(p)
                    digest, err = checked[p]
                    if err is not None:
                        unreadable.append({"split": s, "path": p, "error": err})
                    if digest is not None:
                        where[digest].append(f"{s}:{p}")
            # a file in both splits is one file: not a content duplicate of itself
            for key in list(where):
                where[key] = list(dict.fromkeys(where[key]))
        else:
            for s, ds in (("train", train), ("test", test)):
                data = np.ascontiguousarray(ds.data)
                for i in range(len(data)):
                    where[hashlib.sha1(data[i].tobytes()).hexdigest()].append(f"{s}:{i}")
        groups_ = [g for g in where.values() if len(g) > 1]
        if files["train"] is not None:  # the same path in both splits is reported above
            groups_ = [g for g in groups_ if len({x.split(":", 1)[1] for x in g}) > 1]
        across = [g for g in groups_ if len({x.split(":", 1)[0] for x in g}) > 1]
        same = {"groups": len(groups_), "extra_files": int(sum(len(g) - 1 for g in groups_)),
                "groups_across_splits": len(across), "examples": groups_[:EXAMPLES]}
    dup["same_content"] = same
    prof["duplicates"] = dup
    prof["unreadable"] = unreadable
    return prof


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))


def format_profile(p: dict) -> list[str]:
    """The printed profile, one string a line."""
    tr, te = p["splits"]["train"], p["splits"]["test"]
    k = p["num_classes"]
    lg, sm = p["largest"], p["smallest"]
    g, ht = p["shot_groups"], p["head_tail"]
    out = [f"data set {p['dataset']} (config {p['config']}), root {p['root']}",
           f"  train: {tr['images']} images, {_plural(k, 'class')} ({tr['source']})"]
    line = f"  test:  {te['images']} images, {te['classes']} of {_plural(k, 'class')} ({te['source']})"
    if te["missing_classes"]:
        shown = ", ".join(repr(m) for m in te["missing_classes"][:5])
        more = f" and {len(te['missing_classes']) - 5} more" if len(te["missing_classes"]) > 5 else ""
        line += f"; no test images for {shown}{more}"
    out.append(line)
    ratio = "n/a" if p["imbalance_ratio"] is None else f"{p['imbalance_ratio']:.4g}"
    out.append(f"  largest class {lg['name']!r} (id {lg['id']}): {lg['images']} images; smallest {sm['name']!r} "
               f"(id {sm['id']}): {sm['images']}; imbalance ratio {ratio}")
    out.append(f"  many-shot (>{MANY}): {_plural(g['many']['classes'], 'class')}, medium ({FEW}-{MANY}): "
               f"{g['medium']['classes']}, few-shot (<{FEW}): {g['few']['classes']}")
    out.append(f"  head/tail at h_r {ht['h_r']:g}: {ht['head']['classes']} head classes ({ht['head']['images']} images, "
               f"{100 * ht['head']['fraction']:.1f}%), {ht['tail']['classes']} tail classes ({ht['tail']['images']} images)")
    d = p["duplicates"]
    if d["listed_twice_train"] is None:
        listed = "paths: n/a (in-memory data)"
    else:
        listed = (f"listed twice: train {d['listed_twice_train']['entries']}, test {d['listed_twice_test']['entries']}; "
                  f"in both splits: {d['in_both_splits']['files']}")
    if d["same_content"] is None:
        same = "same content: not checked (--verify)"
    else:
        s = d["same_content"]
        same = f"same content: {s['extra_files']} extra files in {s['groups']} groups ({s['groups_across_splits']} across splits)"
    out.append(f"  duplicates: {listed}; {same}")
    if p["unreadable"] is None:
        out.append("  unreadable images: not checked (--verify opens every image)")
    else:
        out.append(f"  unreadable images: {len(p['unreadable'])}"
                   + (f", first {p['unreadable'][0]['path']}: {p['unreadable'][0]['error']}" if p["unreadable"] else ""))
    for w in p["warnings"]:
        out.append(f"  warning: {w}")
    return out


# --------------------------------------------------------------------------- plot


def plot_class_sizes(p: dict, width_px: int = 1000, height_px: int = 520):
    """Training images per class, classes sorted by size (descending), log-scale y; the
    head / tail boundary as a vertical line, the many / few thresholds as horizontal ones;
    test images per class as dots.  Returns a matplotlib Figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(p["train_counts"], dtype=np.int64)
    test = np.asarray(p["test_counts"], dtype=np.int64)
    k = len(counts)
    order = np.argsort(-counts, kind="stable")  # descending, ties by lower id (as head_tail_split)
    c = counts[order].astype(float)
    n_head = p["head_tail"]["head"]["classes"]
    dpi = 100
    fig = Figure(figsize=((width_px + 0.25) / dpi, (height_px + 0.25) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.arange(k + 1, dtype=float)
    base = 0.5
    ax.stairs(c[:n_head], edges[: n_head + 1], fill=True, baseline=base, color="tab:blue",
              label=f"head ({n_head} classes)")
    if n_head < k:
        ax.stairs(c[n_head:], edges[n_head:], fill=True, baseline=base, color="tab:orange",
                  label=f"tail ({k - n_head} classes)")
    if test.sum() > 0:
        t = test[order].astype(float)
        keep = t > 0
        ax.plot(np.arange(k)[keep] + 0.5, t[keep], ".", color="black", markersize=3 if k > 100 else 5,
                label="test images")
    ax.set_yscale("log")
    ax.set_xlim(0, k)
    top = max(float(c.max()), float(test.max()) if test.size else 1.0)
    ax.set_ylim(base, top * 1.6)
    ax.axvline(n_head, color="black", linestyle="--", linewidth=1.2)
    ax.text(n_head, top * 1.25, f"  head | tail (h_r {p['head_tail']['h_r']:g})  ", ha="center", va="bottom", fontsize=9,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
    for y, label in ((MANY, f"many-shot > {MANY}"), (FEW, f"few-shot < {FEW}")):
        if base < y < top * 1.6:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1)
            ax.text(0, y, f" {label}", ha="left", va="bottom", fontsize=8, color="dimgrey",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=1))
    if k <= 40:
        ax.set_xticks(np.arange(k) + 0.5)
        ax.set_xticklabels([p["classes"][i] for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(f"{k} classes, sorted by training images")
    ax.set_ylabel("training images (log scale)")
    ratio = "" if p["imbalance_ratio"] is None else f", imbalance ratio {p['imbalance_ratio']:.4g}"
    ax.set_title(f"{p['config']} ({p['dataset']}): {p['splits']['train']['images']} training images{ratio}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- command


def run_profile(config: str, overrides=None, workdir=".", out=None, verify: bool = False,
                print_fn: Callable[[str], None] = print) -> dict:
    """`fsa-lt data`: load the config (phase II: ``extract.h_r``), build both splits,
    print the profile and write ``profile.json`` and ``class_sizes.png`` to ``out``
    (default ``WORKDIR/log/data/<config>/``).  Returns the profile."""
    from ..config import load_config
    from ..engine.io import write_bytes, write_json
    from . import build_dataset

    cfg = load_config(config, "phase_ii", list(overrides or []))
    train = build_dataset(cfg, "train", augment=False)
    test = build_dataset(cfg, "test", augment=False)
    if test.num_classes != train.num_classes:
        raise DataError(f"test split has {test.num_classes} classes, training split has {train.num_classes}")
    prof = profile_datasets(cfg, train, test, verify=verify)
    folder = Path(out) if out else Path(workdir) / "log" / "data" / cfg.name
    json_path, png_path = folder / "profile.json", folder / "class_sizes.png"
    prof["files"] = {"json": str(json_path), "plot": str(png_path)}
    fig = plot_class_sizes(prof)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    for line in format_profile(prof):
        print_fn(line)
    write_bytes(png_path, buf.getvalue())
    write_json(json_path, prof)
    print_fn(f"  wrote {json_path} and {png_path}")
    if prof["unreadable"]:
        first = prof["unreadable"][0]
        more = f" (and {len(prof['unreadable']) - 1} more)" if len(prof["unreadable"]) > 1 else ""
        raise DataError(f"cannot read image {first['path']}: {first['error']}{more}; all are listed in {json_path}")
    return prof
