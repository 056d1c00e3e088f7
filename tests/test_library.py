"""fsa_lt.library: FSA inside someone else's training code, and the example of docs/LIBRARY.md."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from fsa_lt.errors import ConfigError, DataError
from fsa_lt.library import (
    FeatureStore,
    FSABatches,
    FSAModel,
    OnlineFSA,
    adapt,
    collect,
    finetune_classifier,
    plan,
)

DOC = ROOT / "docs" / "LIBRARY.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.reshape(m.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).reshape(m.shape)


# ------------------------------------------------------------------------------ the documented example
def test_library_md_example_runs_as_written():
    blocks = _python_blocks(DOC.read_text())
    assert len(blocks) == 2, "docs/LIBRARY.md: the complete example and the online variant"
    assert "FSAModel(features=" in blocks[0] and "fsa_lt.models" not in blocks[0]  # a model that is not ours
    ns: dict = {}
    exec(compile(blocks[0], f"{DOC}:example", "exec"), ns)

    # class c keeps int(120 * 0.7**c) training images: 120 84 58 41 28 20 14 9 6 4 = 384
    counts = [120, 84, 58, 41, 28, 20, 14, 9, 6, 4]
    store, pl, model, train = ns["store"], ns["plan"], ns["model"], ns["train"]
    assert store.class_counts.tolist() == counts
    assert store.fmaps.shape == (384, 64, 8, 8) and store.cams.shape == (384, 8, 8)
    # 0.9 x 384 = 345.6: 120+84+58+41+28 = 331 < 345.6 <= 351 (+20): head 0..5, tail 6..9
    assert pl.head.tolist() == [0, 1, 2, 3, 4, 5] and pl.tail.tolist() == [6, 7, 8, 9]
    for c, conf in pl.confusing_of().items():
        assert len(conf) == 3 and c not in conf and len(set(conf)) == 3
        row = store.scores[c].clone()
        row[c] = -1
        assert conf == torch.argsort(row, descending=True, stable=True)[:3].tolist()

    # the backbone is what Phase I left (the stored maps are still what it computes) ...
    xs, ys = train.tensors
    model.eval()
    with torch.no_grad():
        maps = model.forward_features(xs)
    torch.testing.assert_close(store.fmaps, maps, rtol=1e-4, atol=1e-5)
    cams = _minmax(torch.einsum("bchw,bc->bhw", maps, store.weight[ys]))
    torch.testing.assert_close(store.cams, cams, rtol=1e-4, atol=1e-4)
    # ... and the classifier moved
    assert not torch.allclose(model.classifier.weight, store.weight)

    exec(compile(blocks[1], f"{DOC}:online", "exec"), ns)
    assert ns["store"].fmaps is None and ns["store"].cams is None
    assert len(ns["losses"]) == 50 and all(np.isfinite(ns["losses"]))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(xs), maps)  # still frozen


# ------------------------------------------------------------------------------ adapters
def _net(c=6, k=4):
    features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
    return features, nn.Linear(c, k)


def test_fsa_model_and_adapt():
    torch.manual_seed(0)
    features, fc = _net()
    m = FSAModel(features=features, classifier=fc)
    x = torch.randn(5, 3, 4, 4)
    m.eval()
    torch.testing.assert_close(m(x), fc(features(x).mean((2, 3))))
    assert m.get_classifier() is fc and m.forward_features(x).shape == (5, 6, 4, 4)

    from fsa_lt.models import create_model

    own = create_model("resnet20", 5)
    assert adapt(own) is own  # has forward_features / get_classifier: used as it is

    plain = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    with pytest.raises(ConfigError, match="no forward_features; pass features="):
        adapt(plain)
    a = adapt(plain, features=plain[0], classifier=plain[3])
    assert isinstance(a, FSAModel)
    a.eval()
    torch.testing.assert_close(a(x), plain(x))
    with pytest.raises(ConfigError, match="linear with a K x C weight"):
        FSAModel(features=features, classifier=nn.Sequential(nn.Flatten(), fc))

    class HalfReady(nn.Module):  # forward_features, but no get_classifier
        def __init__(self):
            super().__init__()
            self.body, self.head = _net()

        def forward_features(self, x):
            return self.body(x)

    net = HalfReady().train()
    wrapped = adapt(net, classifier=net.head)
    wrapped.eval()
    assert not net.body[1].training  # eval mode reaches the wrapped model's BatchNorm
    mean = net.body[1].running_mean.clone()
    net.train()
    collect(wrapped, [(torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 3]))])
    assert torch.equal(net.body[1].running_mean, mean) and net.body[1].training


# ------------------------------------------------------------------------------ collect
def test_collect_uses_eval_mode_and_matches_direct_computation():
    torch.manual_seed(1)
    features, fc = _net(c=6, k=4)
    model = FSAModel(features, fc)
    model.train()
    bn = features[1]
    bn.running_mean.fill_(0.3)
    before = bn.running_mean.clone()
    x = torch.randn(22, 3, 5, 5)
    y = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 0, 1, 0] * 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    store = collect(model, loader)
    assert model.training, "the caller's mode is restored"
    assert torch.equal(bn.running_mean, before), "collect ran in eval mode (no BatchNorm update)"

    model.eval()
    with torch.no_grad():
        f = features(x)
        probs = torch.softmax(fc(f.mean((2, 3))), 1)
    assert torch.equal(store.labels, y) and store.class_counts.tolist() == [10, 6, 4, 2]
    torch.testing.assert_close(store.fmaps, f)
    torch.testing.assert_close(store.pooled, f.mean((2, 3)))
    torch.testing.assert_close(store.cams, _minmax(torch.einsum("bchw,bc->bhw", f, fc.weight.detach()[y])),
                               rtol=1e-4, atol=1e-5)
    for c in range(4):  # row c: mean softmax of the samples of class c
        torch.testing.assert_close(store.scores[c], probs[y == c].mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(store.weight, fc.weight.detach())

    bad = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y + 2), batch_size=8)
    with pytest.raises(DataError, match="outside the classifier's 4 classes"):
        collect(model, bad)
    with pytest.raises(DataError, match="no batch"):
        collect(model, [])


# ------------------------------------------------------------------------------ plan
def test_plan_head_tail_and_row_wise_confusion():
    counts = [50, 30, 10, 6, 4]  # 0.9 x 100 = 90 = 50 + 30 + 10: head 0, 1, 2; tail 3, 4
    scores = torch.tensor([[0.90, 0.05, 0.02, 0.02, 0.01],
                           [0.10, 0.80, 0.05, 0.03, 0.02],
                           [0.10, 0.10, 0.70, 0.05, 0.05],
                           [0.10, 0.50, 0.20, 0.15, 0.05],   # class 3 is mistaken for 1, then 2
                           [0.30, 0.10, 0.20, 0.25, 0.15]])  # class 4 for 0, then 3
    p = plan(counts, scores, h_r=0.9, n_f=2)
    assert p.head.tolist() == [0, 1, 2] and p.tail.tolist() == [3, 4]
    assert p.confusing_of() == {3: [1, 2], 4: [0, 3]}  # the transpose would give 3: [4, 0]
    with pytest.raises(DataError, match="no tail class"):
        plan([5, 5], torch.eye(2), h_r=1.0, n_f=1)


# ------------------------------------------------------------------------------ batches
def _coded_store():
    """2 x 2 maps, C = 2: location 0 holds (1 + y, 0), location 3 holds (0, 10 + y), the other
    two (7, 7).  CAMs (0-1 normalised) mark location 0 class-specific and location 3
    class-generic, so a synthetic feature of tail class c from a donor of class u is
    ((k (1 + c), (4 - k) (10 + u)) / 4 for some k in 0..4, and never touches a 7."""
    labels = torch.tensor([0] * 12 + [1] * 8 + [2] * 3 + [3] * 2)
    n = len(labels)
    f = torch.full((n, 2, 2, 2), 7.0)
    f[:, 0, 0, 0], f[:, 1, 0, 0] = 1.0 + labels, 0.0
    f[:, 0, 1, 1], f[:, 1, 1, 1] = 0.0, 10.0 + labels
    cams = torch.tensor([[1.0, 0.5], [0.5, 0.0]]).expand(n, 2, 2).clone()
    scores = torch.tensor([[0.7, 0.1, 0.1, 0.1],
                           [0.1, 0.7, 0.1, 0.1],
                           [0.5, 0.3, 0.1, 0.1],   # class 2 -> 0, 1
                           [0.1, 0.2, 0.6, 0.1]])  # class 3 -> 2, 1
    counts = np.bincount(labels.numpy(), minlength=4)
    w = torch.tensor([[1.0, -1.0]] * 4)  # CAM = F_0 - F_1: high at location 0, low at 3
    return FeatureStore(labels=labels, fmaps=f, cams=cams, pooled=f.mean((2, 3)), scores=scores,
                        class_counts=counts, weight=w)


def _check_synthetic(feats, labels, tail_labels, conf, n_a):
    for i, c in enumerate(tail_labels.tolist()):
        for j in range(n_a):
            row = feats[i * n_a + j]
            assert labels[i * n_a + j] == c
            u = conf[c][j]
            k = 4 * float(row[0]) / (1 + c)  # tail locations drawn
            rest = 4 * float(row[1]) / (10 + u)  # donor locations drawn (donor of class u)
            assert abs(k - round(k)) < 1e-4 and abs(k + rest - 4) < 1e-4, (row, c, u)


def test_fsa_batches_composition_and_fusion():
    store = _coded_store()
    p = store.plan(h_r=0.8, n_f=2)  # 25 samples: 12 + 8 = 20 = 0.8 x 25 -> head 0, 1; tail 2, 3
    assert p.head.tolist() == [0, 1] and p.confusing_of() == {2: [0, 1], 3: [2, 1]}
    n_t, n_a = 5, 2
    batches = FSABatches(store, p, n_t=n_t, n_a=n_a, seed=3)
    assert batches.batch_size == 2 * n_t * (1 + n_a) == 30
    for _ in range(5):
        feats, labels = batches.next_batch()
        assert feats.shape == (30, 2) and labels.shape == (30,)
        tail, mid, head = labels[:n_t], labels[n_t:n_t + n_t * n_a], labels[n_t + n_t * n_a:]
        assert set(tail.tolist()) <= {2, 3} and set(head.tolist()) <= {0, 1}
        assert torch.equal(mid, tail.repeat_interleave(n_a))
        for r, c in zip(feats[:n_t], tail.tolist()):  # real tail rows are pooled store rows of their class
            assert any(torch.allclose(r, q) for q in store.pooled[store.labels == c])
        _check_synthetic(feats[n_t:n_t + n_t * n_a], mid, tail, p.confusing_of(), n_a)

    control = FSABatches(store, p, n_t=n_t, n_a=n_a, augment=False, seed=3)
    feats, labels = control.next_batch()
    for r, c in zip(feats[n_t:n_t + n_t * n_a], labels[n_t:n_t + n_t * n_a].tolist()):
        assert c in (2, 3) and any(torch.allclose(r, q) for q in store.pooled[store.labels == c])

    with pytest.raises(ConfigError, match="n_a must be in"):
        FSABatches(store, p, n_t=2, n_a=3)
    no_maps = FeatureStore(store.labels, None, None, store.pooled, store.scores, store.class_counts, store.weight)
    with pytest.raises(ConfigError, match="keep_maps=True"):
        FSABatches(no_maps, p)


def test_online_fsa_draw_order_and_fusion_from_user_maps():
    store = _coded_store()
    p = store.plan(h_r=0.8, n_f=2)
    n_t, n_a = 4, 2
    online = OnlineFSA(store.labels, p, n_t=n_t, n_a=n_a, seed=0)
    conf = p.confusing_of()
    for _ in range(5):
        d = online.draw()
        assert d.indices.shape == (2 * n_t * (1 + n_a),)
        lab = store.labels[d.indices]
        assert torch.equal(lab, d.labels)
        tail, donors, head = lab[:n_t], lab[n_t:n_t + n_t * n_a], lab[n_t + n_t * n_a:]
        assert set(tail.tolist()) <= {2, 3} and set(head.tolist()) <= {0, 1}
        # donor j of tail sample i is a sample of the j-th confusing class of its class
        assert donors.tolist() == [conf[c][j] for c in tail.tolist() for j in range(n_a)]
        # the user's maps of those images (here: the coded maps), CAMs from the given weight
        feats, labels = online.batch(d, store.fmaps[d.indices], store.weight)
        assert torch.equal(labels[:n_t], tail) and torch.equal(labels[n_t + n_t * n_a:], head)
        torch.testing.assert_close(feats[:n_t], store.pooled[d.indices[:n_t]])
        _check_synthetic(feats[n_t:n_t + n_t * n_a], labels[n_t:n_t + n_t * n_a], tail, conf, n_a)
    with pytest.raises(ConfigError, match="expected 24 maps"):
        online.batch(online.draw(), store.fmaps[:3], store.weight)


# ------------------------------------------------------------------------------ fine-tuning
def test_finetune_classifier_lowers_the_loss():
    store = _coded_store()
    p = store.plan(h_r=0.8, n_f=2)
    fc = nn.Linear(2, 4)
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
    losses = finetune_classifier(fc, FSABatches(store, p, n_t=4, n_a=2, seed=0), iterations=60, lr=0.01)
    assert len(losses) == 60 and losses[0] == pytest.approx(np.log(4), rel=1e-5)  # zero weights: uniform
    assert np.mean(losses[-10:]) < losses[0]
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        finetune_classifier(fc, [], iterations=0)


# ------------------------------------------------------------------------------ dependencies
def test_library_imports_only_the_method():
    code = ("import sys, fsa_lt.library\n"
            "print(sorted(m for m in sys.modules if m.startswith('fsa_lt')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    loaded = eval(out.strip())
    allowed = {"fsa_lt", "fsa_lt.errors", "fsa_lt.library"}
    assert [m for m in loaded if m not in allowed and not m.startswith("fsa_lt.method")] == []
    assert "fsa_lt.method" in loaded
