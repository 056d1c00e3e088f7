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
from ..data import validation_source


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
# key -> (row key, row label, overrides, input shown in the compare table)
ARMS = {
    "fsa": ("fsa", "Phase III, FSA", [], "store"),
    "no-aug": ("control", "Phase III, augmentation off (No-Aug control)", ["finetune.augment=false"], "store"),
    "fsa-online": ("fsa_online", "Phase III, FSA", ["finetune.mode=online"], "images"),
    "no-aug-online": ("control_online", "Phase III, augmentation off (No-Aug control)",
                      ["finetune.mode=online", "finetune.augment=false"], "images"),
    "crt": ("crt", "cRT (Kang et al.'s recipe)", ["finetune.method=crt"], "images"),
    "crt-store": ("crt_store", "cRT, like for like with FSA (not the recipe)", ["finetune.method=crt", "baseline.input=store"],
                  "store"),
    "lws": ("lws", "LWS (Kang et al.'s recipe)", ["finetune.method=lws"], "images"),
    "lws-store": ("lws_store", "LWS, like for like with FSA (not the recipe)", ["finetune.method=lws", "baseline.input=store"],
                  "store"),
    "tau-norm": ("tau_norm", "tau-normalisation", ["finetune.method=tau_norm"], "-"),
    "la-posthoc": ("la_posthoc", "post-hoc logit adjustment (tau = 1)", ["finetune.method=la_posthoc"], "-"),
    "la-posthoc-val": ("la_posthoc_val", "post-hoc logit adjustment (tau on validation)",
                       ["finetune.method=la_posthoc", "finetune.tau_from=validation"], "-"),
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
    records.check_phase_overrides(overrides)  # a key aimed at a phase that only reads it: before any work
    ov = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    cfgs = {ph: load_config(config, ph, split_phase_overrides(ov, ph)) for ph in PHASES}
    m = Member(seed, note, cfgs)
    p3 = split_phase_overrides(ov, "phase_iii")
    if not cfgs["phase_iii"].finetune.augment or cfgs["phase_iii"].finetune.method != "fsa":
        raise ConfigError("finetune.augment / finetune.method overrides on `fsa-lt run`: the No-Aug control is "
                          "--control, the baselines are `fsa-lt compare --methods`; drop the override")
    for name in methods:
        key, label, extra, _ = ARMS[name]
        m.arms.append((key, label, [load_config(config, "phase_iii", p3 + extra + ([f"finetune.seed={k}"] if k is not None else []))
                                    for k in p3_seeds or [None]]))
    return m


def preflight(workdir: Path, members: list[Member], force: bool, command: str, statuses: dict | None = None) -> dict:
    """Every phase of every member against what is on disk, before any work: outputs made with
    other settings raise here (a ConfigError naming the keys) unless `force`. Returns which
    phases `force` replaces: (note, phase, output note) -> True; the rest run as usual (reused
    when finished with these settings, resumed when interrupted, redone when their input was).
    statuses: filled with (note, phase, output note) -> the phase's status on disk."""
    replace = {}

    def look(phase, cfg, note, out, upstream):
        st = records.inspect_phase(workdir, phase, cfg, out, upstream=upstream, force=force, command=command)
        replace[(note, phase, out)] = force and st.replaced_by_force
        if statuses is not None:
            statuses[(note, phase, out)] = st.status
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
        resume: bool = False, seeds=None, phase_iii_seeds=None, print_fn=print, report=None,
        extra_methods=(), default_seeds=None, default_phase_iii_seeds=None) -> dict:
    """Run (or reuse, or resume) every phase, then write the summary, ``log/run/<config>/<note>/
    summary[<suffix>].md|json`` (`summary_suffix`: each variant and seed list a file of its own),
    and, through `report` (a callable; None: no report), the report. An interrupted run with the same settings is always resumed; `resume`, as
    `fsa-lt train --resume`, says one is expected: an error when no phase has been started.
    `extra_methods`: more Phase III rows (names of `ARMS`, e.g. "la-posthoc"), run beside FSA and the
    control. default_seeds / default_phase_iii_seeds: the seed lists the calling command uses when
    none is given (`fsa-lt demo`), whose summary is the plain ``summary.md``."""
    from ..errors import CheckpointError

    workdir = Path(workdir)
    overrides = list(overrides or [])
    seeds = check_seeds(seeds, "--seeds")
    p3_seeds = check_seeds(phase_iii_seeds, "--phase-iii-seeds")
    methods = (["no-aug"] if control else []) + ["fsa"] + (check_methods(list(extra_methods)) if extra_methods else [])
    members = [_member(config, f"{note}-s{s}" if s is not None else note, s, overrides, methods, p3_seeds)
               for s in (seeds or [None])]
    command = f"fsa-lt run --config {config} --note {note}"
    statuses = {}
    replace = preflight(workdir, members, force, command, statuses)
    if resume and all(st == "absent" for st in statuses.values()):
        raise CheckpointError(f"nothing to resume: no phase of {config} / {note} has been started "
                              f"({workdir / 'log' / 'phase_i' / config / members[0].note} holds no run); "
                              f"drop --resume to start it")
    if force and not any(replace.values()):
        print_fn(f"[run] --force: no output of {config} / {note} was made with other settings, so nothing is replaced: "
                 "finished phases are reused, interrupted ones resumed (to do a phase again anyway: "
                 "fsa-lt train / extract / finetune --force)")
    times = {}
    for m in members:
        t = _execute(workdir, m, device, replace, print_fn)
        times.update({f"{m.note}/{k}": v for k, v in t.items()} if seeds else t)
    sfx = summary_suffix(members[0].cfgs["phase_iii"].finetune.variant, None if seeds == default_seeds else seeds,
                         None if p3_seeds == default_phase_iii_seeds else p3_seeds)
    return write_summary(workdir, config, note, members, times, overrides, print_fn, device, report, suffix=sfx)


