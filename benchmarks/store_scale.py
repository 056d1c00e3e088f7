#!/usr/bin/env python3
"""Feature stores of growing size: Phase II writing, Phase III reading in memory vs memory-mapped.

    python benchmarks/store_scale.py --threads 1 --dir store_bench                   # 0.5, 2, 8, 16 GB
    python benchmarks/store_scale.py --threads 1 --sizes 0.05 --iters 20 --dir /tmp/sb  # seconds (the test)

For each size a synthetic ImageNet-like store (maps 512 x 7 x 7 fp16, 1000 classes with an
ImageNet-LT-like profile: imbalance 256) is written through Phase II's writer
(`fsa_lt.phases.store.ShardWriter`, two shards as two ranks would write them, batches of 500,
timed with the final fsync: Phase II's write throughput), then each reading case runs in a
fresh subprocess (so its peak resident memory is its own):

* ``concat`` (the reference: what Phase III did before, fsa-lt-store/1): every shard read
  whole into memory and concatenated (``torch.cat``), the pooled features computed from the
  maps;
* ``memory``: ``store.open_store(..., access="memory")``, one copy read into memory;
* ``mmap``: ``store.open_store(..., access="mmap")``, maps and CAMs gathered per batch from the
  memory-mapped files.

A case is skipped where its copies of the store (2 for concat, 1 for memory) exceed half of
the available host memory (the rule of ``extract.store_access=auto``). Before each case the
store's files are evicted from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``;
whether that worked is measured with ``mincore`` and printed). In the subprocess: set-up
time (opening the store, cold cache, plus the sampler), then ``--iters`` Phase III iterations
(the real ``build_batch`` on a real ``FSASampler``, the paper's batch of 128: N_t 16, N_a 3,
plus one SGD step of a 512 -> 1000 linear classifier) with the cold cache, then the *same*
iterations again (same generator seed: the pages they touch are now cached), ``--repeats``
times, the best for the warm figure (the machine may be shared; also given per CPU second of
the process, which other jobs disturb less); peak resident memory is the process's VmHWM
(torch itself included), with RssAnon / RssFile at the end. CIFAR rows: a CIFAR-10-LT-sized store (12,406 x 64 x 8 x 8), the same
three cases. The synthetic stores are removed at the end (``--keep`` keeps them).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fsa_lt.method import head_tail_split  # noqa: E402
from fsa_lt.phases import store  # noqa: E402

BATCH = 500  # Phase II's extract.batch_size


# ----------------------------------------------------------------------------- machine
def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo() -> dict:
    with open("/proc/meminfo") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}


def proc_status() -> dict:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def resident(path: Path) -> float:
    """Share of a file's pages in the page cache (mincore)."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return float("nan")
            return float(np.frombuffer(vec, dtype=np.uint8).astype(bool).mean())
        finally:
            libc.munmap(addr, size)


def store_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard_*.npy"))


def evict(folder: Path) -> tuple[float, float]:
    """Drop the store's pages from the page cache; (resident share before, after), by bytes."""
    files = store_files(folder)
    sizes = np.array([p.stat().st_size for p in files], dtype=np.float64)
    before = float(np.dot([resident(p) for p in files], sizes) / sizes.sum())
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    after = float(np.dot([resident(p) for p in files], sizes) / sizes.sum())
    return before, after


# ----------------------------------------------------------------------------- stores
def lt_labels(n: int, k: int, ratio: float, seed: int = 0) -> np.ndarray:
    """n labels over k classes with class sizes n_max * ratio^(-i/(k-1)) (every class >= 1), shuffled."""
    w = ratio ** (-np.arange(k) / (k - 1))
    counts = np.maximum(1, np.floor(w / w.sum() * n)).astype(np.int64)
    counts[0] += max(0, n - counts.sum())
    while counts.sum() > n:  # the classes raised to one sample are paid for by the largest
        counts[np.argmax(counts)] -= 1
    lab = np.repeat(np.arange(k), counts)
    np.random.RandomState(seed).shuffle(lab)
    return lab


