import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# One thread: the tests are small, and two threads on a busy 2-core machine are many times slower.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (real CIFAR-10 training, kill -9 fault injection, the "
                          "torchrun checks, the benchmark scripts); .ci/run does, as a second step")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow are skipped, with the way to run them, unless --slow."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: python -m pytest -m slow --slow runs it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    """Which precision path the suite's runs take: FSA_AMP_CPU=always runs the bf16 path that a CPU
    with native bf16 (or a GPU) runs, emulated where this CPU has none (README, "Test")."""
    from fsa_lt.engine.trainer import cpu_bf16_native

    forced = os.environ.get("FSA_AMP_CPU") or "unset"
    native = cpu_bf16_native() or "none"
    return f"fsa-lt precision: FSA_AMP_CPU={forced}; native bf16 on this CPU: {native}"


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory):
    from cifar_files import write_fake_cifar10

    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar10(str(root), n_per_class=60, n_test_per_class=20, seed=0)
    return str(root)


class interrupted_phase_i:
    """Within the block, Phase I's `epoch`-th epoch (1-based) raises KeyboardInterrupt,
    as a killed run would; the block expects it and restores the real training epoch."""

    def __init__(self, monkeypatch, epoch: int):
        from fsa_lt.phases import phase_i

        self.mp, self.module, self.real, self.epoch, self.calls = monkeypatch, phase_i, phase_i.train_epoch, epoch, 0

    def _dying(self, *a, **k):
        self.calls += 1
        if self.calls == self.epoch:
            raise KeyboardInterrupt
        return self.real(*a, **k)

    def __enter__(self):
        self.mp.setattr(self.module, "train_epoch", self._dying)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.mp.setattr(self.module, "train_epoch", self.real)
        assert exc_type is KeyboardInterrupt, "the run was not interrupted"
        return True


def folder_digest(folder) -> str:
    """SHA-256 over every file below `folder` (relative path and bytes): unchanged means untouched."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def tiny_overrides(root: str) -> list[str]:
    """A seconds-long CIFAR-LT experiment on the generated files: ResNet-8 (the smallest CIFAR ResNet), IR 10."""
    return [f"dataset.root={root}", "dataset.imb_ratio=10", "dataset.download=false", "model.name=resnet8",
            "train.batch_size=16", "train.warmup_epochs=0", "train.lr=0.05", "train.eval_every=1",
            "train.save_every=2", "train.eval_batch_size=200", "dataset.num_workers=0"]
