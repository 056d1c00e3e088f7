"""`fsa-lt compare`: FSA beside cRT, tau-norm, LWS and post-hoc logit adjustment over one Phase I,
on generated CIFAR files; every method's saved classifier checked against its formula."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from fsa_lt import cli
from fsa_lt.config import load_config
from fsa_lt.engine.checkpoint import load_checkpoint
from fsa_lt.phases import phase_iii, pipeline

NAME = "cifar10-LT_resnet32"
ALL = "fsa,no-aug,crt,tau-norm,lws,la-posthoc"
SHORT = ["train.epochs=2", "finetune.iterations=30", "finetune.eval_every=15", "finetune.save_every=30"]


def _ov(root, *extra):
    return tiny_overrides(root) + SHORT + list(extra)


@pytest.fixture(scope="module")
def compared(fake_cifar10, tmp_path_factory):
    wd = tmp_path_factory.mktemp("cmp")
    pipeline.run(NAME, "c", wd, "cpu", _ov(fake_cifar10), control=True, print_fn=lambda *a: None, report=cli.run_report)
    payload = pipeline.compare(NAME, "c", wd, "cpu", _ov(fake_cifar10), methods=ALL, phase_iii_seeds=[0, 1],
                               print_fn=lambda *a: None, report=cli.run_report)
    return wd, payload, fake_cifar10


def _metrics(wd, note):
    return json.loads((wd / "log/phase_iii" / NAME / note / "metrics.json").read_text())


def _ckpt(wd, note):
    return load_checkpoint(wd / "checkpoints/phase_iii" / NAME / note / "last.pt", expect_phase="phase_iii")


def test_one_row_per_method_from_the_runs_it_names(compared):
    wd, payload, _ = compared
    rows = {r["key"]: r for r in payload["rows"]}
    assert [r["key"] for r in payload["rows"]] == ["phase_i", "fsa", "control", "crt", "tau_norm", "lws", "la_posthoc",
                                                   "fsa_minus_control"]
    suffix = {"fsa": "", "control": "-noaug", "crt": "-crt", "tau_norm": "-tau-norm", "lws": "-lws",
              "la_posthoc": "-la-posthoc"}
    for key, suf in suffix.items():
        notes = [f"c{suf}-fs{k}" if key != "control" else f"c-fs{k}-noaug" for k in (0, 1)]
        assert rows[key]["runs"] == notes and rows[key]["n"] == 2
        vals = [_metrics(wd, n)["final"]["top1"] for n in notes]
        assert rows[key]["top1"] == pytest.approx(np.mean(vals))
        assert rows[key]["top1_std"] == pytest.approx(np.std(vals, ddof=1))
        assert rows[key]["seconds"] is not None
    md = (wd / "log/run" / NAME / "c/compare.md").read_text()
    assert "| cRT (classifier re-trained, class-balanced) | 2 |" in md and "s/run" in md and "tau choices" in md
    # the table names the machine and precision it was measured with, as Phase I recorded them
    env = json.loads((wd / "log/phase_i" / NAME / "c/environment.json").read_text())
    assert f"processor {env['processor']};" in md and f"Phase I precision: {env['precision']}." in md
    html = (wd / "log/run" / NAME / "c/report.html").read_text()
    assert "FSA and the baselines" in html and "post-hoc logit adjustment" in html
    assert "Time per phase (from the runs&#x27; records): Phase I, training epochs:" in html


def test_tau_is_chosen_on_a_held_out_slice_and_recorded(compared):
    wd, _, _ = compared
    counts = np.array(json.loads((wd / "log/phase_ii" / NAME / "c/metrics.json").read_text())["index"]["class_counts"])
    want = np.minimum(np.maximum(1, np.floor(0.1 * counts)), counts - 1).astype(int)
    for note, grid in (("c-tau-norm-fs0", 21), ("c-la-posthoc-fs1", 21)):
        t = _metrics(wd, note)["tau"]
        assert t["chosen_on"].startswith("held-out slice of the training set")
        assert t["holdout_per_class"] == want.tolist()
        assert len(t["curve"]) == grid and [a for _, a in t["curve"]].index(t["holdout_accuracy"]) >= 0
        best = max(a for _, a in t["curve"])
        assert t["holdout_accuracy"] == best and t["tau"] == min(tt for tt, a in t["curve"] if a == best)


def test_saved_classifiers_follow_their_formulas(compared):
    wd, _, _ = compared
    p1 = load_checkpoint(wd / "checkpoints/phase_i" / NAME / "c/last.pt")["model"]
    W, b = p1["fc.weight"].double(), p1["fc.bias"].double()
    counts = torch.tensor(json.loads((wd / "log/phase_ii" / NAME / "c/metrics.json").read_text())["index"]["class_counts"],
                          dtype=torch.float64)
    # tau-norm: w_j / |w_j|^tau, no bias
    tau = _metrics(wd, "c-tau-norm-fs0")["tau"]["tau"]
    st = _ckpt(wd, "c-tau-norm-fs0")["model"]
    torch.testing.assert_close(st["fc.weight"].double(), W / W.norm(dim=1, keepdim=True) ** tau, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(st["fc.bias"]) == 0
    # post-hoc logit adjustment folded into the bias: b_j - tau log(n_j / N)
    tau = _metrics(wd, "c-la-posthoc-fs0")["tau"]["tau"]
    st = _ckpt(wd, "c-la-posthoc-fs0")["model"]
    torch.testing.assert_close(st["fc.weight"].double(), W)
    torch.testing.assert_close(st["fc.bias"].double(), b - tau * torch.log(counts / counts.sum()), rtol=1e-6, atol=1e-6)
    # LWS: row j of W and b_j scaled by one learnt f_j
    st = _ckpt(wd, "c-lws-fs0")["model"]
    f = st["fc.bias"].double() / b
    torch.testing.assert_close(st["fc.weight"].double(), W * f[:, None], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(f, torch.ones_like(f))
    # cRT: the backbone is Phase I's, the classifier a new one
    st = _ckpt(wd, "c-crt-fs0")["model"]
    assert all(torch.equal(v, st[k]) for k, v in p1.items() if not k.startswith("fc."))
    assert not torch.allclose(st["fc.weight"].double(), W, atol=1e-3)


@pytest.mark.precision
def test_test_mode_of_each_method_reproduces_its_final_metrics(compared):
    wd, _, root = compared
    for method, key in (("tau_norm", "c-tau-norm-fs0"), ("lws", "c-lws-fs0"), ("la_posthoc", "c-la-posthoc-fs0")):
        cfg = load_config(NAME, "phase_iii", _ov(root, f"finetune.method={method}", "finetune.seed=0"))
        assert phase_iii.output_note(cfg, "c") == key
        m = phase_iii.test(cfg, "c", wd, "cpu", checkpoint="last")
        assert m["top1"] == pytest.approx(_metrics(wd, key)["final"]["top1"])


@pytest.mark.precision
def test_fsa_and_baselines_on_a_cosine_phase_i(fake_cifar10, tmp_path):
    """LDAM-DRW's head: FSA's CAMs use the normalised class weights; a per-class scale or offset
    that a cosine head cannot hold is saved beside it and applied in test mode."""
    ov = _ov(fake_cifar10, "model.classifier=cosine", "train.loss=ldam", "train.drw_epoch=1")
    pipeline.run(NAME, "cos", tmp_path, "cpu", ov, control=True, print_fn=lambda *a: None)
    payload = pipeline.compare(NAME, "cos", tmp_path, "cpu", ov, methods="fsa,lws,la-posthoc,tau-norm",
                               print_fn=lambda *a: None)
    assert {r["key"] for r in payload["rows"]} >= {"fsa", "lws", "la_posthoc", "tau_norm"}
    for method, note in (("lws", "cos-lws"), ("la_posthoc", "cos-la-posthoc")):
        st = _ckpt(tmp_path, note)
        assert st["logit_adjust"] is not None
        cfg = load_config(NAME, "phase_iii", ov + [f"finetune.method={method}"])
        m = phase_iii.test(cfg, "cos", tmp_path, "cpu", checkpoint="last")
        assert m["top1"] == pytest.approx(_metrics(tmp_path, note)["final"]["top1"])
    # Phase II's CAMs of the cosine head come from its normalised class vectors
    from fsa_lt.method import cam_weights, class_activation_maps, normalize_cams
    from fsa_lt.models.heads import CosineClassifier
    from fsa_lt.phases import store

    st = load_checkpoint(tmp_path / "checkpoints/phase_i" / NAME / "cos/last.pt")
    w = st["model"]["fc.weight"].float()
    head = CosineClassifier(w.shape[1], w.shape[0])
    head.weight.data.copy_(w)
    torch.testing.assert_close(cam_weights(head), w / w.norm(dim=1, keepdim=True))
    folder = tmp_path / "feature" / NAME / "cos"
    fm, cams, labels, _, _ = store.open_store(folder, store.read_index(folder), torch.device("cpu"), "memory")
    want = normalize_cams(class_activation_maps(torch.as_tensor(fm[:16]).float(), cam_weights(head), torch.as_tensor(labels[:16])))
    torch.testing.assert_close(torch.as_tensor(cams[:16]).float(), want, rtol=0, atol=2e-3)
    # tau-norm of a cosine head changes nothing: the Phase I classifier's accuracy
    m = _metrics(tmp_path, "cos-tau-norm")
    assert m["final"]["top1"] == pytest.approx(m["phase_i"]["top1"])


@pytest.mark.parametrize("args,msg", [
    (["--methods", "fsa,crtt"], "unknown method 'crtt' (did you mean 'crt'?)"),
    (["--methods", "fsa,fsa"], "'fsa' is given twice"),
    (["finetune.method=tau_norm", "finetune.tau=1.5"], "'finetune.tau' must be in [0, 1] for tau_norm"),
    (["train.loss=ldam"], "'train.loss'"),
])
def test_bad_input_exits_2_before_any_work(capsys, tmp_path, args, msg):
    rc = cli.main(["compare", "--config", NAME, "--note", "x", "--workdir", str(tmp_path), *args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not any(tmp_path.iterdir())


def test_compare_needs_a_finished_phase_i(capsys, tmp_path, fake_cifar10):
    rc = cli.main(["compare", "--config", NAME, "--note", "none", "--workdir", str(tmp_path), "--methods", "crt",
                   *_ov(fake_cifar10)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and len(err) == 1 and "Phase I of cifar10-LT_resnet32 / none has not been run" in err[0]
    assert not any(tmp_path.iterdir())


def test_overrides_after_a_seed_list_are_overrides(capsys, tmp_path):
    # argparse alone would read `train.loss=ldam` as a fourth Phase III seed ("invalid int value")
    p = cli.build_parser()
    args = p.parse_args(["compare", "--config", NAME, "a.b=1", "--phase-iii-seeds", "0", "1", "train.epochs=3", "c=2"])
    cli.split_seed_lists(args)
    assert args.phase_iii_seeds == [0, 1] and args.overrides == ["a.b=1", "train.epochs=3", "c=2"]
    # ... and the override reaches the config: LDAM on a linear head is refused, naming the key
    rc = cli.main(["compare", "--config", NAME, "--note", "x", "--workdir", str(tmp_path),
                   "--phase-iii-seeds", "0", "1", "train.loss=ldam"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "'train.loss'" in err[0], err
    rc = cli.main(["run", "--config", NAME, "--note", "x", "--workdir", str(tmp_path), "--seeds", "0", "one"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "--seeds: not a seed: 'one'" in err[0], err
    assert not any(tmp_path.iterdir())


def test_a_variant_comparison_is_its_own_table(compared):
    wd, payload, root = compared
    out = wd / "log/run" / NAME / "c"
    before = {f: (out / f).read_bytes() for f in ("compare.md", "compare.json", "report.html")}
    got = pipeline.compare(NAME, "c", wd, "cpu", _ov(root, "phase_iii.finetune.variant=v"), methods="tau-norm",
                           phase_iii_seeds=[0], print_fn=lambda *a: None, report=cli.run_report)
    assert {f: (out / f).read_bytes() for f in before} == before  # the default table and report untouched
    md = (out / "compare-v.md").read_text()
    assert "(Phase III variant v)" in md and json.loads((out / "compare-v.json").read_text())["variant"] == "v"
    assert [r["runs"] for r in got["rows"] if r["key"] == "tau_norm"] == [["c-v-tau-norm-fs0"]]
