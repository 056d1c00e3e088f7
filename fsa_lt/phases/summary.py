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
    secs = [x.get("seconds") for x in rows]
    if secs and all(v is not None for v in secs):
        out["seconds"] = sum(secs) / len(secs)
    out.update(extra)
    return out


def pooled_choice(choices: list[str], seeds: list) -> str:
    """The choice cell of a row pooled over Phase I models: the one text when every model made the
    same choice, else each model's own, labelled by its Phase I seed (a pooled row must not show only
    the first model's taus as if they were everyone's)."""
    if len(set(choices)) <= 1:
        return choices[0] if choices else "-"
    return "; ".join(f"Phase I seed {s}: {c}" for s, c in zip(seeds, choices))


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


# What a compare row says besides its numbers (kept when rows are pooled over Phase I models).
ROW_INFO = ("key", "input", "choice")


def compare_table(rows: list[dict], diffs: dict) -> str:
    """`fsa-lt compare`'s table: a row per method with its input (stored features / images), where its
    choices were made, the columns, its top-1 minus FSA's paired run by run (`diffs` by row key) and
    the seconds per run."""
    lines = ["| method | input | choice | n | " + " | ".join(COLUMNS) + " | top1 minus FSA (paired) | s/run |",
             "|---|---|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        d = diffs.get(r.get("key"))
        cells = [cell(r.get(c), r.get(f"{c}_std")) for c in COLUMNS]
        diff = "-" if d is None else cell(d.get("top1"), d.get("top1_std"), signed=True)
        secs = "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['model']} | {r.get('input', '-')} | {r.get('choice', '-')} | {r.get('n', 1)} | "
                     + " | ".join(cells) + f" | {diff} | {secs} |")
    return "\n".join(lines)


