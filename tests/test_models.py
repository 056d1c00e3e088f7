"""Tests of fsa_lt.models: shapes, the features/head split, parameter counts, pretrained loading."""

import logging

import pytest
import torch
import torch.nn as nn

from fsa_lt.errors import CheckpointError, ConfigError
from fsa_lt.models import create_model, list_models, load_pretrained, register_model

CIFAR_RESNETS = ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
CIFAR_STEM = ["resnet18_cifar", "resnet34_cifar"]
IMAGENET = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_model(name, num_classes, **kw):
    """Build on the meta device: no memory, no init cost; fine for counting parameters."""
    with torch.device("meta"):
        return create_model(name, num_classes, **kw)


def test_registry_lists_all_models():
    names = list_models()
    assert names == sorted(names)
    for n in CIFAR_RESNETS + CIFAR_STEM + IMAGENET:
        assert n in names


def test_unknown_model_name():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet7' \(known: .*resnet32"):
        create_model("resnet7", 10)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", 0)
    with pytest.raises(ConfigError, match="bad arguments"):
        create_model("resnet20", 10, no_such_option=1)


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet32")(lambda num_classes: nn.Linear(1, num_classes))


# ---- shapes and the features/head split ---------------------------------------------


@pytest.mark.parametrize(
    "name,size,expected",
    [(n, 32, (64, 8, 8)) for n in CIFAR_RESNETS]
    + [(n, 32, (512, 4, 4)) for n in CIFAR_STEM]
    + [("resnet10", 224, (512, 7, 7)), ("resnet50", 224, (2048, 7, 7)), ("resnet18", 64, (512, 2, 2))],
)
def test_feature_map_shape_and_split(name, size, expected):
    m = create_model(name, 7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = m.forward_features(x)
        assert tuple(fmap.shape) == (2, *expected)
        assert m.num_features == expected[0]
        pooled = m.forward_head(fmap, pre_logits=True)
        assert tuple(pooled.shape) == (2, expected[0])
        torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
        logits = m.forward_head(fmap)
        assert tuple(logits.shape) == (2, 7)
        torch.testing.assert_close(logits, m.get_classifier()(pooled))
        torch.testing.assert_close(m(x), logits)


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "resnext50_32x4d", "resnet34"])
def test_big_models_num_features(name):
    m = meta_model(name, 1000)
    expected = 512 if name == "resnet34" else 2048
    assert m.num_features == expected
    assert m.get_classifier().in_features == expected


def test_reset_classifier_changes_output_size():
    m = create_model("resnet20", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    old_fc = m.get_classifier()
    m.reset_classifier(3)
    fc = m.get_classifier()
    assert isinstance(fc, nn.Linear) and fc is not old_fc and fc is m.fc
    assert (fc.in_features, fc.out_features) == (64, 3)
    assert m(x).shape == (2, 3)

    r = create_model("resnet18_cifar", 10)
    r.reset_classifier(5)
    assert r.fc.out_features == 5 and r.fc.in_features == 512


def test_zero_init_residual():
    m = create_model("resnet10", 5, zero_init_residual=True)
    assert torch.count_nonzero(m.layer1[0].bn2.weight) == 0
    m = create_model("resnet20", 5, zero_init_residual=True)
    assert torch.count_nonzero(m.layer3[-1].bn2.weight) == 0
    m = meta_model("resnet50", 5, zero_init_residual=False)
    assert m.layer1[0].bn3.weight.shape == (256,)


def test_option_a_shortcut_has_no_parameters():
    m = create_model("resnet20", 10)
    # only convs, BN and fc carry parameters: no 1x1 projection shortcuts
    for name, p in m.named_parameters():
        assert "shortcut" not in name and "downsample" not in name
    x = torch.randn(2, 16, 8, 8)
    sc = m.layer2[0].shortcut
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


# ---- parameter counts -----------------------------------------------------------------


def resnet32_params_by_hand(num_classes, n=5):
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 16) + bn(16)
    cin = 16
    for cout in (16, 32, 64):
        for i in range(n):
            total += conv(cin if i == 0 else cout, cout) + bn(cout) + conv(cout, cout) + bn(cout)
        cin = cout
    return total + 64 * num_classes + num_classes


