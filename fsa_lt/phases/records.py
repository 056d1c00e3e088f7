"""Run records: what makes a phase's outputs complete, and whether they are still the ones asked for.

A phase's outputs are **complete** when its log folder holds ``record.json``.  The record is
written once, atomically, as the last act of a phase that finished; nothing rewrites it
(test mode and ``visualize`` write files of their own).  It holds

    run_id     a fresh id of this finished run (what later phases name as their input)
    config     the resolved config the phase ran with (every key)
    inputs     what it consumed: the Phase I record's run_id and the checkpoint file's
               SHA-256 (Phase II), the Phase II record's run_id and the store index's
               SHA-256 (Phase III)
    outputs    SHA-256 of the files later phases read (Phase I / III checkpoints, the
               store index), so a file replaced after the fact is noticed
    environment, segments, started, finished, seconds

While a phase runs, ``pending.json`` (the config, the start time) marks its folder as an
interrupted run until the record replaces it; Phase I's ``last.pt`` carries its config too.
The running process also holds an exclusive lock on ``log/<phase>/<config>/.<note>.lock``
(`hold_note`), so a second command on the same phase and note (a `fsa-lt run` typed while a
long `fsa-lt train` is still going in the background) stops with a `BusyError` naming the
process, instead of training beside it into the same files. The operating system drops the
lock when the holder exits or is killed, so a crash never leaves it stale (the file itself goes
when a run releases it; one a kill left behind is harmless).

`inspect_phase` compares what is on disk with the config a command asks for and returns
one of ``complete`` (reuse), ``stale`` (finished, but from an input that has changed
since: redo), ``interrupted`` (resume or restart with the same settings), ``absent``;
outputs made with **other settings** are a `ConfigError` naming the keys that differ
(``train.epochs: 1 -> 200``) unless the caller forces a replacement.  With ``--force``
a phase writes into a staging folder beside the old one and `swap_in` puts it in place
only when the new run has finished, so the old outputs stay valid until then.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..engine import distributed as dist
from ..engine.io import write_json
from ..errors import BusyError, CheckpointError, ConfigError

RECORD = "record.json"
PENDING = "pending.json"
RECORD_FORMAT = "fsa-lt-record/1"
STAGING_SUFFIX = ".staging"  # a staging folder is ".<note>.staging": hidden, a name no note can have

# Keys that cannot change what a phase computes (where the data lie, how many loader
# workers, how often a resume point or a spare checkpoint is written, the batch size of
# evaluation, whether Phase III reads the store from memory or memory-mapped: the same
# batches, bit for bit, tests/test_store.py): not compared.
OPERATIONAL = frozenset({
    "dataset.root", "dataset.download", "dataset.num_workers",
    "train.save_every", "train.checkpoint_every", "train.eval_batch_size",
    "finetune.save_every", "extract.store_access",
})
# The sections each phase's result depends on; the rest of the config belongs to later phases.
# Phase I's head/tail columns are recomputed on the store's split wherever they are compared,
# so the extract section does not bind it; Phase II uses neither the seed nor the thresholds
# (tau_s / tau_g apply in Phase III, which is why they can be swept without a new store).
# The validation split is read by Phase III alone (it makes its choices there), so Phases I and II
# ignore its keys: turning it on later keeps their outputs.
VALIDATION_KEYS = ("dataset.validation", "dataset.val_per_class", "dataset.val_seed", "dataset.val_list",
                   "dataset.val_dir")
_PHASE_KEYS = {
    "phase_i": (("seed", "dataset", "model", "train"), VALIDATION_KEYS),
    "phase_ii": (("dataset", "model", "train", "extract"), ("extract.tau_s", "extract.tau_g", *VALIDATION_KEYS)),
    "phase_iii": (("seed", "dataset", "model", "train", "extract", "finetune", "baseline"), ()),
}


_PREFIXES = ("phase_i", "phase_ii", "phase_iii")
_TITLE = {"phase_i": "Phase I", "phase_ii": "Phase II", "phase_iii": "Phase III"}


def owner_phase(key: str) -> str | None:
    """The first phase whose result `key` (dotted, or a whole section) is part of: the phase that
    made it, which a later phase only inherits; None for keys no result depends on."""
    if key in OPERATIONAL:
        return None
    section = key.split(".", 1)[0]
    for phase in _PREFIXES:
        sections, ignore = _PHASE_KEYS[phase]
        if section in sections and key not in ignore:
            return phase
    return None


def check_phase_overrides(overrides) -> None:
    """Refuse, before any work, a ``phase_x.KEY=V`` override whose key belongs to an earlier phase's
    result: `fsa-lt run` would apply it from phase x on, so phase x's record would say a Phase I
    setting (``phase_iii.train.epochs=99``) that Phase I never trained with, or an earlier phase
    would refuse it only after the phases before had run. The seed is also Phase III's own seed."""
    for o in overrides or []:
        key = str(o).split("=", 1)[0].strip()
        head, _, rest = key.partition(".")
        if head not in _PREFIXES or not rest:
            continue
        owner = owner_phase(rest)
        if owner is None or _PREFIXES.index(owner) >= _PREFIXES.index(head):
            continue
        if rest == "seed" and head == "phase_iii":
            continue
        hint = " (Phase III's own seed: phase_iii.seed or finetune.seed)" if rest == "seed" else ""
        raise ConfigError(f"command line override '{o}': {rest} is a setting of {_TITLE[owner]}'s result, which "
                          f"{_TITLE[head]} only reads, so a {head}. prefix cannot change it; give it as {rest}=... "
                          f"or {owner}.{rest}=... (it then applies from {_TITLE[owner]} on){hint}")


