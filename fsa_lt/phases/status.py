"""`fsa-lt status`: what each run of a work folder is doing, phase by phase, without touching it.

A 200-epoch Phase I outlasts a sitting; its owner comes back and asks which runs are still
going, which were cut off (and where), and which finished. Everything here is read from the
files the phases write (see `records`): a run is

    running      a live process holds its lock (``log/<phase>/<config>/.<note>.lock``)
    finished     its ``record.json`` is there, the files it names are as it wrote them, and the
                 runs it consumed are still in place (whether it is *current* for some settings
                 is for the command that would use it to decide: `status` knows no overrides)
    stale        finished, but an input it consumed has been redone since (a forced rerun of an
                 earlier phase swapped in a new run, say, and was stopped before this phase): the
                 command that made it redoes it
    damaged      finished, but a file its record names is missing or has changed since
    interrupted  it started (``pending.json``, or Phase I's ``last.pt``) and nothing holds it

Nothing is written, and no lock is taken beyond a probe.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import PHASES
from ..errors import BusyError, CheckpointError, ConfigError
from . import records
from .common import PHASE_VERBS
from .summary import duration


def _phase_i_progress(workdir: Path, config: str, note: str) -> str:
    last = workdir / "checkpoints" / "phase_i" / config / note / "last.pt"
    if not last.is_file():
        return "no epoch saved yet"
    from ..engine.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(last, expect_phase="phase_i")
    except CheckpointError as exc:
        return f"last.pt unreadable ({str(exc).splitlines()[0][:120]})"
    total = ((state.get("config") or {}).get("train") or {}).get("epochs", "?")
    return f"epoch {state.get('epoch', '?')}/{total} saved in last.pt"


def _finished(rec: dict, phase: str) -> str:
    final = ((rec.get("metrics") or {}).get("final") or {})
    parts = [f"finished {rec.get('finished', '?')}"]
    if final.get("top1") is not None:
        parts.append(f"final top1 {final['top1']:.2f}")
    secs = rec.get("train_seconds", rec.get("seconds"))
    if secs is not None:
        parts.append(duration(secs))
    return ", ".join(parts)


def scan(workdir, config: str | None = None, note: str | None = None) -> list[dict]:
    """One entry per run folder ``log/<phase>/<config>/<note>/`` (staging folders of `--force`
    runs are shown as part of the note they replace): phase, config, note, state, detail."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: a file, not a folder")
    if not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: no such folder")
    rows = []
    current: dict = {}  # phase -> run_ids in place (records.inputs_problem), read once per scan
    for phase in PHASES:
        base = workdir / "log" / phase
        for cdir in sorted(base.iterdir()) if base.is_dir() else ():
            if not cdir.is_dir() or (config is not None and cdir.name != config):
                continue
            notes = {p.name for p in cdir.iterdir() if p.is_dir() and not p.name.startswith(".")}
            notes |= {p.name[1:-len(".lock")] for p in cdir.glob(".*.lock")}  # a run that has made nothing yet
            for n in sorted(notes):
                if note is not None and n != note:
                    continue
                rows.append(_one(workdir, phase, cdir.name, n, current.setdefault(cdir.name, {})))
    return rows


def _one(workdir: Path, phase: str, config: str, note: str, current: dict | None = None) -> dict:
    ldir = records.log_dir(workdir, phase, config, note)
    lock = records.lock_path(workdir, phase, config, note)
    row = {"phase": phase, "config": config, "note": note}
    try:
        records.check_not_busy(workdir, phase, config, note)
    except BusyError:
        h = records.lock_holder(lock)
        who = f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')}"
        what = _phase_i_progress(workdir, config, note) if phase == "phase_i" else "started"
        staged = " (replacing the finished run: --force)" if (ldir.parent / records.staging_note(note)).is_dir() else ""
        return dict(row, state="running", detail=f"{what}{staged}; {who}"
                    + (f": {h['command']}" if h.get("command") else ""))
    rec = records.read_record(ldir)
    if rec is not None:
        redo = f"fsa-lt {PHASE_VERBS[phase]} / run"
        problem = records.outputs_problem(workdir, rec)
        if problem:
            return dict(row, state="damaged", detail=f"{problem}; redo it with --force ({redo} with the same "
                                                      f"settings); it had {_finished(rec, phase)}")
        problem = records.inputs_problem(workdir, rec, current)
        if problem:
            return dict(row, state="stale", detail=f"{problem}; the command that made it redoes it ({redo} with "
                                                    f"the same settings); it had {_finished(rec, phase)}")
        return dict(row, state="finished", detail=_finished(rec, phase))
    started = (ldir / records.PENDING).is_file() or \
        (phase == "phase_i" and (workdir / "checkpoints" / phase / config / note / "last.pt").is_file())
    if not started:
        return dict(row, state="empty", detail="no record and no sign of a start")
    if phase == "phase_i":
        how = (f"{_phase_i_progress(workdir, config, note)}; resume with the command that started it plus "
               f"--resume (fsa-lt train --config {config} --note {note} ... --resume)")
    else:
        how = f"starts over when its command runs again (fsa-lt {PHASE_VERBS[phase]} / run with the same settings)"
    h = records.lock_holder(lock)  # a process killed with -9 leaves its lock file: it says what ran
    if h.get("command"):
        how += f"; it was started as: {h['command']}"
    return dict(row, state="interrupted", detail=how)


def table(rows: list[dict]) -> str:
    cols = ("phase", "config", "note", "state")
    width = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols) + "  detail"]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) + "  " + r["detail"] for r in rows]
    return "\n".join(lines)


def status(workdir=".", config: str | None = None, note: str | None = None, as_json: bool = False,
           print_fn=print) -> list[dict]:
    rows = scan(workdir, config, note)
    if as_json:
        print_fn(json.dumps(rows, indent=1))
    elif not rows:
        print_fn(f"no runs under {Path(workdir) / 'log'}" + (f" for config {config}" if config else "")
                 + (f" and note {note}" if note else ""))
    else:
        print_fn(table(rows))
    return rows


__all__ = ["status", "scan", "table"]