def test_resnet32_parameter_count():
    m = create_model("resnet32", 10)
    assert n_params(m) == resnet32_params_by_hand(10) == 464_154
    assert abs(n_params(m) - 0.46e6) / 0.46e6 < 0.01  # He et al. 2016, Table 6
    assert n_params(create_model("resnet32", 100)) == resnet32_params_by_hand(100)
    # ResNet-8 (n = 1, the tests' model): 432 + 32 stem, 4,672 / 13,952 / 55,552 by stage, 650 head
    assert n_params(create_model("resnet8", 10)) == resnet32_params_by_hand(10, n=1) == 75_290


@pytest.mark.parametrize(
    "name,published",
    [("resnet20", 0.27e6), ("resnet44", 0.66e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)],
)
def test_cifar_resnet_parameter_counts(name, published):
    assert abs(n_params(meta_model(name, 10)) - published) / published < 0.02


@pytest.mark.parametrize(
    "name,count",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
        ("resnext50_32x4d", 25_028_904),
    ],
)
def test_imagenet_parameter_counts(name, count):
    assert n_params(meta_model(name, 1000)) == count


def test_resnet10_parameter_count():
    # ResNet-18 minus the second block of each stage
    blocks = sum(2 * c * c * 9 + 4 * c for c in (64, 128, 256, 512))
    assert n_params(meta_model("resnet10", 1000)) == 11_689_512 - blocks


def test_cifar_stem_parameter_count():
    # the widely used CIFAR ResNet-18 (3x3 stem, no max-pool, 10 classes) has 11,173,962
    assert n_params(meta_model("resnet18_cifar", 10)) == 11_173_962


def test_torchvision_key_layout():
    keys = set(meta_model("resnet50", 1000).state_dict())
    for k in [
        "conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
        "layer1.0.conv3.weight", "layer1.0.bn3.bias", "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var", "layer4.2.conv2.weight", "fc.weight", "fc.bias",
    ]:
        assert k in keys
    keys18 = set(meta_model("resnet18", 1000).state_dict())
    assert "layer2.0.downsample.0.weight" in keys18 and "layer1.0.downsample.0.weight" not in keys18
    assert not any("conv3" in k for k in keys18)
    assert meta_model("resnet50", 10).layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3


# ---- pretrained loading ----------------------------------------------------------------


def _backbone(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def test_pretrained_round_trip_skips_classifier(tmp_path, caplog):
    src = create_model("resnet20", 10)
    with torch.no_grad():  # make the BN buffers non-default too
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)

    with caplog.at_level(logging.INFO, logger="fsa_lt.models.registry"):
        dst = create_model("resnet20", 4, pretrained=str(path))
    for k, v in _backbone(src.state_dict()).items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0)
    assert dst.fc.out_features == 4
    rep = dst.pretrained_report
    assert rep.skipped == ["fc.bias", "fc.weight"]
    assert "fc.weight" not in rep.loaded and "conv1.weight" in rep.loaded
    assert "fc.bias" in caplog.text

    # same class count: everything, classifier included, is loaded
    same = create_model("resnet20", 10, pretrained=path)
    assert same.pretrained_report.skipped == []
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same.eval()(x), src.eval()(x))


def test_pretrained_wrapped_and_module_prefixed(tmp_path):
    src = create_model("resnet18_cifar", 10)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    for wrap in ("state_dict", "model"):
        path = tmp_path / f"{wrap}.pt"
        torch.save({wrap: sd, "epoch": 3}, path)
        dst = create_model("resnet18_cifar", 100, pretrained=path)
        torch.testing.assert_close(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
        assert dst.fc.out_features == 100


def test_pretrained_without_classifier_or_bn_counters(tmp_path):
    src = create_model("resnet20", 10)
    sd = {k: v for k, v in _backbone(src.state_dict()).items() if "num_batches_tracked" not in k}
    sd["extra.thing"] = torch.zeros(1)
    path = tmp_path / "backbone.pt"
    torch.save(sd, path)
    dst = create_model("resnet20", 10)
    rep = load_pretrained(dst, path)
    assert rep.skipped == ["fc.bias", "fc.weight"] and rep.unexpected == ["extra.thing"]
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight)


def test_pretrained_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"model.pretrained: weights file not found: {path}"):
        create_model("resnet20", 10, pretrained=str(path))