# ----------------------------------------------------------------------------- files
_SHA_CACHE: dict = {}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file; remembered per (path, inode, size, mtime) in this process, since one command
    checks the same checkpoints several times (every phase's inputs, before and during work)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def read_json_file(path: Path) -> dict | None:
    """A JSON object, or None if the file is absent; a corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable run record ({type(exc).__name__}); "
                              "remove it or replace the run with --force") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a run record")
    return obj


def read_record(log_dir: Path) -> dict | None:
    rec = read_json_file(Path(log_dir) / RECORD)
    if rec is not None and rec.get("format") != RECORD_FORMAT:
        raise CheckpointError(f"{Path(log_dir) / RECORD}: not an fsa-lt run record")
    return rec


def rel(workdir: Path, path: Path) -> str:
    """`path` relative to the work folder when it lies inside it (records move with the folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path(workdir).resolve()))
    except ValueError:
        return str(path)


def resolve(workdir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(workdir) / p


# ----------------------------------------------------------------------------- configs
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def phase_view(config: dict, phase: str) -> dict[str, Any]:
    """The dotted keys of a config dict that `phase`'s result depends on (defaults filled in
    for keys an older record does not have: a key added later has the old behaviour as default)."""
    sections, ignore = _PHASE_KEYS[phase]
    full = _flatten(Config().to_dict())
    full.update(_flatten({k: v for k, v in config.items() if k not in ("name", "sources")}))
    return {k: v for k, v in full.items()
            if k.split(".")[0] in sections and k not in OPERATIONAL and k not in ignore}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_diff(old: dict, new: dict, phase: str) -> list[str]:
    """``key: old -> new`` for every key of `phase`'s view that differs."""
    a, b = phase_view(old, phase), phase_view(new, phase)
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "(absent)"), b.get(k, "(absent)")
        if not _same(va, vb):
            out.append(f"{k}: {va!r} -> {vb!r}".replace("'", ""))
    return out


