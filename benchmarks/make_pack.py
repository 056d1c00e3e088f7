#!/usr/bin/env python3
"""Training indices of CIFAR-10-LT (the LDAM-DRW rule) as an .npy, for `cifar10.py pack`.

    python benchmarks/make_pack.py --root DATA --out lt100.npy              # indices only
    python benchmarks/make_pack.py --root DATA --out lt100.npy \\
        --pack .carry/pack --tool ../shared/tools/cifar10.py                  # and the pack

The indices are `fsa_lt.data.cifar.long_tailed_indices` of the official training labels
(imbalance 100, seed 0 by default): positions into the 50,000 training images, the very
ones `CIFARLT(..., imb_ratio=100, seed=0)` keeps (12,406 at imbalance 100). A pack made
from them and unpacked with `cifar10.py unpack` gives a data root on which fsa-lt sees
exactly the real long-tailed training set (the other training images are zeros).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fsa_lt.data.cifar import load_cifar_arrays, long_tailed_indices  # noqa: E402


def lt_indices(root: str, imb_ratio: float = 100, seed: int = 0, imb_type: str = "exp") -> np.ndarray:
    """Positions of CIFAR-10-LT's training images among the 50,000 official ones."""
    _, labels, _ = load_cifar_arrays("cifar10", root, train=True)
    return long_tailed_indices(labels, 10, imb_ratio, imb_type, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", required=True, help="where to write the indices (.npy)")
    p.add_argument("--imb-ratio", type=float, default=100.0)
    p.add_argument("--imb-type", default="exp", choices=("exp", "step"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pack", default=None, help="also run `cifar10.py pack` into this folder")
    p.add_argument("--tool", default=str(REPO.parent / "shared" / "tools" / "cifar10.py"),
                   help="path of cifar10.py (default: ../shared/tools/cifar10.py)")
    a = p.parse_args(argv)
    idx = lt_indices(a.root, a.imb_ratio, a.seed, a.imb_type)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, idx)
    print(f"{len(idx)} training indices of CIFAR-10-LT (IR {a.imb_ratio:g}, {a.imb_type}, seed {a.seed}) "
          f"written to {out}")
    if a.pack:
        if not os.path.isfile(a.tool):
            print(f"make_pack.py: {a.tool} not found (give --tool)", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, a.tool, "pack", "--root", a.root, "--train-indices", str(out),
                                "--out", a.pack])
    return 0


if __name__ == "__main__":
    sys.exit(main())
