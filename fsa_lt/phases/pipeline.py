"""`fsa-lt run`: Phases I, II and III in order, reusing finished outputs, then a summary.

Every phase's outputs are checked against the settings asked for before any phase starts
(`records.inspect_phase`): finished outputs with the same settings are reused, an
interrupted run is resumed (Phase I from ``last.pt``; Phases II and III are redone), outputs
made with other settings stop the command with the keys that differ unless ``--force``.

Seeds: ``seeds`` runs the whole pipeline once per seed under ``<note>-s<seed>`` (the
long-tailed subset stays fixed: ``dataset.subset_seed``); ``phase_iii_seeds`` repeats only
Phase III (and the control) over one Phase I model, under ``<note>-fs<k>``. The summary
gives mean ± std wherever more than one run stands behind a row, and FSA minus the control
paired run by run (the same Phase I model and Phase III seed).

`fsa-lt demo`: the same on scikit-learn's bundled digits made long-tailed (no download).

The HTML report is the caller's: `report` is a callable ``report(workdir, config, note,
print_fn=..., device=...)`` (the command line hands in one that calls
`fsa_lt.viz.report.write_run_report`), so this module never imports the report, which is
built on it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PHASES, load_config, split_phase_overrides
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


# Phase III "arms": what a row of the summary is; `fsa-lt compare --methods` names them.
ARMS = {
    "fsa": ("fsa", "Phase III, FSA", []),
    "no-aug": ("control", "Phase III, augmentation off (No-Aug control)", ["finetune.augment=false"]),
    "crt": ("crt", "cRT (classifier re-trained, class-balanced)", ["finetune.method=crt"]),
    "lws": ("lws", "LWS (learnt weight scaling, class-balanced)", ["finetune.method=lws"]),
    "tau-norm": ("tau_norm", "tau-normalisation", ["finetune.method=tau_norm"]),
    "la-posthoc": ("la_posthoc", "post-hoc logit adjustment", ["finetune.method=la_posthoc"]),
}


def check_methods(methods) -> list[str]:
    """Method names of `fsa-lt compare`, each known and given once; else a one-line ConfigError."""
    methods = [m.strip() for m in (methods if not isinstance(methods, str) else methods.split(",")) if m.strip()]
    if not methods:
        raise ConfigError(f"--methods: give at least one of {', '.join(ARMS)}")
    for m in methods:
        if m not in ARMS:
            import difflib

            close = difflib.get_close_matches(m, list(ARMS), n=1)
            raise ConfigError(f"--methods: unknown method '{m}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                              + f"; known: {', '.join(ARMS)}")
        if methods.count(m) > 1:
            raise ConfigError(f"--methods: '{m}' is given twice")
    return methods


@dataclass
class Member:
    """One Phase I model (one seed of `--seeds`, or the run itself) and its Phase III runs."""

    seed: int | None
    note: str
    cfgs: dict
    arms: list = field(default_factory=list)  # [(key, row label, [Phase III config per Phase III seed])]

    @property
    def phase_iii(self) -> list:
        return [c for _, _, cfgs in self.arms for c in cfgs]


def _member(config: str, note: str, seed, overrides: list[str], methods: list[str], p3_seeds) -> Member:
    ov = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    cfgs = {ph: load_config(config, ph, split_phase_overrides(ov, ph)) for ph in PHASES}
    m = Member(seed, note, cfgs)
    p3 = split_phase_overrides(ov, "phase_iii")
    if not cfgs["phase_iii"].finetune.augment or cfgs["phase_iii"].finetune.method != "fsa":
        raise ConfigError("finetune.augment / finetune.method overrides on `fsa-lt run`: the No-Aug control is "
                          "--control, the baselines are `fsa-lt compare --methods`; drop the override")
    for name in methods:
        key, label, extra = ARMS[name]
        m.arms.append((key, label, [load_config(config, "phase_iii", p3 + extra + ([f"finetune.seed={k}"] if k is not None else []))
                                    for k in p3_seeds or [None]]))
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
        for c in m.phase_iii:
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
    for c in m.phase_iii:
        out = output_note(c, m.note)
        t0 = time.perf_counter()
        res = phase_iii.finetune(c, m.note, workdir, device, force=replace[(m.note, "phase_iii", out)], upstream=up,
                                 say=print_fn)
        if not res.get("reused"):
            times[{m.note: "phase_iii", f"{m.note}-noaug": "control"}.get(out, out)] = time.perf_counter() - t0
    return times


def member_rows(workdir: Path, config: str, m: Member) -> dict:
    """The rows of one member: Phase I, then each arm over its Phase III seeds, then FSA minus the
    control paired run by run (when both ran), every value read from the run it names."""
    ii = records.read_record(records.log_dir(workdir, "phase_ii", config, m.note))
    index = (records.read_json_file(records.log_dir(workdir, "phase_ii", config, m.note) / "metrics.json") or {}).get("index")
    split = {"head": index["head"], "tail": index["tail"]} if index else None

    def seconds(phase, n):  # Phase I: its training epochs over every segment (see summary.evidence)
        rec = records.read_record(records.log_dir(workdir, phase, config, n))
        return rec.get("train_seconds", rec.get("seconds")) if rec else None

    p1 = [(m.note, summary.final_metrics(workdir, "phase_i", config, m.note, split))]
    rows = [summary.row("Phase I (plain training)", p1, key="phase_i", seconds=seconds("phase_i", m.note))]
    runs = {}
    for key, label, cfgs in m.arms:
        notes = [output_note(c, m.note) for c in cfgs]
        runs[key] = [(n, summary.final_metrics(workdir, "phase_iii", config, n, split)) for n in notes]
        secs = [seconds("phase_iii", n) for n in notes]
        rows.append(summary.row(label, runs[key], key=key,
                                seconds=sum(secs) / len(secs) if all(s is not None for s in secs) else None))
    if "fsa" in runs and "control" in runs:
        rows.append(summary.paired_difference("FSA minus control (paired run by run)", runs["fsa"], runs["control"],
                                              key="fsa_minus_control"))
    return {"seed": m.seed, "note": m.note, "rows": rows, "phase_ii_run_id": ii["run_id"] if ii else None,
            "split": split, "seconds": {"phase_i": seconds("phase_i", m.note), "phase_ii": seconds("phase_ii", m.note)}}


def _evidence(workdir: Path, config: str, members: list[Member]) -> dict:
    """The machine and phase times of `members`' runs (`summary.evidence`)."""
    return summary.evidence(workdir, config, [{"seed": m.seed, "note": m.note,
                                               "arms": {key: [output_note(c, m.note) for c in cfgs] for key, _, cfgs in m.arms}}
                                              for m in members])


