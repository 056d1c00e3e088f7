"""Phase III variants beside the paper's (not the default): the loss on FSA's batches and how the
batch's other half is drawn. The batch prior against a hand computation and against the sampler's
own draws; the draws against their frequencies; the loss against its formula; a run that records
what it used."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from fsa_lt.config import load_config
from fsa_lt.errors import ConfigError
from fsa_lt.method import FSASampler, batch_prior
from fsa_lt.phases import pipeline, rebalance

NAME = "cifar10-LT_resnet32"


def test_batch_prior_by_hand():
    counts = [60, 30, 10, 8, 2]
    head, tail = [0, 1], [2, 3, 4]
    q = batch_prior(counts, head, tail, "instance")
    # head half over 90 head images, tail half over 20 tail images
    np.testing.assert_allclose(q.numpy(), [0.5 * 60 / 90, 0.5 * 30 / 90, 0.5 * 10 / 20, 0.5 * 8 / 20, 0.5 * 2 / 20])
    q = batch_prior(counts, head, tail, "class")
    np.testing.assert_allclose(q.numpy(), [1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6])
    assert float(q.sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        batch_prior(counts, head, tail, "sqrt")


def test_batch_prior_with_the_other_half_from_every_class_by_hand():
    counts = [64, 36, 16, 9, 0]  # square roots 8, 6, 4, 3, 0 (sum 21); 125 images
    head, tail = [0, 1], [2, 3, 4]
    tail_half = np.array([0, 0, 16 / 25, 9 / 25, 0]) * 0.5  # instance over the 25 tail images
    q = batch_prior(counts, head, tail, "instance", "instance")
    np.testing.assert_allclose(q.numpy(), tail_half + 0.5 * np.array([64, 36, 16, 9, 0]) / 125)
    q = batch_prior(counts, head, tail, "instance", "sqrt")
    np.testing.assert_allclose(q.numpy(), tail_half + 0.5 * np.array([8, 6, 4, 3, 0]) / 21)
    # class-drawn tail: the empty class 4 gets nothing; the two present tail classes 1/4 each
    q = batch_prior(counts, head, tail, "class", "sqrt")
    np.testing.assert_allclose(q.numpy(), [8 / 42, 6 / 42, 0.25 + 4 / 42, 0.25 + 3 / 42, 0])
    assert float(q.sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="rest_sampling"):
        batch_prior(counts, head, tail, "instance", "balanced")


@pytest.mark.parametrize("tail_sampling,rest_sampling", [("instance", "head"), ("class", "head"),
                                                         ("instance", "instance"), ("class", "sqrt")])
def test_batch_prior_is_what_the_sampler_draws(tail_sampling, rest_sampling):
    """The labels of many FSA batches (real tail, the tail class of every synthetic sample, head)
    have the class frequencies batch_prior says."""
    counts = np.array([300, 120, 40, 12, 5])
    labels = torch.tensor(np.repeat(np.arange(5), counts))
    head, tail = [0, 1], [2, 3, 4]
    conf = torch.tensor([[0, 1], [0, 1], [0, 1]])
    s = FSASampler(labels, head, tail, conf, n_t=16, n_a=2, tail_sampling=tail_sampling,
                   generator=torch.Generator().manual_seed(0), rest_sampling=rest_sampling)
    seen = torch.zeros(5, dtype=torch.float64)
    for _ in range(400):
        d = s.sample()
        batch = torch.cat([d["tail_labels"], d["tail_labels"].repeat_interleave(2), d["head_labels"]])
        seen += torch.bincount(batch, minlength=5).double()
    np.testing.assert_allclose((seen / seen.sum()).numpy(),
                               batch_prior(counts, head, tail, tail_sampling, rest_sampling).numpy(), atol=0.01)


def test_rest_sampling_draws_by_hand_frequencies():
    """The other half alone, 96,000 draws: 'instance' gives each class its share of the images, and
    each image of a class equally often; 'sqrt' gives class j sqrt(n_j) / sum sqrt(n_k)."""
    counts = np.array([400, 100, 25, 16, 0, 9])  # square roots 20, 10, 5, 4, 0, 3 (sum 42)
    labels = torch.tensor(np.repeat(np.arange(6), counts))
    head, tail, conf = [0, 1], [2, 3, 5], torch.tensor([[0], [0], [1]])
    for rule, want in (("instance", counts / counts.sum()), ("sqrt", np.sqrt(counts) / 42)):
        s = FSASampler(labels, head, tail, conf, n_t=8, n_a=1, rest_sampling=rule,
                       generator=torch.Generator().manual_seed(5))
        idx = s.draw_rest(96_000)
        freq = torch.bincount(labels[idx], minlength=6).double().numpy() / idx.numel()
        np.testing.assert_allclose(freq, want, atol=0.005)
        within = torch.bincount(idx[labels[idx] == 0], minlength=400).double()  # class 0 is images 0..399
        assert float(within.min()) > 0.5 * float(within.mean())
    with pytest.raises(ConfigError, match="rest_sampling"):
        FSASampler(labels, head, tail, conf, n_a=1, rest_sampling="balanced")


def test_rest_sampling_head_is_the_papers_batches_bit_for_bit():
    """The default keeps the paper's batch: the same draws as before the option existed (head
    samples only, the generator consumed identically)."""
    counts = np.array([300, 120, 40, 12, 5])
    labels = torch.tensor(np.repeat(np.arange(5), counts))
    head, tail, conf = [0, 1], [2, 3, 4], torch.tensor([[0, 1], [0, 1], [0, 1]])
    a = FSASampler(labels, head, tail, conf, n_t=4, n_a=2, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    b = FSASampler(labels, head, tail, conf, n_t=4, n_a=2, generator=gen, rest_sampling="head")
    for _ in range(5):
        da, db = a.sample(), b.sample()
        assert all(torch.equal(da[k], db[k]) for k in da)
        assert set(da["head_labels"].tolist()) <= {0, 1}
    # and written out by hand: tail (uniform over 57 tail images), donors per class, head (over 420)
    g = torch.Generator().manual_seed(9)
    tail_idx = 420 + torch.randint(0, 57, (4,), generator=g)
    torch.rand((4, 2), generator=g)  # the donors' draw
    head_idx = torch.randint(0, 420, (12,), generator=g)
    c = FSASampler(labels, head, tail, conf, n_t=4, n_a=2, generator=torch.Generator().manual_seed(9)).sample()
    assert torch.equal(c["tail_idx"], tail_idx) and torch.equal(c["head_idx"], head_idx)


def test_la_loss_on_the_batch_prior_by_hand():
    cfg = load_config(NAME, "phase_iii", ["finetune.loss=la", "finetune.loss_tau=0.5"])
    counts, head, tail = [60, 30, 10, 8, 2], [0, 1], [2, 3, 4]
    loss, info = rebalance.fsa_loss(cfg, counts, head, tail, torch.device("cpu"))
    q = batch_prior(counts, head, tail, "instance")
    z, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 3, 4, 4, 2])
    want = F.cross_entropy(z + 0.5 * torch.log(q).float(), y)
    torch.testing.assert_close(loss(z, y), want)
    assert info["prior"] == "batch" and info["q"] == pytest.approx(q.tolist())
    cfg = load_config(NAME, "phase_iii", ["finetune.loss=la", "finetune.loss_prior=train"])
    loss, _ = rebalance.fsa_loss(cfg, counts, head, tail, torch.device("cpu"))
    pi = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z + torch.log(pi).float(), y))


def test_ldam_loss_in_phase_iii_by_hand():
    cfg = load_config(NAME, "phase_iii", ["model.classifier=cosine", "finetune.loss=ldam"])
    counts = [81, 16, 1]
    loss, info = rebalance.fsa_loss(cfg, counts, [0], [1, 2], torch.device("cpu"))
    # margins C / n^(1/4) with the largest 0.5: 0.5/3, 0.5/2, 0.5; the head's logits are s * cos, s = 30
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    margin = torch.tensor([0.5 / 3, 0.25, 0.5]) * 30
    want = F.cross_entropy(z - F.one_hot(y, 3) * margin[y][:, None], y)
    torch.testing.assert_close(loss(z, y), want)
    assert info["loss"] == "ldam"


@pytest.mark.parametrize("bad,msg", [
    (["finetune.loss=la", "finetune.method=crt"], "applies to FSA and its control"),
    (["finetune.loss=ldam"], "'ldam' needs model.classifier=cosine"),
    (["finetune.loss_tau=-1"], "'finetune.loss_tau' must be >= 0"),
    (["finetune.gamma_range=[0.8,0.2]"], "'finetune.gamma_range' must be \\[lo, hi\\] with 0 <= lo <= hi <= 1"),
    (["finetune.rest_sampling=balanced"], "'finetune.rest_sampling': 'balanced' is not one of 'head', 'instance'"),
])
def test_bad_loss_settings(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(NAME, "phase_iii", bad)


def test_a_loss_variant_runs_and_records_its_prior(fake_cifar10, tmp_path):
    ov = tiny_overrides(fake_cifar10) + ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10",
                                         "finetune.save_every=20", "dataset.val_per_class=10"]
    pipeline.run(NAME, "v", tmp_path, "cpu", ov, control=True, print_fn=lambda *a: None)
    var = ov + ["phase_iii.finetune.variant=la", "phase_iii.finetune.loss=la"]
    pipeline.run(NAME, "v", tmp_path, "cpu", var, control=True, print_fn=lambda *a: None)
    for note in ("v-la", "v-la-noaug"):
        m = json.loads((tmp_path / "log/phase_iii" / NAME / note / "metrics.json").read_text())
        assert m["loss"]["loss"] == "la" and m["loss"]["prior"] == "batch"
        index = json.loads((tmp_path / "log/phase_ii" / NAME / "v/metrics.json").read_text())["index"]
        want = batch_prior(index["class_counts"], index["head"], index["tail"])
        assert m["loss"]["q"] == pytest.approx(want.tolist())
        assert "posthoc_la" in m  # the validation split is on in the CIFAR configs
    plain = json.loads((tmp_path / "log/phase_iii" / NAME / "v/metrics.json").read_text())
    assert plain["loss"] == {"loss": "ce"}
    # the other half from every image: the loss's prior follows the batch design, and so do the draws
    inst = ov + ["phase_iii.finetune.variant=inst", "phase_iii.finetune.loss=la",
                 "phase_iii.finetune.rest_sampling=instance"]
    pipeline.run(NAME, "v", tmp_path, "cpu", inst, control=False, print_fn=lambda *a: None)
    m = json.loads((tmp_path / "log/phase_iii" / NAME / "v-inst/metrics.json").read_text())
    want = batch_prior(index["class_counts"], index["head"], index["tail"], "instance", "instance")
    assert m["loss"]["q"] == pytest.approx(want.tolist())
    assert m["loss"]["q"] != pytest.approx(batch_prior(index["class_counts"], index["head"], index["tail"]).tolist())
    rec = json.loads((tmp_path / "log/phase_iii" / NAME / "v-inst/record.json").read_text())
    assert rec["config"]["finetune"]["rest_sampling"] == "instance"


def test_validation_select_keeps_the_best_classifier_by_hand():
    """Three classifiers offered in turn; balanced accuracy on a 2-class validation split by hand:
    the one with the best (ties: the earlier) is restored."""
    head = torch.nn.Linear(2, 2, bias=False)
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]])  # class 0 three times, class 1 once
    labels = torch.tensor([0, 0, 0, 1])
    sel = rebalance.ValidationSelect(head, feats, labels)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))   # everything class 0: (1 + 0) / 2
        assert sel.offer(0) == pytest.approx(50.0)
        # ties go to class 0: class 0 one of 3 right, class 1 right: (1/3 + 1) / 2
        head.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
        assert sel.offer(10) == pytest.approx(200 / 3)
        # 0.1 * 5 < 1, and 0.2 * 5 = 1 ties to class 0: all right
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
        assert sel.offer(20) == pytest.approx(100.0)
        good = head.weight.clone()
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))   # class 1's point scores 0.5 > 0: all right, a tie
        assert sel.offer(30) == pytest.approx(100.0)
    out = sel.restore()
    assert torch.equal(head.weight, good)
    assert out["iteration"] == 20 == sel.chosen and out["validation_accuracy"] == pytest.approx(100.0)
    assert [it for it, _ in out["curve"]] == [0, 10, 20, 30]


@pytest.mark.parametrize("bad,msg", [
    (["finetune.select=validation", "dataset.validation=false"], "'validation' needs a validation split"),
    (["finetune.select=validation", "finetune.method=crt"], "applies to FSA and its control"),
])
def test_bad_select_settings(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(NAME, "phase_iii", bad)


def test_a_run_with_the_iteration_chosen_on_validation(fake_cifar10, tmp_path):
    """The run ends with the classifier of the chosen iteration: its test metrics are the history's at that
    iteration, and the saved final model holds the classifier saved at that iteration during training."""
    ov = tiny_overrides(fake_cifar10) + ["train.epochs=1", "finetune.iterations=30", "finetune.eval_every=10",
                                         "finetune.save_every=10", "dataset.val_per_class=10",
                                         "phase_iii.finetune.select=validation", "phase_iii.finetune.variant=sel",
                                         "phase_iii.finetune.lr=0.5"]
    pipeline.run(NAME, "s", tmp_path, "cpu", ov, control=False, print_fn=lambda *a: None)
    m = json.loads((tmp_path / "log/phase_iii" / NAME / "s-sel/metrics.json").read_text())
    sel = m["selection"]
    assert [it for it, _ in sel["curve"]] == [0, 10, 20, 30]
    best = max(a for _, a in sel["curve"])
    first = next(it for it, a in sel["curve"] if a == best)
    assert sel["iteration"] == first and sel["validation_accuracy"] == best
    assert m["final"]["iteration"] == first
    at = next(h for h in m["history"] if h["iteration"] == first)
    assert at["top1"] == pytest.approx(m["final"]["top1"])
    assert [h["iteration"] for h in m["history"]] == [0, 10, 20, 30]  # the last one too, chosen or not
    ck = tmp_path / "checkpoints/phase_iii" / NAME / "s-sel"
    last = torch.load(ck / "last.pt", map_location="cpu", weights_only=False)
    assert last["iteration"] == first
    fc = [k for k in last["model"] if k.endswith("weight")][-1]  # the classifier's weight
    for it in (10, 20, 30):
        then = torch.load(ck / f"model_iter_{it:06d}.pt", map_location="cpu", weights_only=False)["model"][fc]
        assert torch.equal(last["model"][fc], then) == (it == first), it