def diagnostics_table(arms: list[tuple[str, list[dict]]]) -> str:
    """What Phase III did to each trained classifier, on the test split, as the runs' histories record it
    (`phase_iii.diagnose_head`), averaged over the runs of an arm: the share of predictions in head
    classes, the mean logit norm and the mean head-minus-tail logit, each from the Phase I classifier
    (iteration 0) to the run's final one (the chosen iteration when one was chosen on validation), how
    far the trained parameters moved (relative to their norm), and top-1 / head / tail accuracy at the
    iterations every run evaluated. `arms`: [(label, [metrics.json of each run])]; arms without a
    history of two or more points are left out. Empty string when none is left."""
    lines = []
    for label, mets in arms:
        hists = [m.get("history") or [] for m in mets]
        if not hists or any(len(h) < 2 for h in hists):
            continue
        ends = []
        for m, h in zip(mets, hists):
            it = (m.get("final") or {}).get("iteration")
            ends.append(next((e for e in h if e.get("iteration") == it), h[-1]))
        starts = [h[0] for h in hists]

        def _mean(values):  # None unless every run has the value (as in a table row)
            return _stats(values)[0]

        def span(key, digits):
            a, b = _mean([x.get(key) for x in starts]), _mean([x.get(key) for x in ends])
            return f"{cell(a, digits=digits)} -> {cell(b, digits=digits)}"

        shared = sorted(set.intersection(*[{e["iteration"] for e in h} for h in hists]))
        by_it = {it: [next(e for e in h if e["iteration"] == it) for h in hists] for it in shared}

        def curve(key):
            return ", ".join(cell(_mean([e.get(key) for e in by_it[it]]), digits=1) for it in shared)

        lines.append(f"| {label} | {len(mets)} | {span('pred_head', 1)} | {span('logit_norm', 2)} | "
                     f"{span('head_tail_gap', 2)} | {cell(_mean([x.get('shift') for x in ends]), digits=3)} | "
                     f"{', '.join(map(str, shared))} | {curve('top1')} | {curve('head')} | {curve('tail')} |")
    if not lines:
        return ""
    head = ("| method | n | test predictions in head classes, % (start -> end) | mean logit norm | "
            "head minus tail logit | classifier moved (of its norm) | iterations | top1 | head | tail |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(lines)


def _unique(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def duration(s: float) -> str:
    """Seconds as a reader wants them: s, min or h."""
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def evidence(workdir, config: str, models: list[dict]) -> dict:
    """What a reader needs beside the numbers, read from the records of the runs behind a summary:
    the machine (processor, CPUs, GPU, threads, versions, precision, over every segment of a
    resumed Phase I) and the time of each phase. `models`: one dict per Phase I model,
    ``{"seed", "note", "arms": {row key: [Phase III output notes]}}``.

    Phase I's time is its record's ``train_seconds``: the training epochs summed over every
    segment (start and resumes; evaluation passes not included); a record's ``seconds`` is the wall
    time of the invocation that finished it, which for a resumed run is its last segment only."""
    workdir = Path(workdir)

    def rec(phase, note):
        return records.read_record(records.log_dir(workdir, phase, config, note)) or {}

    envs, p1, p2, p3 = [], [], [], {}
    for m in models:
        r1 = rec("phase_i", m["note"])
        segs = r1.get("segments") or []
        envs += [s.get("environment") or {} for s in segs] + [r1.get("environment") or {}]
        secs = r1.get("train_seconds", r1.get("seconds"))
        p1.append({"seed": m.get("seed"), "note": m["note"], "seconds": secs, "segments": len(segs) or 1,
                   "epochs": ((r1.get("config") or {}).get("train") or {}).get("epochs")})
        s2 = rec("phase_ii", m["note"]).get("seconds")
        if s2 is not None:
            p2.append(s2)
        for key, notes in (m.get("arms") or {}).items():
            p3.setdefault(key, []).extend(x for x in (rec("phase_iii", n).get("seconds") for n in notes) if x is not None)
    machine = {k: _unique(e.get(k) for e in envs)
               for k in ("processor", "cpus_available", "gpu", "cpu_threads", "torch", "precision")}
    lines = []
    parts = []
    if machine["gpu"]:
        parts.append("GPU " + " / ".join(map(str, machine["gpu"])))
    missing = sum(1 for e in envs if e and not e.get("processor"))
    if not machine["processor"]:
        parts.append("processor not recorded (runs from an fsa-lt that did not record it)")
    else:
        parts.append("processor " + " / ".join(map(str, machine["processor"]))
                     + (f" ({missing} of {len(envs)} segment records predate the processor field)" if missing else ""))
    if machine["cpus_available"]:
        parts.append(" / ".join(map(str, machine["cpus_available"])) + " CPUs available")
    if machine["cpu_threads"]:
        parts.append(" / ".join(map(str, machine["cpu_threads"])) + " thread(s) per process")
    if machine["torch"]:
        parts.append("torch " + " / ".join(machine["torch"]))
    lines.append("Machine (from the runs' records; ' / ' joins values that differ between runs or resumed "
                 "segments): " + "; ".join(parts) + ".")
    if machine["precision"]:
        lines.append("Phase I precision: " + " / ".join(machine["precision"]) + ".")
    known = [x for x in p1 if x["seconds"] is not None]
    if known:  # the machine lines above are `lines`; the time line is kept apart (compare has its own s/run)
        each = "; ".join(f"{x['note']}: {duration(x['seconds'])} over {x['epochs']} epochs in {x['segments']} "
                         f"segment{'s' if x['segments'] != 1 else ''}" for x in known)
        t = [f"Phase I, training epochs: {duration(sum(x['seconds'] for x in known) / len(known))} per model "
             f"({each}; evaluation not included)"]
        if p2:
            t.append(f"Phase II: {duration(sum(p2) / len(p2))} per model")
        p3_parts = [f"{duration(sum(v) / len(v))} per {({'fsa': 'FSA', 'control': 'No-Aug control'}).get(key, key)} "
                    f"run (mean of {len(v)})" for key, v in p3.items() if v]
        if p3_parts:
            t.append("Phase III: " + ", ".join(p3_parts))
        timing = "Time per phase (from the runs' records): " + "; ".join(t) + "."
    else:
        timing = None
    return {"machine": machine, "phase_i": p1, "phase_ii_seconds": p2, "phase_iii_seconds": p3,
            "machine_text": lines, "time_text": timing, "text": lines + ([timing] if timing else [])}


def summary_table(pairs: list[tuple[str, dict]]) -> str:
    """Table of single runs given as (name, metrics) pairs."""
    return table([row(name, [(name, m)]) for name, m in pairs])


__all__ = ["COLUMNS", "ROW_INFO", "final_metrics", "on_split", "row", "paired_difference", "pool", "pooled_choice", "table", "compare_table",
           "summary_table", "cell", "evidence", "duration"]
