"""Summary tables of finished runs: one place for the pipeline (`fsa-lt run`), `fsa-lt compare`
and the HTML report.

A row is one model (Phase I, the No-Aug control, FSA, a baseline) over one or more finished
runs (seeds): each column's mean, its sample standard deviation (ddof 1) when more than one
run, the count, and the runs it came from. Every value is read from the metrics of the run
the row names (its ``log/<phase>/<config>/<note>/metrics.json``, under a finished record),
and head / tail are recomputed from the per-class accuracies on the split of the Phase II
store, so that Phase I, the control and FSA are compared on the same head/tail classes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..engine.metrics import group_accuracy
from ..errors import CheckpointError
from . import records

COLUMNS = ("top1", "many", "medium", "few", "head", "tail")


def final_metrics(workdir, phase: str, config: str, note: str, split: dict | None = None) -> dict:
    """The final model's metrics of a finished run (``metrics.json`` under its record), with head /
    tail on `split` (``{'head': [...], 'tail': [...]}``) when given."""
    ldir = records.log_dir(Path(workdir), phase, config, note)
    if records.read_record(ldir) is None:
        raise CheckpointError(f"{ldir}: no finished run there (no {records.RECORD})")
    m = dict((records.read_json_file(ldir / "metrics.json") or {}).get("final") or {})
    if not m:
        raise CheckpointError(f"{ldir / 'metrics.json'}: no final metrics")
    return on_split(m, split)


def on_split(m: dict, split: dict | None) -> dict:
    if split is None or m.get("per_class") is None:
        return m
    pc = np.array([np.nan if v is None else v / 100.0 for v in m["per_class"]], dtype=np.float64)
    out = dict(m)
    out["head"] = group_accuracy(pc, split["head"])
    out["tail"] = group_accuracy(pc, split["tail"])
    return out


def _stats(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals or len(vals) != len(values):
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def row(model: str, runs: list[tuple[str, dict]], **extra) -> dict:
    """A table row: the mean of each column over `runs` ([(run name, metrics)]), with ``<col>_std``."""
    out = {"model": model, "n": len(runs), "runs": [name for name, _ in runs]}
    for c in COLUMNS:
        out[c], out[f"{c}_std"] = _stats([m.get(c) for _, m in runs])
    out["per_run"] = [{"run": name, **{c: m.get(c) for c in COLUMNS}} for name, m in runs]
    out.update(extra)
    return out


def paired_difference(model: str, a: list[tuple[str, dict]], b: list[tuple[str, dict]], **extra) -> dict:
    """Row of the differences a - b, run by run (runs paired in order: the same seed, the same Phase I)."""
    if len(a) != len(b):
        raise ValueError("paired difference needs as many runs on both sides")
    diffs = []
    for (na, ma), (nb, mb) in zip(a, b):
        diffs.append((f"{na} - {nb}", {c: (None if ma.get(c) is None or mb.get(c) is None else ma[c] - mb[c])
                                       for c in COLUMNS}))
    return row(model, diffs, difference=True, **extra)


def pool(model: str, rows: list[dict], **extra) -> dict:
    """Rows of the same model over several Phase I seeds: the mean over the seeds of each seed's mean,
    the std over the seeds (the spread Phase I brings), and the mean within-seed std (the spread
    the later runs bring, e.g. Phase III seeds)."""
    out = {"model": model, "n": len(rows), "runs": [r for x in rows for r in x["runs"]],
           "per_run": [p for x in rows for p in x["per_run"]], "groups": len(rows)}
    for c in COLUMNS:
        out[c], out[f"{c}_std"] = _stats([x.get(c) for x in rows])
        within = [x.get(f"{c}_std") for x in rows]
        out[f"{c}_within_std"] = (sum(within) / len(within)) if within and all(w is not None for w in within) else None
    if any(x.get("difference") for x in rows):
        out["difference"] = True
    out.update(extra)
    return out


def cell(mean, std=None, digits: int = 2, signed: bool = False) -> str:
    if mean is None:
        return "-"
    s = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return s if std is None else f"{s} ± {std:.{digits}f}"


def table(rows: list[dict], label: str = "model", seconds: bool = False) -> str:
    """Markdown table; a cell is ``mean ± std`` when the row holds more than one run; with
    `seconds`, a last column of each row's ``seconds`` (time per run)."""
    lines = [f"| {label} | n | " + " | ".join(COLUMNS) + (" | s/run |" if seconds else " |"),
             "|---|---|" + "---|" * (len(COLUMNS) + int(seconds))]
    for r in rows:
        signed = bool(r.get("difference"))
        cells = [cell(r.get(c), r.get(f"{c}_std"), signed=signed) for c in COLUMNS]
        if seconds:
            cells.append("-" if r.get("seconds") is None else f"{r['seconds']:.0f}")
        lines.append(f"| {r['model']} | {r.get('n', 1)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(pairs: list[tuple[str, dict]]) -> str:
    """Table of single runs given as (name, metrics) pairs."""
    return table([row(name, [(name, m)]) for name, m in pairs])


__all__ = ["COLUMNS", "final_metrics", "on_split", "row", "paired_difference", "pool", "table", "summary_table", "cell"]
