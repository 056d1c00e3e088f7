"""One readable training loop and evaluation, shared by the phases.

No host synchronisation inside the step: the loss and accuracy are accumulated on the
device and read once per epoch.  bf16 autocast (no GradScaler needed for bf16) where the
device runs bf16 natively: CUDA, and CPUs with AVX-512 BF16 or AMX; channels_last.

One precision rule (`PRECISION_RULE`, docs/METHOD.md): autocast applies to training steps
only. `evaluate` and `feature_maps` always run in fp32, so a run's evaluation, its test mode,
Phase II's stored maps and Phase III's features are the same numbers on every processor.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn

from . import distributed as dist
from .metrics import confusion_matrix
from .run import progress


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> str | None:
    """The CPU feature that runs bf16 arithmetic natively (``'amx'``, ``'avx512_bf16'``), or None.

    Asks PyTorch (the checks its oneDNN kernels use), and the kernel's CPU flags where those
    private helpers are missing."""
    cpu = getattr(torch, "cpu", None)
    for name, flag in (("_is_amx_tile_supported", "amx"), ("_is_avx512_bf16_supported", "avx512_bf16")):
        fn = getattr(cpu, name, None)
        if fn is not None:
            try:
                if fn():
                    return flag
            except Exception:  # pragma: no cover - a build without the check
                pass
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return None
    for flag in ("amx_bf16", "avx512_bf16"):
        if f" {flag}" in flags:
            return flag
    return None


def amp_mode(train_cfg):
    """What `autocast` is asked for under a TrainConfig: False, True (where native) or 'always'."""
    if not train_cfg.amp:
        return False
    return "always" if getattr(train_cfg, "amp_cpu", "native") == "always" else True


def uses_bf16(device: torch.device, mode) -> bool:
    if not mode:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (mode == "always" or cpu_bf16_native() is not None)


PRECISION_RULE = ("training steps under bf16 autocast where train.amp asks for it and the device allows it; "
                  "every evaluation, feature extraction and stored feature in fp32")
# What Phases II and III run: nothing of them is a training step of the network.
FP32_NOTE = "fp32 (feature extraction and evaluation are always fp32)"


def precision_note(device: torch.device, mode) -> str:
    """One line for the log and Phase I's environment: the training steps' precision, and why;
    evaluation is fp32 whatever it says (`PRECISION_RULE`)."""
    return f"training {_training_precision(device, mode)}; evaluation fp32"


def _training_precision(device: torch.device, mode) -> str:
    if not mode:
        return "fp32 (train.amp is off)"
    if device.type == "cuda":
        return "bf16 autocast (CUDA)"
    native = cpu_bf16_native()
    if native:
        return f"bf16 autocast (CPU with native bf16: {native})"
    if mode == "always":
        return "bf16 autocast, emulated: this CPU has no native bf16 (train.amp_cpu=always), expect it to be much slower than fp32"
    return "fp32 (this CPU has no native bf16 - no AVX-512 BF16 or AMX - so train.amp runs fp32 here)"


def autocast(device: torch.device, mode):
    """bf16 autocast under `mode` (see `amp_mode`) where `uses_bf16`, else nothing."""
    if uses_bf16(device, mode):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(model, loader, optimizer, scheduler, loss_fn, device, *, amp=False, grad_accum=1,
                desc="train", on_step=None, log=None) -> dict:
    """Train one epoch; returns {'loss', 'acc'} averaged over the samples (all ranks)."""
    model.train()
    stats = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    n = len(loader)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(progress(loader, n, desc, log=log)):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        sync = (i + 1) % grad_accum == 0 or i + 1 == n
        ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with ctx:
            with autocast(device, amp):
                logits = model(x)
                loss = loss_fn(logits, y)
            (loss / grad_accum).backward()
        if sync:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        with torch.no_grad():
            stats[0] += loss.detach().double() * y.shape[0]
            stats[1] += (logits.argmax(1) == y).sum()
            stats[2] += y.shape[0]
        if on_step is not None:
            on_step(i)
    dist.all_reduce_sum(stats)
    s = stats.tolist()
    return {"loss": s[0] / max(s[2], 1), "acc": s[1] / max(s[2], 1) * 100.0}


# Evaluation batches forward in chunks of at most this many samples on a CPU: a 1,000-image batch's
# activations (ResNet-32: 1000 x 16 x 32 x 32 fp32 = 65 MB a layer) overflow the caches, and
# 256 ran ResNet-32 inference at 1.9x the speed of 1,000 on 2 EPYC cores (benchmarks/eval_chunk.py,
# docs/BENCHMARKS.md). Every sample's output is its own, so the numbers do not change (a test
# checks). GPUs take the whole batch.
CPU_EVAL_CHUNK = 256


def forward_in_chunks(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)``, on a CPU tensor computed `CPU_EVAL_CHUNK` samples at a time and concatenated."""
    if x.device.type != "cpu" or x.shape[0] <= CPU_EVAL_CHUNK:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(CPU_EVAL_CHUNK)])


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device, *, desc="eval") -> torch.Tensor:
    """Confusion matrix (rows true, columns predicted) over the loader, summed over ranks; fp32."""
    model.eval()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for x, y in progress(loader, len(loader), desc):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = forward_in_chunks(model, x)
        cm += confusion_matrix(logits.argmax(1), y, num_classes).flatten()
    dist.all_reduce_sum(cm)
    return cm.reshape(num_classes, num_classes).cpu()


@torch.no_grad()
def feature_maps(model, loader, device):
    """Yield (final feature map, labels) for every batch, computed in fp32; the model in eval mode."""
    model.eval()
    for x, y in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        yield forward_in_chunks(model.forward_features, x).float(), y


def unwrap(model: nn.Module) -> nn.Module:
    m = getattr(model, "module", model)
    return getattr(m, "_orig_mod", m)
