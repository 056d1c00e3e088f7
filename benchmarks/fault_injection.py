#!/usr/bin/env python
"""Fault injection: kill -9 a short pipeline at random moments, rerun the same command, and check
that nothing was lost and nothing stale was taken as complete.

A reference `fsa-lt run --control` on digits (short settings) runs once, uninterrupted. Then each
trial starts the same command in a fresh work folder and kills it with SIGKILL:

* at a random time (uniform over the reference's duration), or
* inside a file write (``FSA_LT_FAULT=kill_in_write:N``): the writes the reference made are
  grouped by the part of the run they belong to (Phase I checkpoints and record, the Phase II
  store and record, Phase III, the summary and report), the trials take the groups in turn and
  a random write of each, so every part is hit, which random times rarely do for short phases;

then reruns the same command until it finishes. A trial is *identical* when

1. the final Phase I weights (and optimizer state) equal the reference's bit for bit;
2. the Phase II store (maps, CAMs, labels, confusing classes) equals the reference's;
3. the Phase III metrics of FSA and the control equal the reference's;
4. right after the kill, every phase that has a record passes its record's checks (the files it
   names are there with the recorded hashes), so no partial checkpoint or store counts as complete;
5. nothing outside the run's work folder changed (the configs and the data digests), and the work
   folder holds only checkpoints/, log/, run_summary/ and feature/.

    python benchmarks/fault_injection.py --trials 20 --seed 0 [--workdir DIR] [--keep]

Prints one line per trial and ``N/N trials identical``; exit status 0 only if all are.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = "digits-LT_resnet20"
NOTE = "fi"
OVERRIDES = ["train.epochs=6", "train.warmup_epochs=1", "train.eval_every=2", "train.save_every=3",
             "finetune.iterations=200", "finetune.eval_every=100", "finetune.save_every=100"]
PHASE_ORDER = ("phase_i", "phase_ii", "phase_iii", "control")


def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "fsa_lt.cli", "run", "--config", CONFIG, "--note", NOTE, "--workdir", str(workdir),
            "--device", "cpu", "--control", *OVERRIDES]


def env(fault: str | None = None) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("FSA_LT_FAULT", None)
    if fault:
        e["FSA_LT_FAULT"] = fault
    return e


def run_to_end(workdir: Path, fault: str | None = None, kill_after: float | None = None) -> tuple[int, float]:
    """Run the command; SIGKILL it after `kill_after` seconds if given. Returns (return code, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(command(workdir), cwd=workdir, env=env(fault), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        if kill_after is not None:
            try:
                p.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate(timeout=900)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    if p.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write(err.decode(errors="replace")[-3000:])
    return p.returncode, time.perf_counter() - t0


def count_writes(workdir: Path) -> list[str]:
    """What each file write of a whole run writes (its path), in order: the reference run with a
    count-only fault spec."""
    from fsa_lt.cli import run_report
    from fsa_lt.engine import faults
    from fsa_lt.phases import pipeline

    import contextlib

    os.environ["FSA_LT_FAULT"] = "kill_in_write:0"  # counted, never due
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            pipeline.run(CONFIG, NOTE, workdir, "cpu", OVERRIDES, control=True, print_fn=lambda *a: None,
                         report=run_report)  # as `fsa-lt run` (the trials): the report's writes counted too
    finally:
        os.environ.pop("FSA_LT_FAULT", None)
    return [what for kind, what in faults.events if kind == "kill_in_write"]


def write_phase(path: str) -> str:
    """Which part of the run a write belongs to, from its path."""
    for part, key in (("checkpoints/phase_i/", "phase_i"), ("log/phase_i/", "phase_i"), ("feature/", "phase_ii"),
                      ("log/phase_ii/", "phase_ii"), ("checkpoints/phase_iii/", "phase_iii"),
                      ("log/phase_iii/", "phase_iii")):
        if part in path:
            return key
    return "summary/report"


def outputs(workdir: Path) -> dict:
    """What a finished run must reproduce: Phase I weights and optimizer, the store, Phase III metrics."""
    import torch

    from fsa_lt.phases import store

    out = {}
    last = torch.load(workdir / "checkpoints/phase_i" / CONFIG / NOTE / "last.pt", map_location="cpu", weights_only=True)
    out["phase_i_model"] = last["model"]
    out["phase_i_momentum"] = {k: v["momentum_buffer"] for k, v in last["optimizer"]["state"].items()}
    folder = workdir / "feature" / CONFIG / NOTE
    index = store.read_index(folder)
    out["store"] = store.load_shards(folder, index)
    out["confusing"] = index["confusing"]
    for n in (NOTE, f"{NOTE}-noaug"):
        m = json.loads((workdir / "log/phase_iii" / CONFIG / n / "metrics.json").read_text())
        out[f"phase_iii {n}"] = {"final": m["final"], "history": m["history"]}
    return out


def same(a, b) -> bool:
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def records_consistent(workdir: Path) -> tuple[bool, str]:
    """Right after a kill: every record on disk still matches the files it names."""
    from fsa_lt.phases import records

    for rec_path in (workdir / "log").glob("phase_*/*/*/record.json"):
        rec = json.loads(rec_path.read_text())
        problem = records._outputs_problem(workdir, rec)
        if problem:
            return False, f"{rec_path}: {problem}"
    return True, ""


def killed_in(workdir: Path) -> str:
    """The phase the kill landed in: the first one without a record."""
    for key, (ph, note) in zip(PHASE_ORDER, (("phase_i", NOTE), ("phase_ii", NOTE), ("phase_iii", NOTE),
                                             ("phase_iii", f"{NOTE}-noaug"))):
        if not (workdir / "log" / ph / CONFIG / note / "record.json").is_file():
            return key
    return "summary/report"


def outside_digest() -> str:
    """Digest of what the run must not touch: the configs and the digits data it reads."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "configs").rglob("*.yaml")):
        h.update(p.read_bytes())
    import sklearn.datasets

    data = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if data.is_file():
        h.update(data.read_bytes())
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--workdir", default=None, help="where the trials run (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the trial folders")
    ap.add_argument("--write-fraction", type=float, default=0.5,
                    help="share of trials killed inside a file write (the rest at a random time)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    base = Path(a.workdir or tempfile.mkdtemp(prefix="fsa-fault-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    before = outside_digest()

    ref = base / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    ref.mkdir()
    rc, total = run_to_end(ref)
    if rc != 0:
        print(f"reference run failed (exit {rc})")
        return 1
    writes = count_writes(base / "count")
    by_part: dict[str, list[int]] = {}
    for n, path in enumerate(writes, 1):
        by_part.setdefault(write_phase(path), []).append(n)
    parts = sorted(by_part)
    expected = outputs(ref)
    print(f"reference: {total:.1f} s, {len(writes)} file writes "
          f"({', '.join(f'{p} {len(v)}' for p, v in sorted(by_part.items()))}); {a.trials} trials (seed {a.seed})")
    print(f"{'trial':>5} | {'kill':<34} | {'killed in':<14} | records ok | reruns | identical")
    good = 0
    for t in range(a.trials):
        w = base / f"trial_{t:02d}"
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir()
        if rng.random() < a.write_fraction:  # a write of each part of the run in turn, a random one of it
            part = parts[t % len(parts)]
            n = rng.choice(by_part[part])
            how, (rc, _) = f"in write {n}/{len(writes)} ({part})", run_to_end(w, fault=f"kill_in_write:{n}")
        else:
            at = rng.uniform(0.02, 0.98) * total
            how, (rc, _) = f"at {at:5.1f} s", run_to_end(w, kill_after=at)
        where = killed_in(w) if rc != 0 else "(finished first)"
        ok_records, why = records_consistent(w)
        reruns = 0
        while True:
            reruns += 1
            rc2, _ = run_to_end(w)
            if rc2 == 0 or reruns >= 3:
                break
        tops = {p.name for p in w.iterdir()}
        clean = tops <= {"checkpoints", "log", "run_summary", "feature"}
        ident = rc2 == 0 and ok_records and clean and same(outputs(w), expected)
        good += ident
        print(f"{t:5d} | {how:<34} | {where:<14} | {'yes' if ok_records else 'NO ' + why[:60]:<10} | {reruns:6d} | "
              f"{'yes' if ident else 'NO' + ('' if clean else ' (stray files: ' + ', '.join(sorted(tops)) + ')')}")
        if not a.keep:
            shutil.rmtree(w, ignore_errors=True)
    unchanged = outside_digest() == before
    print(f"\n{good}/{a.trials} trials identical; configs and data outside the run "
          f"{'unchanged' if unchanged else 'CHANGED'}")
    if not a.keep and a.workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if good == a.trials and unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
