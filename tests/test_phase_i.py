"""Phase I end to end on generated CIFAR files: layout, metrics, resume, errors, real data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, interrupted_phase_i, tiny_overrides
from fsa_lt.config import load_config
from fsa_lt.engine.checkpoint import load_checkpoint
from fsa_lt.errors import CheckpointError
from fsa_lt.phases import phase_i

NAME = "cifar10-LT_resnet32"
KEYS = {"top1", "many", "medium", "few", "head", "tail", "per_class"}


def _cfg(root, *extra):
    return load_config(NAME, "phase_i", tiny_overrides(root) + list(extra))


def test_train_writes_seed_layout(fake_cifar10, tmp_path):
    res = phase_i.train(_cfg(fake_cifar10, "train.epochs=2"), "smoke", tmp_path, "cpu")
    ck = tmp_path / "checkpoints" / "phase_i" / NAME / "smoke"
    assert sorted(p.name for p in ck.iterdir()) == ["best_model.pt", "last.pt", "model_epoch_0002.pt"]
    log = tmp_path / "log" / "phase_i" / NAME / "smoke"
    for f in ("log.txt", "config.yaml", "environment.json", "metrics.json"):
        assert (log / f).is_file(), f
    m = json.loads((log / "metrics.json").read_text())
    assert KEYS <= set(m["final"]) and KEYS | {"epoch"} <= set(m["best"])
    assert len(m["final"]["per_class"]) == 10 and m["final"]["num_test"] == 200
    # fake CIFAR-10 at IR 10 with n_max 60: sizes 60 .. 6, so there are medium and few classes
    assert m["final"]["few"] is not None and m["final"]["many"] is None
    assert m["final"] == res["final"]
    env = json.loads((log / "environment.json").read_text())
    assert env["torch"] == torch.__version__
    assert list((tmp_path / "run_summary" / "phase_i" / NAME / "smoke").glob("events.out.tfevents.*"))
    text = (log / "log.txt").read_text()
    assert "epoch    1/2" in text and "epoch    2/2" in text
    state = load_checkpoint(ck / "best_model.pt", expect_phase="phase_i")
    assert state["num_classes"] == 10 and state["model_name"] == "resnet8"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.precision
def test_test_mode_reproduces_final_metrics(fake_cifar10, tmp_path):
    cfg = _cfg(fake_cifar10, "train.epochs=1")
    res = phase_i.train(cfg, "t", tmp_path, "cpu")
    m = phase_i.test(cfg, "t", tmp_path, "cpu", checkpoint="last")
    assert m["top1"] == pytest.approx(res["final"]["top1"]) and m["per_class"] == res["final"]["per_class"]
    assert (tmp_path / "log" / "phase_i" / NAME / "t" / "test_last.json").is_file()


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("fast,workers,resumed_workers", [("on", 0, 0), ("off", 0, 0), ("off", 0, 2)])
def test_interrupted_and_resumed_equals_uninterrupted(fake_cifar10, tmp_path, monkeypatch, fast, workers,
                                                      resumed_workers):
    """Bit for bit, on the device loader and on the DataLoader path; there also when the
    interrupted and resumed run read with 2 worker processes and the uninterrupted one with none
    (each epoch's augmentation is a function of the seed and the epoch, not of the epochs before
    it in the process, and dataset.num_workers is not a setting of the result)."""
    extra = ["train.epochs=2", "train.deterministic=true", f"train.fast_path={fast}"]
    phase_i.train(_cfg(fake_cifar10, *extra, f"dataset.num_workers={workers}"), "straight", tmp_path, "cpu")

    later = _cfg(fake_cifar10, *extra, f"dataset.num_workers={resumed_workers}")
    with interrupted_phase_i(monkeypatch, epoch=2):
        phase_i.train(later, "resumed", tmp_path, "cpu")
    ck = tmp_path / "checkpoints" / "phase_i" / NAME
    assert load_checkpoint(ck / "resumed" / "last.pt")["epoch"] == 1
    phase_i.train(later, "resumed", tmp_path, "cpu", resume=True)
    a, b = _weights(ck / "straight" / "last.pt"), _weights(ck / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = json.loads((tmp_path / "log/phase_i" / NAME / "straight/metrics.json").read_text())
    mb = json.loads((tmp_path / "log/phase_i" / NAME / "resumed/metrics.json").read_text())
    assert ma["final"] == mb["final"] and ma["history"] == mb["history"]


def test_drw_weights_the_loss_from_train_drw_epoch_on(fake_cifar10, tmp_path, monkeypatch):
    """train.drw_epoch=2 (0-based) of 3 epochs: the loss Phase I trains epochs 0 and 1 with is plain
    cross-entropy, epoch 2's the class-balanced weighted mean (cb_beta 0.99), by hand on a fixed batch."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(12, 10, generator=g, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 2, 4, 6, 7, 8, 9, 9])
    seen = []

    def spy(model, loader, optimizer, scheduler, loss_fn, *a, **k):  # the loss each epoch gets, and no training
        seen.append(float(loss_fn(z.float(), y)))
        return {"loss": 0.0, "acc": 0.0}

    monkeypatch.setattr(phase_i, "train_epoch", spy)
    phase_i.train(_cfg(fake_cifar10, "train.epochs=3", "train.drw_epoch=2", "train.cb_beta=0.99"), "drw", tmp_path, "cpu")
    n = np.array([int(60 * 0.1 ** (i / 9)) for i in range(10)], dtype=np.float64)  # the IR-10 fake set
    w = (1 - 0.99) / (1 - 0.99 ** n)
    w = torch.as_tensor(w / w.sum() * 10)[y]
    per_sample = -torch.log_softmax(z, 1)[torch.arange(12), y]
    plain, weighted = float(per_sample.mean()), float((w * per_sample).sum() / w.sum())
    assert abs(plain - weighted) > 0.05
    assert seen == pytest.approx([plain, plain, weighted], rel=1e-5)


