#!/usr/bin/env python
"""How large a batch should a CPU evaluate at once? Inference throughput of a model (eval mode,
fp32, channels_last, no grad) at several chunk sizes, in one run, with the plain reference being
the whole configured evaluation batch (`train.eval_batch_size`, 1,000 by default) in one forward.

The evaluation code (`fsa_lt.engine.trainer.evaluate` / `feature_maps`) forwards CPU batches in
chunks of `CPU_EVAL_CHUNK`; this script is the evidence for that value. It also checks that the
chunked outputs equal the one-batch outputs bit for bit (each sample's output is its own).

    python benchmarks/eval_chunk.py                       # ResNet-32, 32 x 32, 4,000 images
    python benchmarks/eval_chunk.py --model resnet32 --images 4000 --chunks 64 128 256 512 1000 --repeats 3
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fsa_lt.engine.trainer import CPU_EVAL_CHUNK  # noqa: E402
from fsa_lt.models import create_model  # noqa: E402


def processor() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


@torch.no_grad()
def throughput(model, x: torch.Tensor, chunk: int, repeats: int) -> float:
    model(x[:chunk])  # warm-up (oneDNN primitives for this shape)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for c in x.split(chunk):
            model.forward_features(c)
        rates.append(x.shape[0] / (time.perf_counter() - t))
    return statistics.median(rates)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--reference", type=int, default=1000, help="the one-forward batch compared against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, num_classes=a.num_classes).eval()
    x = torch.randn(a.images, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    print(f"# {a.model}, {a.images} images of 3 x {a.size} x {a.size}, fp32 eval, channels_last; processor "
          f"{processor()}; {torch.get_num_threads()} thread(s); torch {torch.__version__}; median of {a.repeats}")
    with torch.no_grad():
        ref_out = model.forward_features(x[:a.reference])
    ref = throughput(model, x, a.reference, a.repeats)
    print(f"{'chunk':>8} {'images/s':>10} {'vs ' + str(a.reference):>9} {'same outputs':>13}")
    print(f"{a.reference:>8} {ref:>10.0f} {1.0:>9.2f} {'(reference)':>13}")
    for c in a.chunks:
        rate = throughput(model, x, c, a.repeats)
        with torch.no_grad():
            out = torch.cat([model.forward_features(p) for p in x[:a.reference].split(c)])
        same = "yes" if torch.equal(out, ref_out) else f"max diff {float((out - ref_out).abs().max()):.2e}"
        mark = "  <- CPU_EVAL_CHUNK" if c == CPU_EVAL_CHUNK else ""
        print(f"{c:>8} {rate:>10.0f} {rate / ref:>9.2f} {same:>13}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
