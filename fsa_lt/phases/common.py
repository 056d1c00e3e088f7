"""Pieces the three phases share: model construction, checkpoint choice, metrics files, and the
life of a phase's output folders (`phase_run`: staging under --force, cleanup on bad input;
`finish_phase`: the files of the record, written once when the phase has finished)."""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..engine import distributed as dist
from ..engine.checkpoint import check_compatible, load_checkpoint, load_model_state
from ..config import dump_yaml
from ..engine.io import environment, write_json, write_text
from ..engine.metrics import one_line, summarize
from ..engine.run import open_run, run_dirs, seed_everything
from ..engine.trainer import PRECISION_RULE
from ..errors import CheckpointError, ConfigError, DataError, FsaError
from ..models import create_model
from . import records

PHASE_TITLES = {"phase_i": "Phase I", "phase_ii": "Phase II", "phase_iii": "Phase III"}


def build_model(cfg, num_classes: int, device: torch.device, pretrained: bool = True):
    torch.manual_seed(cfg.seed)  # initialisation is a function of the seed alone
    model = create_model(cfg.model.name, num_classes, pretrained=cfg.model.pretrained if pretrained else None,
                         classifier=cfg.model.classifier, cosine_scale=cfg.model.cosine_scale)
    # channels_last on every device: the faster layout for these convnets on CUDA and on
    # x86 CPUs alike (the device loader already yields channels_last batches).
    model = model.to(device).to(memory_format=torch.channels_last)
    return model


def check_test_classes(train_set, test_set):
    if test_set.num_classes != train_set.num_classes:
        raise DataError(f"test split has {test_set.num_classes} classes, training split has {train_set.num_classes}")


def checkpoint_path(ckpt_dir: Path, which: str) -> Path:
    """'best' -> best_model.pt, 'last' -> last.pt, anything else is a path."""
    if which == "best":
        return ckpt_dir / "best_model.pt"
    if which == "last":
        return ckpt_dir / "last.pt"
    return Path(which)


def load_phase_model(cfg, path: Path, phase: str, num_classes: int, device, expect_phase=None):
    state = load_checkpoint(path, expect_phase=expect_phase)
    check_compatible(state, path, cfg.model.name, num_classes)
    model = build_model(cfg, num_classes, device, pretrained=False)
    load_model_state(model, state, path)
    return model, state


PHASE_VERBS = {"phase_i": "train", "phase_ii": "extract", "phase_iii": "finetune"}  # the fsa-lt command of each phase


def command_hint(phase: str, cfg, note: str) -> str:
    return f"fsa-lt {PHASE_VERBS[phase]} --config {cfg.name} --note {note}"


def override_words(config: dict, keys) -> str:
    """``KEY=VALUE`` words (shell-quoted where needed) that give `keys` the values of `config`."""
    import shlex

    import yaml

    view = records.phase_view(config, "phase_iii")
    words = []
    for k in keys:
        if k in view:
            v = yaml.safe_dump(view[k], default_flow_style=True, width=10**6).split("\n...")[0].strip()
            words.append(shlex.quote(f"{k}={v}"))
    return " ".join(words)


def upstream_record(workdir, phase: str, cfg, note: str, upstream: dict | None = None,
                    consumer: str | None = None) -> dict:
    """The record of a finished upstream `phase`, or a one-line error saying what to run first.

    A command that reads a finished phase cannot replace it: outputs made with other settings
    are an error that names the settings they were made with, to be given again (as the
    command that made them had them). consumer: the phase that reads it; Phase III has a seed of
    its own (`phase_iii.seed`), so its seed is not compared with Phase I's."""
    import copy

    workdir = Path(workdir)
    hint = command_hint(phase, cfg, note)
    if consumer == "phase_iii" and phase == "phase_i":
        rec = records.read_record(records.log_dir(workdir, phase, cfg.name, note))
        seed = ((rec or {}).get("config") or {}).get("seed")
        if seed is not None and seed != cfg.seed:
            cfg = copy.deepcopy(cfg)
            cfg.seed = seed
    # force: outputs made with other settings are described, not refused (this command replaces nothing)
    st = records.inspect_phase(workdir, phase, cfg, note, upstream=upstream, force=True, command=hint)
    if st.status == "stale" and st.cause == "settings" or st.status == "absent" and st.diff:
        shown = "; ".join(st.diff[:6]) + (f"; and {len(st.diff) - 6} more" if len(st.diff) > 6 else "")
        keys = [d.split(":", 1)[0] for d in st.diff]
        if st.record is not None:
            again = override_words(st.record.get("config") or {}, keys)
            raise ConfigError(f"{PHASE_TITLES[phase]} of {cfg.name} / {note} was made with other settings ({shown}): "
                              f"give the settings it was made with, as the command that made it had them "
                              f"({again}), or make it again with these: {hint} --force")
        raise ConfigError(f"{PHASE_TITLES[phase]} of {cfg.name} / {note} was started with other settings ({shown}) "
                          f"and has not finished: resume it with the command that started it, or run {hint} --force")
    if st.status == "stale" and st.cause == "outputs":
        raise CheckpointError(f"{PHASE_TITLES[phase]} record {records.log_dir(workdir, phase, cfg.name, note) / records.RECORD} "
                              f"no longer matches its outputs ({st.reason}); redo the phase: {hint} --force")
    if st.status == "complete":
        return st.record
    what = {"stale": f"is out of date ({st.reason})", "interrupted": "was interrupted and has not finished",
            "absent": "has not been run"}[st.status]
    more = " --resume" if st.status == "interrupted" and phase == "phase_i" else ""  # a stale phase is redone by its command
    raise CheckpointError(f"{PHASE_TITLES[phase]} of {cfg.name} / {note} {what}: run {hint}{more} first "
                          f"(or fsa-lt run --config {cfg.name} --note {note})")


