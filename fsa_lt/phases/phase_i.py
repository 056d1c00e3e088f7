"""Phase I: train the whole network on the long-tailed training set; test a checkpoint."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..data import build_dataset, class_counts, make_loader
from ..engine import distributed as dist
from ..engine import faults
from ..engine.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from ..engine.losses import loss_from_config
from ..engine.metrics import summarize
from ..engine.io import environment
from ..engine.run import seed_everything
from ..engine.schedule import lr_factor
from ..engine.trainer import amp_mode, evaluate, precision_note, train_epoch, unwrap
from ..errors import CheckpointError, ConfigError
from . import records
from .common import (build_model, check_test_classes, command_hint, counts_summary, finish_phase, log_metrics, needs_staging,
                     phase_run, save_confusion_matrix, short_metrics, test_checkpoint)

PHASE = "phase_i"


def _model_state(model, cfg, counts, epoch, metrics=None) -> dict:
    return {
        "phase": PHASE,
        "model_name": cfg.model.name,
        "num_classes": len(counts),
        "class_counts": torch.as_tensor(counts),
        "model": unwrap(model).state_dict(),
        "epoch": epoch,
        "metrics": metrics,
        "config": cfg.to_dict(),
    }


def train(cfg: Config, note: str, workdir=".", device=None, resume: bool = False, force: bool = False,
          say=print) -> dict:
    """Phase I of `cfg` under `note`: trains, resumes an interrupted run with the same settings,
    or reports complete outputs with these settings (nothing to do). Outputs made with other
    settings are an error unless `force` (then they are replaced when the new run finishes)."""
    dist.init_from_env(device)
    workdir = Path(workdir)
    hint = command_hint(PHASE, cfg, note)
    state = records.inspect_phase(workdir, PHASE, cfg, note, force=force, command=hint)
    if state.status == "complete" and not force:
        say(f"[{PHASE}] {cfg.name} / {note}: complete outputs with these settings "
            f"({records.log_dir(workdir, PHASE, cfg.name, note) / records.RECORD}); reusing them "
            f"(to train it again anyway: fsa-lt train --force, or a new --note)")
        return completed(workdir, PHASE, cfg.name, note)
    resume_from = state.resume_from if state.status == "interrupted" and not force else None
    if resume and resume_from is None and state.status != "interrupted":
        raise CheckpointError(f"nothing to resume: no interrupted Phase I run of {cfg.name} / {note} "
                              f"({workdir / 'checkpoints' / PHASE / cfg.name / note / 'last.pt'} not found)")
    if cfg.model.pretrained:  # a missing or unsafe weights file is said before the data are read
        from ..models import check_pretrained_file

        check_pretrained_file(cfg.model.pretrained)
    data = _load_data(cfg)  # bad data is an error before any output folder exists
    if resume_from is not None:
        say(f"[{PHASE}] {cfg.name} / {note}: an interrupted run with these settings is there; resuming it from {resume_from}")
    staging = needs_staging(state, force)
    with phase_run(cfg, PHASE, note, workdir, device, staging=staging) as run:
        return _train(cfg, run, data, resume_from)


def _load_data(cfg: Config):
    seed_everything(cfg.seed, cfg.train.deterministic)
    train_set = build_dataset(cfg, "train")
    test_set = build_dataset(cfg, "test")
    check_test_classes(train_set, test_set)
    return train_set, test_set


def completed(workdir, phase: str, config: str, note: str) -> dict:
    """What a finished phase returns, read from its record's folder."""
    ldir = records.log_dir(workdir, phase, config, note)
    out = records.read_json_file(ldir / "metrics.json") or {}
    out["record"] = records.read_record(ldir)
    out["reused"] = True
    return out


