"""Phase I models shipped inside the package, and how a work folder takes one in as its Phase I.

A shipped model is two files in ``fsa_lt/pretrained/``: ``<name>.pt``, a Phase I checkpoint with
the final weights only (no optimiser state), and ``<name>.json``, its record: the resolved config,
seed and subset, the run id, the commit and command that trained it, the machine and precision
of every training segment, the training time, the final test metrics with the per-class
accuracies and the test confusion matrix, and the SHA-256 of the ``.pt``.

`adopt` makes a shipped model the Phase I of a note, as if it had been trained there: the file is
checked against its recorded SHA-256 (a replaced or corrupted file is a `CheckpointError`, exit 4),
the settings asked for against the ones it was trained with (other Phase I settings are a
`ConfigError` naming the keys), then ``last.pt`` and a Phase I record carrying the shipped run id
are written into the work folder. Phase II and III then run as over any Phase I, and Phase II's
record names the run id and the checkpoint's hash.

``python -m fsa_lt.phases.shipped export --config NAME --note NOTE [--workdir DIR]`` writes the two
files from a finished Phase I run (this is how the shipped model was made).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from ..config import Config, load_config
from ..engine.checkpoint import load_checkpoint, save_checkpoint
from ..engine.io import torch_save, write_json, write_text
from ..errors import CheckpointError, ConfigError, FsaError
from . import records

FORMAT = "fsa-lt-shipped/1"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
# config name -> the shipped model that `fsa-lt demo` starts from
DEMO_MODELS = {"cifar10-LT_resnet32": "cifar10-LT_resnet32-ce-s0"}


def shipped_files(name: str, folder: Path | None = None) -> tuple[Path, Path]:
    folder = SHIPPED_DIR if folder is None else Path(folder)
    return folder / f"{name}.pt", folder / f"{name}.json"


def read(name: str, folder: Path | None = None) -> dict:
    """The record of shipped model `name`; a one-line CheckpointError when it is missing or unreadable."""
    pt, js = shipped_files(name, folder)
    try:
        rec = json.loads(js.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"shipped model {name}: its record {js} is missing (reinstall fsa-lt)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"shipped model {name}: its record {js} is unreadable ({type(exc).__name__}); "
                              "reinstall fsa-lt") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise CheckpointError(f"{js}: not a shipped-model record ({FORMAT})")
    return rec


def verify(name: str, folder: Path | None = None) -> dict:
    """The record of `name` after checking its file's SHA-256 against it (exit 4 when they differ)."""
    rec = read(name, folder)
    pt, _ = shipped_files(name, folder)
    if not pt.is_file():
        raise CheckpointError(f"shipped model {name}: {pt} is missing (reinstall fsa-lt)")
    got = records.sha256_file(pt)
    if got != rec["sha256"]:
        raise CheckpointError(f"shipped model {pt} has SHA-256 {got[:16]}..., its record says {rec['sha256'][:16]}...: "
                              "the file was replaced or corrupted (reinstall fsa-lt, or regenerate it as docs/RESULTS.md says)")
    return rec


def adopt(cfg: Config, note: str, workdir, name: str, folder: Path | None = None, say=print) -> dict:
    """Make shipped model `name` the finished Phase I of `cfg` / `note` in `workdir`; returns its Phase I
    record (the one already there when this model was adopted before)."""
    workdir = Path(workdir)
    rec = verify(name, folder)
    if rec["config_name"] != cfg.name:
        raise ConfigError(f"shipped model {name} was trained with config {rec['config_name']}, not {cfg.name}")
    diff = records.config_diff(rec["config"], cfg.to_dict(), "phase_i")
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(f"shipped model {name} was trained with other Phase I settings than asked for ({shown}); "
                          "drop those overrides, or train Phase I yourself (fsa-lt demo --train)")
    ldir = records.log_dir(workdir, "phase_i", cfg.name, note)
    have = records.read_record(ldir)
    if have is not None:
        if have.get("run_id") == rec["run_id"] and not records._outputs_problem(workdir, have):
            say(f"[phase_i] {cfg.name} / {note}: the shipped model {name} (run {rec['run_id'][:8]}) is in place; reusing it")
            return have
        raise ConfigError(f"{ldir} already holds another Phase I run ({have.get('run_id', '?')[:8]}); "
                          f"use another --note for the shipped model {name}")
    records.check_not_busy(workdir, "phase_i", cfg.name, note)
    pt, _ = shipped_files(name, folder)
    ckpt_dir = workdir / "checkpoints" / "phase_i" / cfg.name / note
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ldir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / ".last.pt.adopting"
    shutil.copyfile(pt, tmp)
    tmp.replace(ckpt_dir / "last.pt")
    write_json(ldir / "metrics.json", rec["metrics"])
    write_text(ldir / "config.yaml", json.dumps(rec["config"], indent=2) + "\n")
    write_json(ldir / "environment.json", rec["environment"])
    if rec.get("confusion_matrix") is not None:  # the test confusion matrix as the training run saved it (report)
        torch_save(ldir / "confusion_matrix.pt", torch.as_tensor(rec["confusion_matrix"], dtype=torch.long))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = {"format": records.RECORD_FORMAT, "phase": "phase_i", "config_name": cfg.name, "note": note,
              "run_id": rec["run_id"], "config": rec["config"], "inputs": {},
              "outputs": {"last.pt": records.file_output(workdir, ckpt_dir / "last.pt")},
              "environment": rec["environment"], "started": rec["started"], "finished": rec["finished"],
              "seconds": rec["seconds"], "metrics": rec["summary"], "segments": rec["segments"],
              "train_seconds": rec["train_seconds"],
              "adopted": {"shipped_model": name, "file": str(pt), "sha256": rec["sha256"], "adopted": started,
                          "trained_by": rec["command"], "commit": rec.get("commit")}}
    records.write_record(ldir, record)
    f = rec["metrics"]["final"]
    say(f"[phase_i] {cfg.name} / {note}: the shipped model {name} (run {rec['run_id'][:8]}, trained "
        f"{rec['config']['train']['epochs']} epochs, seed {rec['config']['seed']}; final test top-1 {f['top1']:.2f}) "
        "taken in as Phase I")
    return record


