"""`fsa-lt run`: Phases I, II and III in order, reusing finished outputs, then a summary.

Every phase's outputs are checked against the settings asked for before any phase starts
(`records.inspect_phase`): finished outputs with the same settings are reused, an
interrupted run is resumed (Phase I from ``last.pt``; Phases II and III are redone), outputs
made with other settings stop the command with the keys that differ unless ``--force``.

Seeds: ``seeds`` runs the whole pipeline once per seed under ``<note>-s<seed>`` (the
long-tailed subset stays fixed: ``dataset.subset_seed``); ``phase_iii_seeds`` repeats only
Phase III (and the control) over one Phase I model, under ``<note>-fs<k>``. The summary
gives mean ± std wherever more than one run stands behind a row, and FSA minus the control
paired by Phase III seed.

`fsa-lt demo`: the same on scikit-learn's bundled digits made long-tailed (no download).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PHASES, Config, load_config, split_phase_overrides
from ..engine.io import write_json, write_text
from ..errors import ConfigError
from . import records, summary
from .phase_iii import output_note


def check_seeds(seeds, flag: str) -> list[int] | None:
    """A list of distinct non-negative seeds, or None; anything else is a one-line ConfigError."""
    if seeds is None:
        return None
    seeds = list(seeds)
    if not seeds:
        raise ConfigError(f"{flag}: give at least one seed")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"{flag}: seed {dup[0]} is given twice ({' '.join(map(str, seeds))})")
    if min(seeds) < 0:
        raise ConfigError(f"{flag}: seeds must be >= 0, got {min(seeds)}")
    return seeds


@dataclass
class Member:
    """One Phase I model (one seed of `--seeds`, or the run itself) and its Phase III runs."""

    seed: int | None
    note: str
    cfgs: dict
    fsa: list = field(default_factory=list)      # Phase III configs of FSA, one per Phase III seed
    control: list = field(default_factory=list)  # the same with finetune.augment=false


def _member(config: str, note: str, seed, overrides: list[str], control: bool, p3_seeds) -> Member:
    ov = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    cfgs = {ph: load_config(config, ph, split_phase_overrides(ov, ph)) for ph in PHASES}
    m = Member(seed, note, cfgs)
    p3 = split_phase_overrides(ov, "phase_iii")
    for k in p3_seeds or [None]:
        extra = [f"finetune.seed={k}"] if k is not None else []
        m.fsa.append(load_config(config, "phase_iii", p3 + extra))
        if control:
            m.control.append(load_config(config, "phase_iii", p3 + extra + ["finetune.augment=false"]))
    if not m.fsa[0].finetune.augment:  # the FSA rows would be the control, in the control's folders
        raise ConfigError("finetune.augment=false on `fsa-lt run`: the No-Aug control is --control; drop the override")
    return m


def preflight(workdir: Path, members: list[Member], force: bool, command: str) -> dict:
    """Every phase of every member against what is on disk, before any work: outputs made with
    other settings raise here (a ConfigError naming the keys) unless `force`. Returns which
    phases `force` replaces: (note, phase, output note) -> True; the rest run as usual (reused
    when finished with these settings, resumed when interrupted, redone when their input was)."""
    replace = {}

    def look(phase, cfg, note, out, upstream):
        st = records.inspect_phase(workdir, phase, cfg, out, upstream=upstream, force=force, command=command)
        replace[(note, phase, out)] = force and st.replaced_by_force
        return st.record if st.status == "complete" else None

    for m in members:
        rec_i = look("phase_i", m.cfgs["phase_i"], m.note, m.note, None)
        rec_ii = look("phase_ii", m.cfgs["phase_ii"], m.note, m.note, {"phase_i": rec_i})
        for c in m.fsa + m.control:
            look("phase_iii", c, m.note, output_note(c, m.note), {"phase_i": rec_i, "phase_ii": rec_ii})
    return replace


def _execute(workdir: Path, m: Member, device, replace: dict, print_fn) -> dict:
    """The phases of one member in order; returns the seconds of each phase that ran (not reused)."""
    from . import phase_i, phase_ii, phase_iii

    times = {}
    t0 = time.perf_counter()
    res = phase_i.train(m.cfgs["phase_i"], m.note, workdir, device, force=replace[(m.note, "phase_i", m.note)],
                        say=print_fn)
    rec_i = res["record"]
    if not res.get("reused"):
        times["phase_i"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec_ii = phase_ii.extract(m.cfgs["phase_ii"], m.note, workdir, device, force=replace[(m.note, "phase_ii", m.note)],
                              upstream={"phase_i": rec_i}, say=print_fn)
    if not rec_ii.get("reused"):
        times["phase_ii"] = time.perf_counter() - t0
    up = {"phase_i": rec_i, "phase_ii": rec_ii}
    for c in m.fsa + m.control:
        out = output_note(c, m.note)
        t0 = time.perf_counter()
        res = phase_iii.finetune(c, m.note, workdir, device, force=replace[(m.note, "phase_iii", out)], upstream=up,
                                 say=print_fn)
        if not res.get("reused"):
            times[{m.note: "phase_iii", f"{m.note}-noaug": "control"}.get(out, out)] = time.perf_counter() - t0
    return times


def member_rows(workdir: Path, config: str, m: Member) -> dict:
    """The rows of one member: Phase I, control and FSA (each over the Phase III seeds), and the
    paired difference FSA - control, every value read from the run it names."""
    ii = records.read_record(records.log_dir(workdir, "phase_ii", config, m.note))
    index = (records.read_json_file(records.log_dir(workdir, "phase_ii", config, m.note) / "metrics.json") or {}).get("index")
    split = {"head": index["head"], "tail": index["tail"]} if index else None
    runs = {"phase_i": [(m.note, summary.final_metrics(workdir, "phase_i", config, m.note, split))]}
    for key, cfgs in (("control", m.control), ("fsa", m.fsa)):
        runs[key] = [(output_note(c, m.note), summary.final_metrics(workdir, "phase_iii", config, output_note(c, m.note), split))
                     for c in cfgs]
    rows = [summary.row("Phase I (plain training)", runs["phase_i"], key="phase_i")]
    if runs["control"]:
        rows.append(summary.row("Phase III, augmentation off (No-Aug control)", runs["control"], key="control"))
    rows.append(summary.row("Phase III, FSA", runs["fsa"], key="fsa"))
    if runs["control"]:
        rows.append(summary.paired_difference("FSA minus control (paired by Phase III seed)", runs["fsa"], runs["control"],
                                              key="fsa_minus_control"))
    seconds = {}
    for ph, n in [("phase_i", m.note), ("phase_ii", m.note)] + [("phase_iii", r) for r, _ in runs["control"] + runs["fsa"]]:
        rec = records.read_record(records.log_dir(workdir, ph, config, n))
        seconds[n if ph == "phase_iii" else ph] = rec.get("seconds") if rec else None
    return {"seed": m.seed, "note": m.note, "rows": rows, "phase_ii_run_id": ii["run_id"] if ii else None,
            "split": split, "seconds": seconds}


def run(config: str, note: str, workdir=".", device=None, overrides=None, force: bool = False, control: bool = False,
        resume: bool = False, seeds=None, phase_iii_seeds=None, print_fn=print, report: bool = True) -> dict:
    """Run (or reuse, or resume) every phase, then write ``log/run/<config>/<note>/summary.md|json``
    and the report. `resume` is accepted for symmetry with `fsa-lt train --resume`: an interrupted
    run with the same settings is always resumed."""
    workdir = Path(workdir)
    overrides = list(overrides or [])
    seeds = check_seeds(seeds, "--seeds")
    p3_seeds = check_seeds(phase_iii_seeds, "--phase-iii-seeds")
    members = [_member(config, f"{note}-s{s}" if s is not None else note, s, overrides, control, p3_seeds)
               for s in (seeds or [None])]
    command = f"fsa-lt run --config {config} --note {note}"
    replace = preflight(workdir, members, force, command)
    times = {}
    for m in members:
        t = _execute(workdir, m, device, replace, print_fn)
        times.update({f"{m.note}/{k}": v for k, v in t.items()} if seeds else t)
    return write_summary(workdir, config, note, members, times, overrides, print_fn, device, report)


def write_summary(workdir: Path, config: str, note: str, members: list[Member], times: dict, overrides: list[str],
                  print_fn=print, device=None, report: bool = True) -> dict:
    from ..engine import distributed as dist

    per = [member_rows(workdir, config, m) for m in members]
    if len(per) == 1:
        rows = per[0]["rows"]
    else:
        rows = [summary.pool(r["model"], [p["rows"][i] for p in per], key=r.get("key")) for i, r in enumerate(per[0]["rows"])]
    c = members[0].fsa[0]
    from ..data import IN_MEMORY

    n_p3 = len(members[0].fsa)
    imb = f", imbalance {c.dataset.imb_ratio:g} ({c.dataset.imb_type})" if c.dataset.name in IN_MEMORY else ""
    spread = []
    if len(members) > 1:
        spread.append(f"{len(members)} Phase I seeds ({', '.join(str(m.seed) for m in members)}; "
                      f"the long-tailed subset fixed, subset_seed {c.dataset.subset_seed})")
    if n_p3 > 1:
        spread.append(f"{n_p3} Phase III seeds per Phase I model")
    how = ("; mean ± sample std over " + " and ".join(spread)) if spread else ""
    if len(members) > 1 and n_p3 > 1:
        how += " (± is the spread over Phase I seeds of the per-model means; the spread over Phase III seeds is in summary.json as *_within_std)"
    title = (f"# {config} / {note}\n\n{c.dataset.name}{imb}, {c.model.name}; Phase I "
             f"{members[0].cfgs['phase_i'].train.epochs} epochs, Phase III {c.finetune.iterations} iterations; "
             f"final models (not test-selected); accuracy in %; head/tail on the Phase II store's split{how}.\n")
    parts = [title, summary.table(rows)]
    if len(members) > 1:
        for p in per:
            parts.append(f"\n## seed {p['seed']} ({p['note']})\n\n" + summary.table(p["rows"]))
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
    parts.append(f"\nTime this invocation: {timing or 'nothing run'}.")
    text = "\n".join(parts) + "\n"
    out = workdir / "log" / "run" / config / note
    payload = {"config": config, "note": note, "overrides": overrides, "rows": rows, "members": per,
               "seeds": [m.seed for m in members] if members[0].seed is not None else None,
               "phase_iii_seeds": [f.finetune.seed for f in members[0].fsa] if n_p3 > 1 or members[0].fsa[0].finetune.seed is not None else None,
               "times_s": times, "configs": {ph: members[0].cfgs[ph].to_dict() for ph in PHASES},
               "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dist.is_main():
        write_text(out / "summary.md", text)
        write_json(out / "summary.json", payload)
    print_fn("\n" + text)
    if report and dist.is_main():
        try:
            from ..viz.report import write_run_report

            write_run_report(workdir, config, note, print_fn=print_fn, device=device)
        except ImportError:
            pass
        except Exception as exc:  # a report problem must not fail a finished run
            print_fn(f"[run] report not written: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return payload


def demo(args) -> int:
    """Digits, long-tailed, ResNet-20: Phase I, II, III and the control over a few seeds, minutes on 2 CPU cores."""
    config = args.config or "digits-LT_resnet20"
    seeds = args.seeds if getattr(args, "seeds", None) is not None else [0, 1, 2]
    payload = run(config, args.note, args.workdir, args.device or "cpu", args.overrides, force=args.force, control=True,
                  seeds=seeds)
    diff = next(r for r in payload["rows"] if r["model"].startswith("FSA minus control"))
    top1, std, n = diff.get("top1"), diff.get("top1_std"), diff.get("n")
    if top1 is not None:
        se = None if std is None else std / n ** 0.5
        if top1 > 0 and se is not None and top1 > 2 * se:
            verdict = "FSA is above the No-Aug control by more than twice the standard error over seeds"
        elif top1 > 0:
            verdict = ("FSA is above the No-Aug control on average, but not by more than twice the standard error "
                       "over seeds: on this toy data the two cannot be told apart")
        else:
            verdict = "FSA does NOT beat the No-Aug control on this toy data"
        print(f"[demo] FSA minus control, top-1: {summary.cell(top1, std, signed=True)} over {n} seed(s): {verdict}. "
              "digits is 8 x 8 pixels, 10 classes, a short Phase I; for FSA against the control on real data "
              "(CIFAR-10-LT, the full protocol) see docs/RESULTS.md.")
    return 0


__all__ = ["run", "demo", "check_seeds", "write_summary", "preflight"]
