"""`fsa-lt run`: Phases I, II and III in order, reusing complete outputs, then a summary.

`fsa-lt demo`: the same on scikit-learn's bundled digits made long-tailed (no download).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import PHASES, Config, load_config, split_phase_overrides
from ..engine.io import write_json, write_text
from ..engine.metrics import fmt
from . import store

COLUMNS = ("top1", "many", "medium", "few", "head", "tail")


def _same(saved: dict | None, cfg: Config, sections) -> bool:
    if not saved:
        return False
    now = cfg.to_dict()
    return all(saved.get(s) == now[s] for s in sections)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _saved_config(workdir: Path, phase: str, cfg: Config, note: str):
    import yaml

    try:
        return yaml.safe_load((workdir / "log" / phase / cfg.name / note / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def phase_done(workdir: Path, phase: str, cfg: Config, note: str) -> bool:
    """Complete outputs made with the same settings (the sections the phase depends on)."""
    sections = {"phase_i": ("seed", "dataset", "model", "train"),
                "phase_ii": ("seed", "dataset", "model", "train", "extract"),
                "phase_iii": ("seed", "dataset", "model", "train", "extract", "finetune")}[phase]
    if not _same(_saved_config(workdir, phase, cfg, note), cfg, sections):
        return False
    if phase == "phase_ii":
        return store.is_complete(workdir / "feature" / cfg.name / note)
    m = _read_json(workdir / "log" / phase / cfg.name / note / "metrics.json")
    return bool(m and m.get("final"))


def _resumable(workdir: Path, cfg: Config, note: str) -> bool:
    """Phase I stopped part-way (last.pt there) with the settings it has now."""
    last = workdir / "checkpoints" / "phase_i" / cfg.name / note / "last.pt"
    return last.is_file() and _same(_saved_config(workdir, "phase_i", cfg, note), cfg,
                                    ("seed", "dataset", "model", "train"))


def _metrics(workdir: Path, phase: str, cfg: Config, note: str) -> dict:
    return _read_json(workdir / "log" / phase / cfg.name / note / "metrics.json")["final"]


def summary_table(rows: list[tuple[str, dict]]) -> str:
    head = "| model | " + " | ".join(COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    lines = [head, sep]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(m.get(c)).strip() for c in COLUMNS) + " |")
    return "\n".join(lines)


def run(config: str, note: str, workdir=".", device=None, overrides=None, force=False, control=False,
        print_fn=print) -> dict:
    from . import phase_i, phase_ii, phase_iii

    workdir = Path(workdir)
    overrides = list(overrides or [])
    cfgs = {ph: load_config(config, ph, split_phase_overrides(overrides, ph)) for ph in PHASES}
    times, upstream_ran = {}, force
    for ph, fn in (("phase_i", phase_i.train), ("phase_ii", phase_ii.extract), ("phase_iii", phase_iii.finetune)):
        cfg = cfgs[ph]
        if not upstream_ran and phase_done(workdir, ph, cfg, note):
            print_fn(f"[run] {ph}: complete outputs found, reusing them (--force reruns)")
            continue
        t0 = time.perf_counter()
        if ph == "phase_i" and not force and _resumable(workdir, cfg, note):
            print_fn("[run] phase_i: an interrupted run with the same settings is there, resuming it")
            phase_i.train(cfg, note, workdir, device, resume=True)
        else:
            fn(cfg, note, workdir, device)
        times[ph] = time.perf_counter() - t0
        upstream_ran = True
    rows = [("Phase I (plain training)", _metrics(workdir, "phase_i", cfgs["phase_i"], note))]
    if control:
        ccfg = load_config(config, "phase_iii", split_phase_overrides(overrides, "phase_iii") + ["finetune.augment=false"])
        cnote = phase_iii.output_note(ccfg, note)
        if force or upstream_ran or not phase_done(workdir, "phase_iii", ccfg, cnote):
            t0 = time.perf_counter()
            phase_iii.finetune(ccfg, note, workdir, device)
            times["control"] = time.perf_counter() - t0
        rows.append(("Phase III, augmentation off (No-Aug control)", _metrics(workdir, "phase_iii", ccfg, cnote)))
    rows.append(("Phase III, FSA", _metrics(workdir, "phase_iii", cfgs["phase_iii"], note)))
    table = summary_table(rows)
    c = cfgs["phase_iii"]
    from ..data import IN_MEMORY

    imb = f", imbalance {c.dataset.imb_ratio:g} ({c.dataset.imb_type})" if c.dataset.name in IN_MEMORY else ""
    title = (f"# {c.name} / {note}\n\n{c.dataset.name}{imb}, "
             f"{c.model.name}; Phase I {cfgs['phase_i'].train.epochs} epochs, Phase III "
             f"{c.finetune.iterations} iterations; final models (not test-selected); accuracy in %.\n")
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) or "all phases reused"
    text = f"{title}\n{table}\n\nTime this invocation: {timing}.\n"
    out = workdir / "log" / "run" / c.name / note
    write_text(out / "summary.md", text)
    payload = {"config": c.name, "note": note, "rows": [{"model": n, **{k: m.get(k) for k in COLUMNS}} for n, m in rows],
               "times_s": times, "configs": {ph: cfgs[ph].to_dict() for ph in PHASES}}
    write_json(out / "summary.json", payload)
    print_fn("\n" + text)
    try:
        from ..viz.report import write_run_report

        write_run_report(workdir, c.name, note, print_fn=print_fn, device=device)
    except ImportError:
        pass
    except Exception as exc:  # a report problem must not fail a finished run
        print_fn(f"[run] report not written: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return payload


def demo(args) -> int:
    """Digits, long-tailed, ResNet-20: Phase I, II, III and the control, a few minutes on 2 CPU cores."""
    config = args.config or "digits-LT_resnet20"
    run(config, args.note, args.workdir, args.device or "cpu", args.overrides, force=args.force, control=True)
    return 0
