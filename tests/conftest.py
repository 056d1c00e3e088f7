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


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory):
    from cifar_files import write_fake_cifar10

    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar10(str(root), n_per_class=60, n_test_per_class=20, seed=0)
    return str(root)


def tiny_overrides(root: str) -> list[str]:
    """A seconds-long CIFAR-LT experiment on the generated files: ResNet-20, IR 10."""
    return [f"dataset.root={root}", "dataset.imb_ratio=10", "dataset.download=false", "model.name=resnet20",
            "train.batch_size=16", "train.warmup_epochs=0", "train.lr=0.05", "train.eval_every=1",
            "train.save_every=2", "train.eval_batch_size=200", "dataset.num_workers=0"]
