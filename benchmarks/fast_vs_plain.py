#!/usr/bin/env python
"""Do two ways of training reach the same accuracy? The fast path against the plain DataLoader
path (`--vary fast_path`, the default), or bf16 autocast against fp32 (`--vary precision`).

Runs Phase I through the real code (`fsa_lt.phases.phase_i.train`) for several seeds in both
variants, same config otherwise, and prints a table of final top-1 (and many/medium/few) per
seed with the mean and standard deviation of each variant, plus the wall time per epoch.

* fast_path: `train.fast_path=on` / `off`. The two draw different random crops/flips
  (different random streams), so equality is statistical: the means should agree within the
  seed spread.
* precision: `train.amp=false` (fp32) / `train.amp=true train.amp_cpu=always` (bf16 autocast,
  forced on a CPU without native bf16, where it is emulated and slow but rounds the same way).
  Same random streams, so the per-seed differences are the effect of the precision alone.

    python benchmarks/fast_vs_plain.py --config digits-LT_resnet20 --seeds 0 1 2 --device cpu
    python benchmarks/fast_vs_plain.py --vary precision --config digits-LT_resnet20 --seeds 0 1 2
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
from fsa_lt.engine.trainer import precision_note  # noqa: E402
from fsa_lt.phases import phase_i  # noqa: E402

VARIANTS = {
    "fast_path": [("fast", ["train.fast_path=on"]), ("plain", ["train.fast_path=off"])],
    "precision": [("fp32", ["train.amp=false"]), ("bf16", ["train.amp=true", "train.amp_cpu=always"])],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="digits-LT_resnet20")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--vary", choices=sorted(VARIANTS), default="fast_path", help="what the two variants differ in")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    wd = Path(a.workdir or tempfile.mkdtemp(prefix="fast_vs_plain_"))
    rows = []
    for path, extra in VARIANTS[a.vary]:
        for seed in a.seeds:
            cfg = load_config(a.config, "phase_i", list(a.overrides) + [f"seed={seed}", *extra,
                                                                         "train.eval_every=1000000"])
            t0 = time.perf_counter()
            res = phase_i.train(cfg, f"{path}-s{seed}", wd, a.device)
            dt = time.perf_counter() - t0
            f = res["final"]
            rows.append({"path": path, "seed": seed, "top1": f["top1"],
                         "many": f["many"], "medium": f["medium"], "few": f["few"],
                         "s_per_epoch": dt / cfg.train.epochs})
    env = environment()
    card = env["gpu"] or f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{a.config}, {cfg.train.epochs} epochs, {cfg.model.name}, batch {cfg.train.batch_size}; "
          f"device {a.device} ({card}); torch {env['torch']}, python {env['python']}\n")
    print(f"precision of the bf16 variant: {precision_note(torch.device(a.device), 'always')}" if a.vary == "precision"
          else "")
    print("| variant | seed | top1 | many | medium | few | s/epoch (incl. final eval) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(f"| {r['path']} | {r['seed']} | {fmt(r['top1'])} | {fmt(r['many'])} | {fmt(r['medium'])} | "
              f"{fmt(r['few'])} | {r['s_per_epoch']:.2f} |")
    summary = {}
    for p, _ in VARIANTS[a.vary]:
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