def cifar_labels() -> np.ndarray:
    counts = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]  # CIFAR-10-LT, imbalance 100: 12,406
    lab = np.repeat(np.arange(10), counts)
    np.random.RandomState(0).shuffle(lab)
    return lab


def write_store(folder: Path, labels: np.ndarray, shape: tuple, k: int, shards: int = 2) -> dict:
    """A synthetic store through Phase II's writer; returns its index and the timed write."""
    c, h, w = shape
    n = len(labels)
    g = torch.Generator().manual_seed(0)
    pool = [(torch.randn(BATCH, c, h, w, generator=g).abs().half(), torch.rand(BATCH, h, w, generator=g).half())
            for _ in range(3)]  # reused batch contents: the timing is the writer's, not randn's
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [(n * r // shards, n * (r + 1) // shards) for r in range(shards)]
    t0 = time.perf_counter()
    j = 0
    for r, (lo, hi) in enumerate(bounds):
        with store.ShardWriter(folder, r, lo, hi, "float16", total_rows=n) as wr:
            for a in range(lo, hi, BATCH):
                b = min(hi, a + BATCH)
                f, cam = pool[j % len(pool)]
                j += 1
                wr.append(f[: b - a], cam[: b - a], torch.from_numpy(labels[a:b]))
            wr.close()
    dt = time.perf_counter() - t0
    head, tail = (a.tolist() for a in head_tail_split(np.bincount(labels, minlength=k), 0.9))
    rng = np.random.RandomState(1)
    confusing = {str(t): [int(u) for u in rng.choice([u for u in range(k) if u != t], 3, replace=False)] for t in tail}
    index = {"mode": "cached", "dtype": "float16", "num_samples": n, "num_classes": k, "fmap_shape": list(shape),
             "head": head, "tail": tail, "confusing": confusing,
             "shards": [store.describe_shard(folder, r, lo, hi) for r, (lo, hi) in enumerate(bounds)]}
    store.write_index(folder, index)
    nbytes = sum(p.stat().st_size for p in store_files(folder))
    return {"seconds": dt, "bytes": nbytes, "gbps": nbytes / dt / 1e9}


# ----------------------------------------------------------------------------- one case (subprocess)
def child(folder: Path, access: str, iters: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    from fsa_lt.method import FSASampler, build_batch

    index = store.read_index(folder)
    t0 = time.perf_counter()
    if access == "concat":  # the previous format's path: every shard whole in memory, concatenated
        parts = [{k: torch.from_numpy(np.load(folder / s["files"][k]["file"])) for k in ("fmaps", "cams", "labels")}
                 for s in index["shards"]]
        fmaps = torch.cat([p["fmaps"] for p in parts])
        cams = torch.cat([p["cams"] for p in parts])
        labels = torch.cat([p["labels"] for p in parts])
        del parts
        pooled = torch.cat([c.float().mean((2, 3)) for c in fmaps.split(4096)])
        how = "concat"
    else:
        fmaps, cams, labels, pooled, how = store.open_store(folder, index, "cpu", access)
    head, tail = index["head"], index["tail"]
    conf = torch.tensor([index["confusing"][str(t)] for t in tail])
    gen = torch.Generator().manual_seed(0)
    sampler = FSASampler(labels, head, tail, conf, n_t=16, n_a=3, generator=gen)
    setup = time.perf_counter() - t0
    fc = torch.nn.Linear(index["fmap_shape"][0], index["num_classes"])
    opt = torch.optim.SGD(fc.parameters(), lr=1e-3, momentum=0.9)

    def run() -> tuple[float, float]:
        gen.manual_seed(1)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(iters):
            x, y = build_batch(sampler, pooled, fmaps, cams, 0.8, 0.2, generator=gen)
            loss = torch.nn.functional.cross_entropy(fc(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return iters / (time.perf_counter() - t), iters / (time.process_time() - c)

    cold, _ = run()
    warm = [run() for _ in range(repeats)]  # the best of: the machine may be shared
    st = proc_status()
    return {"access": access, "how": how, "setup_s": setup, "cold_its": cold,
            "warm_its": max(w for w, _ in warm), "warm_cpu_its": max(c for _, c in warm),
            "vmhwm": st["VmHWM"], "rss_anon": st["RssAnon"], "rss_file": st["RssFile"], "batch": sampler.batch_size}


def run_case(folder: Path, access: str, iters: int, threads: int, repeats: int) -> dict:
    before, after = evict(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, __file__, "--child", str(folder), "--access", access, "--iters", str(iters),
                        "--threads", str(threads), "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"case {access} on {folder} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out.update(resident_before=before, resident_after=after)
    return out


# ----------------------------------------------------------------------------- table
def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0.5,2,8,16", help="ImageNet-like store sizes on disk, GB (1e9 bytes)")
    p.add_argument("--dir", default="store_bench", help="where the synthetic stores are written (removed after)")
    p.add_argument("--iters", type=int, default=200, help="Phase III iterations per pass (cold, then warm)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="warm passes; the best is reported")
    p.add_argument("--no-cifar", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the synthetic stores")
    p.add_argument("--out", default=None, help="JSON file of all results")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--access", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.access, args.iters, args.threads, args.repeats)))
        return 0

    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    mi = meminfo()
    free = shutil.disk_usage(root).free
    shape = (512, 7, 7)
    row = 2 * int(np.prod(shape)) + 2 * 49 + 8 + 4 * 512  # fmaps + cams (fp16) + label + pooled (fp32)
    print(f"processor: {cpu_name()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print(f"host memory: {gb(mi['MemTotal'])} GB total, {gb(mi['MemAvailable'])} GB available; "
          f"disk free under {root.resolve()}: {gb(free)} GB")
    print(f"versions: torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print("precision: store fp16 (maps, CAMs), pooled fp32; Phase III computes in fp32 on the CPU")
    print(f"sizes: ImageNet-like maps {shape}, {row} bytes a sample on disk, 1000 classes (imbalance 256); "
          f"CIFAR rows 12,406 x (64, 8, 8); Phase III batch 128 (N_t 16, N_a 3) + SGD step of a linear "
          f"classifier; {args.iters} iterations cold, then the same {args.iters} warm (best of {args.repeats}); "
          f"Phase II batches of {BATCH}")
    results = {"machine": {"cpu": cpu_name(), "mem_total": mi["MemTotal"], "mem_available": mi["MemAvailable"],
                           "disk_free": free, "torch": torch.__version__, "numpy": np.__version__},
               "stores": []}
    jobs = []
    if not args.no_cifar:
        jobs.append(("CIFAR-10-LT", cifar_labels(), (64, 8, 8), 10))
    for s in sizes:
        n = int(s * 1e9 // row)
        k = min(1000, n // 5)  # 1000 classes but for the tiniest (smoke-test) stores
        jobs.append((f"{s:g} GB", lt_labels(n, k, 256.0), shape, k))
    rows, writes, evictions = [], [], []
    for name, labels, shp, k in jobs:
        folder = root / name.replace(" ", "").replace(".", "_")
        need = len(labels) * (2 * int(np.prod(shp)) + 2 * shp[1] * shp[2] + 8 + 4 * shp[0])
        free = shutil.disk_usage(root).free
        if need * 1.05 + 1e9 > free:
            print(f"{name}: skipped, needs {gb(need)} GB of disk, {gb(free)} GB free")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        w = write_store(folder, labels, shp, k)
        writes.append((name, len(labels), w))
        avail = meminfo()["MemAvailable"]
        maps_bytes = sum(s["files"][a]["bytes"] for s in store.read_index(folder)["shards"] for a in ("fmaps", "cams"))
        cases = {}
        for access, copies in (("concat", 2), ("memory", 1), ("mmap", 0)):
            if copies * maps_bytes > store.MEMORY_SHARE * avail:
                cases[access] = {"skipped": f"{copies} x {gb(maps_bytes)} GB > half of {gb(avail)} GB available"}
                continue
            cases[access] = run_case(folder, access, args.iters, args.threads, args.repeats)
            evictions.append((name, access, cases[access]["resident_before"], cases[access]["resident_after"]))
        rows.append((name, len(labels), w["bytes"], cases))
        results["stores"].append({"name": name, "samples": len(labels), "bytes": w["bytes"], "write": w,
                                  "cases": cases})
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print()
    print("Phase II write (store.ShardWriter: 2 shards, batches of 500, fsync included)")
    print()
    print("| store | samples | on disk GB | seconds | GB/s |")
    print("|---|---|---|---|---|")
    for name, n, w in writes:
        print(f"| {name} | {n:,} | {gb(w['bytes'])} | {w['seconds']:.1f} | {w['gbps']:.2f} |")
    print()
    print("Phase III batch drawing (fresh process per case)")
    print()
    print("| store | samples | on disk GB | case | peak RSS GB (VmHWM) | RssAnon / RssFile GB at end | set-up s (cold) "
          "| it/s cold | it/s warm | it/s warm per CPU s | warm vs memory (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, nbytes, cases in rows:
        ref = cases.get("memory", {}).get("warm_cpu_its")
        for access in ("concat", "memory", "mmap"):
            c = cases[access]
            label = {"concat": "reference: load + concatenate (format 1)", "memory": "memory",
                     "mmap": "mmap"}[access]
            if "skipped" in c:
                print(f"| {name} | {n:,} | {gb(nbytes)} | {label} | skipped: {c['skipped']} | | | | | | |")
                continue
            cold = f"{c['cold_its']:.1f}" if access == "mmap" else "(read at set-up)"
            vs = f"{c['warm_cpu_its'] / ref:.2f}x" if ref else "-"
            print(f"| {name} | {n:,} | {gb(nbytes)} | {label} | {gb(c['vmhwm'])} | {gb(c['rss_anon'])} / "
                  f"{gb(c['rss_file'])} | {c['setup_s']:.2f} | {cold} | {c['warm_its']:.1f} | {c['warm_cpu_its']:.1f} "
                  f"| {vs} |")
    print()
    worked = [a for _, _, _, a in evictions]
    print(f"page-cache eviction before each case (posix_fadvise DONTNEED, checked with mincore): resident share "
          f"before {min(b for _, _, b, _ in evictions):.0%}..{max(b for _, _, b, _ in evictions):.0%}, after "
          f"{min(worked):.1%}..{max(worked):.1%}: {'worked' if max(worked) < 0.01 else 'did NOT fully work'}")
    # targets
    mm = [(name, cases["mmap"]) for name, _, _, cases in rows if name != "CIFAR-10-LT"]
    if mm:
        peak = max(c["vmhwm"] for _, c in mm)
        print(f"target: Phase III peak resident memory < 2 GB at every size (mmap): max {gb(peak)} GB: "
              f"{'met' if peak < 2e9 else 'NOT met'}")
        ratios = [(name, cases["memory"]["warm_cpu_its"] / cases["mmap"]["warm_cpu_its"],
                   cases["memory"]["warm_its"] / cases["mmap"]["warm_its"]) for name, _, _, cases in rows
                  if "warm_its" in cases.get("memory", {})]
        if ratios:
            worst = max(r for _, r, _ in ratios)
            print("target: warm-cache it/s (mmap) within 1.5x of in-memory: in-memory / mmap per CPU second "
                  "(wall clock in brackets) = " + ", ".join(f"{n} {r:.2f} ({w:.2f})" for n, r, w in ratios)
                  + f": {'met' if worst <= 1.5 else 'NOT met'}")
        setups = [(name, c["setup_s"]) for name, c in mm]
        print("target: set-up time independent of store size (mmap): "
              + ", ".join(f"{n} {s:.2f}s" for n, s in setups)
              + f" (largest / smallest store: {setups[-1][1] / setups[0][1]:.1f}x)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.out}")
    if not args.keep and root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