def needs_staging(state, force: bool) -> bool:
    """Whether a new run must write beside the old outputs (swapped in when it finishes): when it
    replaces finished outputs (forced, or made from an input that has since been redone), or
    when it is forced over an interrupted run."""
    return state.status in ("complete", "stale") or (force and (state.status == "interrupted" or bool(state.diff)))


@contextlib.contextmanager
def phase_run(cfg, phase: str, out_note: str, workdir, device, staging: bool = False, tensorboard: bool = True):
    """Open the run of `phase` writing to `out_note` (to a staging folder beside it when it replaces
    finished outputs: `finish_phase` swaps it in). A bad-input error (`FsaError`) inside the block
    removes the folders the run made, unless they hold a resume point."""
    workdir = Path(workdir)
    note = records.staging_note(out_note) if staging else out_note
    dirs = run_dirs(workdir, phase, cfg.name, note)
    # one process per phase and note: taken before anything here is cleaned or written
    lock = records.hold_note(workdir, phase, cfg.name, out_note) if dist.is_main() else None
    try:
        with _opened_run(cfg, phase, note, out_note, workdir, device, dirs, staging, tensorboard) as run:
            yield run
    finally:
        records.release_note(lock)


@contextlib.contextmanager
def _opened_run(cfg, phase, note, out_note, workdir, device, dirs, staging, tensorboard):
    if dist.is_main():
        if staging:  # what an earlier, interrupted replacement left
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
        for d in dirs.values():  # temporary files of writes a kill cut short (never renamed into place)
            for tmp in d.glob(".*.tmp") if d.is_dir() else ():
                tmp.unlink(missing_ok=True)
    dist.barrier()
    existed = {k: d.exists() for k, d in dirs.items()}
    run = open_run(cfg, phase, note, workdir, device, tensorboard=tensorboard)
    run.out_note, run.staging = out_note, staging
    run.final_dirs = run_dirs(workdir, phase, cfg.name, out_note)
    run.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.t0 = time.perf_counter()
    if run.main:
        records.write_pending(run.dirs["log"], cfg, phase, out_note)
    try:
        yield run
    except FsaError:
        if run.main:
            run.close()
            resumable = (dirs["ckpt"] / "last.pt").is_file() and phase == "phase_i"
            for k, d in dirs.items():
                if staging or (not existed[k] and not resumable):
                    shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        run.close()


