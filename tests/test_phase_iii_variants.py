"""Phase III variants beside the paper's (not the default): the loss on FSA's batches. The batch
prior against a hand computation and against the sampler's own draws; the loss against its
formula; a run that records what it used."""
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


@pytest.mark.parametrize("tail_sampling", ["instance", "class"])
def test_batch_prior_is_what_the_sampler_draws(tail_sampling):
    """The labels of many FSA batches (real tail, the tail class of every synthetic sample, head)
    have the class frequencies batch_prior says."""
    counts = np.array([300, 120, 40, 12, 5])
    labels = torch.tensor(np.repeat(np.arange(5), counts))
    head, tail = [0, 1], [2, 3, 4]
    conf = torch.tensor([[0, 1], [0, 1], [0, 1]])
    s = FSASampler(labels, head, tail, conf, n_t=16, n_a=2, tail_sampling=tail_sampling,
                   generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(5, dtype=torch.float64)
    for _ in range(400):
        d = s.sample()
        batch = torch.cat([d["tail_labels"], d["tail_labels"].repeat_interleave(2), d["head_labels"]])
        seen += torch.bincount(batch, minlength=5).double()
    np.testing.assert_allclose((seen / seen.sum()).numpy(), batch_prior(counts, head, tail, tail_sampling).numpy(),
                               atol=0.01)


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
