"""Phase II: CAMs, class-specific / class-generic decomposition, confusing classes, feature store.

With the Phase I model frozen (eval mode, no augmentation), one pass over the training
set gives, for every sample, its final feature map F, its CAM for its own class
(M_c = sum_k w_ck F_k, no bias, min-max normalised per sample) and its softmax scores.
The mean scores by true class give each tail class's confusing classes (the row-wise
definition of the paper).  Under torchrun each rank takes a contiguous shard of the
samples and writes its own shard of the store.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from ..config import Config
from ..data import build_dataset, class_counts, make_loader
from ..data.base import InMemoryLT
from ..engine import distributed as dist
from ..engine.checkpoint import check_compatible, load_checkpoint, load_model_state
from ..engine.run import seed_everything
from ..engine.trainer import FP32_NOTE, feature_maps
from ..errors import ConfigError, DataError
from ..method import cam_weights, class_activation_maps, confusing_classes, head_tail_split, normalize_cams
from . import records, store
from .common import build_model, command_hint, counts_summary, finish_phase, needs_staging, phase_run, upstream_record

PHASE = "phase_ii"


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


class _Shard(InMemoryLT):
    """A contiguous slice of an in-memory data set (keeps `data`, `targets`, `mean`, `std` and the
    transform), a Dataset for the plain DataLoader as well as input to the device loader."""

    def __init__(self, ds, start, end):
        self.data, self.targets = ds.data[start:end], np.asarray(ds.targets)[start:end]
        self.mean, self.std, self.num_classes = ds.mean, ds.std, ds.num_classes
        self.transform = ds.transform


def _check_maps(finite, peak, keep_maps: bool, dtype) -> None:
    if not bool(finite):
        raise DataError("the Phase I model gives non-finite feature maps (inf or NaN) on the training set: "
                        "it has diverged; retrain Phase I")
    if keep_maps and dtype == torch.float16 and float(peak) > float(torch.finfo(torch.float16).max):
        raise ConfigError(f"feature map values reach {float(peak):.4g}, beyond float16's range (65504): "
                          "set extract.dtype=float32")


@torch.no_grad()
def forward_store(model, loader, device, keep_maps: bool, dtype=torch.float16, sink=None):
    """Run the frozen model (eval mode, fp32) over `loader`; returns maps, cams, labels and the score sums.

    sink: None keeps the maps and CAMs (when `keep_maps`) and returns them; otherwise each
    batch's ``(maps, cams, labels)`` goes to ``sink`` (the store writer) as it comes and only
    the labels and score sums are returned, so the store is never held in memory.

    A map that is not finite, or (for a float16 store) beyond float16's range, is an error: it
    would become inf, then NaN, in Phase III (with a sink, checked before each batch is written)."""
    weight = cam_weights(model.get_classifier())
    K = weight.shape[0]
    score_sum = torch.zeros(K, K, device=device, dtype=torch.float64)
    peak = torch.zeros((), device=device)
    finite = torch.ones((), device=device, dtype=torch.bool)
    fmaps, cams, labels = [], [], []
    for f, y in feature_maps(model, loader, device):
        finite &= torch.isfinite(f).all()
        peak = torch.maximum(peak, f.abs().amax())
        logits = model.forward_head(f)
        score_sum.index_add_(0, y, torch.softmax(logits, 1).double())
        cam = normalize_cams(class_activation_maps(f, weight, y))
        labels.append(y)
        if keep_maps and sink is not None:
            _check_maps(finite, peak, keep_maps, dtype)
            sink(f.to(dtype).contiguous(), cam.to(dtype), y)
        elif keep_maps:
            fmaps.append(f.to(dtype).contiguous())
            cams.append(cam.to(dtype))
    _check_maps(finite, peak, keep_maps, dtype)
    out = {"labels": torch.cat(labels), "score_sum": score_sum}
    if keep_maps and sink is None:
        out["fmaps"] = torch.cat(fmaps)
        out["cams"] = torch.cat(cams)
    return out


def extract(cfg: Config, note: str, workdir=".", device=None, force: bool = False, upstream: dict | None = None,
            say=print) -> dict:
    """Phase II of `cfg` / `note` from its finished Phase I (`upstream`: the Phase I record, found
    on disk when not given). Complete outputs with these settings and this Phase I are reused."""
    dist.init_from_env(device)
    workdir = Path(workdir)
    e = cfg.extract
    up = upstream or {"phase_i": upstream_record(workdir, "phase_i", cfg, note)}
    state = records.inspect_phase(workdir, PHASE, cfg, note, upstream=up, force=force,
                                  command=command_hint(PHASE, cfg, note))
    if state.status == "complete" and not force:
        say(f"[{PHASE}] {cfg.name} / {note}: complete outputs with these settings and this Phase I model; reusing them")
        return dict(records.read_record(records.log_dir(workdir, PHASE, cfg.name, note)), reused=True)
    # everything that needs no forward pass is checked before any folder is made
    seed_everything(cfg.seed)
    train_set = build_dataset(cfg, "train", augment=False)
    counts = class_counts(train_set)
    head, tail = head_tail_split(counts, e.h_r)
    if len(tail) == 0 or len(head) == 0:
        raise ConfigError(f"extract.h_r={e.h_r} leaves {len(head)} head and {len(tail)} tail classes: "
                          "Phase III needs both")
    ckpt_info = up["phase_i"]["outputs"]["last.pt" if e.checkpoint == "last" else "best_model.pt"]
    ckpt = records.resolve(workdir, ckpt_info["path"])
    state_i = load_checkpoint(ckpt, expect_phase="phase_i")
    check_compatible(state_i, ckpt, cfg.model.name, len(counts))
    saved_counts = state_i.get("class_counts")
    if saved_counts is not None and not np.array_equal(np.asarray(saved_counts), counts):
        raise DataError(f"{ckpt} was trained on a different training set (class counts differ from {cfg.dataset.name} now)")
    if state.status == "stale":
        say(f"[{PHASE}] {cfg.name} / {note}: {state.reason}; extracting again")
    with phase_run(cfg, PHASE, note, workdir, device, staging=needs_staging(state, force)) as run:
        # an unfinished store is worthless; removed under the note's lock (see records.hold_note)
        if run.main and state.status in ("absent", "interrupted"):
            shutil.rmtree(workdir / "feature" / cfg.name / note, ignore_errors=True)
        dist.barrier()
        return _extract(cfg, run, train_set, counts, head, tail, ckpt, ckpt_info, state_i, up["phase_i"])


def _extract(cfg: Config, run, train_set, counts, head, tail, ckpt, ckpt_info, state_i, rec_i) -> dict:
    e = cfg.extract
    dev = run.device
    K = len(counts)
    t0 = time.perf_counter()
    model = build_model(cfg, K, dev, pretrained=False)
    load_model_state(model, state_i, ckpt)
    precision = FP32_NOTE
    run.log.info(f"Phase I model: {ckpt} (epoch {state_i.get('epoch')}); data: {counts_summary(counts, e.h_r)}; "
                 f"precision: {precision}")

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
    folder = run.dirs["feature"]
    with store.ShardWriter(folder, rank, lo, hi, e.dtype, total_rows=len(train_set)) as writer:
        out = forward_store(model, loader, dev, keep, dtype, sink=writer.append if keep else None)
        if keep:
            writer.close()  # flushed to disk and renamed into place; the index comes after every rank's
    score_sum = dist.all_reduce_sum(out["score_sum"])
    dist.barrier()

    scores = (score_sum / torch.as_tensor(np.maximum(counts, 1), device=score_sum.device)[:, None]).float()
    conf = confusing_classes(scores, tail, e.n_f)
    fmap_shape = list(writer.fmap_shape) if keep else None
    index = {
        "mode": e.mode, "dtype": e.dtype if keep else None, "num_samples": len(train_set), "num_classes": K,
        "fmap_shape": fmap_shape, "checkpoint": ckpt_info["path"], "checkpoint_sha256": ckpt_info["sha256"],
        "phase_i_run_id": rec_i["run_id"], "checkpoint_epoch": state_i.get("epoch"),
        "model_name": cfg.model.name, "h_r": e.h_r, "n_f": e.n_f,
        "class_counts": counts.tolist(), "head": head.tolist(), "tail": tail.tolist(),
        "confusing": {int(c): conf[i].tolist() for i, c in enumerate(tail)},
        "class_names": [str(n) for n in getattr(train_set, "classes", None) or []] or None,  # for figures
        "shards": [],  # filled by rank 0 from the files every rank wrote (dtype, shape, bytes)
    }
    if run.main:
        if keep:
            index["shards"] = [store.describe_shard(folder, r, *shard_bounds(len(train_set), r, world))
                               for r in range(world)]
        store.save_confusion(folder, scores.cpu())
        store.write_index(folder, index)
    dt = time.perf_counter() - t0
    names = getattr(train_set, "classes", None) or [str(i) for i in range(K)]
    run.log.info(f"head {len(head)} classes / tail {len(tail)} classes (h_r={e.h_r}); "
                 f"store: {e.mode}, {len(train_set)} samples" + (f", maps {fmap_shape} {e.dtype}" if keep else "")
                 + f"; {dt:.1f}s ({len(train_set) / dt:.0f} images/s)")
    for i, c in enumerate(tail[:20]):
        conf_txt = ", ".join(f"{names[int(u)]} {scores[c, u]:.3f}" for u in conf[i].tolist())
        run.log.info(f"  tail {names[int(c)]} ({counts[c]} images): confused with {conf_txt}")
    inputs = {"phase_i": {"run_id": rec_i["run_id"], "checkpoint": ckpt_info["path"], "sha256": ckpt_info["sha256"]}}
    rec = finish_phase(run, {"index": {k: v for k, v in index.items() if k != "shards"}, "seconds": dt},
                       inputs=inputs, outputs={"index.json": folder / "index.json"},
                       environment_extra={"precision": precision})
    return rec