def finish_phase(run, payload: dict, inputs: dict, outputs: dict, summary: dict | None = None, **extra) -> dict:
    """Write the record of a finished phase: metrics.json, config.yaml, environment.json, then
    record.json last (the file that makes the outputs complete); swap a staging run into place.

    outputs: name -> file in this run's folders that later phases read (hashed)."""
    rec = None
    if run.main:
        ldir = run.dirs["log"]
        write_json(ldir / "metrics.json", payload)
        write_text(ldir / "config.yaml", dump_yaml(run.cfg))
        env = dict(environment(), precision_rule=PRECISION_RULE)
        env.update(extra.pop("environment_extra", {}) or {})
        write_json(ldir / "environment.json", env)
        outs = {}
        for name, path in outputs.items():
            path = Path(path)
            final = path
            for k, d in run.dirs.items():
                try:
                    final = run.final_dirs[k] / path.relative_to(d)
                    break
                except ValueError:
                    continue
            outs[name] = {"path": records.rel(run.workdir, final), "sha256": records.sha256_file(path)}
        rec = records.new_record(run.phase, run.cfg, run.out_note, inputs, outs, env, run.started,
                                 time.perf_counter() - run.t0, summary, **extra)
        if run.tb is not None:
            run.tb.flush()
            run.tb.close()
            run.tb = None
        records.write_record(ldir, rec)
        if run.staging:
            records.swap_in(run.dirs, run.final_dirs)
            run.dirs = dict(run.final_dirs)
            # the runs it replaced are gone: the later phases made from them are stale now (records.
            # inputs_problem), and so is every table that shows them, until its command writes it anew
            mark_summaries_stale(run.workdir, run.phase, run.cfg.name, run.out_note)
    dist.barrier()
    return dist.broadcast_object(rec)


STALE_MARK = "> **Out of date:**"


def _summary_runs(payload: dict) -> set:
    """The run notes a summary or comparison (its .json) was made from."""
    names = set()
    for r in payload.get("rows") or []:
        names.update(r.get("runs") or [])
    for m in payload.get("members") or []:
        names.add(m.get("note"))
        for r in m.get("rows") or []:
            names.update(r.get("runs") or [])
    return {n for n in names if isinstance(n, str)}


def mark_summaries_stale(workdir, phase: str, config: str, note: str) -> list[Path]:
    """Mark every table of ``log/run/<config>/`` made from run `note` (a summary of `fsa-lt run`,
    a comparison, and its report) as out of date: a line at the top of the .md and the report
    and ``"stale"`` in the .json say which run was redone and when. Returns the files marked."""
    import json

    base = Path(workdir) / "log" / "run" / config
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    why = (f"{PHASE_TITLES[phase]} of {config} / {note} was redone at {when}, after this table was written; its "
           f"numbers are those of the runs that were replaced. The command that wrote it writes it anew.")
    marked = []
    for js in sorted(base.glob("*/*.json")) if base.is_dir() else ():
        if not js.name.startswith(("summary", "compare")):
            continue
        try:
            payload = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(payload, dict) or payload.get("stale") or note not in _summary_runs(payload):
            continue
        write_json(js, dict(payload, stale=why))
        marked.append(js)
        md = js.with_suffix(".md")
        if md.is_file():
            write_text(md, f"{STALE_MARK} {why}\n\n" + md.read_text())
            marked.append(md)
        suffix = js.stem[len("summary"):] if js.name.startswith("summary") else ""
        report = js.parent / f"report{suffix}.html"
        if report.is_file():
            page = report.read_text()
            if "<body>" in page and 'class="stale"' not in page:
                import html

                write_text(report, page.replace("<body>", f'<body><p class="stale"><b>Out of date:</b> {html.escape(why)}</p>', 1))
                marked.append(report)
    return marked


def short_metrics(m: dict | None) -> dict | None:
    """The headline columns of a metrics entry (the record keeps these; metrics.json has the rest)."""
    if m is None:
        return None
    return {k: m.get(k) for k in ("top1", "many", "medium", "few", "head", "tail", "epoch", "iteration") if k in m}


def require_phase_output(path: Path, what: str, hint: str):
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} ({hint})")


def log_metrics(run, tag: str, m: dict, step: int) -> None:
    run.log.info(f"{tag}: {one_line(m)}")
    for k in ("top1", "many", "medium", "few", "head", "tail"):
        run.scalar(f"{tag}/{k}", m[k], step)


def counts_summary(counts: np.ndarray, h_r: float) -> str:
    from ..method.split import head_tail_split, shot_groups

    head, tail = head_tail_split(counts, h_r)
    g = shot_groups(counts)
    return (f"{len(counts)} classes, {int(counts.sum())} images (max {int(counts.max())}, min {int(counts.min())}); "
            f"head {len(head)} / tail {len(tail)} (h_r={h_r}); many {len(g['many'])} / medium {len(g['medium'])} / few {len(g['few'])}")


def save_confusion_matrix(run, cm) -> None:
    """The final model's K x K test confusion matrix (rows: true class), read by the run report."""
    if dist.is_main():
        from ..engine.io import torch_save

        torch_save(run.dirs["log"] / "confusion_matrix.pt", torch.as_tensor(cm).detach().cpu().long())


