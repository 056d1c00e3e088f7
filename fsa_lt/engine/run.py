"""The run context: output folders of the seed layout, the text log, TensorBoard, devices.

    <workdir>/checkpoints/<phase>/<config>/<note>/   best_model.pt, model_epoch_0020.pt, last.pt
    <workdir>/log/<phase>/<config>/<note>/           log.txt, config.yaml, environment.json, metrics.json
    <workdir>/run_summary/<phase>/<config>/<note>/   TensorBoard event files
    <workdir>/feature/<config>/<note>/               Phase II feature store
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError
from . import distributed as dist


def run_dirs(workdir, phase: str, config: str, note: str) -> dict[str, Path]:
    w = Path(workdir)
    return {
        "ckpt": w / "checkpoints" / phase / config / note,
        "log": w / "log" / phase / config / note,
        "tb": w / "run_summary" / phase / config / note,
        "feature": w / "feature" / config / note,
    }


def resolve_device(spec: str | None) -> torch.device:
    if spec in (None, "", "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device '{spec}' (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
        if dist.is_distributed():
            dev = torch.device("cuda", dist.local_rank())
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise ConfigError(f"--device: unsupported device type '{dev.type}'")
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass
class Run:
    cfg: Config
    phase: str
    note: str
    workdir: Path
    device: torch.device
    dirs: dict
    log: logging.Logger
    tb: object | None
    created: list = field(default_factory=list)

    @property
    def main(self) -> bool:
        return dist.is_main()

    def scalar(self, tag: str, value, step: int) -> None:
        if self.tb is not None and value is not None:
            self.tb.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


def open_run(cfg: Config, phase: str, note: str, workdir, device: str | None, tensorboard: bool = True,
             log_name: str = "log.txt") -> Run:
    """Create the log folder, the log and the TensorBoard writer of `phase` / `note`.

    Writes nothing else: a phase's config, versions and metrics are its record, written by the
    phase when it finishes (`fsa_lt.phases.records`); `log_name` lets test mode keep its own log.
    `run.created` lists the folders this call made, so a run that fails on bad input before it
    has produced anything can remove them again.
    """
    workdir = Path(workdir)
    dirs = run_dirs(workdir, phase, cfg.name, note)
    dev = resolve_device(device)
    main = dist.is_main()
    logger = logging.getLogger(f"fsa_lt.{phase}.{cfg.name}.{note}.{time.time_ns()}")
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    created = []
    if main:
        for key in ("log", "tb") if tensorboard else ("log",):
            if not dirs[key].exists():
                created.append(dirs[key])
        dirs["log"].mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(dirs["log"] / log_name)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    tb = None
    if main and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(dirs["tb"]))
    logger.info(f"{phase} | config {cfg.name} ({', '.join(cfg.sources)}) | note {note} | device {dev}"
                + (f" | world size {dist.world_size()}" if dist.is_distributed() else ""))
    return Run(cfg, phase, note, workdir, dev, dirs, logger, tb, created)


def progress(iterable, total: int, desc: str, enabled: bool = True, log=None, every_s: float = 30.0):
    """A tqdm bar on a terminal (rank 0); without one (nohup, CI, a log file), a line through
    `log` at most every `every_s` seconds, so a long CPU epoch shows it is moving."""
    if not (enabled and dist.is_main()):
        return iterable
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    if log is None:
        return iterable
    return _timed_lines(iterable, total, desc, log, every_s)


def _timed_lines(iterable, total: int, desc: str, log, every_s: float):
    t0 = last = time.perf_counter()
    for i, item in enumerate(iterable):
        yield item
        now = time.perf_counter()
        if now - last >= every_s and i + 1 < total:
            last = now
            rate = (i + 1) / (now - t0)
            log(f"{desc}: {i + 1}/{total} steps ({100.0 * (i + 1) / total:.0f}%), {now - t0:.0f}s, "
                f"about {(total - i - 1) / rate:.0f}s left")