def _train(cfg: Config, run, data, resume_from) -> dict:
    t = cfg.train
    dev = run.device
    seed_everything(cfg.seed, t.deterministic)
    train_set, test_set = data
    counts = class_counts(train_set)
    K = len(counts)
    run.log.info(f"data {cfg.dataset.name}: {counts_summary(counts, cfg.extract.h_r)}; test {len(test_set)} images")
    amp = amp_mode(t)
    precision = precision_note(dev, amp)
    run.log.info(f"precision: {precision}")

    world = dist.world_size()
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by world size {world} x grad_accum {t.grad_accum}")
    per_rank = t.batch_size // (world * t.grad_accum)
    # compiled models (CUDA graphs) want one batch shape: drop the last partial batch then
    loader = make_loader(train_set, cfg, dev, train=True, batch_size=per_rank, drop_last=t.compile)
    test_loader = make_loader(test_set, cfg, dev, train=False, batch_size=t.eval_batch_size)
    run.log.info(f"loader: {'device-resident fast path' if loader.fast else 'DataLoader'}; "
                 f"{len(loader)} steps/epoch of {per_rank} per rank x {world} rank(s) x accum {t.grad_accum}")

    if t.warmup_epochs >= t.epochs:
        run.log.warning(f"train.warmup_epochs ({t.warmup_epochs}) >= train.epochs ({t.epochs}): "
                        "the whole run is warm-up and the lr never reaches train.lr")
    model = build_model(cfg, K, dev)
    if world > 1:
        if cfg.model.sync_bn and dev.type != "cuda":
            raise ConfigError("model.sync_bn: SyncBatchNorm runs on CUDA devices only; "
                              "set model.sync_bn=false for a CPU (gloo) run")
        if cfg.model.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                nesterov=t.nesterov, fused=True if dev.type == "cuda" else None)
    steps = math.ceil(len(loader) / t.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, steps, t))
    loss_fn = loss_from_config(cfg, counts).to(dev)
    fwd_model = torch.compile(model, mode=t.compile_mode) if t.compile else model

    ckpt_dir = run.dirs["ckpt"]
    # history: the evaluated epochs' test metrics; epochs: every epoch's training loss,
    # accuracy, lr (at the epoch's end: that of the next step) and time (the curves of the
    # report); segments: one entry per start or resume, with the versions that trained it
    # (a resumed run may span code versions).
    start, best, history, epochs = 0, None, [], []
    segments = []
    if resume_from is not None:
        path = resume_from
        state = load_checkpoint(path, expect_phase=PHASE)
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds no training state to resume from")
        load_model_state(unwrap(model), state, path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, best, history = state["epoch"], state.get("best"), list(state.get("history") or [])
        epochs, segments = list(state.get("epochs") or []), list(state.get("segments") or [])
        run.log.info(f"resumed from {path} at epoch {start}")
        if start >= t.epochs:
            run.log.info("nothing left to train")

    segments.append({"start_epoch": start, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "environment": dict(environment(), precision=precision)})
    final = None
    for epoch in range(start, t.epochs):
        loader.set_epoch(epoch)
        loss_fn.set_epoch(epoch)  # deferred re-weighting (DRW) switches on at train.drw_epoch
        t0 = time.perf_counter()
        s = train_epoch(fwd_model, loader, optimizer, scheduler, loss_fn, dev, amp=amp,
                        grad_accum=t.grad_accum, desc=f"epoch {epoch + 1}/{t.epochs}", log=run.log.info)
        dt = time.perf_counter() - t0
        lr = optimizer.param_groups[0]["lr"]
        line = f"epoch {epoch + 1:4d}/{t.epochs} loss {s['loss']:.4f} train-acc {s['acc']:6.2f} lr {lr:.5f} {dt:6.1f}s"
        run.scalar("train/loss", s["loss"], epoch + 1)
        run.scalar("train/acc", s["acc"], epoch + 1)
        run.scalar("train/lr", lr, epoch + 1)
        done = epoch + 1
        epochs.append({"epoch": done, "loss": s["loss"], "acc": s["acc"], "lr": lr, "seconds": dt})
        if done % t.eval_every == 0 or done == t.epochs:
            cm = evaluate(fwd_model, test_loader, K, dev)
            m = summarize(cm, counts, cfg.extract.h_r)
            m["epoch"] = done
            history.append({k: m[k] for k in ("epoch", "top1", "many", "medium", "few", "head", "tail")})
            line += f" | test top1 {m['top1']:.2f}"
            log_metrics(run, "test", m, done)
            if best is None or m["top1"] > best["top1"]:
                best = m
                if run.main:
                    save_checkpoint(ckpt_dir / "best_model.pt", _model_state(model, cfg, counts, done, m))
            if done == t.epochs:
                final, final_cm = m, cm
        run.log.info(line)
        if run.main:
            if done % t.save_every == 0:
                save_checkpoint(ckpt_dir / f"model_epoch_{done:04d}.pt", _model_state(model, cfg, counts, done))
            if done % t.checkpoint_every == 0 or done == t.epochs:
                last = _model_state(model, cfg, counts, done)
                last.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state(),
                            best=best, history=history, epochs=epochs, segments=segments)
                save_checkpoint(ckpt_dir / "last.pt", last)
        dist.barrier()
        if faults.due("interrupt_after_epoch"):
            raise KeyboardInterrupt

    if final is None:  # resumed after the end: evaluate what we have
        final_cm = evaluate(fwd_model, test_loader, K, dev)
        final = summarize(final_cm, counts, cfg.extract.h_r)
        final["epoch"] = t.epochs
    best = best or final
    run.log.info(f"final: top1 {final['top1']:.2f}; best: top1 {best['top1']:.2f} at epoch {best['epoch']} (test-set selected)")
    save_confusion_matrix(run, final_cm)
    payload = {"final": final, "best": best, "history": history, "epochs": epochs}
    rec = finish_phase(run, payload, inputs={}, outputs={"last.pt": ckpt_dir / "last.pt",
                                                         "best_model.pt": ckpt_dir / "best_model.pt"},
                       summary={"final": short_metrics(final), "best (test-selected)": short_metrics(best)},
                       segments=segments, train_seconds=sum(e["seconds"] for e in epochs),
                       environment_extra={"precision": precision})
    return dict(payload, record=rec)


def test(cfg: Config, note: str, workdir=".", device=None, checkpoint: str = "best") -> dict:
    """Evaluate a checkpoint of this note; writes test_<checkpoint>.json beside the run's
    record, never the record itself."""
    dist.init_from_env(device)
    return test_checkpoint(cfg, note, workdir, device, checkpoint, PHASE, "epoch")