# ----------------------------------------------------------------------------- state
@dataclass
class PhaseState:
    status: str                     # complete | stale | interrupted | absent
    record: dict | None = None
    reason: str = ""
    resume_from: Path | None = None  # Phase I: last.pt of an interrupted run with these settings
    diff: list[str] = field(default_factory=list)
    cause: str = ""                  # why stale: settings (forced), outputs (changed files, forced), input

    @property
    def replaced_by_force(self) -> bool:
        """Outputs that only --force lets a new run replace (other settings, or changed files)."""
        return bool(self.diff) or self.cause in ("settings", "outputs")


def log_dir(workdir: Path, phase: str, config: str, note: str) -> Path:
    return Path(workdir) / "log" / phase / config / note


def _changed_message(phase: str, where: Path, what: str, diff: list[str], command: str) -> str:
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    return (f"{phase} outputs in {where} were {what} with other settings ({shown}); "
            f"to replace them add --force, or use a new --note ({command})")


def inspect_phase(workdir: Path, phase: str, cfg: Config, note: str, upstream: dict | None = None,
                  force: bool = False, command: str = "") -> PhaseState:
    """What the outputs of `phase` for config/note hold, against the settings `cfg` asks for.

    upstream: the records this phase consumes (``{'phase_i': rec, 'phase_ii': rec}``), to tell
    a finished run made from an earlier input (stale). Raises `ConfigError` when finished or
    interrupted outputs were made with other settings and `force` is False, and `BusyError`
    when a live process runs this phase and note now.
    """
    workdir = Path(workdir)
    if dist.is_main():  # a live process on this note: say so, not "interrupted" (rank 0 holds a group's lock)
        check_not_busy(workdir, phase, cfg.name, note)
    ldir = log_dir(workdir, phase, cfg.name, note)
    now = cfg.to_dict()
    rec = read_record(ldir)
    if rec is not None:
        diff = config_diff(rec.get("config") or {}, now, phase)
        if diff:
            if force:
                return PhaseState("stale", rec, "settings changed (--force)", diff=diff, cause="settings")
            raise ConfigError(_changed_message(phase, ldir, "made", diff, command))
        problem = _outputs_problem(workdir, rec)
        if problem:
            if force:
                return PhaseState("stale", rec, problem, cause="outputs")
            raise CheckpointError(f"{phase} record {ldir / RECORD} no longer matches its outputs ({problem}); "
                                  f"redo the phase with --force ({command})")
        for up, up_rec in (upstream or {}).items():
            want = (rec.get("inputs") or {}).get(up, {}).get("run_id")
            if up_rec is None or want != up_rec.get("run_id"):
                return PhaseState("stale", rec, f"its {up.replace('_', ' ')} input has been redone since", cause="input")
        return PhaseState("complete", rec)
    saved = None
    pending = read_json_file(ldir / PENDING)
    if pending is not None:
        saved = pending.get("config")
    last = None
    if phase == "phase_i":
        last = workdir / "checkpoints" / phase / cfg.name / note / "last.pt"
        if last.is_file():
            from ..engine.checkpoint import load_checkpoint

            saved = load_checkpoint(last, expect_phase="phase_i").get("config") or saved
        else:
            last = None
    if saved is None:
        return PhaseState("absent")
    diff = config_diff(saved, now, phase)
    if diff:
        if force:
            return PhaseState("absent", reason="an interrupted run with other settings is replaced (--force)", diff=diff)
        raise ConfigError(_changed_message(phase, ldir, "started (and interrupted)", diff, command))
    return PhaseState("interrupted", resume_from=last)


def _outputs_problem(workdir: Path, rec: dict) -> str:
    for name, info in (rec.get("outputs") or {}).items():
        path = resolve(workdir, info["path"])
        if not path.is_file():
            return f"{path} is missing"
        if info.get("sha256") and sha256_file(path) != info["sha256"]:
            return f"{path} has changed since the record was written"
    return ""


_TITLES = {"phase_i": "Phase I", "phase_ii": "Phase II", "phase_iii": "Phase III"}


