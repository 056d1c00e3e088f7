"""Metrics, losses, schedules and checkpoints against hand-computed values."""
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fsa_lt.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fsa_lt.engine.io import write_json
from fsa_lt.engine.losses import FocalLoss, class_balanced_weights
from fsa_lt.engine.metrics import confusion_matrix, summarize
from fsa_lt.engine.schedule import lr_factor
from fsa_lt.errors import CheckpointError


def test_confusion_matrix_and_summary_by_hand():
    # 4 classes; training counts: 500 (many), 100 (medium), 20 (medium), 5 (few)
    counts = [500, 100, 20, 5]
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    p = torch.tensor([0, 0, 1, 0, 2, 0, 0, 0])
    cm = confusion_matrix(p, y, 4)
    assert cm.tolist() == [[2, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [2, 0, 0, 0]]
    m = summarize(cm, counts, h_r=0.9)
    assert m["top1"] == pytest.approx(100 * 4 / 8)
    assert m["per_class"] == pytest.approx([100, 50, 50, 0])
    assert m["many"] == pytest.approx(100) and m["medium"] == pytest.approx(50) and m["few"] == pytest.approx(0)
    # head: 500/625 = 0.8 < 0.9, 600/625 = 0.96 >= 0.9 -> classes {0, 1}; tail {2, 3}
    assert m["head"] == pytest.approx(75) and m["tail"] == pytest.approx(25)


def test_empty_group_is_null():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT IR 100: no few-shot class
    cm = torch.eye(10, dtype=torch.long) * 10
    m = summarize(cm, counts)
    assert m["few"] is None and m["medium"] == pytest.approx(100) and m["top1"] == pytest.approx(100)


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    gamma = 2.0
    expect = (-(1 - p) ** gamma * torch.log(p)).mean()
    assert FocalLoss(gamma)(logits, y).item() == pytest.approx(expect.item(), rel=1e-6)
    # gamma 0 is cross-entropy
    assert FocalLoss(0.0)(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_class_balanced_weights_by_hand():
    beta, n = 0.99, np.array([100, 10])
    raw = (1 - beta) / (1 - beta ** n)  # effective numbers 63.4, 9.56
    expect = raw / raw.sum() * 2
    assert class_balanced_weights(n, beta).numpy() == pytest.approx(expect, rel=1e-6)
    assert class_balanced_weights(n, beta)[1] > class_balanced_weights(n, beta)[0]


def test_ldam_drw_schedule():
    cfg = SimpleNamespace(schedule="multistep", warmup_epochs=5, milestones=[160, 180], lr_factors=[0.01, 0.0001],
                          epochs=200, step_size=150, step_gamma=0.1)
    ipe = 97  # 12,406 / 128 rounded up
    assert lr_factor(0, ipe, cfg) == pytest.approx(1 / (5 * ipe))
    assert lr_factor(5 * ipe - 1, ipe, cfg) == pytest.approx(1.0)
    assert lr_factor(100 * ipe, ipe, cfg) == 1.0
    assert lr_factor(160 * ipe - 1, ipe, cfg) == 1.0
    assert lr_factor(160 * ipe, ipe, cfg) == 0.01
    assert lr_factor(180 * ipe, ipe, cfg) == 0.0001
    step = SimpleNamespace(**(cfg.__dict__ | {"schedule": "step", "warmup_epochs": 0, "epochs": 300}))
    assert [lr_factor(e * 10, 10, step) for e in (0, 149, 150, 299)] == pytest.approx([1, 1, 0.1, 0.1])
    cos = SimpleNamespace(**(cfg.__dict__ | {"schedule": "cosine", "warmup_epochs": 0, "epochs": 10}))
    assert lr_factor(50, 10, cos) == pytest.approx(0.5)
    assert lr_factor(0, 10, cos) == pytest.approx(1.0)


def test_checkpoint_round_trip_and_errors(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"phase": "phase_i", "model": {"w": torch.ones(2)}, "epoch": 3, "rng": rng_state()})
    s = load_checkpoint(p, expect_phase="phase_i")
    assert s["epoch"] == 3 and torch.equal(s["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    with pytest.raises(CheckpointError, match="phase_iii"):
        load_checkpoint(p, expect_phase="phase_iii")
    trunc = tmp_path / "t.pt"
    trunc.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*t.pt"):
        load_checkpoint(trunc)
    foreign = tmp_path / "f.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not an fsa-lt checkpoint"):
        load_checkpoint(foreign)
    evil = tmp_path / "e.pt"
    evil.write_bytes(pickle.dumps(SimpleNamespace(a=1)))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_restores_all_generators():
    import random

    st = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        write_json(p, {"a": object()})
    assert p.read_text().strip().startswith("{") and '"a": 1' in p.read_text()
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_cpu_evaluation_in_chunks_gives_the_one_batch_numbers(monkeypatch):
    """`evaluate` and `feature_maps` forward CPU batches CPU_EVAL_CHUNK samples at a time (a speed
    choice, benchmarks/eval_chunk.py): each sample's output is its own, so the confusion matrix and
    the maps equal one forward of the whole batch (eval-mode BatchNorm uses its running statistics)."""
    from fsa_lt.engine import trainer
    from fsa_lt.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4).eval()
    for m in model.modules():  # running statistics away from the defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(70, 3, 32, 32)
    y = torch.randint(0, 4, (70,))
    loader = [(x[:50], y[:50]), (x[50:], y[50:])]
    calls = []
    with torch.no_grad():
        whole = model.forward_features(x.contiguous(memory_format=torch.channels_last))
        pred = model.forward_head(whole).argmax(1)
    monkeypatch.setattr(trainer, "CPU_EVAL_CHUNK", 16)
    model.forward_features = (lambda f: (lambda z: (calls.append(z.shape[0]), f(z))[1]))(model.forward_features)
    maps = torch.cat([m for m, _ in trainer.feature_maps(model, loader, torch.device("cpu"))])
    assert calls == [16, 16, 16, 2, 16, 4]  # chunks of at most 16 within each loader batch
    assert torch.allclose(maps, whole, rtol=0, atol=1e-6)
    cm = trainer.evaluate(model, loader, 4, torch.device("cpu"))
    assert torch.equal(cm, confusion_matrix(pred, y, 4))
