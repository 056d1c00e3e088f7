"""Phase III's view of what a classifier does to the class prior (issue #21's measurements): the
sums and means against hand computations, and a run's history against its own saved files."""
import json
import math

import pytest
import torch
import torch.nn as nn

from conftest import tiny_overrides
from fsa_lt.engine.checkpoint import load_checkpoint
from fsa_lt.engine.metrics import logit_stats, logit_sums, relative_shift
from fsa_lt.phases import pipeline
from fsa_lt.phases.phase_iii import diagnose_head

NAME = "cifar10-LT_resnet32"


def test_logit_sums_and_means_by_hand():
    z = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    head = torch.tensor([True, False, False])
    # row 1 predicts class 0 (head), row 2 class 1 (tail); norms sqrt 5 and sqrt 10;
    # head minus mean tail logit: 2 - 0.5 = 1.5 and 0 - 2 = -2
    s = logit_sums(z, head)
    assert s.tolist() == pytest.approx([1.0, math.sqrt(5) + math.sqrt(10), -0.5])
    st = logit_stats(s, 2)
    assert st == pytest.approx({"pred_head": 50.0, "logit_norm": (math.sqrt(5) + math.sqrt(10)) / 2,
                                "head_tail_gap": -0.25})
    # no tail class: the gap is undefined, not 0
    assert logit_stats(logit_sums(z, torch.ones(3, dtype=torch.bool)), 2)["head_tail_gap"] is None


def test_relative_shift_by_hand():
    ref = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    assert relative_shift({"w": torch.tensor([3.0, 9.0]), "b": torch.tensor([0.0])}, ref) == pytest.approx(1.0)
    # |(0, 0, 12)| / |(3, 4, 0)| = 12 / 5
    assert relative_shift({"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}, ref) == pytest.approx(2.4)
    assert relative_shift({"other": torch.ones(2)}, ref) is None


def test_diagnose_head_sums_over_chunks_like_one_pass():
    torch.manual_seed(0)
    fc = nn.Linear(4, 3)
    x = torch.randn(20000, 4)  # more than one 8192-row chunk
    head = torch.tensor([True, True, False])
    start = {n: p.detach().clone() for n, p in fc.named_parameters()}
    with torch.no_grad():
        fc.weight.add_(0.1)
        z = fc(x)
    d = diagnose_head(fc, x, head, start)
    want_head = 100.0 * float(head[z.argmax(1)].float().mean())
    assert d["pred_head"] == pytest.approx(want_head)
    assert d["logit_norm"] == pytest.approx(float(z.norm(dim=1).mean()), rel=1e-5)
    assert d["head_tail_gap"] == pytest.approx(float((z[:, :2].mean(1) - z[:, 2]).mean()), rel=1e-4, abs=1e-6)
    w0, b0 = start["weight"], start["bias"]
    want_shift = math.sqrt(12 * 0.01) / math.sqrt(float(w0.pow(2).sum() + b0.pow(2).sum()))
    assert d["shift"] == pytest.approx(want_shift, rel=1e-5)
    assert diagnose_head(fc, x, head, None)["shift"] is None


def test_a_run_records_its_prior_view_and_it_matches_its_own_files(fake_cifar10, tmp_path):
    ov = tiny_overrides(fake_cifar10) + ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10",
                                         "finetune.save_every=20", "dataset.validation=false"]
    pipeline.run(NAME, "d", tmp_path, "cpu", ov, print_fn=lambda *a: None)
    log = tmp_path / "log/phase_iii" / NAME / "d"
    m = json.loads((log / "metrics.json").read_text())
    hist = m["history"]
    assert [h["iteration"] for h in hist] == [0, 10, 20]
    assert all({"pred_head", "logit_norm", "head_tail_gap", "shift"} <= set(h) for h in hist)
    assert hist[0]["shift"] is None and all(h["shift"] > 0 for h in hist[1:])
    # the final shift: Phase III's classifier against Phase I's, from the two checkpoints
    p1 = load_checkpoint(tmp_path / "checkpoints/phase_i" / NAME / "d/last.pt")["model"]
    p3 = load_checkpoint(tmp_path / "checkpoints/phase_iii" / NAME / "d/last.pt", expect_phase="phase_iii")["model"]
    keys = [k for k in p1 if k.startswith("fc.")]
    assert keys
    num = sum(float((p3[k].double() - p1[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(p1[k].double().pow(2).sum()) for k in keys)
    assert hist[-1]["shift"] == pytest.approx(math.sqrt(num / den), rel=1e-6)
    # the final share of head predictions: the saved confusion matrix's head columns
    cm = torch.load(log / "confusion_matrix.pt")
    head = json.loads((tmp_path / "log/phase_ii" / NAME / "d/metrics.json").read_text())["index"]["head"]
    assert hist[-1]["pred_head"] == pytest.approx(100.0 * float(cm[:, head].sum()) / float(cm.sum()))
    assert "test predictions in head classes" in (log / "log.txt").read_text()