def summary_suffix(variant: str, seeds=None, phase_iii_seeds=None) -> str:
    """What tells a summary's file from the others of its note: ``-<variant>`` (as `compare-<variant>`),
    ``+seeds<a>-<b>...`` for `--seeds`, ``+fs<a>-<b>...`` for `--phase-iii-seeds` ('+' is a character
    no variant holds); '' for the plain run, whose file is ``summary.md``."""
    sfx = f"-{variant}" if variant else ""
    if seeds is not None:
        sfx += "+seeds" + "-".join(map(str, seeds))
    if phase_iii_seeds is not None:
        sfx += "+fs" + "-".join(map(str, phase_iii_seeds))
    return sfx


def compare(config: str, note: str, workdir=".", device=None, overrides=None, methods="fsa,no-aug", force: bool = False,
            phase_iii_seeds=None, seeds=None, print_fn=print, report=None) -> dict:
    """FSA beside the baselines over finished Phase I models: each method of `methods` as a Phase III
    run (over `phase_iii_seeds`), Phase II made if missing; over one model (`note`) or, with `seeds`,
    over the models ``<note>-s<seed>`` (pooled: mean ± std over the Phase I seeds). Writes
    ``compare.md|json`` beside the run's summary and a section of its report (a `finetune.variant`
    writes ``compare-<variant>.md|json`` and leaves the default table and the report as they are).

    Each row names its input (stored features or images), where its choices were made (default,
    validation, not applicable) and its top-1 minus FSA's, paired run by run; with a validation split,
    each trained method also gets a row with post-hoc logit adjustment on top (tau on validation)."""
    from .common import upstream_record
    from .phase_iii import check_choices

    workdir = Path(workdir)
    overrides = list(overrides or [])
    methods = check_methods(methods)
    p3_seeds = check_seeds(phase_iii_seeds, "--phase-iii-seeds")
    seeds = check_seeds(seeds, "--seeds")
    members = [_member(config, f"{note}-s{s}" if s is not None else note, s, overrides, methods, p3_seeds)
               for s in (seeds or [None])]
    for m in members:
        for c in m.phase_iii:
            check_choices(c)
    for m in members:
        upstream_record(workdir, "phase_i", m.cfgs["phase_i"], m.note)  # compare needs a finished Phase I; it trains none
    replace = preflight(workdir, members, force, f"fsa-lt compare --config {config} --note {note}")
    times = {}
    for m in members:
        t = _execute(workdir, m, device, replace, print_fn)
        times.update({f"{m.note}/{k}": v for k, v in t.items()} if seeds else t)
    per = [compare_rows(workdir, config, m) for m in members]
    if len(per) == 1:
        rows, diffs = per[0]["rows"], per[0]["diffs"]
    else:
        rows = [summary.pool(r["model"], [p["rows"][i] for p in per], **{k: r[k] for k in summary.ROW_INFO if k in r})
                for i, r in enumerate(per[0]["rows"])]
        for i, r in enumerate(rows):
            if "choice" in r:
                r["choice"] = summary.pooled_choice([p["rows"][i].get("choice", "-") for p in per],
                                                    [m.seed for m in members])
        diffs = {k: summary.pool(d["model"], [p["diffs"][k] for p in per], key=k) for k, d in per[0]["diffs"].items()}
    c = members[0].cfgs["phase_iii"]
    p1 = members[0].cfgs["phase_i"]
    n = len(p3_seeds or [None])
    spread = []
    if len(members) > 1:
        spread.append(f"{len(members)} Phase I models (seeds {', '.join(str(m.seed) for m in members)}; ± over them, of "
                      f"each model's mean)")
    if n > 1:
        spread.append(f"{n} Phase III seeds ({', '.join(map(str, p3_seeds))}) per model")
    val = (f"validation split: {validation_source(c)}" if c.dataset.validation
           else "no validation split (dataset.validation=false): nothing is chosen, every method runs its fixed default")
    title = (f"# {config} / {note}{' (Phase III variant ' + c.finetune.variant + ')' if c.finetune.variant else ''}: "
             f"FSA and the baselines on the frozen Phase I backbone\n\n"
             f"{c.model.name} ({c.model.classifier} classifier, Phase I loss {p1.train.loss}"
             f"{', DRW from epoch ' + str(p1.train.drw_epoch) if p1.train.drw_epoch is not None else ''}, "
             f"{p1.train.epochs} epochs); final models; accuracy in %; head/tail on the store's split; "
             + ("mean ± sample std over " + " and ".join(spread) if spread else "one run per row")
             + f"; {val}; the last columns: top-1 minus FSA's (for a '+ post-hoc LA' row, minus FSA + post-hoc LA's), "
               "paired run by run (same Phase I model, same Phase III seed), and seconds per run as recorded.\n")
    recipes = _unique_recipes(workdir, config, members)
    ev = _evidence(workdir, config, members)
    diagnostics = "".join(
        "\n\nWhat Phase III did to each classifier" + (f", Phase I seed {p['seed']}" if p["seed"] is not None else "")
        + f" (test split, mean over the Phase III runs; head and tail on the store's split):\n\n{p['diagnostics']}"
        for p in per if p["diagnostics"])
    text = (title + "\n" + summary.compare_table(rows, diffs) + diagnostics + "\n\nHow each row trains:\n"
            + "".join(f"- {k}: {v}\n" for k, v in recipes.items())
            + "\n" + "\n\n".join(ev["machine_text"]) + "\n")
    payload = {"config": config, "note": note, "methods": methods, "phase_iii_seeds": p3_seeds,
               "seeds": seeds, "overrides": overrides, "rows": rows, "diffs": diffs, "recipes": recipes,
               "validation": validation_source(c) if c.dataset.validation else None,
               "members": per, "times_s": times, "evidence": ev, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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


def _metrics(workdir: Path, config: str, note: str) -> dict:
    summary.final_metrics(workdir, "phase_iii", config, note)  # a finished run, or a one-line error
    return records.read_json_file(records.log_dir(workdir, "phase_iii", config, note) / "metrics.json") or {}


def _choice(met: dict) -> str:
    t = met.get("tau")
    if not t:
        return "none (fixed recipe)"
    if t.get("tau") is None:
        return t.get("chosen_on", "not applicable")
    where = t.get("chosen_on", "")
    return f"tau {t['tau']:g}: " + ("validation" if where == "validation" else where)


def compare_rows(workdir: Path, config: str, m: Member) -> dict:
    """One Phase I model's comparison: Phase I, each arm over its Phase III seeds (with where its choices
    were made), each trained arm + post-hoc LA (tau on validation) when the runs hold it, and each row's
    top-1 minus FSA's paired run by run (``diffs``, by row key)."""
    ldir = records.log_dir(workdir, "phase_ii", config, m.note)
    index = (records.read_json_file(ldir / "metrics.json") or {}).get("index")
    split = {"head": index["head"], "tail": index["tail"]} if index else None

    def seconds(phase, n):
        rec = records.read_record(records.log_dir(workdir, phase, config, n))
        return rec.get("train_seconds", rec.get("seconds")) if rec else None

    p1 = [(m.note, summary.final_metrics(workdir, "phase_i", config, m.note, split))]
    rows = [summary.row("Phase I (plain training)", p1, key="phase_i", input="-", choice="-",
                        seconds=seconds("phase_i", m.note))]
    runs, la_runs, diag = {}, {}, []
    arm_input = {v[0]: v[3] for v in ARMS.values()}
    for key, label, cfgs in m.arms:
        notes = [output_note(c, m.note) for c in cfgs]
        mets = [_metrics(workdir, config, n) for n in notes]
        runs[key] = [(n, summary.on_split(met["final"], split)) for n, met in zip(notes, mets)]
        diag.append((label, mets))
        secs = [seconds("phase_iii", n) for n in notes]
        choices = sorted(set(_choice(met) for met in mets))
        if all(met.get("selection") for met in mets):  # one per run, in seed order, as the taus below
            choices = ["iteration " + ", ".join(str(met["selection"]["iteration"]) for met in mets) + ": validation"]
        rows.append(summary.row(label, runs[key], key=key, input=arm_input.get(key, "-"), choice="; ".join(choices),
                                seconds=sum(secs) / len(secs) if all(x is not None for x in secs) else None))
        if all(met.get("posthoc_la") for met in mets):
            la_runs[key] = [(n, summary.on_split(met["posthoc_la"]["final"], split)) for n, met in zip(notes, mets)]
            taus = ", ".join(f"{met['posthoc_la']['tau']:g}" for met in mets)
            val_acc = sum(met["posthoc_la"]["validation_accuracy"] for met in mets) / len(mets)
            rows.append(summary.row(f"{label} + post-hoc LA", la_runs[key], key=f"{key}+la",
                                    input=arm_input.get(key, "-"),
                                    choice=f"tau {taus}: validation (class-balanced accuracy there {val_acc:.2f})",
                                    seconds=None))
    diffs = {}
    for r in rows[1:]:
        k = r["key"]
        base, ref = (k[:-3], "fsa") if k.endswith("+la") else (k, "fsa")
        mine = la_runs.get(base) if k.endswith("+la") else runs.get(k)
        theirs = la_runs.get(ref) if k.endswith("+la") else runs.get(ref)
        if k in ("fsa", "fsa+la") or mine is None or theirs is None or len(mine) != len(theirs):
            continue
        diffs[k] = summary.paired_difference(f"{r['model']} minus FSA{' + LA' if k.endswith('+la') else ''}",
                                             mine, theirs, key=k)
    return {"seed": m.seed, "note": m.note, "rows": rows, "diffs": diffs, "split": split,
            "diagnostics": summary.diagnostics_table(diag)}


def _unique_recipes(workdir: Path, config: str, members: list[Member]) -> dict:
    out = {}
    for m in members:
        for key, label, cfgs in m.arms:
            for c in cfgs:
                met = _metrics(workdir, config, output_note(c, m.note))
                out.setdefault(f"{label} [{key}]", met.get("recipe", "?"))
    return out


def write_report(report, workdir: Path, config: str, note: str, print_fn, device, what: str, suffix: str = "") -> None:
    """Call `report` (see the module's docstring); a report problem must not fail a finished run."""
    try:
        report(workdir, config, note, print_fn=print_fn, device=device, suffix=suffix)
    except ImportError as exc:  # a missing optional package (matplotlib): say so, carry on
        print_fn(f"[{what}] report not written: {exc}")
    except Exception as exc:
        print_fn(f"[{what}] report not written: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def write_summary(workdir: Path, config: str, note: str, members: list[Member], times: dict, overrides: list[str],
                  print_fn=print, device=None, report=None, suffix: str = "") -> dict:
    """``summary<suffix>.md|json`` (and the report of it): the title names the Phase III variant and
    the seeds behind every row."""
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
    variant = c.finetune.variant
    p1_seeds = [m.cfgs["phase_i"].seed for m in members]
    # the seed each FSA run of each Phase I model trained Phase III with (finetune.seed, else the seed)
    p3_seed_values = [[f.finetune.seed if f.finetune.seed is not None else f.seed
                       for f in next(cfgs for key, _, cfgs in m.arms if key == "fsa")] for m in members]
    if all(v == p3_seed_values[0] for v in p3_seed_values):
        each = p3_seed_values[0]
        p3_text = (f"Phase III seed{'s' if len(each) > 1 else ''} {', '.join(map(str, each))}"
                   + (" for each Phase I model" if len(members) > 1 else ""))
    else:
        p3_text = "Phase III seeds " + "; ".join(f"{', '.join(map(str, v))} (Phase I seed {s})"
                                                 for s, v in zip(p1_seeds, p3_seed_values))
    named = ((f"Phase III variant {variant}" if variant else "The default Phase III (no variant)")
             + f"; Phase I seed{'s' if len(p1_seeds) > 1 else ''} {', '.join(map(str, p1_seeds))}; {p3_text}")
    title = (f"# {config} / {note}" + (f", variant {variant}" if variant else "") + "\n\n" + named + ".\n\n"
             f"{c.dataset.name}{imb}, {c.model.name}; Phase I "
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
               "variant": variant, "phase_i_seed_values": p1_seeds, "phase_iii_seed_values": p3_seed_values,
               "suffix": suffix, "file": f"summary{suffix}.md",
               "times_s": times, "evidence": ev, "configs": {ph: members[0].cfgs[ph].to_dict() for ph in PHASES},
               "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dist.is_main():
        write_text(out / f"summary{suffix}.md", text)
        write_json(out / f"summary{suffix}.json", payload)
    print_fn("\n" + text)
    print_fn(f"[run] summary: {out / f'summary{suffix}.md'}")
    if report and dist.is_main():
        write_report(report, workdir, config, note, print_fn, device, "run", suffix=suffix)
    return payload


DEMO_CONFIG = "cifar10-LT_resnet32"


def demo_data(args, print_fn=print) -> str | None:
    """The folder holding real CIFAR-10 for the demo (``--data-root``, else $FSA_DATA_ROOT, else ./data),
    downloaded there (md5-checked) when missing and the network allows; None, with the reason
    printed in one line, when neither works."""
    import os

    from ..data.cifar import CIFAR_SPECS, download_cifar

    root = getattr(args, "data_root", None) or os.environ.get("FSA_DATA_ROOT") or "data"
    folder = Path(root) / CIFAR_SPECS["cifar10"]["folder"]
    if all((folder / f).is_file() for f in CIFAR_SPECS["cifar10"]["train"] + ["test_batch", "batches.meta"]):
        return root
    print_fn(f"[demo] CIFAR-10 is not in {root}: downloading it (about 170 MB, md5-checked) ...")
    try:
        download_cifar("cifar10", root)
        return root
    except Exception as exc:
        reason = str(exc).split(" (download from", 1)[-1].rstrip(")") if "download from" in str(exc) else str(exc)
        print_fn(f"[demo] no real CIFAR-10 (not in {root}, and the download failed: {reason[:160]}): running the "
                 "offline digits demo instead; put cifar-10-batches-py in --data-root or $FSA_DATA_ROOT for the real one")
        return None


def demo(args, print_fn=print, report=None) -> int:
    """The main job. With real CIFAR-10 (present or downloadable): the shipped 200-epoch Phase I model
    (ResNet-32, CIFAR-10-LT imbalance 100), then Phase II, FSA and the No-Aug control over three Phase
    III seeds and post-hoc logit adjustment (tau = 1), in a few minutes on a CPU. Without it: the
    digits demo (every phase, three Phase I seeds). ``--train`` trains Phase I instead of the shipped one."""
    t0 = time.perf_counter()
    digits = args.config is not None and "digits" in args.config
    root = None if digits else demo_data(args, print_fn)
    if root is None or digits:
        return _digits_demo(args, print_fn, report)
    from . import shipped

    config = args.config or DEMO_CONFIG
    p3_seeds = args.seeds if getattr(args, "seeds", None) is not None else [0, 1, 2]
    # the demo asks no choice of anything: post-hoc LA at its paper's tau = 1, no validation split
    overrides = [f"dataset.root={root}", "dataset.validation=false"] + list(args.overrides or [])
    if getattr(args, "train", False):
        print_fn("[demo] --train: Phase I trains here, 200 epochs of ResNet-32: hours on a CPU (about 4 h on 2 cores of "
                 "an AMD EPYC), minutes on a GPU; interrupted, the same command resumes it")
    else:
        name = shipped.DEMO_MODELS.get(config)
        if name is None:
            raise ConfigError(f"no shipped Phase I model for {config} (shipped: {', '.join(shipped.DEMO_MODELS)}); "
                              "add --train to train one")
        cfg_i = load_config(config, "phase_i", split_phase_overrides(overrides, "phase_i"))
        shipped.adopt(cfg_i, args.note, args.workdir, name, say=print_fn)
    payload = run(config, args.note, args.workdir, args.device or "cpu", overrides, force=args.force, control=True,
                  phase_iii_seeds=p3_seeds, extra_methods=["la-posthoc"], default_phase_iii_seeds=[0, 1, 2],
                  print_fn=print_fn, report=report)
    _verdict(payload, f"{len(p3_seeds)} Phase III seed(s) over one Phase I model", "real CIFAR-10-LT (imbalance 100)",
             print_fn)
    print_fn(f"[demo] {time.perf_counter() - t0:.0f} s in all")
    return 0


def _verdict(payload, over: str, data: str, print_fn) -> None:
    diff = next(r for r in payload["rows"] if r.get("key") == "fsa_minus_control")
    top1, std, n = diff.get("top1"), diff.get("top1_std"), diff.get("n")
    if top1 is None:
        return
    se = None if std is None else std / n ** 0.5
    if top1 > 0 and se is not None and top1 > 2 * se:
        verdict = "FSA is above the No-Aug control by more than twice the standard error"
    elif top1 > 0:
        verdict = "FSA is above the No-Aug control on average, but not by more than twice the standard error"
    else:
        verdict = "FSA does NOT beat the No-Aug control here"
    print_fn(f"[demo] FSA minus control, top-1, paired: {summary.cell(top1, std, signed=True)} over {over} on {data}: "
             f"{verdict}.")


def _digits_demo(args, print_fn=print, report=None) -> int:
    """Digits, long-tailed, ResNet-20: Phase I, II, III and the control over a few seeds, minutes on 2 CPU cores."""
    config = args.config or "digits-LT_resnet20"
    seeds = args.seeds if getattr(args, "seeds", None) is not None else [0, 1, 2]
    payload = run(config, args.note, args.workdir, args.device or "cpu", args.overrides, force=args.force, control=True,
                  seeds=seeds, default_seeds=[0, 1, 2], print_fn=print_fn, report=report)
    _verdict(payload, f"{len(seeds)} Phase I seed(s)", "digits (8 x 8 pixels, a toy)", print_fn)
    print_fn("[demo] digits shows that the pipeline runs, not that the method works; on real CIFAR-10-LT see docs/RESULTS.md")
    return 0


__all__ = ["run", "compare", "demo", "check_seeds", "check_methods", "write_summary", "preflight", "ARMS",
           "summary_suffix", "write_report"]
