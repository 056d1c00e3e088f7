"""The `fsa-lt` command and the seed-compatible entry scripts.

    fsa-lt train     --config NAME --note NOTE [--resume] [--force] [KEY=VALUE ...]  Phase I
    fsa-lt test      --config NAME --note NOTE [--checkpoint best|last|PATH]  Phase I test
    fsa-lt extract   --config NAME --note NOTE [--force]                      Phase II
    fsa-lt finetune  --config NAME --note NOTE [--mode train|test] [--force]  Phase III
    fsa-lt run       --config NAME --note NOTE [--force] [--control] [--resume]
                     [--seeds S ...] [--phase-iii-seeds K ...]                I, II, III
    fsa-lt compare   --config NAME --note NOTE [--methods fsa,no-aug,crt,...] FSA beside the baselines
    fsa-lt demo                                                               FSA on real CIFAR-10-LT in minutes (digits offline)
    fsa-lt visualize --config NAME --note NOTE                                figures
    fsa-lt data      --config NAME [--verify] [--out DIR]                     data set profile
    fsa-lt status    [--config NAME] [--note NOTE] [--json]                   running / interrupted / finished

Every command takes `--workdir DIR` (default: the current folder); every command but `data` and
`status` takes `--device cpu|cuda[:i]`; every command but `status` takes trailing dotted
overrides such as `train.epochs=2 dataset.root=/data`, in the form `fsa-lt run` takes them
(a `phase_i.` / `phase_ii.` / `phase_iii.` prefix makes one start at that phase), so a run's
command line can be copied to the commands that read the run.  A note is one plain folder
name.  A user error prints one line, ``fsa-lt: error: ...``, and exits non-zero: 2 for config
errors (including outputs made with other settings), 3 for data errors, 4 for checkpoint /
record errors, 5 when another live process runs the same phase and note, 130 when interrupted
with Ctrl-C and 143 when stopped with SIGTERM (a plain `kill`; both name the command that
resumes), 141 when the reader of its output went away (`fsa-lt status | head -1`).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import ConfigError, FsaError


def _common(p: argparse.ArgumentParser, config_required: bool = True, note_default: str = "default") -> None:
    p.add_argument("--config", required=config_required,
                   help="experiment name (configs/<phase>/NAME.yaml) or a path to a YAML file")
    p.add_argument("--note", default=note_default, help="run label: outputs go to .../<config>/<note>/")
    p.add_argument("--workdir", default=".", help="folder holding checkpoints/, log/, run_summary/, feature/")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=2")


_FORCE = ("do this phase again even when it has finished (with these or other settings) or was interrupted, "
          "replacing its outputs; the old ones stay valid until the new run finishes")
_RUN_FORCE = ("replace the outputs of this note that were made with other settings: each phase whose settings "
              "differ, and the phases after it; the old ones stay valid until the new ones finish. Phases "
              "finished with these settings are reused (to do one again: fsa-lt train / extract / finetune --force)")
_MODE = "train: run the phase (default); test: evaluate a checkpoint (--checkpoint) and write test_<its file name>.json"


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of this config/note from last.pt (an error if there is none)")
    p.add_argument("--force", action="store_true", help=_FORCE)


def _seed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", nargs="*", default=None, metavar="S",
                   help="run the whole pipeline once per seed, under <note>-s<S>, and summarise mean ± std")
    p.add_argument("--phase-iii-seeds", nargs="*", default=None, metavar="K",
                   help="repeat Phase III (and the control) over one Phase I model with finetune.seed=K, under <note>-fs<K>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsa-lt", description="Feature Space Augmentation for long-tailed data")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="Phase I: train the network on the long-tailed set")
    _common(p)
    _train_flags(p)

    p = sub.add_parser("test", help="Phase I: evaluate a checkpoint")
    _common(p)
    p.add_argument("--checkpoint", default="best", help="best, last, or a path (default: best)")

    p = sub.add_parser("extract", help="Phase II: CAMs, decomposition, confusing classes, feature store")
    _common(p)
    p.add_argument("--force", action="store_true", help=_FORCE)

    p = sub.add_parser("finetune", help="Phase III: fine-tune the classifier with feature-space augmentation")
    _common(p)
    p.add_argument("--mode", choices=("train", "test"), default="train", help=_MODE)
    p.add_argument("--checkpoint", default="best", help="test mode: best, last, or a path")
    p.add_argument("--force", action="store_true", help=_FORCE)

    p = sub.add_parser("run", help="Phases I, II and III in order, then a summary table")
    _common(p)
    p.add_argument("--force", action="store_true", help=_RUN_FORCE)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (what rerunning the same command does anyway); "
                        "an error if no phase of it has been started")
    p.add_argument("--control", action="store_true",
                   help="also run Phase III with the augmentation off (the paper's 'No Aug' control)")
    _seed_flags(p)

    p = sub.add_parser("compare", help="FSA beside the long-tailed baselines over one finished Phase I, one table")
    _common(p)
    p.add_argument("--methods", default="fsa,no-aug,crt,lws,la-posthoc",
                   help="comma-separated, from: fsa, no-aug, fsa-online, no-aug-online (over images through the "
                        "frozen backbone), crt, lws (Kang et al.'s recipe), crt-store, lws-store (on the stored "
                        "features, like FSA), tau-norm (needs dataset.validation=true or finetune.tau), la-posthoc "
                        "(tau = 1), la-posthoc-val (tau on validation); default: fsa,no-aug,crt,lws,la-posthoc")
    p.add_argument("--phase-iii-seeds", nargs="*", default=None, metavar="K",
                   help="repeat every method with finetune.seed=K (mean ± std over them)")
    p.add_argument("--seeds", nargs="*", default=None, metavar="S",
                   help="compare over the finished Phase I models <note>-s<S> (as `fsa-lt run --seeds` names "
                        "them), pooled: mean ± std over the Phase I seeds")
    p.add_argument("--force", action="store_true", help=_RUN_FORCE)

    p = sub.add_parser("demo", help="FSA against its No-Aug control on real CIFAR-10-LT from the shipped Phase I model, "
                                    "minutes on a CPU (the offline digits demo without CIFAR-10)")
    _common(p, config_required=False, note_default="demo")
    p.add_argument("--force", action="store_true", help=_RUN_FORCE)
    p.add_argument("--seeds", nargs="*", default=None, metavar="S",
                   help="Phase III seeds over the shipped model (digits: Phase I seeds, each end to end); default 0 1 2")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where CIFAR-10 is (cifar-10-batches-py/) or is downloaded to; default $FSA_DATA_ROOT, else ./data")
    p.add_argument("--train", action="store_true",
                   help="train Phase I here instead of starting from the shipped model (hours on a CPU)")

    p = sub.add_parser("data", help="long-tail profile of the configured data set (no training)")
    p.add_argument("--config", required=True,
                   help="experiment name (configs/<phase>/NAME.yaml) or a path to a YAML file")
    p.add_argument("--workdir", default=".", help="the default --out is WORKDIR/log/data/<config>/")
    p.add_argument("--out", default=None, help="folder for profile.json and class_sizes.png")
    p.add_argument("--verify", action="store_true",
                   help="open every image: report unreadable files and files with the same content")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. dataset.root=/data")

    p = sub.add_parser("visualize", help="CAM / decomposition / synthetic-sample figures of a Phase II run")
    _common(p)
    p.add_argument("--per-class", type=int, default=4, help="images per class in the figures")

    p = sub.add_parser("status", help="which runs of a work folder are running, interrupted (and where) or finished")
    p.add_argument("--workdir", default=".", help="folder holding checkpoints/, log/, run_summary/, feature/")
    p.add_argument("--config", default=None, help="only this experiment name")
    p.add_argument("--note", default=None, help="only this note")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def check_workdir(path) -> None:
    """--workdir must be a folder, or a path whose first existing part is one (it is made)."""
    p = Path(path)
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    if q.exists() and not q.is_dir():
        where = "a file" if q == p else f"under a file ({q})"
        raise ConfigError(f"--workdir {path}: {where}, not a folder")


def run_report(workdir, config: str, note: str, print_fn=print, device=None, suffix: str = "") -> None:
    """The HTML report of `fsa-lt run` / `compare` / `demo` (the pipeline calls it when done)."""
    from .viz.report import write_run_report

    write_run_report(workdir, config, note, print_fn=print_fn, device=device, suffix=suffix)


def check_args(args) -> None:
    """What the command line itself gets wrong, before any config is read or anything made."""
    from .phases.records import check_note, check_phase_overrides

    if getattr(args, "workdir", None) is not None:
        check_workdir(args.workdir)
    if getattr(args, "note", None) is not None:
        check_note(args.note)
    if getattr(args, "overrides", None):
        check_phase_overrides(args.overrides)


def _phase_config(args, phase: str):
    """The config of `phase` from the command's overrides, read as `fsa-lt run` reads them."""
    from .config import load_config, split_phase_overrides

    return load_config(args.config, phase, split_phase_overrides(args.overrides, phase))