def test_resume_from_corrupt_checkpoint_is_a_clear_error(fake_cifar10, tmp_path):
    cfg = _cfg(fake_cifar10, "train.epochs=1")
    ck = tmp_path / "checkpoints" / "phase_i" / NAME / "c"
    ck.mkdir(parents=True)
    (ck / "last.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*last.pt"):
        phase_i.train(cfg, "c", tmp_path, "cpu", resume=True)


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "phase_i_train_or_test.py")] + args, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_cli_missing_data_is_one_line(tmp_path):
    r = _cli(["--config", NAME, "--note", "x", "--workdir", str(tmp_path), "--device", "cpu",
              f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false"], tmp_path)
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "cifar-10-batches-py" in err[0] and str(tmp_path / "nowhere") in err[0]
    assert not (tmp_path / "checkpoints").exists()


def test_cli_class_count_mismatch(fake_cifar10, tmp_path):
    r = _cli(["--config", NAME, "--note", "x", "--workdir", str(tmp_path), "--device", "cpu",
              f"dataset.root={fake_cifar10}", "dataset.num_classes=100"], tmp_path)
    assert r.returncode == 3 and "10 classes" in r.stderr and "dataset.num_classes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_seed_script_trains_and_tests(fake_cifar10, tmp_path):
    args = ["--config", NAME, "--note", "cli", "--workdir", str(tmp_path), "--device", "cpu"] + \
        tiny_overrides(fake_cifar10) + ["train.epochs=1"]
    r = _cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli(["--mode", "test", "--checkpoint", "best"] + args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "log/phase_i" / NAME / "cli/test_best_model.json").is_file()


def _real_cifar_root():
    root = os.environ.get("FSA_DATA_ROOT")
    if root and (Path(root) / "cifar-10-batches-py" / "data_batch_1").is_file():
        return root
    return None


@pytest.mark.slow  # about 3 minutes on 2 idle cores: three epochs over 12,406 real images
@pytest.mark.skipif(_real_cifar_root() is None,
                    reason="FSA_DATA_ROOT does not hold real CIFAR-10 (python ../shared/tools/cifar10.py fetch DIR)")
def test_real_cifar10_lt_beats_chance(tmp_path):
    """Three epochs of ResNet-20 on real CIFAR-10-LT (IR 100, 12,406 images), lr annealed to 0
    (cosine) so that the evaluated model is settled: clearly above chance (10 %)."""
    cfg = load_config(NAME, "phase_i", [f"dataset.root={_real_cifar_root()}", "model.name=resnet20",
                                        "train.epochs=3", "train.warmup_epochs=0", "train.schedule=cosine",
                                        "train.eval_every=3"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = phase_i.train(cfg, "real", tmp_path, "cpu")
    finally:
        torch.set_num_threads(threads)
    # a constant prediction scores 10 % on the balanced test set; twice that is clearly learnt
    assert res["final"]["top1"] > 20.0
    assert res["final"]["head"] > 35.0
    assert res["final"]["num_test"] == 10000
