"""The `fsa-lt` command and the seed-compatible entry scripts.

    fsa-lt train     --config NAME --note NOTE [--resume] [KEY=VALUE ...]    Phase I
    fsa-lt test      --config NAME --note NOTE [--checkpoint best|last|PATH]  Phase I test
    fsa-lt extract   --config NAME --note NOTE                                Phase II
    fsa-lt finetune  --config NAME --note NOTE [--mode train|test]            Phase III
    fsa-lt run       --config NAME --note NOTE [--force] [--control]          I, II, III
    fsa-lt demo                                                               offline demo
    fsa-lt visualize --config NAME --note NOTE                                figures

Every command takes `--workdir DIR` (default: the current folder), `--device cpu|cuda[:i]`
and trailing dotted overrides such as `train.epochs=2 dataset.root=/data`.  A user error
prints one line, ``fsa-lt: error: ...``, and exits non-zero (2 for config errors).
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import FsaError


def _common(p: argparse.ArgumentParser, config_required: bool = True, note_default: str = "default") -> None:
    p.add_argument("--config", required=config_required,
                   help="experiment name (configs/<phase>/NAME.yaml) or a path to a YAML file")
    p.add_argument("--note", default=note_default, help="run label: outputs go to .../<config>/<note>/")
    p.add_argument("--workdir", default=".", help="folder holding checkpoints/, log/, run_summary/, feature/")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsa-lt", description="Feature Space Augmentation for long-tailed data")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="Phase I: train the network on the long-tailed set")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from last.pt of this config/note")

    p = sub.add_parser("test", help="Phase I: evaluate a checkpoint")
    _common(p)
    p.add_argument("--checkpoint", default="best", help="best, last, or a path (default: best)")

    p = sub.add_parser("extract", help="Phase II: CAMs, decomposition, confusing classes, feature store")
    _common(p)

    p = sub.add_parser("finetune", help="Phase III: fine-tune the classifier with feature-space augmentation")
    _common(p)
    p.add_argument("--mode", choices=("train", "test"), default="train")
    p.add_argument("--checkpoint", default="best", help="test mode: best, last, or a path")

    p = sub.add_parser("run", help="Phases I, II and III in order, then a summary table")
    _common(p)
    p.add_argument("--force", action="store_true", help="rerun phases whose outputs are complete")
    p.add_argument("--control", action="store_true",
                   help="also run Phase III with the augmentation off (the paper's 'No Aug' control)")

    p = sub.add_parser("demo", help="the whole pipeline on scikit-learn's digits, offline, in minutes on a CPU")
    _common(p, config_required=False, note_default="demo")
    p.add_argument("--force", action="store_true")

    p = sub.add_parser("visualize", help="CAM / decomposition / synthetic-sample figures of a Phase II run")
    _common(p)
    p.add_argument("--per-class", type=int, default=4, help="images per class in the figures")
    return parser


def dispatch(args) -> int:
    from .config import load_config

    cmd = args.command
    if cmd in ("train", "test"):
        from .phases import phase_i

        cfg = load_config(args.config, "phase_i", args.overrides)
        if cmd == "train":
            phase_i.train(cfg, args.note, args.workdir, args.device, resume=args.resume)
        else:
            phase_i.test(cfg, args.note, args.workdir, args.device, checkpoint=args.checkpoint)
        return 0
    if cmd == "extract":
        from .phases import phase_ii

        cfg = load_config(args.config, "phase_ii", args.overrides)
        phase_ii.extract(cfg, args.note, args.workdir, args.device)
        return 0
    if cmd == "finetune":
        from .phases import phase_iii

        cfg = load_config(args.config, "phase_iii", args.overrides)
        if args.mode == "train":
            phase_iii.finetune(cfg, args.note, args.workdir, args.device)
        else:
            phase_iii.test(cfg, args.note, args.workdir, args.device, checkpoint=args.checkpoint)
        return 0
    if cmd in ("run", "demo"):
        from .phases import pipeline

        if cmd == "demo":
            return pipeline.demo(args)
        pipeline.run(args.config, args.note, args.workdir, args.device, args.overrides,
                     force=args.force, control=args.control)
        return 0
    if cmd == "visualize":
        from .viz.figures import visualize

        cfg = load_config(args.config, "phase_iii", args.overrides)
        visualize(cfg, args.note, args.workdir, args.device, per_class=args.per_class)
        return 0
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except FsaError as exc:
        msg = str(exc).replace("\n", " ")
        print(f"fsa-lt: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fsa-lt: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        from .engine import distributed as dist

        dist.cleanup()


def seed_script(phase: str, argv: list[str] | None = None) -> int:
    """The seed's entry scripts: phase_i_train_or_test.py, phase_ii_extract_feature.py,
    phase_iii_train_or_test.py. Same flags as the subcommands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if phase == "phase_i":
        mode = "train"
        if "--mode" in argv:
            i = argv.index("--mode")
            mode = argv[i + 1] if i + 1 < len(argv) else ""
            del argv[i:i + 2]
        if mode not in ("train", "test"):
            print("fsa-lt: error: --mode must be train or test", file=sys.stderr)
            return 2
        return main([mode] + argv)
    if phase == "phase_ii":
        return main(["extract"] + argv)
    return main(["finetune"] + argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