def dispatch(args) -> int:
    cmd = args.command
    check_args(args)
    if cmd in ("train", "test"):
        from .phases import phase_i

        cfg = _phase_config(args, "phase_i")
        if cmd == "train":
            phase_i.train(cfg, args.note, args.workdir, args.device, resume=args.resume, force=args.force)
        else:
            phase_i.test(cfg, args.note, args.workdir, args.device, checkpoint=args.checkpoint)
        return 0
    if cmd == "extract":
        from .phases import phase_ii

        cfg = _phase_config(args, "phase_ii")
        phase_ii.extract(cfg, args.note, args.workdir, args.device, force=args.force)
        return 0
    if cmd == "finetune":
        from .phases import phase_iii

        cfg = _phase_config(args, "phase_iii")
        if args.mode == "train":
            phase_iii.finetune(cfg, args.note, args.workdir, args.device, force=args.force)
        else:
            phase_iii.test(cfg, args.note, args.workdir, args.device, checkpoint=args.checkpoint)
        return 0
    if cmd == "compare":
        from .phases import pipeline

        pipeline.compare(args.config, args.note, args.workdir, args.device, args.overrides, methods=args.methods,
                         force=args.force, phase_iii_seeds=args.phase_iii_seeds, seeds=args.seeds,
                         report=run_report)
        return 0
    if cmd in ("run", "demo"):
        from .phases import pipeline

        if cmd == "demo":
            return pipeline.demo(args, report=run_report)
        pipeline.run(args.config, args.note, args.workdir, args.device, args.overrides, force=args.force,
                     control=args.control, resume=args.resume, seeds=args.seeds, phase_iii_seeds=args.phase_iii_seeds,
                     report=run_report)
        return 0
    if cmd == "data":
        from .data.profile import run_profile

        from .config import split_phase_overrides

        run_profile(args.config, split_phase_overrides(args.overrides, "phase_i"), workdir=args.workdir, out=args.out,
                    verify=args.verify)
        return 0
    if cmd == "status":
        from .phases.status import status

        status(args.workdir, args.config, args.note, as_json=args.json)
        return 0
    if cmd == "visualize":
        from .viz.figures import visualize

        cfg = _phase_config(args, "phase_iii")
        visualize(cfg, args.note, args.workdir, args.device, per_class=args.per_class)
        return 0
    raise AssertionError(cmd)