def run(config: str, note: str, workdir=".", device=None, overrides=None, force: bool = False, control: bool = False,
        resume: bool = False, seeds=None, phase_iii_seeds=None, print_fn=print, report=None) -> dict:
    """Run (or reuse, or resume) every phase, then write ``log/run/<config>/<note>/summary.md|json``
    and, through `report` (None: no report), the report. `resume` is accepted for symmetry with
    `fsa-lt train --resume`: an interrupted run with the same settings is always resumed."""
    workdir = Path(workdir)
    overrides = list(overrides or [])
    seeds = check_seeds(seeds, "--seeds")
    p3_seeds = check_seeds(phase_iii_seeds, "--phase-iii-seeds")
    methods = (["no-aug"] if control else []) + ["fsa"]
    members = [_member(config, f"{note}-s{s}" if s is not None else note, s, overrides, methods, p3_seeds)
               for s in (seeds or [None])]
    command = f"fsa-lt run --config {config} --note {note}"
    replace = preflight(workdir, members, force, command)
    times = {}
    for m in members:
        t = _execute(workdir, m, device, replace, print_fn)
        times.update({f"{m.note}/{k}": v for k, v in t.items()} if seeds else t)
    return write_summary(workdir, config, note, members, times, overrides, print_fn, device, report)