def test_checkpoint(cfg, note: str, workdir, device, checkpoint: str, phase: str, step_key: str,
                    out_note: str | None = None) -> dict:
    """Test mode of a phase: evaluate best/last/a path on the test set and write
    ``test_<file>.json`` (``test_best_model.json`` for best: metrics under the file's name) and
    ``test_<file>.log`` in the run's log folder. The run's record (config, environment, metrics)
    is never touched. best / last of a run that has not been run, whose files have changed since
    its record, or whose inputs have been redone since (stale) are refused, each in its words."""
    from ..data import build_dataset, class_counts, make_loader
    from ..engine.trainer import evaluate

    workdir = Path(workdir)
    out_note = out_note or note
    path = checkpoint_path(run_dirs(workdir, phase, cfg.name, out_note)["ckpt"], checkpoint)
    if checkpoint in ("best", "last"):
        check_tested_run(workdir, phase, cfg, note, out_note)
    state = load_checkpoint(path, expect_phase=phase)  # readable before anything is made
    saved = state.get("config")
    if saved:
        diff = [d for d in records.config_diff(saved, cfg.to_dict(), "phase_i") if d.split(".")[0] in ("dataset", "model")]
        if diff:
            from ..errors import ConfigError

            raise ConfigError(f"{path} was trained on other data or another model than the config says "
                              f"({'; '.join(diff[:4])}): test it with the settings it was trained with")
    seed_everything(cfg.seed)
    train_set = build_dataset(cfg, "train", augment=False)
    test_set = build_dataset(cfg, "test")
    check_test_classes(train_set, test_set)
    counts = class_counts(train_set)
    run = open_run(cfg, phase, out_note, workdir, device, tensorboard=False, log_name=f"test_{path.stem}.log")
    try:
        check_compatible(state, path, cfg.model.name, len(counts))
        model = build_model(cfg, len(counts), run.device, pretrained=False)
        load_model_state(model, state, path)
        if state.get("logit_adjust"):  # a baseline's classifier the model's head cannot hold
            from .rebalance import AdjustedModel

            model = AdjustedModel(model, state["logit_adjust"]).to(run.device)
        loader = make_loader(test_set, cfg, run.device, train=False, batch_size=cfg.train.eval_batch_size)
        m = summarize(evaluate(model, loader, len(counts), run.device), counts, cfg.extract.h_r)
        m[step_key] = state.get(step_key)
        run.log.info(f"test of {path} ({step_key} {state.get(step_key)}): {one_line(m)}")
        if dist.is_main():
            write_json(run.dirs["log"] / f"test_{path.stem}.json",
                       {"checkpoint": records.rel(workdir, path), "sha256": records.sha256_file(path),
                        step_key: state.get(step_key), path.stem: m})
        return m
    finally:
        run.close()


def check_tested_run(workdir: Path, phase: str, cfg, note: str, out_note: str) -> None:
    """The run whose best / last checkpoint test mode evaluates: run (or started: an interrupted
    run's checkpoints so far may be tested), its files as its record names them, its inputs still
    the runs in place; else a one-line CheckpointError saying which and what to run."""
    ldir = records.log_dir(workdir, phase, cfg.name, out_note)
    hint = command_hint(phase, cfg, note)
    title = f"{PHASE_TITLES[phase]} of {cfg.name} / {out_note}"
    rec = records.read_record(ldir)
    if rec is None:
        started = (ldir / records.PENDING).is_file() or (
            phase == "phase_i" and (run_dirs(workdir, phase, cfg.name, out_note)["ckpt"] / "last.pt").is_file())
        if not started:
            raise CheckpointError(f"{title} has not been run: run {hint} (with the overrides of the run to test) "
                                  f"or fsa-lt run first")
        return
    problem = records.outputs_problem(workdir, rec)
    if problem:
        raise CheckpointError(f"{title}: its record no longer matches its outputs ({problem}); redo it: {hint} --force")
    problem = records.inputs_problem(workdir, rec)
    if problem:
        raise CheckpointError(f"{title} is out of date: {problem}, so its checkpoints are of a model that is no longer "
                              f"there; run {hint} (or the fsa-lt run that made it) to redo it, then test")


def write_metrics(run, payload: dict, name: str = "metrics.json") -> None:
    if dist.is_main():
        write_json(run.dirs["log"] / name, payload)


__all__ = ["build_model", "checkpoint_path", "load_phase_model", "log_metrics", "save_confusion_matrix", "summarize",
           "write_metrics"]
