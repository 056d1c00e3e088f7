"""Classifier re-balancing baselines (Kang et al. 2020; Menon et al. 2021 post-hoc), their recipe's
sampler and schedule, and the choice of tau on a validation split, against hand-computed values and
properties."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fsa_lt.baselines import (
    ClassAwareSampler,
    ClassBalancedSampler,
    LearnableWeightScaling,
    balanced_accuracy,
    choose_tau,
    class_balanced_indices,
    crt_classifier,
    posthoc_adjust,
    recipe_lr,
    recipe_steps_per_epoch,
    tau_normalize,
    tau_normalized_classifier,
)
from fsa_lt.errors import ConfigError
from fsa_lt.models import CosineClassifier, create_model


# ---- class-balanced sampling ------------------------------------------------------------


def test_class_balanced_sampling_frequencies():
    # classes 0, 1, 2 with 90 / 9 / 1 samples; class 3 has none; class 4 has 20
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1 + [4] * 20)
    n = 40_000
    idx = class_balanced_indices(labels, n, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert idx.min() >= 0 and idx.max() < len(labels)
    drawn = labels[idx]
    # P(class) = 1 / K' with K' = 4 present classes, whatever their size
    freq = torch.bincount(drawn, minlength=5).double() / n
    sd = math.sqrt(0.25 * 0.75 / n)
    assert freq[3] == 0
    for c in (0, 1, 2, 4):
        assert abs(freq[c].item() - 0.25) < 5 * sd, (c, freq)
    # P(sample i) = 1 / (K' n_{y_i}): the 9 samples of class 1 each near 1/36
    per_sample = torch.bincount(idx, minlength=len(labels)).double() / n
    p1 = 1 / (4 * 9)
    sd1 = math.sqrt(p1 * (1 - p1) / n)
    assert torch.all((per_sample[90:99] - p1).abs() < 5 * sd1)
    assert per_sample[99].item() == pytest.approx(0.25, abs=5 * sd)  # the single image of class 2
    # the 90 images of class 0 are all drawn, none far more than the others (uniform within class)
    p0 = 1 / (4 * 90)
    assert torch.all(per_sample[:90] > 0)
    assert (per_sample[:90] - p0).abs().max() < 6 * math.sqrt(p0 / n)


def test_class_balanced_sampling_is_reproducible_and_order_free():
    labels = torch.tensor([2, 0, 0, 1, 0, 2, 0, 0])
    a = class_balanced_indices(labels, 50, torch.Generator().manual_seed(3))
    b = class_balanced_indices(labels, 50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    sampler = ClassBalancedSampler(labels, torch.Generator().manual_seed(3))
    assert torch.equal(sampler.sample(50), a)  # the one-shot function is the sampler's first draw
    assert sampler.sample(0).shape == (0,)
    with pytest.raises(ValueError):
        ClassBalancedSampler(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError):
        ClassBalancedSampler(torch.tensor([0.5, 1.0]))


def test_class_balanced_sampling_stays_on_the_labels_device():
    labels = torch.tensor([0, 0, 1])
    assert class_balanced_indices(labels, 4).device == labels.device
    if torch.cuda.is_available():
        cl = labels.cuda()
        idx = class_balanced_indices(cl, 4, torch.Generator(device="cuda").manual_seed(0))
        assert idx.device == cl.device


# ---- cRT ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_crt_classifier_is_fresh_and_of_the_same_kind(kind):
    torch.manual_seed(0)
    model = create_model("resnet20", 5, classifier=kind, cosine_scale=12.0)
    before = model.fc.weight.detach().clone()
    fc = crt_classifier(model)
    assert type(fc) is type(model.fc) and fc is not model.fc
    assert fc.weight.shape == (5, 64) and not torch.equal(fc.weight, model.fc.weight)
    assert torch.equal(model.fc.weight, before)  # the model is left alone
    if kind == "cosine":
        assert fc.scale == 12.0
    else:
        assert torch.count_nonzero(fc.bias) == 0  # the CIFAR ResNet's own init: zero bias
    # from a bare head as well
    assert isinstance(crt_classifier(nn.Linear(4, 3, bias=False)), nn.Linear)
    assert crt_classifier(nn.Linear(4, 3, bias=False)).bias is None
    assert crt_classifier(CosineClassifier(4, 3, 7.0)).scale == 7.0
    with pytest.raises(ValueError):
        crt_classifier(nn.Conv2d(1, 1, 1))


# ---- tau-normalisation ---------------------------------------------------------------------

W = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])  # row norms 5, 2, 1


def test_tau_normalize_by_hand():
    w = torch.tensor(W, dtype=torch.float32)
    # tau = 1: unit rows
    np.testing.assert_allclose(tau_normalize(w, 1.0).numpy(), [[0.6, 0.8], [0, 1], [1, 0]], rtol=1e-6)
    # tau = 0.5: w_j / sqrt(|w_j|)
    np.testing.assert_allclose(tau_normalize(w, 0.5).numpy(),
                               [[3 / math.sqrt(5), 4 / math.sqrt(5)], [0, 2 / math.sqrt(2)], [1, 0]], rtol=1e-6)
    # tau = 0: unchanged
    assert torch.equal(tau_normalize(w, 0.0), w)
    # a zero row stays zero, no NaN
    z = tau_normalize(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), 1.0)
    assert torch.equal(z[0], torch.zeros(2)) and torch.isfinite(z).all()


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan"), "1", True])
def test_tau_out_of_range_is_a_config_error(tau):
    with pytest.raises(ConfigError, match="tau"):
        tau_normalize(torch.ones(2, 2), tau)


def test_tau_normalized_classifier_drops_the_bias():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.fill_(10.0)
    fc = tau_normalized_classifier(lin, 1.0)
    assert isinstance(fc, nn.Linear) and fc.bias is None
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    # by hand: unit rows (0.6, 0.8), (0, 1), (1, 0), no bias
    expect = np.array([[0.6 + 0.8, 1.0, 1.0], [1.2 - 0.8, -1.0, 2.0]])
    np.testing.assert_allclose(fc(x).detach().numpy(), expect, rtol=1e-6)
    assert torch.equal(lin.bias, torch.full((3,), 10.0))  # the source is untouched


def test_tau_normalisation_leaves_a_cosine_head_as_it_is():
    head = CosineClassifier(2, 3, 30.0)
    x = torch.randn(4, 2)
    torch.testing.assert_close(tau_normalized_classifier(head, 0.7)(x), head(x))
    # and indeed rescaling its rows changes nothing: cos ignores |w_j|
    scaled = CosineClassifier(2, 3, 30.0)
    with torch.no_grad():
        scaled.weight.copy_(tau_normalize(head.weight, 0.3))
    torch.testing.assert_close(scaled(x), head(x))


# ---- LWS ------------------------------------------------------------------------------------


def test_lws_by_hand_and_frozen():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    lws = LearnableWeightScaling(lin)
    x = torch.tensor([[1.0, 2.0]])
    z = np.array([3 + 8 + 1, 4 - 1, 1 + 0.5])  # W x + b by hand: 12, 3, 1.5
    np.testing.assert_allclose(lws(x).detach().numpy()[0], z, rtol=1e-6)  # f = 1 at first
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, 0.5, -1.0]))
    np.testing.assert_allclose(lws(x).detach().numpy()[0], z * [2.0, 0.5, -1.0], rtol=1e-6)
    # the folded linear layer gives the same logits
    torch.testing.assert_close(lws.folded()(x), lws(x))

    # only the scales learn; the wrapped copy is frozen, the caller's layer untouched
    assert lin.weight.requires_grad and not lws.classifier.weight.requires_grad
    lws(x).sum().backward()
    assert lws.classifier.weight.grad is None and lin.weight.grad is None
    np.testing.assert_allclose(lws.scales.grad.numpy(), z, rtol=1e-6)  # d(f_j z_j)/d f_j = z_j
    trainable = [n for n, p in lws.named_parameters() if p.requires_grad]
    assert trainable == ["scales"]


def test_lws_on_a_cosine_head():
    head = CosineClassifier(4, 3, 30.0)
    lws = LearnableWeightScaling(head)
    x = torch.randn(5, 4)
    torch.testing.assert_close(lws(x), head(x))
    with pytest.raises(ValueError, match="only an nn.Linear folds"):
        lws.folded()


# ---- post-hoc logit adjustment ---------------------------------------------------------------


def test_posthoc_adjust_by_hand():
    logits = torch.tensor([[1.0, 0.5, 0.2]])
    counts = [70, 20, 10]  # pi = 0.7, 0.2, 0.1
    out = posthoc_adjust(logits, counts, tau=1.0)
    expect = [1.0 - math.log(0.7), 0.5 - math.log(0.2), 0.2 - math.log(0.1)]  # 1.357, 2.109, 2.503
    np.testing.assert_allclose(out.numpy()[0], expect, rtol=1e-6)
    assert logits.argmax().item() == 0 and out.argmax().item() == 2  # the rare class wins after adjustment
    np.testing.assert_allclose(posthoc_adjust(logits, counts, 0.5).numpy()[0],
                               [1.0 - 0.5 * math.log(0.7), 0.5 - 0.5 * math.log(0.2), 0.2 - 0.5 * math.log(0.1)],
                               rtol=1e-6)
    assert torch.equal(posthoc_adjust(logits, counts, 0.0), logits)
    # the same with counts as a tensor, and logits of another dtype
    out64 = posthoc_adjust(torch.tensor([[1.0, 0.5, 0.2]], dtype=torch.float64), torch.tensor(counts), 1.0)
    assert out64.dtype == torch.float64
    np.testing.assert_allclose(out64.numpy()[0], expect, rtol=1e-12)


def test_posthoc_adjust_bad_input():
    with pytest.raises(ConfigError, match="tau"):
        posthoc_adjust(torch.zeros(1, 2), [1, 2], -1.0)
    with pytest.raises(ValueError, match="count"):
        posthoc_adjust(torch.zeros(1, 2), [0, 2], 1.0)
    with pytest.raises(ValueError, match="B x 3"):
        posthoc_adjust(torch.zeros(1, 2), [1, 2, 3], 1.0)


# ---- the decoupling recipe: class-aware sampling and the schedule ------------------------------


def test_class_aware_sampling_visits_and_cycles():
    """Their sampler: a visit is `m` images of one class in a row; classes come in rounds (each
    class once per round, in a new order); a class's images come in cycles (no repeat before all
    have been drawn)."""
    sizes = [13, 5, 2, 1]
    labels = torch.tensor(np.repeat(np.arange(4), sizes))[torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(3))]
    m = 4
    s = ClassAwareSampler(labels, samples_per_class=m, generator=torch.Generator().manual_seed(0))
    stream = torch.cat([s.sample(7), s.sample(0), s.sample(57), s.sample(32)])  # batches end inside visits
    assert stream.numel() == 96 and stream.dtype == torch.long
    y = labels[stream].view(-1, m)  # 24 visits
    assert (y == y[:, :1]).all()  # one class per visit
    rounds = y[:, 0].view(-1, 4)  # 6 rounds of 4 classes
    assert all(sorted(r.tolist()) == [0, 1, 2, 3] for r in rounds)
    assert len({tuple(r.tolist()) for r in rounds}) > 1  # the class order is redrawn each round
    for c, n in enumerate(sizes):
        drawn = stream[labels[stream] == c].tolist()
        for start in range(0, len(drawn) - n + 1, n):  # each full cycle is a permutation of the class
            assert sorted(drawn[start:start + n]) == sorted(torch.nonzero(labels == c).view(-1).tolist())
    # a batch of B = 4 K m samples holds every class exactly 4 m times: the batch prior is uniform
    s2 = ClassAwareSampler(labels, samples_per_class=m, generator=torch.Generator().manual_seed(1))
    b = s2.sample(4 * 4 * m)
    assert torch.bincount(labels[b], minlength=4).tolist() == [16] * 4
    # reproducible from the generator's seed
    again = ClassAwareSampler(labels, samples_per_class=m, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([again.sample(50), again.sample(46)]), stream)
    with pytest.raises(ValueError, match="samples_per_class"):
        ClassAwareSampler(labels, samples_per_class=0)


def test_recipe_schedule_by_hand():
    # cosine to 0 over E epochs, stepped at the start of each epoch as their loop does
    assert recipe_lr(0.2, 1, 10) == pytest.approx(0.2 * (1 + math.cos(math.pi / 10)) / 2)
    assert recipe_lr(0.2, 5, 10) == pytest.approx(0.1)
    assert recipe_lr(0.2, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert recipe_lr(0.2, 3, 5) == pytest.approx(0.2 * (1 + math.cos(3 * math.pi / 5)) / 2)
    with pytest.raises(ValueError):
        recipe_lr(0.2, 0, 10)
    # an epoch is int(N / batch) steps: CIFAR-10-LT (12,406 images) in batches of 512 -> 24
    assert recipe_steps_per_epoch(12406, 512) == 24
    assert recipe_steps_per_epoch(100, 512) == 1


# ---- choosing tau -----------------------------------------------------------------------------


def test_balanced_accuracy_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    # per class: 3/4, 1/1, 1/2 -> mean 0.75; plain accuracy would be 5/7
    assert balanced_accuracy(pred, labels) == pytest.approx(100 * (0.75 + 1 + 0.5) / 3)
    # a class absent from the split does not count, even if predicted
    assert balanced_accuracy(torch.tensor([3, 1]), torch.tensor([0, 1])) == pytest.approx(50.0)


def test_choose_tau_by_hand_with_ties_to_the_smaller_tau():
    labels = torch.tensor([0, 0, 1, 2])
    preds = {  # tau -> predictions; balanced accuracy by hand
        0.0: [0, 0, 0, 0],  # (1 + 0 + 0) / 3
        0.5: [0, 0, 1, 0],  # (1 + 1 + 0) / 3
        1.0: [0, 1, 1, 2],  # (1/2 + 1 + 1) / 3
        1.5: [0, 0, 1, 2],  # 1
        2.0: [0, 0, 1, 2],  # 1, a tie with 1.5
    }

    def score_fn(tau):
        return torch.nn.functional.one_hot(torch.tensor(preds[tau]), 3).float()

    choice = choose_tau(score_fn, [2.0, 0.5, 1.5, 0.0, 1.0], labels)
    assert choice.tau == 1.5 and choice.accuracy == pytest.approx(100.0)
    assert [t for t, _ in choice.curve] == [0.0, 0.5, 1.0, 1.5, 2.0]
    np.testing.assert_allclose([a for _, a in choice.curve],
                               [100 / 3, 200 / 3, 100 * 2.5 / 3, 100, 100])
    with pytest.raises(ConfigError, match="grid"):
        choose_tau(score_fn, [], labels)
    with pytest.raises(ValueError, match="shape"):
        choose_tau(lambda t: torch.zeros(3, 3), [0.0], labels)


def test_posthoc_tau_chosen_on_validation_beats_no_adjustment():
    """Property, end to end: scores of a model that learnt the long-tailed prior
    (log p(x|y) + log pi_y); on a balanced validation set the choice of the post-hoc tau is > 0
    and raises the class-balanced accuracy over tau = 0."""
    rng = np.random.default_rng(0)
    counts = np.array([500, 100, 20])
    means = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    y = np.repeat(np.arange(3), 200)  # balanced: 200 a class
    x = means[y] + rng.normal(size=(len(y), 2))
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    scores = torch.tensor(log_lik + np.log(counts / counts.sum()))
    choice = choose_tau(lambda t: posthoc_adjust(scores, counts, t), [0.0, 0.5, 1.0, 1.5], torch.as_tensor(y))
    curve = dict(choice.curve)
    assert choice.tau > 0 and choice.accuracy > curve[0.0] + 5
