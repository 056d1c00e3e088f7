#!/usr/bin/env python
"""Does the device-resident fast path train to the same accuracy as the plain DataLoader path?

Runs Phase I through the real code (`fsa_lt.phases.phase_i.train`) for several seeds with
`train.fast_path=on` and `train.fast_path=off`, same config otherwise, and prints a table of
final top-1 (and many/medium/few) per seed with the mean and standard deviation of each path,
plus the wall time per epoch.  The two paths draw different random crops/flips (different
random streams), so equality is statistical: the means should agree within the seed spread.

    python benchmarks/fast_vs_plain.py --config digits-LT_resnet20 --seeds 0 1 2 --device cpu
    python benchmarks/fast_vs_plain.py --config cifar10-LT_resnet32 --seeds 0 1 2 --device cuda \
        dataset.root=/data train.epochs=200
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fsa_lt.config import load_config  # noqa: E402
from fsa_lt.engine.io import environment  # noqa: E402
from fsa_lt.phases import phase_i  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="digits-LT_resnet20")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    wd = Path(a.workdir or tempfile.mkdtemp(prefix="fast_vs_plain_"))
    rows = []
    for path in ("on", "off"):
        for seed in a.seeds:
            cfg = load_config(a.config, "phase_i", list(a.overrides) + [f"seed={seed}", f"train.fast_path={path}",
                                                                         "train.eval_every=1000000"])
            t0 = time.perf_counter()
            res = phase_i.train(cfg, f"{path}-s{seed}", wd, a.device)
            dt = time.perf_counter() - t0
            f = res["final"]
            rows.append({"path": "fast" if path == "on" else "plain", "seed": seed, "top1": f["top1"],
                         "many": f["many"], "medium": f["medium"], "few": f["few"],
                         "s_per_epoch": dt / cfg.train.epochs})
    env = environment()
    card = env["gpu"] or f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{a.config}, {cfg.train.epochs} epochs, {cfg.model.name}, batch {cfg.train.batch_size}; "
          f"device {a.device} ({card}); torch {env['torch']}, python {env['python']}\n")
    print("| path | seed | top1 | many | medium | few | s/epoch (incl. final eval) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(f"| {r['path']} | {r['seed']} | {fmt(r['top1'])} | {fmt(r['many'])} | {fmt(r['medium'])} | "
              f"{fmt(r['few'])} | {r['s_per_epoch']:.2f} |")
    summary = {}
    for p in ("fast", "plain"):
        t = [r["top1"] for r in rows if r["path"] == p]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        summary[p] = {"mean": statistics.mean(t), "std": sd,
                      "s_per_epoch": statistics.mean(r["s_per_epoch"] for r in rows if r["path"] == p)}
        print(f"\n{p}: top1 {summary[p]['mean']:.2f} +- {sd:.2f} over {len(t)} seeds, "
              f"{summary[p]['s_per_epoch']:.2f} s/epoch")
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": rows, "summary": summary, "environment": env}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
