#!/usr/bin/env python3
"""Speed of fsa-lt's fast path against a plain PyTorch reference, measured in the same run.

    python benchmarks/bench.py --device cuda --data-root /data --out bench.json
    python benchmarks/bench.py --device cpu --quick                      # smoke configuration
    python benchmarks/bench.py --device cuda --end-to-end --epochs 5      # whole Phase I epochs

Rows (see docs/BENCHMARKS.md):

* Phase I training throughput (images/s), per model: the fast path (the device-resident
  `fsa_lt.data.device_loader.DeviceLoader`, channels_last, bf16 autocast on CUDA, the
  project's own `fsa_lt.engine.trainer.train_epoch`) against the plain reference (a
  `torch.utils.data.DataLoader` with per-image `cifar_train_transform`, fp32, default
  memory format, a textbook training loop); `--compile` adds the fast path under
  `torch.compile`.
* Phase II extraction throughput (images/s): `fsa_lt.phases.phase_ii.forward_store` on the
  device loader against a plain loop (DataLoader, fp32, no channels_last) doing the same work;
  both fp32 on every device (extraction never runs under autocast).
* Phase III iterations/s in cached mode: `fsa_lt.method.build_batch` + a linear-layer SGD
  step against `PlainFSA`, a straightforward per-sample Python implementation of the
  same fusion (the "typical" implementation), on a synthetic feature store of the
  model's map shape.
* `--end-to-end`: whole Phase I epochs through `fsa_lt.phases.phase_i.train` (the real
  code path, config overrides only), fast path against `train.fast_path=off`.

Data: real CIFAR-10-LT (imbalance 100, 12,406 images) when `--data-root` (or
FSA_DATA_ROOT) holds `cifar-10-batches-py/`, otherwise synthetic uint8 images of the same
shape and class sizes; the header says which. Warm-up steps are not timed; on CUDA the
device is synchronised before and after each timed region.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fsa_lt.data.cifar import CIFAR_SPECS, CIFARLT, class_sizes  # noqa: E402
from fsa_lt.data.device_loader import DeviceLoader  # noqa: E402
from fsa_lt.data.transforms import cifar_eval_transform, cifar_train_transform  # noqa: E402
from fsa_lt.engine.trainer import cpu_bf16_native, train_epoch  # noqa: E402
from fsa_lt.method import (FSASampler, build_batch, class_activation_maps, confusing_classes,  # noqa: E402
                           head_tail_split, normalize_cams, usable_masks)
from fsa_lt.models import create_model  # noqa: E402
from fsa_lt.phases.phase_ii import forward_store  # noqa: E402

CONFIG_OF_MODEL = {"resnet32": "cifar10-LT_resnet32", "resnet18_cifar": "cifar10-LT_resnet18",
                   "resnet34_cifar": "cifar10-LT_resnet34"}
NUM_CLASSES = 10
N_MAX = 5000  # CIFAR-10 images per class before the long-tailed cut


# ----------------------------------------------------------------------------- environment
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()}, {torch.get_num_threads()} torch thread(s) of {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- data
class ArraySet(torch.utils.data.Dataset):
    """In-memory uint8 N x 32 x 32 x 3 images with the attributes the device loader reads."""

    def __init__(self, data, targets, mean, std, transform=None):
        self.data = np.ascontiguousarray(data)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mean, self.std, self.transform = tuple(mean), tuple(std), transform
        self.num_classes = NUM_CLASSES

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.data[i]), int(self.targets[i])


def lt_sizes(imb_ratio: float, images: int | None) -> list[int]:
    """CIFAR-10-LT class sizes, scaled down (stratified, at least 2 a class) to `images` in total."""
    sizes = class_sizes(N_MAX, NUM_CLASSES, imb_ratio, "exp")
    total = sum(sizes)
    if images is None or images >= total:
        return sizes
    return [max(2, int(round(s * images / total))) for s in sizes]


def load_train_set(data_root: str | None, imb_ratio: float, images: int | None, seed: int = 0):
    """(ArraySet, description): real CIFAR-10-LT if `data_root` holds it, else synthetic."""
    spec = CIFAR_SPECS["cifar10"]
    sizes = lt_sizes(imb_ratio, images)
    if data_root and (Path(data_root) / "cifar-10-batches-py").is_dir():
        ds = CIFARLT(data_root, "cifar10", train=True, imb_ratio=imb_ratio, seed=seed, download=False)
        keep = np.concatenate([np.where(ds.targets == c)[0][:n] for c, n in enumerate(sizes)])
        data, targets = ds.data[keep], ds.targets[keep]
        what = f"real CIFAR-10-LT (IR {imb_ratio:g}) from {data_root}"
    else:
        rng = np.random.default_rng(seed)
        targets = np.repeat(np.arange(NUM_CLASSES), sizes)
        data = rng.integers(0, 256, size=(len(targets), 32, 32, 3), dtype=np.uint8)
        what = f"synthetic uint8 images, CIFAR-10-LT IR {imb_ratio:g} class sizes (no cifar-10-batches-py found)"
    if images is not None and len(targets) < sum(class_sizes(N_MAX, NUM_CLASSES, imb_ratio, "exp")):
        what += f", cut to {len(targets)} images (stratified)"
    perm = np.random.default_rng(seed + 1).permutation(len(targets))
    return ArraySet(data[perm], targets[perm], spec["mean"], spec["std"]), what


class Stream:
    """Endless batches of a loader (entered again, next epoch, when it ends)."""

    def __init__(self, loader):
        self.loader, self.it, self.epoch = loader, None, 0

    def next(self):
        while True:
            if self.it is None:
                if hasattr(self.loader, "set_epoch"):
                    self.loader.set_epoch(self.epoch)
                self.it = iter(self.loader)
                self.epoch += 1
            try:
                return next(self.it)
            except StopIteration:
                self.it = None

    def take(self, n: int):
        return _Take(self, n)


class _Take:
    """A loader of the next `n` batches of a Stream (what train_epoch / forward_store iterate)."""

    def __init__(self, stream, n):
        self.stream, self.n = stream, n

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.stream.next()


def data_loader(ds, transform, batch, workers, device, shuffle, drop_last):
    ds_t = ArraySet(ds.data, ds.targets, ds.mean, ds.std, transform)
    return torch.utils.data.DataLoader(ds_t, batch_size=batch, shuffle=shuffle, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=drop_last,
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- timing
def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def row(phase, model, path, loader, precision, fmt, steps, batch, seconds, warmup_s, unit="images/s", per_step=None):
    per_step = batch if per_step is None else per_step
    rate = steps * per_step / seconds if unit == "images/s" else steps / seconds
    return {"phase": phase, "model": model, "path": path, "loader": loader, "precision": precision,
            "memory_format": fmt, "steps": steps, "batch": batch, "seconds": seconds,
            "ms_per_step": 1000.0 * seconds / steps, "rate": rate, "unit": unit, "warmup_s": warmup_s}


def build(model_name, device, channels_last):
    torch.manual_seed(0)
    m = create_model(model_name, NUM_CLASSES).to(device)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def sgd(params, lr=0.1, wd=2e-4):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


# ----------------------------------------------------------------------------- Phase I
def plain_train_steps(model, batches, opt, device):
    """The textbook loop: no autocast, default memory format, no per-step host sync."""
    model.train()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def cpu_precisions(args, device) -> list:
    """The autocast modes of the fast path: bf16 on CUDA; on a CPU fp32 and, with --cpu-bf16,
    bf16 too (forced, so the row exists where the CPU lacks native bf16: the header says which)."""
    if device.type == "cuda":
        return [True]
    return [False, "always"] if args.cpu_bf16 else [False]


def precision_label(device, amp) -> str:
    if not amp:
        return "fp32"
    if device.type == "cuda":
        return "bf16 autocast"
    native = cpu_bf16_native()
    return f"bf16 autocast ({'native: ' + native if native else 'emulated: no native bf16'})"


def bench_phase_i(args, ds, model_name, device):
    out = []
    loss_fn = nn.CrossEntropyLoss()

    def fast(compile_mode=None, amp=device.type == "cuda"):
        model = build(model_name, device, True)
        opt = sgd(model.parameters())
        fwd = torch.compile(model, mode=compile_mode) if compile_mode else model
        loader = DeviceLoader(ds.data, ds.targets, args.batch_size, device, ds.mean, ds.std, train=True,
                              drop_last=True, seed=0)
        s = Stream(loader)
        run = lambda n: train_epoch(fwd, s.take(n), opt, None, loss_fn, device, amp=amp, desc="bench")  # noqa: E731
        w = timed(lambda: run(args.warmup), device)
        t = timed(lambda: run(args.steps), device)
        path = f"fast + torch.compile ({compile_mode})" if compile_mode else "fast"
        return row("I", model_name, path, "DeviceLoader", precision_label(device, amp), "channels_last",
                   args.steps, args.batch_size, t, w)

    def reference():
        model = build(model_name, device, False)
        opt = sgd(model.parameters())
        tf = cifar_train_transform(ds.mean, ds.std)
        s = Stream(data_loader(ds, tf, args.batch_size, args.num_workers, device, True, True))
        w = timed(lambda: plain_train_steps(model, s.take(args.warmup), opt, device), device)
        t = timed(lambda: plain_train_steps(model, s.take(args.steps), opt, device), device)
        return row("I", model_name, "reference", f"DataLoader, {args.num_workers} workers, per-image transform",
                   "fp32", "contiguous", args.steps, args.batch_size, t, w)

    out.append(reference())
    for amp in cpu_precisions(args, device):
        out.append(fast(amp=amp))
    if args.compile:
        for mode in args.compile_modes:
            out.append(fast(mode))
    return out


# ----------------------------------------------------------------------------- Phase II
@torch.no_grad()
def plain_extract(model, batches, device, dtype=torch.float16):
    """Same work as forward_store (maps, CAMs, score sums), fp32, default memory format."""
    model.eval()
    weight = model.get_classifier().weight.float()
    score_sum = torch.zeros(NUM_CLASSES, NUM_CLASSES, device=device, dtype=torch.float64)
    maps, cams, labels = [], [], []
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        f = model.forward_features(x)
        logits = model.forward_head(f)
        score_sum.index_add_(0, y, torch.softmax(logits, 1).double())
        maps.append(f.to(dtype))
        cams.append(normalize_cams(class_activation_maps(f, weight, y)).to(dtype))
        labels.append(y)
    return torch.cat(maps), torch.cat(cams), torch.cat(labels), score_sum


def bench_phase_ii(args, ds, model_name, device):
    bs = args.extract_batch
    model = build(model_name, device, True)
    s = Stream(DeviceLoader(ds.data, ds.targets, bs, device, ds.mean, ds.std, train=False))
    # Phase II is fp32 on every device (engine.trainer.PRECISION_RULE): one fast row
    run = lambda n: forward_store(model, s.take(n), device, keep_maps=True)  # noqa: E731
    w = timed(lambda: run(args.warmup), device)
    t = timed(lambda: run(args.extract_steps), device)
    fast = [row("II", model_name, "fast", "DeviceLoader", "fp32", "channels_last", args.extract_steps, bs, t, w)]
    ref_model = build(model_name, device, False)
    sr = Stream(data_loader(ds, cifar_eval_transform(ds.mean, ds.std), bs, args.num_workers, device, False, False))
    w = timed(lambda: plain_extract(ref_model, sr.take(args.warmup), device), device)
    t = timed(lambda: plain_extract(ref_model, sr.take(args.extract_steps), device), device)
    ref = row("II", model_name, "reference", f"DataLoader, {args.num_workers} workers", "fp32", "contiguous",
              args.extract_steps, bs, t, w)
    return [ref, *fast]


# ----------------------------------------------------------------------------- Phase III
def fuse_one(f_tail, cam_tail, f_donor, cam_donor, gamma, rng, tau_s=0.8, tau_g=0.2):
    """One synthetic tail sample, per-sample and literal (METHOD.md Phase III, step 2).

    f_*: C x H x W maps, cam_*: H x W normalised CAMs. S: non-zero vectors of the tail map
    where its CAM > tau_s; G: non-zero vectors of the donor map where its CAM < tau_g;
    round(gamma L) vectors drawn from S and L - round(gamma L) from G, with replacement;
    the result is their mean (the pooled feature of the fused map)."""
    c = f_tail.shape[0]
    ft, fd = f_tail.float().reshape(c, -1), f_donor.float().reshape(c, -1)
    L = ft.shape[1]
    s_mask = (cam_tail.reshape(-1) > tau_s) & (ft != 0).any(0)
    g_mask = (cam_donor.reshape(-1) < tau_g) & (fd != 0).any(0)
    S, G = ft[:, s_mask].t(), fd[:, g_mask].t()  # vectors as rows
    if len(S) == 0 and len(G) == 0:
        return ft.mean(1)
    k = round(gamma * L)  # half to even, as torch.round
    if len(S) == 0:
        k = 0
    elif len(G) == 0:
        k = L
    parts = []
    if k > 0:
        parts.append(S[torch.as_tensor(rng.integers(0, len(S), k), device=S.device)])
    if L - k > 0:
        parts.append(G[torch.as_tensor(rng.integers(0, len(G), L - k), device=G.device)])
    return torch.cat(parts).sum(0) / L


class PlainFSA:
    """The typical Phase III batch builder: Python loops over samples, numpy draws."""

    def __init__(self, fmaps, cams, labels, head, tail, confusing, n_t=16, n_a=3, tau_s=0.8, tau_g=0.2,
                 seed=0, device="cpu"):
        self.fmaps, self.cams, self.device = fmaps, cams, torch.device(device)
        self.labels = np.asarray(labels)
        self.by_class = {int(c): np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        self.tail_pool = np.where(np.isin(self.labels, tail))[0]
        self.head_pool = np.where(np.isin(self.labels, head))[0]
        self.confusing = {int(c): [int(u) for u in row[:n_a]] for c, row in zip(tail, confusing)}
        self.n_t, self.n_a, self.tau_s, self.tau_g = n_t, n_a, tau_s, tau_g
        self.rng = np.random.default_rng(seed)

    def batch(self):
        rng = self.rng
        real, synth, head, y_real, y_synth, y_head = [], [], [], [], [], []
        for _ in range(self.n_t):
            i = int(rng.choice(self.tail_pool))
            c = int(self.labels[i])
            f_t = self.fmaps[i].to(self.device).float()
            real.append(f_t.mean((1, 2)))
            y_real.append(c)
            for u in self.confusing[c]:
                j = int(rng.choice(self.by_class[u]))
                synth.append(fuse_one(f_t, self.cams[i].to(self.device), self.fmaps[j].to(self.device),
                                      self.cams[j].to(self.device), rng.uniform(), rng, self.tau_s, self.tau_g))
                y_synth.append(c)
        for _ in range(self.n_t * (1 + self.n_a)):
            j = int(rng.choice(self.head_pool))
            head.append(self.fmaps[j].to(self.device).float().mean((1, 2)))
            y_head.append(int(self.labels[j]))
        x = torch.stack(real + synth + head)
        y = torch.tensor(y_real + y_synth + y_head, dtype=torch.long, device=self.device)
        return x, y


def synthetic_store(labels: np.ndarray, shape, device, seed=0):
    """Post-ReLU-like fp16 maps, their normalised CAMs under a random classifier, head/tail
    split and confusing classes of a random score matrix (the store's layout and sizes)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    c, h, w = shape
    n = len(labels)
    weight = torch.randn(NUM_CLASSES, c, generator=g) / c ** 0.5
    y = torch.as_tensor(labels, dtype=torch.long)
    maps, cams = [], []
    for lo in range(0, n, 1024):
        f = torch.relu(torch.randn(min(1024, n - lo), c, h, w, generator=g))
        maps.append(f.half())
        cams.append(normalize_cams(class_activation_maps(f, weight, y[lo:lo + len(f)])).half())
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    head, tail = head_tail_split(counts, 0.9)
    scores = torch.softmax(torch.randn(NUM_CLASSES, NUM_CLASSES, generator=g), 1)
    conf = confusing_classes(scores, tail, 3)
    keep_on = device if device.type == "cuda" else torch.device("cpu")  # as phase_iii does
    return torch.cat(maps).to(keep_on), torch.cat(cams).to(keep_on), head, tail, conf


def bench_phase_iii(args, ds, model_name, device):
    with torch.no_grad():
        probe = create_model(model_name, NUM_CLASSES).eval()
        shape = tuple(probe.forward_features(torch.zeros(1, 3, 32, 32)).shape[1:])
    fmaps, cams, head, tail, conf = synthetic_store(ds.targets, shape, device)
    c = shape[0]
    out = []

    def fc_step(fc, opt, x, y):
        loss = F.cross_entropy(fc(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # fast: the project's cached mode (as fsa_lt.phases.phase_iii runs it)
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.as_tensor(ds.targets, dtype=torch.long, device=device)
    sampler = FSASampler(labels, head, tail, conf, n_t=16, n_a=3, generator=gen, device=device)
    pooled = torch.cat([m.float().mean((2, 3)) for m in fmaps.split(4096)]).to(device)
    torch.manual_seed(0)
    fc = nn.Linear(c, NUM_CLASSES).to(device)
    opt = sgd(fc.parameters(), lr=1e-3, wd=0.0)

    t0 = time.perf_counter()
    masks = usable_masks(fmaps, cams, 0.8, 0.2)  # once per run, as phase_iii does
    mask_s = time.perf_counter() - t0

    def fast(n, m=masks):
        for _ in range(n):
            fc_step(fc, opt, *build_batch(sampler, pooled, fmaps, cams, 0.8, 0.2, augment=True, generator=gen,
                                          masks=m))

    w = timed(lambda: fast(args.warmup), device)
    t = timed(lambda: fast(args.p3_steps), device)
    fast_row = row("III", model_name, "fast", f"build_batch, store {tuple(shape)} fp16, usable masks once "
                   f"({mask_s:.2f}s)", "fp32", "-", args.p3_steps, sampler.batch_size, t, w, unit="it/s")
    w = timed(lambda: fast(args.warmup, None), device)
    t = timed(lambda: fast(args.p3_steps, None), device)
    per_draw_row = row("III", model_name, "fast, masks per batch", "build_batch computing the CAM masks of each draw",
                       "fp32", "-", args.p3_steps, sampler.batch_size, t, w, unit="it/s")

    plain = PlainFSA(fmaps, cams, ds.targets, head, tail, conf.tolist(), device=device)
    torch.manual_seed(0)
    fc2 = nn.Linear(c, NUM_CLASSES).to(device)
    opt2 = sgd(fc2.parameters(), lr=1e-3, wd=0.0)

    def ref(n):
        for _ in range(n):
            fc_step(fc2, opt2, *plain.batch())

    w = timed(lambda: ref(args.warmup), device)
    t = timed(lambda: ref(args.p3_steps), device)
    ref_row = row("III", model_name, "reference", "per-sample Python loop (PlainFSA)", "fp32", "-",
                  args.p3_steps, sampler.batch_size, t, w, unit="it/s")
    out += [ref_row, per_draw_row, fast_row]
    return out


# ----------------------------------------------------------------------------- end to end
def write_synthetic_cifar10(root: Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with random uint8 images (the official pickle layout)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(obj, name):
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)

    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        dump({"labels": labels[part].tolist(),
              "data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8)}, f"data_batch_{b}")
    t = rng.permutation(np.repeat(np.arange(NUM_CLASSES), test_per_class))
    dump({"labels": t.tolist(), "data": rng.integers(0, 256, (len(t), 3072), dtype=np.uint8)}, "test_batch")
    dump({"label_names": [f"class{i}" for i in range(NUM_CLASSES)]}, "batches.meta")
    return root


def e2e_images(root: str, imb_ratio: float) -> int:
    """Training images of the long-tailed split that phase_i.train will see under `root`."""
    from fsa_lt.data.cifar import load_cifar_arrays, long_tailed_indices

    _, labels, _ = load_cifar_arrays("cifar10", root, True)
    return len(long_tailed_indices(labels, NUM_CLASSES, imb_ratio, "exp", 0))


def bench_end_to_end(args, data_root: str, model_name: str, device, quiet=True):
    """Phase I for args.epochs epochs via phase_i.train, fast vs fast_path=off (+ compile)."""
    from fsa_lt.config import load_config
    from fsa_lt.phases import phase_i

    config = CONFIG_OF_MODEL.get(model_name, "cifar10-LT_resnet32")
    full_epochs = load_config(config, "phase_i").train.epochs
    base = [f"dataset.root={data_root}", "dataset.download=false", f"model.name={model_name}",
            f"dataset.imb_ratio={args.imb_ratio:g}",
            f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", f"train.save_every={10**6}",
            f"dataset.num_workers={args.num_workers}", f"train.batch_size={args.batch_size}"]
    if args.quick:
        base.append("train.eval_batch_size=100")
    variants = [("fast", ["train.fast_path=auto"]), ("reference (fast_path=off)", ["train.fast_path=off"])]
    if args.compile:
        for mode in args.compile_modes:
            variants.append((f"fast + torch.compile ({mode})",
                             ["train.fast_path=auto", "train.compile=true", f"train.compile_mode={mode}"]))
    rows = []
    for label, extra in variants:
        cfg = load_config(config, "phase_i", base + extra)
        ep_times, ev_times = [], []
        orig_train, orig_eval = phase_i.train_epoch, phase_i.evaluate

        def timed_train(*a, **k):
            sync(device)
            t0 = time.perf_counter()
            r = orig_train(*a, **k)  # ends with a host read of the epoch's stats
            sync(device)
            ep_times.append(time.perf_counter() - t0)
            return r

        def timed_eval(*a, **k):
            sync(device)
            t0 = time.perf_counter()
            r = orig_eval(*a, **k)
            ev_times.append(time.perf_counter() - t0)
            return r

        with tempfile.TemporaryDirectory(prefix="fsa-bench-") as wd:
            phase_i.train_epoch, phase_i.evaluate = timed_train, timed_eval
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf) if quiet else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    res = phase_i.train(cfg, "bench", wd, str(device))
                    wall = time.perf_counter() - t0
            finally:
                phase_i.train_epoch, phase_i.evaluate = orig_train, orig_eval
        steady = ep_times[1:] or ep_times
        med = statistics.median(steady)
        rows.append({
            "model": model_name, "config": config, "path": label, "epochs": args.epochs,
            "wall_s": wall, "first_epoch_s": ep_times[0], "median_epoch_s": med,
            "epoch_times_s": ep_times, "eval_s": sum(ev_times),
            "other_s": wall - sum(ep_times) - sum(ev_times),
            "full_epochs": full_epochs,
            # projection of the full schedule's training epochs (no evaluation, no checkpoints)
            "projected_full_train_s": ep_times[0] + (full_epochs - 1) * med,
            "final_top1": res["final"]["top1"],
        })
    ref = next(r for r in rows if r["path"].startswith("reference"))
    for r in rows:
        r["speedup"] = ref["median_epoch_s"] / r["median_epoch_s"]
    return rows


# ----------------------------------------------------------------------------- output
def header(args, device, data_desc, n_images) -> dict:
    return {
        "card": card_name(device), "device": str(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "images": n_images, "batch": args.batch_size,
        "extract_batch": args.extract_batch, "models": args.models, "data": data_desc,
        "steps": args.steps, "warmup": args.warmup, "extract_steps": args.extract_steps,
        "p3_steps": args.p3_steps, "num_workers": args.num_workers, "quick": args.quick,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cpu_bf16": cpu_bf16_native(),
        "argv": sys.argv[1:],
    }


def format_header(h: dict) -> str:
    if h.get("epochs") is not None:  # --end-to-end
        sizes = (f"- sizes: {h['images']} training images, batch {h['batch']}, models {', '.join(h['models'])}; "
                 f"{h['epochs']} Phase I epoch(s) a variant; DataLoader workers {h['num_workers']} (fast_path=off)")
    else:
        sizes = (f"- sizes: {h['images']} training images, batch {h['batch']} (Phase II batch {h['extract_batch']}), "
                 f"models {', '.join(h['models'])}; {h['warmup']} warm-up + {h['steps']} timed steps (Phase II "
                 f"{h['extract_steps']}, Phase III {h['p3_steps']}); DataLoader workers {h['num_workers']}")
    return "\n".join([
        "# fsa-lt benchmark",
        "",
        f"- card: {h['card']}",
        f"- torch {h['torch']}" + (f" (CUDA {h['cuda']})" if h.get("cuda") else "") + f", Python {h['python']}",
        f"- native bf16 on this CPU: {h.get('cpu_bf16') or 'no (no AVX-512 BF16 or AMX)'}",
        sizes,
        f"- data: {h['data']}",
    ])


def format_rows(rows: list[dict]) -> str:
    lines = ["| phase | model | path | loader / data | precision | layout | steps x batch | ms/step "
             "| throughput | vs reference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['model']} | {r['path']} | {r['loader']} | {r['precision']} | "
                     f"{r['memory_format']} | {r['steps']} x {r['batch']} | {r['ms_per_step']:.2f} | "
                     f"{r['rate']:.1f} {r['unit']} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def format_e2e(rows: list[dict]) -> str:
    lines = ["| model | path | epochs | first epoch s | median epoch s | eval s | other s (checkpoints, setup) "
             "| wall s | projected full-schedule training s | vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['path']} | {r['epochs']} | {r['first_epoch_s']:.2f} | "
                     f"{r['median_epoch_s']:.3f} | {r['eval_s']:.2f} | {r['other_s']:.2f} | {r['wall_s']:.1f} | "
                     f"{r['projected_full_train_s']:.0f} ({r['full_epochs']} epochs) | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def bf16_ratios(rows) -> list:
    """The fast path's bf16 rate over its fp32 rate, per phase and model (CPU rows)."""
    out = []
    for r in rows:
        if r["path"] == "fast" and r["precision"].startswith("bf16"):
            f = next((x for x in rows if x["phase"] == r["phase"] and x["model"] == r["model"] and x["path"] == "fast"
                      and x["precision"] == "fp32"), None)
            if f:
                out.append({"phase": r["phase"], "model": r["model"], "ratio": r["rate"] / f["rate"],
                            "precision": r["precision"]})
    return out


def add_speedups(rows):
    for r in rows:
        ref = next(x for x in rows if x["phase"] == r["phase"] and x["model"] == r["model"]
                   and x["path"] == "reference")
        r["speedup"] = r["rate"] / ref["rate"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--data-root", default=os.environ.get("FSA_DATA_ROOT"),
                   help="folder holding cifar-10-batches-py/ (default $FSA_DATA_ROOT); synthetic data otherwise")
    p.add_argument("--models", default="resnet32,resnet18_cifar", help="comma-separated model names")
    p.add_argument("--phases", default="1,2,3", help="which phases to time (comma-separated subset of 1,2,3)")
    p.add_argument("--steps", type=int, default=None, help="timed Phase I steps (default 50; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 10; --quick 1)")
    p.add_argument("--extract-steps", type=int, default=None, help="timed Phase II batches (default 10; --quick 2)")
    p.add_argument("--p3-steps", type=int, default=None, help="timed Phase III iterations (default 200; --quick 3)")
    p.add_argument("--batch-size", type=int, default=None, help="Phase I batch (default 128; --quick 16)")
    p.add_argument("--extract-batch", type=int, default=None, help="Phase II batch (default 500; --quick 16)")
    p.add_argument("--images", type=int, default=None,
                   help="training images (default: all 12,406 of CIFAR-10-LT IR 100; --quick 256)")
    p.add_argument("--imb-ratio", type=float, default=100.0)
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers of the reference path")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    p.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU, also time Phase I's fast path under bf16 autocast beside fp32 (forced where the "
                        "CPU has no native bf16; the precision column says which)")
    p.add_argument("--compile-modes", default="default,reduce-overhead",
                   help="--compile: torch.compile modes, one row each (reduce-overhead adds CUDA graphs)")
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (seconds on a CPU)")
    p.add_argument("--end-to-end", action="store_true",
                   help="time whole Phase I epochs via fsa_lt.phases.phase_i.train instead")
    p.add_argument("--epochs", type=int, default=None, help="--end-to-end: epochs a variant (default 5; --quick 1)")
    p.add_argument("--verbose", action="store_true", help="--end-to-end: show the phase's own log")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    q = a.quick
    defaults = dict(steps=(2, 50), warmup=(1, 10), extract_steps=(2, 10), p3_steps=(3, 200), batch_size=(16, 128),
                    extract_batch=(16, 500), images=(256, None), epochs=(1, 5))
    for k, (quick, full) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    a.models = [m for m in a.models.split(",") if m]
    a.compile_modes = [m for m in a.compile_modes.split(",") if m]
    a.phases = {int(x) for x in a.phases.split(",") if x}
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # the settings fsa-lt's runs use (engine.run.seed_everything)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result: dict = {}
    if args.end_to_end:
        with contextlib.ExitStack() as stack:
            root = args.data_root
            if root and (Path(root) / "cifar-10-batches-py").is_dir():
                desc = f"real CIFAR-10-LT (IR {args.imb_ratio:g}) from {root}"
            else:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fsa-bench-data-")))
                per_class = 100 if args.quick else N_MAX
                root = str(write_synthetic_cifar10(tmp, per_class, 20 if args.quick else 1000))
                desc = f"synthetic uint8 images in cifar-10-batches-py layout ({per_class} a class before the LT cut)"
            h = header(args, device, desc, None)
            h["images"] = e2e_images(root, args.imb_ratio)
            h["epochs"] = args.epochs
            print(format_header(h), flush=True)
            rows = []
            for m in args.models:
                rows += bench_end_to_end(args, root, m, device, quiet=not args.verbose)
        result = {"header": h, "end_to_end": rows}
        print("\n## Phase I end to end (fsa_lt.phases.phase_i.train)\n")
        print(format_e2e(rows))
    else:
        ds, desc = load_train_set(args.data_root, args.imb_ratio, args.images)
        h = header(args, device, desc, len(ds))
        print(format_header(h), flush=True)
        rows = []
        for m in args.models:
            if 1 in args.phases:
                rows += bench_phase_i(args, ds, m, device)
            if 2 in args.phases:
                rows += bench_phase_ii(args, ds, m, device)
            if 3 in args.phases:
                rows += bench_phase_iii(args, ds, m, device)
        add_speedups(rows)
        rows.sort(key=lambda r: (r["phase"], args.models.index(r["model"])))
        result = {"header": h, "rows": rows, "bf16_vs_fp32": bf16_ratios(rows)}
        print("\n" + format_rows(rows))
        for r in result["bf16_vs_fp32"]:
            print(f"\nPhase {r['phase']} {r['model']}: bf16 autocast {r['ratio']:.2f}x the fp32 rate "
                  f"({r['precision']}), same process")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
