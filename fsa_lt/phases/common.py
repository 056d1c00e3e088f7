"""Pieces the three phases share: model construction, checkpoint choice, metrics files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine import distributed as dist
from ..engine.checkpoint import check_compatible, load_checkpoint, load_model_state
from ..engine.io import write_json
from ..engine.metrics import one_line, summarize
from ..engine.run import seed_everything
from ..errors import CheckpointError, DataError
from ..models import create_model


def build_model(cfg, num_classes: int, device: torch.device, pretrained: bool = True):
    torch.manual_seed(cfg.seed)  # initialisation is a function of the seed alone
    model = create_model(cfg.model.name, num_classes, pretrained=cfg.model.pretrained if pretrained else None)
    # channels_last on every device: the faster layout for these convnets on CUDA and on
    # x86 CPUs alike (the device loader already yields channels_last batches).
    model = model.to(device).to(memory_format=torch.channels_last)
    return model


def check_test_classes(train_set, test_set):
    if test_set.num_classes != train_set.num_classes:
        raise DataError(f"test split has {test_set.num_classes} classes, training split has {train_set.num_classes}")


def checkpoint_path(ckpt_dir: Path, which: str) -> Path:
    """'best' -> best_model.pt, 'last' -> last.pt, anything else is a path."""
    if which == "best":
        return ckpt_dir / "best_model.pt"
    if which == "last":
        return ckpt_dir / "last.pt"
    return Path(which)


def load_phase_model(cfg, path: Path, phase: str, num_classes: int, device, expect_phase=None):
    state = load_checkpoint(path, expect_phase=expect_phase)
    check_compatible(state, path, cfg.model.name, num_classes)
    model = build_model(cfg, num_classes, device, pretrained=False)
    load_model_state(model, state, path)
    return model, state


def require_phase_output(path: Path, what: str, hint: str):
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} ({hint})")


def log_metrics(run, tag: str, m: dict, step: int) -> None:
    run.log.info(f"{tag}: {one_line(m)}")
    for k in ("top1", "many", "medium", "few", "head", "tail"):
        run.scalar(f"{tag}/{k}", m[k], step)


def counts_summary(counts: np.ndarray, h_r: float) -> str:
    from ..method.split import head_tail_split, shot_groups

    head, tail = head_tail_split(counts, h_r)
    g = shot_groups(counts)
    return (f"{len(counts)} classes, {int(counts.sum())} images (max {int(counts.max())}, min {int(counts.min())}); "
            f"head {len(head)} / tail {len(tail)} (h_r={h_r}); many {len(g['many'])} / medium {len(g['medium'])} / few {len(g['few'])}")


def save_confusion_matrix(run, cm) -> None:
    """The final model's K x K test confusion matrix (rows: true class), read by the run report."""
    if dist.is_main():
        from ..engine.io import torch_save

        torch_save(run.dirs["log"] / "confusion_matrix.pt", torch.as_tensor(cm).detach().cpu().long())


def test_checkpoint(cfg, run, checkpoint: str, phase: str, step_key: str) -> dict:
    """Test mode of a phase: evaluate best/last/a path on the test set, write test_<stem>.json."""
    from ..data import build_dataset, class_counts, make_loader
    from ..engine.trainer import evaluate

    seed_everything(cfg.seed)
    train_set = build_dataset(cfg, "train", augment=False)
    test_set = build_dataset(cfg, "test")
    check_test_classes(train_set, test_set)
    counts = class_counts(train_set)
    path = checkpoint_path(run.dirs["ckpt"], checkpoint)
    model, state = load_phase_model(cfg, path, phase, len(counts), run.device, expect_phase=phase)
    loader = make_loader(test_set, cfg, run.device, train=False, batch_size=cfg.train.eval_batch_size)
    m = summarize(evaluate(model, loader, len(counts), run.device, amp=cfg.train.amp), counts, cfg.extract.h_r)
    m[step_key] = state.get(step_key)
    log_metrics(run, "test", m, 0)
    write_metrics(run, {"checkpoint": str(path), "final": m}, name=f"test_{path.stem}.json")
    return m


def write_metrics(run, payload: dict, name: str = "metrics.json") -> None:
    if dist.is_main():
        write_json(run.dirs["log"] / name, payload)


__all__ = ["build_model", "checkpoint_path", "load_phase_model", "log_metrics", "save_confusion_matrix", "summarize",
           "write_metrics"]
