"""Classifier re-balancing baselines (Kang et al. 2020; Menon et al. 2021 post-hoc) and the
held-out choice of tau, against hand-computed values and properties."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fsa_lt.baselines import (
    ClassBalancedSampler,
    LearnableWeightScaling,
    balanced_accuracy,
    choose_tau,
    class_balanced_indices,
    crt_classifier,
    holdout_counts,
    holdout_split,
    posthoc_adjust,
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


# ---- held-out slice --------------------------------------------------------------------------


def test_holdout_counts_by_hand():
    # 10 % of each class, rounded down, at least 1, never the whole class
    assert holdout_counts([100, 25, 9, 2, 1, 0], 0.1).tolist() == [10, 2, 1, 1, 0, 0]
    # 0.57 * 100 is 56.999... in floating point: still 57
    assert holdout_counts([100], 0.57).tolist() == [57]
    assert holdout_counts([10, 3], 0.5).tolist() == [5, 1]
    for bad in (0.0, 1.0, -0.2, float("nan")):
        with pytest.raises(ConfigError, match="fraction"):
            holdout_counts([10], bad)


def test_holdout_split_partition_and_counts():
    labels = torch.tensor([0] * 50 + [1] * 12 + [2] * 3 + [3] * 1 + [0] * 30)  # classes interleaved
    split = holdout_split(labels, fraction=0.1, seed=0, num_classes=5)
    train, held, h = split
    # a partition of 0..N-1, both sorted
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(held, held.sort().values)
    # class sizes 80, 12, 3, 1, 0 -> 8, 1, 1, 0, 0
    assert h.tolist() == [8, 1, 1, 0, 0]
    assert torch.bincount(labels[held], minlength=5).tolist() == [8, 1, 1, 0, 0]
    # the single image of class 3 stays for training
    assert 65 in train.tolist()


def test_holdout_split_is_a_function_of_the_seed_only():
    labels = np.repeat(np.arange(3), [200, 40, 10])
    a = holdout_split(labels, 0.1, seed=5)
    torch.manual_seed(123)
    np.random.seed(7)
    b = holdout_split(torch.as_tensor(labels), 0.1, seed=5)
    assert torch.equal(a.holdout_idx, b.holdout_idx)
    c = holdout_split(labels, 0.1, seed=6)
    assert not torch.equal(a.holdout_idx, c.holdout_idx)
    assert torch.equal(a.holdout_counts, c.holdout_counts)
    # over many seeds every image of a class is sometimes held out (uniform, not the first ones)
    seen = torch.zeros(len(labels), dtype=torch.bool)
    for s in range(60):
        seen[holdout_split(labels, 0.1, seed=s).holdout_idx] = True
    assert seen[200:240].all() and seen[240:].all()


# ---- choosing tau -----------------------------------------------------------------------------


def test_balanced_accuracy_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    # per class: 3/4, 1/1, 1/2 -> mean 0.75; plain accuracy would be 5/7
    assert balanced_accuracy(pred, labels) == pytest.approx(100 * (0.75 + 1 + 0.5) / 3)
    # a class absent from the slice does not count, even if predicted
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


def test_posthoc_tau_chosen_on_a_held_out_slice_beats_no_adjustment():
    """Property, end to end: scores of a model that learnt the long-tailed prior
    (log p(x|y) + log pi_y); the held-out choice of the post-hoc tau is > 0 and raises
    the class-balanced accuracy over tau = 0."""
    rng = np.random.default_rng(0)
    counts = np.array([500, 100, 20])
    means = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    y = np.repeat(np.arange(3), counts)
    x = means[y] + rng.normal(size=(len(y), 2))
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    scores = torch.tensor(log_lik + np.log(counts / counts.sum()))
    split = holdout_split(y, fraction=0.5, seed=0)
    hy, hs = torch.as_tensor(y)[split.holdout_idx], scores[split.holdout_idx]
    choice = choose_tau(lambda t: posthoc_adjust(hs, counts, t), [0.0, 0.5, 1.0, 1.5], hy)
    curve = dict(choice.curve)
    assert choice.tau > 0 and choice.accuracy > curve[0.0] + 5