def test_pretrained_corrupt_file(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=f"model.pretrained: cannot read weights {path}: "):
        create_model("resnet20", 10, pretrained=str(path))

    trunc = tmp_path / "trunc.pth"
    torch.save(create_model("resnet20", 10).state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.pretrained: cannot read weights"):
        create_model("resnet20", 10, pretrained=trunc)

    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        create_model("resnet20", 10, pretrained=notdict)


def test_pretrained_missing_backbone_keys(tmp_path):
    sd = create_model("resnet20", 10).state_dict()
    del sd["layer3.2.conv2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"lack model keys: layer3\.2\.conv2\.weight"):
        create_model("resnet20", 10, pretrained=path)

    # a different architecture: names a few keys, then the count
    torch.save(create_model("resnet20", 10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"lack model keys: .*in all"):
        create_model("resnet32", 10, pretrained=path)


def test_pretrained_backbone_shape_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(create_model("resnet18", 10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"do not fit the model: conv1\.weight"):
        create_model("resnet18_cifar", 10, pretrained=path)


# ---- the cosine classifier (LDAM-DRW's NormedLinear) --------------------------------------


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet18_cifar", 32), ("resnet10", 64)])
def test_cosine_classifier_option(name, size):
    from fsa_lt.models import CosineClassifier

    m = create_model(name, 7, classifier="cosine", cosine_scale=20.0).eval()
    fc = m.get_classifier()
    assert isinstance(fc, CosineClassifier) and fc is m.fc and fc.scale == 20.0
    assert fc.weight.shape == (7, m.num_features)  # K x C, like nn.Linear.weight
    assert [n for n, _ in fc.named_parameters()] == ["weight"]  # no bias
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        fmap = m.forward_features(x)
        logits = m.forward_head(fmap)
        torch.testing.assert_close(m(x), logits)
        # by hand: 20 * <x/|x|, w_j/|w_j|>
        p = fmap.mean(dim=(2, 3)).double()
        w = fc.weight.double()
        expect = 20.0 * (p / p.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(logits.double(), expect, rtol=1e-5, atol=1e-5)
        assert logits.abs().max() <= 20.0 + 1e-4


def test_cosine_init_is_ldam_drws():
    from fsa_lt.models import CosineClassifier

    # LDAM-DRW's NormedLinear(in, out): Parameter(in x out).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    torch.manual_seed(7)
    ref = torch.empty(64, 10).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    torch.manual_seed(7)
    head = CosineClassifier(64, 10)
    torch.testing.assert_close(head.weight.detach(), ref.t(), rtol=0, atol=0)
    # every class vector of unit length (to renorm's 1e-7 slack)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10), rtol=0, atol=1e-5)
    # and their forward: F.normalize(x).mm(F.normalize(W, dim=0)), times s
    x = torch.randn(4, 64)
    ref_out = torch.nn.functional.normalize(x, dim=1).mm(torch.nn.functional.normalize(ref, dim=0))
    torch.testing.assert_close(head(x), 30.0 * ref_out)


def test_reset_classifier_keeps_the_kind():
    from fsa_lt.models import CosineClassifier

    m = create_model("resnet20", 10, classifier="cosine", cosine_scale=16.0)
    old = m.fc
    m.reset_classifier(3)
    assert isinstance(m.fc, CosineClassifier) and m.fc is not old
    assert (m.fc.in_features, m.fc.out_features, m.fc.scale) == (64, 3, 16.0)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    fresh = m.new_classifier(5)
    assert isinstance(fresh, CosineClassifier) and m.fc.out_features == 3  # new_classifier changes nothing
    lin = create_model("resnet20", 10)
    lin.reset_classifier(4)
    assert type(lin.fc) is nn.Linear and torch.count_nonzero(lin.fc.bias) == 0  # its own init kept


def test_cosine_state_dict_round_trip_and_mismatch(tmp_path):
    src = create_model("resnet20", 10, classifier="cosine").eval()
    assert "fc.weight" in src.state_dict() and "fc.bias" not in src.state_dict()
    dst = create_model("resnet20", 10, classifier="cosine").eval()
    dst.load_state_dict(src.state_dict())  # strict
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    # a cosine state dict does not fit a linear model (no fc.bias): the mismatch is caught
    with pytest.raises(RuntimeError, match="fc.bias"):
        create_model("resnet20", 10).load_state_dict(src.state_dict())
    # pretrained loading: the whole model, or the backbone only for another class count
    path = tmp_path / "cos.pt"
    torch.save(src.state_dict(), path)
    same = create_model("resnet20", 10, pretrained=path, classifier="cosine").eval()
    torch.testing.assert_close(same(x), src(x))
    other = create_model("resnet20", 4, pretrained=path, classifier="cosine")
    assert other.pretrained_report.skipped == ["fc.weight"]


def test_cosine_head_runs_in_float32_under_autocast():
    m = create_model("resnet20", 5, classifier="cosine").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = m.forward_features(x)
        ref = m.forward_head(fmap)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m.forward_head(fmap)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_classifier_options_are_checked(monkeypatch):
    from fsa_lt.models import registry

    with pytest.raises(ConfigError, match="model.classifier"):
        create_model("resnet20", 10, classifier="softmax")
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ConfigError, match="model.cosine_scale"):
            create_model("resnet20", 10, classifier="cosine", cosine_scale=bad)
    # a model without the classifier mixin (registered for this test only)
    monkeypatch.setitem(registry._MODELS, "_plain_linear_for_test", lambda num_classes: nn.Linear(3, num_classes))
    with pytest.raises(ConfigError, match="model.classifier: model '_plain_linear_for_test'"):
        create_model("_plain_linear_for_test", 2, classifier="cosine")


def test_build_model_passes_the_classifier_options():
    from fsa_lt.config import Config
    from fsa_lt.models import CosineClassifier
    from fsa_lt.phases.common import build_model

    cfg = Config()
    cfg.model.name, cfg.model.classifier, cfg.model.cosine_scale = "resnet20", "cosine", 12.0
    m = build_model(cfg, 4, torch.device("cpu"), pretrained=False)
    assert isinstance(m.fc, CosineClassifier) and m.fc.scale == 12.0 and m.fc.out_features == 4
    cfg.model.classifier = "linear"
    assert type(build_model(cfg, 4, torch.device("cpu"), pretrained=False).fc) is nn.Linear


def test_cams_ignore_the_class_vector_norms():
    """For a cosine head the CAM should use w_j / |w_j|; after min-max normalisation the
    CAM of w_j and of w_j / |w_j| (a positive factor per class) are the same."""
    from fsa_lt.method import class_activation_maps, normalize_cams

    g = torch.Generator().manual_seed(0)
    fmap = torch.rand(6, 8, 4, 4, generator=g)
    w = torch.randn(5, 8, generator=g) * torch.tensor([0.1, 1.0, 3.0, 7.0, 20.0])[:, None]
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    raw = normalize_cams(class_activation_maps(fmap, w, y))
    unit = normalize_cams(class_activation_maps(fmap, w / w.norm(dim=1, keepdim=True), y))
    torch.testing.assert_close(raw, unit, rtol=1e-5, atol=1e-6)
    # not a vacuous check: the un-normalised maps do differ
    assert not torch.allclose(class_activation_maps(fmap, w, y),
                              class_activation_maps(fmap, w / w.norm(dim=1, keepdim=True), y))
    # the head's normalized_weight() gives those unit rows
    from fsa_lt.models import CosineClassifier

    head = CosineClassifier(8, 5)
    with torch.no_grad():
        head.weight.copy_(w)
    torch.testing.assert_close(head.normalized_weight(), w / w.norm(dim=1, keepdim=True))


# ---- torchvision: the ImageNet ResNets are its models, the CIFAR stem uses its blocks ---------


def _tv_reference(name, num_classes):
    from torchvision.models import resnet as tvr

    if name == "resnet10":
        return tvr.ResNet(tvr.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    return getattr(tvr, name)(weights=None, num_classes=num_classes)


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet50", "resnext50_32x4d"])
def test_imagenet_resnets_are_torchvisions(name):
    """A torchvision state dict loads strictly and gives torchvision's outputs; the map and
    the pooled vector are torchvision's layer4 output and its avgpool."""
    ref = _tv_reference(name, 10).eval()
    with torch.no_grad():  # non-default BN statistics, so eval mode really uses them
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = create_model(name, 10).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same order
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = ours.forward_features(x)
        r = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        r = ref.layer4(ref.layer3(ref.layer2(ref.layer1(r))))
        torch.testing.assert_close(fmap, r, rtol=0, atol=0)
        torch.testing.assert_close(ours.forward_head(fmap, pre_logits=True), torch.flatten(ref.avgpool(r), 1))
        torch.testing.assert_close(ours(x), ref(x))
    assert n_params(ours) == n_params(ref)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152"])
def test_big_imagenet_resnets_have_torchvisions_parameters(name):
    with torch.device("meta"):
        ours, ref = create_model(name, 1000), _tv_reference(name, 1000)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_cifar_stem_is_torchvision_blocks_under_a_3x3_stem():
    from torchvision.models import resnet as tvr

    for name, ref_name in (("resnet18_cifar", "resnet18"), ("resnet34_cifar", "resnet34")):
        with torch.device("meta"):
            ours, ref = create_model(name, 10), _tv_reference(ref_name, 10)
        shapes = {k: v.shape for k, v in ours.state_dict().items()}
        ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
        assert shapes.pop("conv1.weight") == (64, 3, 3, 3) and ref_shapes.pop("conv1.weight") == (64, 3, 7, 7)
        assert shapes == ref_shapes
        assert all(type(b) is tvr.BasicBlock for layer in (ours.layer1, ours.layer4) for b in layer)
        assert isinstance(ours.maxpool, nn.Identity)


def test_torchvision_is_imported_only_for_its_models():
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, fsa_lt.models as m, fsa_lt.data; assert 'torchvision' not in sys.modules; "
            "m.create_model('resnet20', 3); assert 'torchvision' not in sys.modules; "
            "m.create_model('resnet10', 3); assert 'torchvision' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_deferred_names_are_what_the_module_registers():
    from fsa_lt import models
    from fsa_lt.models import registry, resnet

    assert models.TORCHVISION_MODELS == resnet.IMAGENET_MODELS + resnet.CIFAR_STEM_MODELS
    assert models.ResNet is resnet.ResNet
    for name in models.TORCHVISION_MODELS:
        assert registry._MODELS[name].__module__ == "fsa_lt.models.resnet"
    registry.register_deferred("fsa_lt.models.resnet", models.TORCHVISION_MODELS)  # again, same module: fine
    # a deferred name cannot be taken by another module, nor deferred to another module
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet50")(lambda num_classes: nn.Linear(1, num_classes))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_deferred("elsewhere", ["resnet50"])


def test_deferred_model_is_imported_when_built(monkeypatch):
    from fsa_lt.models import registry

    monkeypatch.setitem(registry._DEFERRED, "_deferred_for_test", "fsa_lt.models.no_such_module")
    assert "_deferred_for_test" in list_models() and registry.is_model("_deferred_for_test")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        create_model("_deferred_for_test", 3)


def test_unloadable_torchvision_is_one_line(monkeypatch):
    """A torchvision that cannot be imported (not installed, or built for another torch) is an
    FsaError of one line naming the installed torch and the README's Install section."""
    import importlib

    from fsa_lt import _vision
    from fsa_lt.errors import FsaError

    def fail_with(exc):
        def fake(name, *a, **k):
            raise exc
        monkeypatch.setattr(importlib, "import_module", fake)

    fail_with(RuntimeError("operator torchvision::nms does not exist\n  deep traceback line"))
    with pytest.raises(FsaError) as e:
        _vision.load("torchvision.models.resnet")
    msg = str(e.value)
    assert "\n" not in msg and "operator torchvision::nms does not exist" in msg and "deep" not in msg
    assert f"beside torch {torch.__version__}" in msg and msg.endswith("(README, Install)")

    fail_with(ModuleNotFoundError("No module named 'torchvision'", name="torchvision"))
    with pytest.raises(FsaError, match=r"^torchvision is not installed \(torch .*README, Install\)$"):
        _vision.load("torchvision.transforms.v2")

    # a missing module that is not torchvision is not disguised as one
    fail_with(ModuleNotFoundError("No module named 'PIL'", name="PIL"))
    with pytest.raises(ModuleNotFoundError, match="PIL"):
        _vision.load("torchvision.transforms.v2")
