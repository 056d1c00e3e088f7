"""Phase I baseline losses (LDAM, DRW, logit-adjusted, balanced softmax) against the papers'
formulas, written out with NumPy on tiny examples; the config keys that drive them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsa_lt.config import load_config
from fsa_lt.engine.losses import (
    AdjustedCrossEntropy,
    BalancedSoftmaxLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    build_loss,
    class_balanced_weights,
    ldam_margins,
    loss_from_config,
)
from fsa_lt.errors import ConfigError

# Fourth roots 4, 3, 2: LDAM's margins come out as simple fractions.
COUNTS = np.array([256, 81, 16])


def np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy -log softmax(z)_y, in float64."""
    z = z - z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


def np_cb_weights(counts, beta):
    """Cui et al.: w_j = (1 - beta) / (1 - beta^n_j), scaled so that sum_j w_j = K."""
    w = (1 - beta) / (1 - beta ** np.asarray(counts, dtype=np.float64))
    return w / w.sum() * len(counts)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, size=(6, 3))  # cosine logits, as a cosine head gives before its scale
    # a long-tailed batch: with a balanced one the DRW weights would sum to the batch size
    y = np.array([0, 0, 0, 0, 1, 2])
    return cos, y


def t(a, dtype=torch.float32):
    return torch.as_tensor(a, dtype=dtype)


# ---- LDAM -----------------------------------------------------------------------------


def test_ldam_margins_by_hand():
    # Delta_j = C / n_j^(1/4) = C / (4, 3, 2); the largest (C / 2) is 0.5, so C = 1
    np.testing.assert_allclose(ldam_margins(COUNTS, 0.5).numpy(), [1 / 4, 1 / 3, 1 / 2], rtol=1e-6)
    # max margin 0.3: C = 0.6
    np.testing.assert_allclose(ldam_margins(COUNTS, 0.3).numpy(), [0.6 / 4, 0.6 / 3, 0.6 / 2], rtol=1e-6)


def test_ldam_loss_is_the_papers_formula(batch):
    cos, y = batch
    s = 30.0
    delta = np.array([1 / 4, 1 / 3, 1 / 2])
    z_prime = cos.copy()
    z_prime[np.arange(len(y)), y] -= delta[y]  # z'_y = z_y - Delta_y, the others unchanged
    expect = np_ce(s * z_prime, y).mean()  # CE(s * z'), averaged over the batch
    # the head hands the loss s * cos; the loss takes s * Delta_y off the true logit
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=s)(t(s * cos), t(y, torch.long))
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    # and the margin matters: plain CE of the same logits is smaller
    assert np_ce(s * cos, y).mean() < expect


def test_ldam_with_another_scale(batch):
    cos, y = batch
    s = 10.0
    delta = 0.2 * np.array([2 / 4, 2 / 3, 2 / 2])  # max margin 0.2: C = 0.4
    z_prime = cos.copy()
    z_prime[np.arange(len(y)), y] -= delta[y]
    expect = np_ce(s * z_prime, y).mean()
    loss = build_loss("ldam", COUNTS, ldam_max_margin=0.2, ldam_scale=s)(t(s * cos), t(y, torch.long))
    assert loss.item() == pytest.approx(expect, rel=1e-5)


def test_ldam_through_a_cosine_head():
    """End to end with the head: features and class vectors -> cosines by hand -> the paper's loss."""
    from fsa_lt.models.heads import CosineClassifier

    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4))
    w = rng.normal(size=(3, 4))
    y = np.array([0, 1, 2, 0, 2])
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    delta = np.array([1 / 4, 1 / 3, 1 / 2])
    z_prime = cos.copy()
    z_prime[np.arange(5), y] -= delta[y]
    expect = np_ce(30.0 * z_prime, y).mean()

    head = CosineClassifier(4, 3, scale=30.0)
    with torch.no_grad():
        head.weight.copy_(t(w))
    loss = build_loss("ldam", COUNTS, ldam_scale=head.scale)(head(t(x)), t(y, torch.long))
    assert loss.item() == pytest.approx(expect, rel=1e-5)


# ---- DRW ------------------------------------------------------------------------------


def _weighted_mean(per_sample, w):
    return (w * per_sample).sum() / w.sum()