def current_run_ids(workdir: Path, phase: str, config: str) -> set[str]:
    """The run_ids of the finished runs now in place for `phase` of `config`, every note."""
    base = Path(workdir) / "log" / phase / config
    ids = set()
    for d in sorted(base.iterdir()) if base.is_dir() else ():
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            rec = read_record(d)
        except CheckpointError:
            continue
        if rec and rec.get("run_id"):
            ids.add(rec["run_id"])
    return ids


def inputs_problem(workdir: Path, rec: dict, current: dict | None = None) -> str:
    """Why a finished run is stale ('' when it is not): an input it consumed (the Phase I run of a
    Phase II, the Phase I and II runs of a Phase III) is no longer in place: a later run of that
    phase has replaced it (a forced rerun swaps it in as soon as it finishes) or it is gone.

    current: a cache, phase -> `current_run_ids`, for callers that look at many records."""
    config = rec.get("config_name") or ""
    for up, info in sorted((rec.get("inputs") or {}).items()):
        rid = (info or {}).get("run_id")
        if rid is None or up not in _TITLES:
            continue
        if current is None:
            ids = current_run_ids(workdir, up, config)
        else:
            if up not in current:
                current[up] = current_run_ids(workdir, up, config)
            ids = current[up]
        if rid not in ids:
            return f"its {_TITLES[up]} input has been redone (or removed) since it ran"
    return ""


def outputs_problem(workdir: Path, rec: dict) -> str:
    """What is wrong with the files a finished run's record names ('' when they are as written)."""
    return _outputs_problem(Path(workdir), rec)


# ----------------------------------------------------------------------------- one process per note
try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; two commands on one note are not prevented
    fcntl = None


def lock_path(workdir: Path, phase: str, config: str, note: str) -> Path:
    """Beside the note's log folder, not inside it: `--force` swaps that folder out while running."""
    return Path(workdir) / "log" / phase / config / f".{note}.lock"