def resume_command(command: str, words: list[str], prog: str = "fsa-lt") -> str:
    """The command that continues an interrupted one: the same line (plus --resume for training)."""
    words = list(words)
    if command == "train" and "--resume" not in words:
        words.append("--resume")
    return " ".join([prog] + [w if w and " " not in w else repr(w) for w in words])


_SEED_LISTS = (("seeds", "--seeds"), ("phase_iii_seeds", "--phase-iii-seeds"))


def split_seed_lists(args: argparse.Namespace) -> None:
    """A seed list ends where the KEY=VALUE overrides begin.

    argparse lets `--seeds 0 1 train.epochs=3` take the override as a fourth seed (a list
    option is greedy), so the lists are read as words here: the words from the first
    KEY=VALUE on go back to the overrides, in the order typed; what is left must be
    integers (one line, exit 2, otherwise)."""
    for attr, flag in _SEED_LISTS:
        words = getattr(args, attr, None)
        if words is None:
            continue
        cut = next((i for i, w in enumerate(words) if "=" in w), len(words))
        seeds, extra = words[:cut], words[cut:]
        bad = next((w for w in seeds if not w.lstrip("-").isdigit()), None)
        if bad is not None:
            raise ConfigError(f"{flag}: not a seed: {bad!r} (seeds are integers; overrides are KEY=VALUE)")
        setattr(args, attr, [int(w) for w in seeds])
        if extra:
            args.overrides = list(getattr(args, "overrides", None) or []) + extra