def export(workdir, config: str, note: str, out: Path, name: str | None = None, command: str | None = None) -> dict:
    """Write ``<name>.pt`` (final weights) and ``<name>.json`` (record) from a finished Phase I run."""
    workdir, out = Path(workdir), Path(out)
    ldir = records.log_dir(workdir, "phase_i", config, note)
    rec = records.read_record(ldir)
    if rec is None:
        raise CheckpointError(f"{ldir}: no finished Phase I run to export")
    problem = records._outputs_problem(workdir, rec)
    if problem:
        raise CheckpointError(f"{ldir}: its outputs no longer match the record ({problem})")
    state = load_checkpoint(records.resolve(workdir, rec["outputs"]["last.pt"]["path"]), expect_phase="phase_i")
    metrics = records.read_json_file(ldir / "metrics.json") or {}
    cm_path = ldir / "confusion_matrix.pt"
    cm = torch.load(cm_path, map_location="cpu", weights_only=True).tolist() if cm_path.is_file() else None
    cfg = rec["config"]
    name = name or f"{config}-{cfg['train']['loss']}-s{cfg['seed']}"
    pt, js = shipped_files(name, out)
    keep = {k: state[k] for k in ("phase", "model_name", "num_classes", "class_counts", "model", "epoch", "config")
            if k in state}
    keep["metrics"] = metrics.get("final")
    save_checkpoint(pt, keep)
    env = rec.get("environment") or {}
    segs = rec.get("segments") or []
    shipped = {
        "format": FORMAT, "name": name, "file": pt.name, "sha256": records.sha256_file(pt), "bytes": pt.stat().st_size,
        "config_name": config, "config": cfg, "seed": cfg["seed"], "subset_seed": cfg["dataset"]["subset_seed"],
        "run_id": rec["run_id"], "commit": env.get("git_commit"),
        "command": command or " ".join(["fsa-lt"] + (env.get("argv") or [])[1:]),
        "regenerate": (f"fsa-lt train --config {config} --note NOTE --device cpu seed={cfg['seed']}, then "
                       f"python -m fsa_lt.phases.shipped export --config {config} --note NOTE --out fsa_lt/pretrained"),
        "machine": sorted({s.get("environment", {}).get("processor") or "?" for s in segs} | {env.get("processor") or "?"}),
        "precision": sorted({s.get("environment", {}).get("precision") or "?" for s in segs} | {env.get("precision") or "?"}),
        "started": rec["started"], "finished": rec["finished"], "seconds": rec["seconds"],
        "train_seconds": rec.get("train_seconds"), "segments": segs, "environment": env,
        "summary": rec.get("metrics"),
        "metrics": {"final": metrics.get("final"), "history": metrics.get("history"), "epochs": metrics.get("epochs")},
        "confusion_matrix": cm,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(js, shipped)
    return shipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsa_lt.phases.shipped",
                                description="Export a finished Phase I run as a shipped model (fsa_lt/pretrained/).")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--config", required=True)
    e.add_argument("--note", required=True)
    e.add_argument("--workdir", default=".")
    e.add_argument("--out", default=str(SHIPPED_DIR))
    e.add_argument("--name", default=None)
    e.add_argument("--command", default=None, help="the command that trained it, as the record should name it")
    v = sub.add_parser("verify")
    v.add_argument("name")
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            rec = export(args.workdir, args.config, args.note, Path(args.out), args.name, args.command)
            print(f"wrote {rec['file']} ({rec['bytes']} bytes, sha256 {rec['sha256']}) and its record to {args.out}")
        else:
            rec = verify(args.name)
            print(f"{args.name}: sha256 {rec['sha256']} matches its record")
    except FsaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code if hasattr(exc, "exit_code") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["adopt", "export", "verify", "read", "shipped_files", "SHIPPED_DIR", "DEMO_MODELS", "FORMAT"]