def lock_holder(path: Path) -> dict:
    """What the last process to take a lock wrote there (pid, host, started, command); {} if nothing."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_message(phase: str, config: str, note: str, path: Path) -> str:
    holder = lock_holder(path)
    who = f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('started', '?')}" if holder.get("pid") \
        else "another process"
    cmd = f": {holder['command']}" if holder.get("command") else ""
    return (f"{phase} of {config} / {note} is being run by {who}{cmd}; wait for it to finish (or stop it) "
            f"and run this again")


class _NoteLock:
    def __init__(self, path: Path, f, made: list[Path]):
        self.path, self.file, self.made = path, f, made


def hold_note(workdir: Path, phase: str, config: str, note: str):
    """Take the exclusive lock of one phase's note for this process; returns a handle to give to
    `release_note` (the process's exit drops the lock too). Raises `BusyError` when a live
    process holds it. The lock file goes when released, with any folder made only for it."""
    if fcntl is None:
        return None
    path = lock_path(workdir, phase, config, note)
    made = []
    d = path.parent
    while not d.exists():
        made.append(d)
        d = d.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BusyError(_busy_message(phase, config, note, path)) from None
        except OSError:  # a file system without locks (some network mounts): run unguarded, as before
            f.close()
            return None
        try:  # a holder that released it in between has unlinked this file: lock the new one
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else ""}))
    f.flush()
    return _NoteLock(path, f, made)


def release_note(handle) -> None:
    if handle is None or handle.file.closed:
        return
    try:
        handle.path.unlink()  # while still holding it (see the inode check in hold_note)
    except OSError:
        pass
    fcntl.flock(handle.file.fileno(), fcntl.LOCK_UN)
    handle.file.close()
    for d in handle.made:  # innermost first; only folders still empty
        try:
            d.rmdir()
        except OSError:
            break


def check_not_busy(workdir: Path, phase: str, config: str, note: str) -> None:
    """`BusyError` if a live process runs this phase and note now (a probe that writes nothing).
    `inspect_phase` calls it, so every command asks before any work."""
    if fcntl is None:
        return
    path = lock_path(workdir, phase, config, note)
    try:
        f = open(path, "r")
    except FileNotFoundError:
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(_busy_message(phase, config, note, path)) from None
        except OSError:  # no locks on this file system: nothing to tell
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- notes
def check_note(note: str, flag: str = "--note") -> str:
    """A note is one plain folder name: the last part of ``log/<phase>/<config>/<note>/`` and its
    siblings. Not empty, not '.' or '..', no path separator, and not starting with '.' (hidden
    names are the lock files and staging folders of the notes beside them); else a ConfigError."""
    bad = None
    if not note:
        bad = "it is empty"
    elif note in (".", ".."):
        bad = "it names a folder itself, not one inside the work folder"
    elif "/" in note or "\\" in note or (os.sep in note) or (os.altsep and os.altsep in note):
        bad = "it holds a path separator"
    elif note.startswith("."):
        bad = "it starts with '.' (hidden names are kept for lock files and staging folders)"
    elif any(ord(ch) < 32 or ch == "\x7f" for ch in note):
        bad = "it holds a control character"
    if bad:
        raise ConfigError(f"{flag} {note!r}: a note is one plain folder name (e.g. r1, cifar_lr0.01), and {bad}")
    return note


# ----------------------------------------------------------------------------- writing
def staging_note(note: str) -> str:
    """Where a run that replaces `note`'s finished outputs writes until it finishes: hidden beside
    it, under a name `check_note` refuses, so no note of the user's is ever taken for it."""
    return f".{note}{STAGING_SUFFIX}"


def write_pending(ldir: Path, cfg: Config, phase: str, note: str) -> None:
    write_json(Path(ldir) / PENDING, {"phase": phase, "note": note, "config": cfg.to_dict(),
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid()})


def new_record(phase: str, cfg: Config, note: str, inputs: dict, outputs: dict, environment: dict,
               started: str, seconds: float, metrics: dict | None = None, **extra) -> dict:
    return {"format": RECORD_FORMAT, "phase": phase, "config_name": cfg.name, "note": note,
            "run_id": uuid.uuid4().hex, "config": cfg.to_dict(), "inputs": inputs, "outputs": outputs,
            "environment": environment, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": seconds, "metrics": metrics, **extra}


def file_output(workdir: Path, path: Path) -> dict:
    return {"path": rel(workdir, path), "sha256": sha256_file(path)}


def write_record(ldir: Path, record: dict) -> None:
    """The last file a finished phase writes; removes the pending marker."""
    write_json(Path(ldir) / RECORD, record)
    try:
        (Path(ldir) / PENDING).unlink()
    except FileNotFoundError:
        pass


def swap_in(staged: dict[str, Path], final: dict[str, Path]) -> None:
    """Put a finished staging run's folders in place of the old ones (per kind: ckpt, log, tb, feature).

    The record (in the log folder) moves last, so an interruption in between leaves no record
    that names files it does not match."""
    order = [k for k in ("ckpt", "tb", "feature", "log") if k in staged]
    for kind in order:
        src, dst = Path(staged[kind]), Path(final[kind])
        if not src.exists():
            continue
        trash = dst.with_name(f".{dst.name}.replaced-{uuid.uuid4().hex[:8]}")
        if dst.exists():
            os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)


__all__ = ["RECORD", "PENDING", "PhaseState", "inspect_phase", "config_diff", "phase_view", "read_record",
           "write_record", "write_pending", "new_record", "file_output", "sha256_file", "swap_in", "staging_note",
           "rel", "resolve", "log_dir", "hold_note", "release_note", "check_not_busy", "lock_path", "lock_holder",
           "check_note", "current_run_ids", "inputs_problem", "outputs_problem", "check_phase_overrides",
           "owner_phase"]