class Terminated(KeyboardInterrupt):
    """SIGTERM (a plain `kill`, a batch system's time limit): stopped as Ctrl-C stops a run."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (`fsa-lt status | head -1`)."""
    try:
        import select

        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except Exception:  # no poll (Windows) or no real stdout (a test's capture): not known to be gone
        return False


def _quiet_stdout() -> None:
    """Point stdout at the null device, so the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None, prog: str = "fsa-lt", shown_argv: list[str] | None = None) -> int:
    """`shown_argv`: the words after `prog` as the user typed them (the seed scripts differ)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        split_seed_lists(args)
        rc = dispatch(args)
        sys.stdout.flush()  # a reader that went away is noticed here, not in the interpreter's exit
        return rc
    except FsaError as exc:
        msg = " ".join(str(exc).split())
        print(f"fsa-lt: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = {"train": "resume it with", "run": "resume it with"}.get(args.command, "rerun it with")
        how = "stopped (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"fsa-lt: {how}; {what}: {resume_command(args.command, argv if shown_argv is None else shown_argv, prog)}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        _quiet_stdout()
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        from .engine import distributed as dist

        dist.cleanup()


def _seed_script_parser(phase: str) -> argparse.ArgumentParser:
    """The parser of a seed script, for its --help (same flags as the subcommands)."""
    prog = {"phase_i": "phase_i_train_or_test.py", "phase_ii": "phase_ii_extract_feature.py",
            "phase_iii": "phase_iii_train_or_test.py"}[phase]
    p = argparse.ArgumentParser(prog=prog, description={
        "phase_i": "Phase I: train the network on the long-tailed set (--mode train) or test a checkpoint (--mode test).",
        "phase_ii": "Phase II: CAMs, decomposition, confusing classes and the feature store of a finished Phase I.",
        "phase_iii": "Phase III: fine-tune the classifier with feature-space augmentation (--mode train) or test it."}[phase])
    _common(p)
    if phase == "phase_ii":
        p.add_argument("--force", action="store_true", help=_FORCE)
        return p
    p.add_argument("--mode", choices=("train", "test"), default="train", help=_MODE)
    p.add_argument("--checkpoint", default="best", help="test mode: best, last, or a path (default: best)")
    if phase == "phase_i":
        _train_flags(p)
    else:
        p.add_argument("--force", action="store_true", help=_FORCE)
    return p


def seed_script(phase: str, argv: list[str] | None = None) -> int:
    """The seed's entry scripts: phase_i_train_or_test.py, phase_ii_extract_feature.py,
    phase_iii_train_or_test.py. Same flags as the subcommands, plus --mode for I and III."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _seed_script_parser(phase)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    prog, typed = f"python {parser.prog}", list(argv)
    if phase == "phase_i":
        mode = "train"
        if "--mode" in argv:
            i = argv.index("--mode")
            mode = argv[i + 1] if i + 1 < len(argv) else ""
            del argv[i:i + 2]
        if mode not in ("train", "test"):
            print(f"{parser.prog}: error: --mode must be train or test", file=sys.stderr)
            return 2
        if mode == "test" and "--resume" in argv:
            print(f"{parser.prog}: error: --resume applies to --mode train", file=sys.stderr)
            return 2
        return main([mode] + argv, prog=prog, shown_argv=typed)
    if phase == "phase_ii":
        return main(["extract"] + argv, prog=prog, shown_argv=typed)
    return main(["finetune"] + argv, prog=prog, shown_argv=typed)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