@pytest.mark.parametrize("name", ["ce", "ldam", "la", "balanced_softmax"])
def test_drw_switches_on_at_drw_epoch_with_the_weighted_mean(batch, name):
    cos, y = batch
    logits = 30.0 * cos
    beta = 0.99
    loss_fn = build_loss(name, COUNTS, cb_beta=beta, drw_epoch=3)
    plain = build_loss(name, COUNTS)  # the same loss without DRW
    z, yt = t(logits), t(y, torch.long)

    # the adjusted logits of each loss, by hand
    n = COUNTS.astype(np.float64)
    adj = logits.copy()
    if name == "ldam":
        adj[np.arange(len(y)), y] -= 30.0 * np.array([1 / 4, 1 / 3, 1 / 2])[y]
    elif name == "la":
        adj = adj + np.log(n / n.sum())
    elif name == "balanced_softmax":
        adj = adj + np.log(n)
    per_sample = np_ce(adj, y)
    w = np_cb_weights(COUNTS, beta)[y]

    for epoch in (0, 2):  # before drw_epoch: unweighted, the plain loss
        loss_fn.set_epoch(epoch)
        assert loss_fn(z, yt).item() == pytest.approx(per_sample.mean(), rel=1e-5)
        assert torch.equal(loss_fn(z, yt), plain(z, yt))
    for epoch in (3, 4, 199):  # from drw_epoch on: sum_i w_yi l_i / sum_i w_yi
        loss_fn.set_epoch(epoch)
        assert loss_fn(z, yt).item() == pytest.approx(_weighted_mean(per_sample, w), rel=1e-5)
    # the normaliser is the batch's weight sum, not the batch size (LDAM-DRW's F.cross_entropy)
    assert abs(_weighted_mean(per_sample, w) - (w * per_sample).mean()) > 1e-3
    loss_fn.set_epoch(1)  # and back (a resumed run sets the epoch it restarts at)
    assert loss_fn(z, yt).item() == pytest.approx(per_sample.mean(), rel=1e-5)