def compare(config: str, note: str, workdir=".", device=None, overrides=None, methods="fsa,no-aug", force: bool = False,
            phase_iii_seeds=None, print_fn=print, report=None) -> dict:
    """FSA beside the baselines over one finished Phase I: each method of `methods` as a Phase III
    run (over `phase_iii_seeds`), Phase II made if missing; writes ``compare.md|json`` beside the
    run's summary and a section of its report (a `finetune.variant` writes ``compare-<variant>.md|json``
    and leaves the default table and the report as they are)."""
    from .common import upstream_record

    workdir = Path(workdir)
    overrides = list(overrides or [])
    methods = check_methods(methods)
    p3_seeds = check_seeds(phase_iii_seeds, "--phase-iii-seeds")
    m = _member(config, note, None, overrides, methods, p3_seeds)
    upstream_record(workdir, "phase_i", m.cfgs["phase_i"], note)  # compare needs a finished Phase I; it trains none
    replace = preflight(workdir, [m], force, f"fsa-lt compare --config {config} --note {note}")
    times = _execute(workdir, m, device, replace, print_fn)
    per = member_rows(workdir, config, m)
    c = m.cfgs["phase_iii"]
    n = len(p3_seeds or [None])
    title = (f"# {config} / {note}{' (Phase III variant ' + c.finetune.variant + ')' if c.finetune.variant else ''}: "
             f"FSA and the baselines on one Phase I model\n\n"
             f"{c.model.name} ({c.model.classifier} classifier, Phase I loss {m.cfgs['phase_i'].train.loss}"
             f"{', DRW from epoch ' + str(m.cfgs['phase_i'].train.drw_epoch) if m.cfgs['phase_i'].train.drw_epoch is not None else ''}, "
             f"{m.cfgs['phase_i'].train.epochs} epochs); Phase III methods on the frozen backbone with "
             f"{c.finetune.iterations} iterations where they train; final models; accuracy in %; head/tail on the store's "
             f"split; " + (f"mean ± sample std over {n} Phase III seeds ({', '.join(map(str, p3_seeds))})" if n > 1
                          else "one Phase III seed") + "; time: seconds per run as recorded.\n")
    taus = []
    for key, _, cfgs in m.arms:
        for cf in cfgs:
            met = records.read_json_file(records.log_dir(workdir, "phase_iii", config, output_note(cf, note)) / "metrics.json") or {}
            if met.get("tau"):
                taus.append(f"{output_note(cf, note)}: tau {met['tau']['tau']:g} ({met['tau']['chosen_on']})")
    ev = _evidence(workdir, config, [m])
    text = (title + "\n" + summary.table(per["rows"], seconds=True) + "\n"
            + ("\ntau choices: " + "; ".join(taus) + ".\n" if taus else "")
            + "\n" + "\n\n".join(ev["machine_text"]) + "\n")
    payload = {"config": config, "note": note, "methods": methods, "phase_iii_seeds": p3_seeds, "overrides": overrides,
               "rows": per["rows"], "taus": taus, "times_s": times, "evidence": ev,
               "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    from ..engine import distributed as dist

    out = workdir / "log" / "run" / config / note
    # a Phase III variant's comparison is its own table: it must not replace the default one
    stem = f"compare-{c.finetune.variant}" if c.finetune.variant else "compare"
    payload["variant"] = c.finetune.variant
    if dist.is_main():
        write_text(out / f"{stem}.md", text)
        write_json(out / f"{stem}.json", payload)
    print_fn("\n" + text)
    if report and not c.finetune.variant and dist.is_main() and (out / "summary.json").is_file():
        write_report(report, workdir, config, note, print_fn, device, "compare")
    return payload


def write_report(report, workdir: Path, config: str, note: str, print_fn, device, what: str) -> None:
    """Call `report` (see the module's docstring); a report problem must not fail a finished run."""
    try:
        report(workdir, config, note, print_fn=print_fn, device=device)
    except ImportError as exc:  # a missing optional package (matplotlib): say so, carry on
        print_fn(f"[{what}] report not written: {exc}")
    except Exception as exc:
        print_fn(f"[{what}] report not written: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def write_summary(workdir: Path, config: str, note: str, members: list[Member], times: dict, overrides: list[str],
                  print_fn=print, device=None, report=None) -> dict:
    from ..engine import distributed as dist

    per = [member_rows(workdir, config, m) for m in members]
    if len(per) == 1:
        rows = per[0]["rows"]
    else:
        rows = [summary.pool(r["model"], [p["rows"][i] for p in per], key=r.get("key")) for i, r in enumerate(per[0]["rows"])]
    fsa = next(cfgs for key, _, cfgs in members[0].arms if key == "fsa")
    c = fsa[0]
    from ..data import IN_MEMORY

    n_p3 = len(fsa)
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
    ev = _evidence(workdir, config, members)
    parts.append("\n" + "\n\n".join(ev["text"]))
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
    parts.append(f"\nTime this invocation: {timing or 'nothing run'}.")
    text = "\n".join(parts) + "\n"
    out = workdir / "log" / "run" / config / note
    payload = {"config": config, "note": note, "overrides": overrides, "rows": rows, "members": per,
               "seeds": [m.seed for m in members] if members[0].seed is not None else None,
               "phase_iii_seeds": [f.finetune.seed for f in fsa] if fsa[0].finetune.seed is not None else None,
               "times_s": times, "evidence": ev, "configs": {ph: members[0].cfgs[ph].to_dict() for ph in PHASES},
               "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dist.is_main():
        write_text(out / "summary.md", text)
        write_json(out / "summary.json", payload)
    print_fn("\n" + text)
    if report and dist.is_main():
        write_report(report, workdir, config, note, print_fn, device, "run")
    return payload


def demo(args, report=None) -> int:
    """Digits, long-tailed, ResNet-20: Phase I, II, III and the control over a few seeds, minutes on 2 CPU cores."""
    config = args.config or "digits-LT_resnet20"
    seeds = args.seeds if getattr(args, "seeds", None) is not None else [0, 1, 2]
    payload = run(config, args.note, args.workdir, args.device or "cpu", args.overrides, force=args.force, control=True,
                  seeds=seeds, report=report)
    diff = next(r for r in payload["rows"] if r.get("key") == "fsa_minus_control")
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


__all__ = ["run", "compare", "demo", "check_seeds", "check_methods", "write_summary", "write_report", "preflight", "ARMS"]
