"""Phase II: CAMs, class-specific / class-generic decomposition, confusing classes, feature store.

With the Phase I model frozen (eval mode, no augmentation), one pass over the training
set gives, for every sample, its final feature map F, its CAM for its own class
(M_c = sum_k w_ck F_k, no bias, min-max normalised per sample) and its softmax scores.
The mean scores by true class give each tail class's confusing classes (the row-wise
definition of the paper).  Under torchrun each rank takes a contiguous shard of the
samples and writes its own shard of the store.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import Subset

from ..config import Config
from ..data import build_dataset, class_counts, make_loader
from ..engine import distributed as dist
from ..engine.run import open_run, seed_everything
from ..engine.trainer import feature_maps
from ..method import class_activation_maps, confusing_classes, head_tail_split, normalize_cams
from . import store
from .common import checkpoint_path, counts_summary, load_phase_model, require_phase_output

PHASE = "phase_ii"


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


class _Shard:
    """A contiguous slice of an in-memory data set (keeps `data`, `targets`, `mean`, `std`)."""

    def __init__(self, ds, start, end):
        self.data, self.targets = ds.data[start:end], np.asarray(ds.targets)[start:end]
        self.mean, self.std, self.num_classes = ds.mean, ds.std, ds.num_classes


@torch.no_grad()
def forward_store(model, loader, device, amp: bool, keep_maps: bool, dtype=torch.float16):
    """Run the frozen model over `loader`; returns maps, cams, labels and the score sums."""
    weight = model.get_classifier().weight.float()
    K = weight.shape[0]
    score_sum = torch.zeros(K, K, device=device, dtype=torch.float64)
    fmaps, cams, labels = [], [], []
    for f, y in feature_maps(model, loader, device, amp=amp):
        logits = model.forward_head(f)
        score_sum.index_add_(0, y, torch.softmax(logits, 1).double())
        cam = normalize_cams(class_activation_maps(f, weight, y))
        labels.append(y)
        if keep_maps:
            fmaps.append(f.to(dtype).contiguous())
            cams.append(cam.to(dtype))
    out = {"labels": torch.cat(labels), "score_sum": score_sum}
    if keep_maps:
        out["fmaps"] = torch.cat(fmaps)
        out["cams"] = torch.cat(cams)
    return out


def extract(cfg: Config, note: str, workdir=".", device=None) -> dict:
    dist.init_from_env(device)
    run = open_run(cfg, PHASE, note, workdir, device)
    try:
        return _extract(cfg, run)
    finally:
        run.close()


def _extract(cfg: Config, run) -> dict:
    e = cfg.extract
    dev = run.device
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    train_set = build_dataset(cfg, "train", augment=False)
    counts = class_counts(train_set)
    K = len(counts)
    ckpt_dir = run.workdir / "checkpoints" / "phase_i" / cfg.name / run.note
    ckpt = checkpoint_path(ckpt_dir, e.checkpoint)
    require_phase_output(ckpt, "Phase I checkpoint", f"train Phase I first: fsa-lt train --config {cfg.name} --note {run.note}")
    model, state = load_phase_model(cfg, ckpt, PHASE, K, dev, expect_phase="phase_i")
    saved_counts = state.get("class_counts")
    if saved_counts is not None and not np.array_equal(np.asarray(saved_counts), counts):
        from ..errors import DataError

        raise DataError(f"{ckpt} was trained on a different training set (class counts differ from {cfg.dataset.name} now)")
    run.log.info(f"Phase I model: {ckpt} (epoch {state.get('epoch')}); data: {counts_summary(counts, e.h_r)}")

    world, rank = dist.world_size(), dist.rank()
    lo, hi = shard_bounds(len(train_set), rank, world)
    if hasattr(train_set, "data"):
        part = _Shard(train_set, lo, hi)
    else:
        part = Subset(train_set, range(lo, hi))
        part.targets = np.asarray(train_set.targets)[lo:hi]
    loader = make_loader(part, cfg, dev, train=False, batch_size=e.batch_size, shard=False,
                         fast=hasattr(train_set, "data") and cfg.train.fast_path != "off")
    keep = e.mode == "cached"
    dtype = torch.float16 if e.dtype == "float16" else torch.float32
    out = forward_store(model, loader, dev, cfg.train.amp, keep, dtype)
    score_sum = dist.all_reduce_sum(out["score_sum"])
    folder = run.dirs["feature"]
    if keep:
        store.write_shard(folder, rank, lo, out["fmaps"].cpu(), out["cams"].cpu(), out["labels"].cpu())
    dist.barrier()

    head, tail = head_tail_split(counts, e.h_r)
    scores = (score_sum / torch.as_tensor(np.maximum(counts, 1), device=score_sum.device)[:, None]).float()
    if len(tail) == 0 or len(head) == 0:
        from ..errors import ConfigError

        raise ConfigError(f"extract.h_r={e.h_r} leaves {len(head)} head and {len(tail)} tail classes: "
                          "Phase III needs both")
    conf = confusing_classes(scores, tail, e.n_f)
    fmap_shape = list(out["fmaps"].shape[1:]) if keep else None
    index = {
        "mode": e.mode, "dtype": e.dtype if keep else None, "num_samples": len(train_set), "num_classes": K,
        "fmap_shape": fmap_shape, "checkpoint": str(ckpt), "checkpoint_epoch": state.get("epoch"),
        "model_name": cfg.model.name, "h_r": e.h_r, "tau_s": e.tau_s, "tau_g": e.tau_g, "n_f": e.n_f,
        "class_counts": counts.tolist(), "head": head.tolist(), "tail": tail.tolist(),
        "confusing": {int(c): conf[i].tolist() for i, c in enumerate(tail)},
        "shards": [{"file": store.shard_name(r), "start": shard_bounds(len(train_set), r, world)[0],
                    "end": shard_bounds(len(train_set), r, world)[1]} for r in range(world)] if keep else [],
    }
    if run.main:
        store.save_confusion(folder, scores.cpu())
        store.write_index(folder, index)
    dist.barrier()  # no rank goes on (to Phase III) before the index exists
    dt = time.perf_counter() - t0
    names = getattr(train_set, "classes", None) or [str(i) for i in range(K)]
    run.log.info(f"head {len(head)} classes / tail {len(tail)} classes (h_r={e.h_r}); "
                 f"store: {e.mode}, {len(train_set)} samples" + (f", maps {fmap_shape} {e.dtype}" if keep else "")
                 + f"; {dt:.1f}s ({len(train_set) / dt:.0f} images/s)")
    for i, c in enumerate(tail[:20]):
        conf_txt = ", ".join(f"{names[int(u)]} {scores[c, u]:.3f}" for u in conf[i].tolist())
        run.log.info(f"  tail {names[int(c)]} ({counts[c]} images): confused with {conf_txt}")
    return index