def test_drw_follows_ldam_drw_rule_epoch_div_160():
    # LDAM-DRW: betas[epoch // 160] with betas = [0, 0.9999], epochs 0..199, 0-based
    loss_fn = build_loss("ldam", COUNTS, drw_epoch=160)
    for epoch in range(200):
        loss_fn.set_epoch(epoch)
        assert loss_fn.drw_active == (epoch // 160 == 1)


def test_drw_weights_are_the_class_balanced_ones():
    loss_fn = build_loss("ce", COUNTS, cb_beta=0.9999, drw_epoch=0)
    np.testing.assert_allclose(loss_fn.drw_weight.numpy(), np_cb_weights(COUNTS, 0.9999), rtol=1e-6)
    assert loss_fn.drw_weight.sum().item() == pytest.approx(3.0, rel=1e-6)  # sum_j w_j = K
    # rarer class, larger weight
    assert loss_fn.drw_weight[2] > loss_fn.drw_weight[1] > loss_fn.drw_weight[0]


def test_drw_refused_with_losses_that_are_already_weighted():
    for name in ("focal", "cb_ce", "cb_focal"):
        with pytest.raises(ValueError, match="DRW"):
            build_loss(name, COUNTS, drw_epoch=10)


# ---- logit adjustment and balanced softmax ----------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_loss_by_hand(batch, tau):
    cos, y = batch
    z = 5.0 * cos
    pi = COUNTS / COUNTS.sum()  # 256/353, 81/353, 16/353
    expect = np_ce(z + tau * np.log(pi), y).mean()  # CE(z + tau log pi)
    loss = build_loss("la", COUNTS, la_tau=tau)(t(z), t(y, torch.long))
    assert loss.item() == pytest.approx(expect, rel=1e-5)


def test_logit_adjusted_tau_zero_is_cross_entropy(batch):
    cos, y = batch
    z, yt = t(5.0 * cos), t(y, torch.long)
    assert LogitAdjustedLoss(COUNTS, tau=0.0)(z, yt).item() == pytest.approx(F.cross_entropy(z, yt).item(), rel=1e-6)


def test_balanced_softmax_by_hand_and_equal_to_la_tau_one(batch):
    cos, y = batch
    z, yt = t(5.0 * cos), t(y, torch.long)
    expect = np_ce(5.0 * cos + np.log(COUNTS.astype(np.float64)), y).mean()  # CE(z + log n_j)
    bs = build_loss("balanced_softmax", COUNTS)(z, yt)
    assert bs.item() == pytest.approx(expect, rel=1e-5)
    # log n_j = log pi_j + log N: the same loss as la with tau = 1
    la = build_loss("la", COUNTS, la_tau=1.0)(z, yt)
    torch.testing.assert_close(bs, la, rtol=1e-5, atol=1e-6)
    assert isinstance(build_loss("balanced_softmax", COUNTS), BalancedSoftmaxLoss)


def test_adjusted_losses_favour_rare_classes_in_the_gradient():
    """Property: at equal logits, la pushes the rare class's logit up harder than CE does."""
    z = torch.zeros(1, 3, requires_grad=True)
    y = torch.tensor([2])  # the rarest class
    build_loss("la", COUNTS)(z, y).backward()
    g_la = z.grad[0, 2].item()
    z.grad = None
    F.cross_entropy(z, y).backward()
    assert g_la < z.grad[0, 2].item() < 0  # a larger step up for the true (rare) logit


# ---- the existing losses are unchanged ---------------------------------------------------


def test_existing_losses_unchanged(batch):
    cos, y = batch
    z, yt = t(7.0 * cos), t(y, torch.long)
    w = class_balanced_weights(COUNTS, 0.9999)
    ce = build_loss("ce", COUNTS)
    assert isinstance(ce, torch.nn.CrossEntropyLoss)
    assert torch.equal(ce(z, yt), F.cross_entropy(z, yt))
    cb = build_loss("cb_ce", COUNTS, cb_beta=0.9999)
    assert torch.equal(cb(z, yt), F.cross_entropy(z, yt, weight=w))
    # focal by hand: -(1 - p_y)^gamma log p_y, averaged
    p = np.exp(-np_ce(7.0 * cos, y))
    assert build_loss("focal", COUNTS, 2.0)(z, yt).item() == pytest.approx(
        (-(1 - p) ** 2 * np.log(p)).mean(), rel=1e-5)
    # every loss has set_epoch; without DRW it changes nothing
    for name in ("ce", "focal", "cb_ce", "cb_focal", "ldam", "la", "balanced_softmax"):
        fn = build_loss(name, COUNTS)
        before = fn(z, yt)
        fn.set_epoch(10**6)
        assert torch.equal(fn(z, yt), before), name


def test_loss_is_float32_under_bf16_autocast(batch):
    cos, y = batch
    z = t(30.0 * cos)
    fn = build_loss("ldam", COUNTS, drw_epoch=0)
    fn.set_epoch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(z.to(torch.bfloat16), t(y, torch.long))
    assert out.dtype == torch.float32


def test_empty_class_is_refused():
    for name in ("ldam", "la", "balanced_softmax"):
        with pytest.raises(ValueError, match="at least one training sample"):
            build_loss(name, [10, 0, 3])


def test_modules_follow_the_device():
    fn = build_loss("ldam", COUNTS, drw_epoch=1).to("meta")
    assert fn.margin.device.type == "meta" and fn.drw_weight.device.type == "meta"
    assert isinstance(fn, AdjustedCrossEntropy)


# ---- config -------------------------------------------------------------------------------

LDAM_DRW = ["cifar10-LT_resnet32_ldam-drw", "cifar100-LT_resnet32_ldam-drw"]


@pytest.mark.parametrize("name", LDAM_DRW)
@pytest.mark.parametrize("phase", ["phase_i", "phase_ii", "phase_iii"])
def test_ldam_drw_configs_load(name, phase):
    cfg = load_config(name, phase)
    assert cfg.name == name and len(cfg.sources) == ["phase_i", "phase_ii", "phase_iii"].index(phase) + 1


@pytest.mark.parametrize("name,dataset", list(zip(LDAM_DRW, ["cifar10", "cifar100"])))
def test_ldam_drw_configs_are_the_published_recipe(name, dataset):
    c = load_config(name, "phase_iii")
    assert c.dataset.name == dataset and c.dataset.imb_ratio == 100 and c.model.name == "resnet32"
    assert (c.train.loss, c.model.classifier, c.model.cosine_scale, c.train.ldam_max_margin) == ("ldam", "cosine", 30, 0.5)
    assert (c.train.drw_epoch, c.train.cb_beta, c.train.epochs) == (160, 0.9999, 200)
    # cifar_train.py defaults: batch 128, lr 0.1, momentum 0.9, wd 2e-4, warm-up 5, x0.01 at 160, x0.0001 at 180
    assert (c.train.batch_size, c.train.lr, c.train.momentum, c.train.warmup_epochs) == (128, 0.1, 0.9, 5)
    assert c.train.weight_decay == pytest.approx(2e-4)
    assert c.train.milestones == [160, 180] and c.train.lr_factors == [0.01, 0.0001]
    # the same FSA settings as the plain ResNet-32 experiment
    plain = load_config(name.replace("_ldam-drw", ""), "phase_iii")
    assert c.extract == plain.extract and c.finetune == plain.finetune


def test_loss_from_config():
    cfg = load_config("cifar10-LT_resnet32_ldam-drw")
    fn = loss_from_config(cfg, COUNTS)
    assert isinstance(fn, LDAMLoss) and fn.scale == 30.0 and fn.drw_epoch == 160
    # the margin in logit units is s * Delta: 30 * (1/4, 1/3, 1/2)
    np.testing.assert_allclose(fn.margin.numpy(), [7.5, 10.0, 15.0], rtol=1e-6)
    cfg = load_config("cifar10-LT_resnet32_ldam-drw", overrides=["model.cosine_scale=16"])
    assert loss_from_config(cfg, COUNTS).margin.max().item() == pytest.approx(8.0)
    cfg = load_config("cifar10-LT_resnet32", overrides=["train.loss=la", "train.la_tau=0.5"])
    fn = loss_from_config(cfg, COUNTS)
    assert isinstance(fn, LogitAdjustedLoss) and fn.tau == 0.5 and fn.drw_epoch is None


@pytest.mark.parametrize("overrides,keys", [
    (["train.loss=ldam"], ["train.loss", "model.classifier"]),
    (["train.drw_epoch=200"], ["train.drw_epoch", "train.epochs"]),
    (["train.drw_epoch=-1"], ["train.drw_epoch"]),
    (["train.drw_epoch=10", "train.loss=cb_focal"], ["train.drw_epoch", "train.loss"]),
    (["train.ldam_max_margin=0"], ["train.ldam_max_margin"]),
    (["train.la_tau=-0.5"], ["train.la_tau"]),
    (["model.cosine_scale=0"], ["model.cosine_scale"]),
    (["model.classifier=softmax"], ["model.classifier"]),
    (["train.loss=ldamm"], ["train.loss"]),
])
def test_bad_baseline_keys(overrides, keys):
    with pytest.raises(ConfigError) as e:
        load_config("cifar10-LT_resnet32", "phase_i", overrides)
    msg = str(e.value)
    assert "\n" not in msg
    for k in keys:
        assert k in msg


def test_shorter_runs_move_drw_epoch():
    with pytest.raises(ConfigError, match="train.drw_epoch"):
        load_config("cifar10-LT_resnet32_ldam-drw", "phase_i", ["train.epochs=2"])
    c = load_config("cifar10-LT_resnet32_ldam-drw", "phase_i", ["train.epochs=2", "train.drw_epoch=1"])
    assert c.train.drw_epoch == 1


def test_ce_with_cosine_and_drw_is_a_valid_config():
    c = load_config("cifar10-LT_resnet32", "phase_i", ["model.classifier=cosine", "train.drw_epoch=160"])
    fn = loss_from_config(c, COUNTS)
    assert type(fn) is AdjustedCrossEntropy and fn.drw_epoch == 160


@pytest.mark.parametrize("overrides", [
    ["train.loss=cb_ce"],
    ["train.loss=cb_focal", "train.focal_gamma=2.0"],
    ["train.loss=ce", "train.drw_epoch=3"],
    ["train.loss=la", "train.drw_epoch=3"],
])
def test_loss_from_config_weights_classes_with_train_cb_beta(batch, overrides):
    """train.cb_beta reaches the class-balanced losses and DRW: the loss a config builds is the
    weighted formula at that beta, by hand (at LDAM-DRW's 0.9999 these weights are far apart)."""
    cos, y = batch
    logits = 7.0 * cos
    beta = 0.9
    cfg = load_config("cifar10-LT_resnet32", "phase_i", overrides + [f"train.cb_beta={beta}"])
    fn = loss_from_config(cfg, COUNTS)
    fn.set_epoch(3)  # DRW on from epoch 3; the others ignore the epoch
    w = np_cb_weights(COUNTS, beta)[y]
    assert not np.allclose(np_cb_weights(COUNTS, beta), np_cb_weights(COUNTS, 0.9999), rtol=0.1)
    adj = logits + np.log(COUNTS / COUNTS.sum()) if "train.loss=la" in overrides else logits
    per_sample = np_ce(adj, y)
    if "train.loss=cb_focal" in overrides:  # -w_y (1 - p_y)^2 log p_y, averaged over the batch
        p = np.exp(-per_sample)
        expect = (w * (1 - p) ** 2 * -np.log(p)).mean()
    else:  # sum_i w_yi l_i / sum_i w_yi
        expect = _weighted_mean(per_sample, w)
    assert fn(t(logits), t(y, torch.long)).item() == pytest.approx(expect, rel=1e-5)
