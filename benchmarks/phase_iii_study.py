#!/usr/bin/env python
"""Phase III study on a finished `fsa-lt run`: which choices carry the gain of FSA?

Runs Phase III variants beside the default run (each under <note>-<variant>, reading the
same Phase I model and Phase II store) and prints one table: the Phase I model, the
No-Aug control, FSA as configured, and FSA with other thresholds, tail sampling, the
online mode, and (with a second Phase II under <note>-hr95) h_r = 0.95.

    python benchmarks/phase_iii_study.py --config cifar10-LT_resnet32 --note cpu30 --workdir /tmp/real \
        --device cpu [--online-iterations 1600] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsa_lt.config import load_config  # noqa: E402
from fsa_lt.phases import phase_ii, phase_iii  # noqa: E402
from fsa_lt.phases.summary import summary_table  # noqa: E402

VARIANTS = [  # (label, variant name, overrides)
    ("FSA, tau_s 0.6 / tau_g 0.4", "tau64", ["extract.tau_s=0.6", "extract.tau_g=0.4"]),
    ("FSA, tau_s 0.9 / tau_g 0.1", "tau91", ["extract.tau_s=0.9", "extract.tau_g=0.1"]),
    ("FSA, tau_s = tau_g = 0.5", "tau55", ["extract.tau_s=0.5", "extract.tau_g=0.5"]),
    ("FSA, tail class drawn first", "classtail", ["finetune.tail_sampling=class"]),
    ("No-Aug, tail class drawn first", "classtail", ["finetune.tail_sampling=class", "finetune.augment=false"]),
]


def final(workdir: Path, cfg, note: str) -> dict:
    return json.loads((workdir / "log/phase_iii" / cfg.name / phase_iii.output_note(cfg, note) / "metrics.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--note", required=True)
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--device", default=None)
    ap.add_argument("--online-iterations", type=int, default=1600,
                    help="iterations of the online-mode rows (each recomputes 128 images through the backbone)")
    ap.add_argument("--skip", nargs="*", default=[], help="variant names to leave out (e.g. online hr95)")
    ap.add_argument("--out", default=None, help="write the table (markdown) here too")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    wd, note, base = Path(a.workdir), a.note, list(a.overrides)
    load = lambda extra: load_config(a.config, "phase_iii", base + extra)  # noqa: E731

    default = final(wd, load([]), note)
    rows = [("Phase I (plain training)", default["phase_i"]),
            ("No-Aug control", final(wd, load(["finetune.augment=false"]), note)["final"]),
            ("FSA (as configured)", default["final"])]
    variants = [v for v in VARIANTS if v[1] not in a.skip]
    if "online" not in a.skip:
        it = [f"finetune.iterations={a.online_iterations}", f"finetune.eval_every={a.online_iterations}",
              f"finetune.save_every={a.online_iterations}"]
        variants += [(f"FSA, online mode, {a.online_iterations} it.", "online", ["finetune.mode=online"] + it),
                     (f"No-Aug, online mode, {a.online_iterations} it.", "online",
                      ["finetune.mode=online", "finetune.augment=false"] + it)]
    for label, name, extra in variants:
        cfg = load(extra + [f"finetune.variant={name}"])
        phase_iii.finetune(cfg, note, wd, a.device)
        rows.append((label, final(wd, cfg, note)["final"]))
    if "hr95" not in a.skip:  # a second Phase II: head/tail split and confusing classes change with h_r
        # the same finished Phase I under <note>-hr95: its record names the checkpoint it made by
        # path and SHA-256, so a copy of the record stands for that run without copying the weights
        src = wd / "log/phase_i" / a.config / note / "record.json"
        dst = wd / "log/phase_i" / a.config / f"{note}-hr95" / "record.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            shutil.copy2(src, dst)
        for aug, label in (("true", "FSA, h_r 0.95"), ("false", "No-Aug, h_r 0.95")):
            cfg = load(["extract.h_r=0.95", f"finetune.augment={aug}"])
            if aug == "true":
                phase_ii.extract(load_config(a.config, "phase_ii", base + ["extract.h_r=0.95"]), f"{note}-hr95", wd, a.device)
            phase_iii.finetune(cfg, f"{note}-hr95", wd, a.device)
            rows.append((label, final(wd, cfg, f"{note}-hr95")["final"]))
    table = summary_table(rows)
    print("\n" + table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
