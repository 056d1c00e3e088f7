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
ALL = "fsa,no-aug,crt,crt-store,lws,lws-store,tau-norm,la-posthoc,la-posthoc-val"
SHORT = ["train.epochs=2", "finetune.iterations=30", "finetune.eval_every=15", "finetune.save_every=30",
         "baseline.batch_size=32", "dataset.validation=true", "dataset.val_per_class=10"]
SUFFIX = {"fsa": "", "control": "-noaug", "crt": "-crt", "crt_store": "-crt-store", "lws": "-lws",
          "lws_store": "-lws-store", "tau_norm": "-tau-norm", "la_posthoc": "-la-posthoc",
          "la_posthoc_val": "-la-posthoc-val"}


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


def _notes(key):
    return [f"c{SUFFIX[key]}-fs{k}" if key != "control" else f"c-fs{k}-noaug" for k in (0, 1)]


def test_one_row_per_method_from_the_runs_it_names(compared):
    wd, payload, _ = compared
    rows = {r["key"]: r for r in payload["rows"]}
    trained = ["fsa", "control", "crt", "crt_store", "lws", "lws_store"]
    order = ["phase_i"] + [k for key in SUFFIX for k in ([key, key + "+la"] if key != "la_posthoc" and key != "la_posthoc_val"
                                                             else [key])]
    assert [r["key"] for r in payload["rows"]] == order
    for key in SUFFIX:
        notes = _notes(key)
        assert rows[key]["runs"] == notes and rows[key]["n"] == 2
        vals = [_metrics(wd, n)["final"]["top1"] for n in notes]
        assert rows[key]["top1"] == pytest.approx(np.mean(vals))
        assert rows[key]["top1_std"] == pytest.approx(np.std(vals, ddof=1))
        assert rows[key]["seconds"] is not None
        # top-1 minus FSA's, paired by Phase III seed
        if key != "fsa":
            fsa = [_metrics(wd, n)["final"]["top1"] for n in _notes("fsa")]
            assert payload["diffs"][key]["top1"] == pytest.approx(np.mean(np.subtract(vals, fsa)))
    for key in trained:  # + post-hoc LA with tau on validation, read from the same runs
        la = [_metrics(wd, n)["posthoc_la"]["final"]["top1"] for n in _notes(key)]
        assert rows[key + "+la"]["top1"] == pytest.approx(np.mean(la))
    assert rows["crt"]["input"] == "images" and rows["crt_store"]["input"] == "store" and rows["fsa"]["input"] == "store"
    assert rows["la_posthoc"]["choice"] == "tau 1: default (Menon et al.: tau = 1)"
    assert rows["la_posthoc_val"]["choice"].startswith("tau ") and rows["la_posthoc_val"]["choice"].endswith(": validation")
    assert rows["crt"]["choice"] == "none (fixed recipe)"
    md = (wd / "log/run" / NAME / "c/compare.md").read_text()
    assert "| cRT (Kang et al.'s recipe) | images | none (fixed recipe) | 2 |" in md and "s/run" in md
    assert "top1 minus FSA (paired)" in md and "validation split: up to 10 images a class" in md
    assert "their recipe: 10 epochs x" in md  # how each row trains
    # the table names the machine and precision it was measured with, as Phase I recorded them
    env = json.loads((wd / "log/phase_i" / NAME / "c/environment.json").read_text())
    assert f"processor {env['processor']};" in md and f"Phase I precision: {env['precision']}." in md
    html = (wd / "log/run" / NAME / "c/report.html").read_text()
    assert "FSA and the baselines" in html and "post-hoc logit adjustment" in html
    assert "<th>top1 minus FSA</th>" in html and "Choices made on the validation split" in html
    assert "Time per phase (from the runs&#x27; records): Phase I, training epochs:" in html


def test_tau_is_chosen_on_the_validation_split_and_recorded(compared, fake_cifar10):
    wd, payload, root = compared
    from fsa_lt.data import build_dataset

    val = build_dataset(load_config(NAME, "phase_iii", _ov(root)), "val")
    want = np.bincount(val.targets, minlength=10).tolist()
    assert want[0] == 0 and all(0 < c <= 10 for c in want[1:])  # the largest class has no spare image
    for note, grid in (("c-tau-norm-fs0", 21), ("c-la-posthoc-val-fs1", 21)):
        t = _metrics(wd, note)["tau"]
        assert t["chosen_on"] == "validation" and t["validation_per_class"] == want
        assert len(t["curve"]) == grid
        best = max(a for _, a in t["curve"])
        assert t["validation_accuracy"] == best and t["tau"] == min(tt for tt, a in t["curve"] if a == best)
    # post-hoc LA's default needs no choice; on top of a trained head the grid includes 0
    assert _metrics(wd, "c-la-posthoc-fs0")["tau"] == {"tau": 1.0, "chosen_on": "default (Menon et al.: tau = 1)"}
    la = _metrics(wd, "c-fs0")["posthoc_la"]
    assert la["curve"][0][0] == 0.0 and la["chosen_on"] == "validation" and la["validation_per_class"] == want
    # the "+ post-hoc LA" row states its taus and the mean validation accuracy they reached
    row = next(r for r in payload["rows"] if r["key"] == "fsa+la")
    las = [_metrics(wd, n)["posthoc_la"] for n in _notes("fsa")]
    assert row["choice"] == (f"tau {las[0]['tau']:g}, {las[1]['tau']:g}: validation (class-balanced accuracy there "
                             f"{(las[0]['validation_accuracy'] + las[1]['validation_accuracy']) / 2:.2f})")


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
    # post-hoc logit adjustment folded into the bias: b_j - tau log(n_j / N), tau = 1 by default
    for note in ("c-la-posthoc-fs0", "c-la-posthoc-val-fs0"):
        tau = _metrics(wd, note)["tau"]["tau"]
        st = _ckpt(wd, note)["model"]
        torch.testing.assert_close(st["fc.weight"].double(), W)
        torch.testing.assert_close(st["fc.bias"].double(), b - tau * torch.log(counts / counts.sum()), rtol=1e-6, atol=1e-6)
    # LWS: row j of W and b_j scaled by one learnt f_j
    for note in ("c-lws-fs0", "c-lws-store-fs0"):
        st = _ckpt(wd, note)["model"]
        f = st["fc.bias"].double() / b
        torch.testing.assert_close(st["fc.weight"].double(), W * f[:, None], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(f, torch.ones_like(f))
    # cRT on stored features: the backbone is Phase I's, the classifier a new one
    st = _ckpt(wd, "c-crt-store-fs0")["model"]
    assert all(torch.equal(v, st[k]) for k, v in p1.items() if not k.startswith("fc."))
    assert not torch.allclose(st["fc.weight"].double(), W, atol=1e-3)
    # cRT by the recipe: the backbone's weights are Phase I's, its BatchNorm running statistics moved
    # (their code trains with the frozen backbone in train mode)
    st = _ckpt(wd, "c-crt-fs0")["model"]
    weights = [k for k in p1 if not k.startswith("fc.") and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert weights and all(torch.equal(p1[k], st[k]) for k in weights)
    stats = [k for k in p1 if k.endswith("running_mean")]
    assert stats and all(not torch.equal(p1[k], st[k]) for k in stats)


def test_no_choice_reads_the_test_set_or_the_images_phase_i_trained_on(compared, tmp_path):
    """Scramble the test set (noise images, shuffled labels) and replace every image of the long-tailed
    training subset by noise, keep the validation images: every tau chosen stays where it was, while
    the test accuracy moves (so the scrambled files were read)."""
    from cifar_files import rewrite_cifar10
    from fsa_lt.data.cifar import CIFARLT

    wd, _, root = compared
    subset = CIFARLT(root, "cifar10", train=True, imb_ratio=10, seed=0).indices
    rng = np.random.default_rng(0)

    def noise_train(x, y):
        x[subset] = rng.integers(0, 256, size=x[subset].shape, dtype=np.uint8)
        return x, y

    def scramble_test(x, y):
        return rng.integers(0, 256, size=x.shape, dtype=np.uint8), rng.permutation(y)

    scrambled = rewrite_cifar10(root, str(tmp_path / "scrambled"), noise_train, scramble_test)
    ov = [o for o in _ov(root) if not o.startswith("dataset.root=")] + [f"dataset.root={scrambled}",
                                                                         "phase_iii.finetune.variant=scr"]
    pipeline.compare(NAME, "c", wd, "cpu", ov, methods="fsa,tau-norm,la-posthoc-val", phase_iii_seeds=[0],
                     print_fn=lambda *a: None)
    for orig, scr, part in (("c-tau-norm-fs0", "c-scr-tau-norm-fs0", "tau"), ("c-la-posthoc-val-fs0", "c-scr-la-posthoc-val-fs0", "tau"),
                            ("c-fs0", "c-scr-fs0", "posthoc_la")):
        a, b = _metrics(wd, orig), _metrics(wd, scr)
        assert a[part]["tau"] == b[part]["tau"] and a[part]["curve"] == b[part]["curve"]
    assert _metrics(wd, "c-scr-fs0")["final"]["per_class"] != _metrics(wd, "c-fs0")["final"]["per_class"]


def test_crt_initialisation_is_drawn_with_the_phase_iii_seed():
    from fsa_lt.models import create_model
    from fsa_lt.phases import rebalance

    model = create_model("resnet20", 10)
    fc = model.get_classifier()
    torch.manual_seed(123)
    a0 = rebalance.baseline_head("crt", fc, model, 0).weight.detach().clone()
    torch.manual_seed(456)  # the global RNG's state does not matter, the seed does
    again = rebalance.baseline_head("crt", fc, model, 0).weight.detach()
    a1 = rebalance.baseline_head("crt", fc, model, 1).weight.detach()
    assert torch.equal(a0, again) and not torch.allclose(a0, a1)


def test_recipe_plan_arithmetic():
    """Kang et al.'s cRT / LWS on CIFAR-10-LT: 12,406 images, batch 512 -> 24 steps an epoch; 10 (cRT) and
    5 (LWS) epochs; the lr of each step is its epoch's cosine value, the last epoch at 0."""
    import math

    from fsa_lt.phases import rebalance

    b = load_config(NAME, "phase_iii").baseline
    assert (b.input, b.lr, b.momentum, b.weight_decay, b.batch_size, b.samples_per_class, b.bn) == \
        ("images", 0.2, 0.9, 5e-4, 512, 4, "train")
    crt, lws = rebalance.recipe_plan(b, "crt", 12406, 1), rebalance.recipe_plan(b, "lws", 12406, 1)
    assert crt.iterations == 240 and lws.iterations == 120 and crt.eval_every is None
    assert (crt.lr, crt.momentum, crt.weight_decay) == (0.2, 0.9, 5e-4)
    assert crt.lr_at(1) == crt.lr_at(24) == pytest.approx(0.1 * (1 + math.cos(math.pi / 10)))
    assert crt.lr_at(25) == pytest.approx(0.1 * (1 + math.cos(2 * math.pi / 10)))
    assert crt.lr_at(240) == pytest.approx(0.0, abs=1e-12)
    assert lws.lr_at(120) == pytest.approx(0.0, abs=1e-12) and lws.lr_at(1) == pytest.approx(0.1 * (1 + math.cos(math.pi / 5)))


def test_recipe_runs_as_planned(compared):
    """The cRT run of the comparison: int(N / 32) steps an epoch for 10 epochs on the generated set."""
    wd, _, root = compared
    from fsa_lt.data import build_dataset

    n = len(build_dataset(load_config(NAME, "phase_iii", _ov(root)), "train"))
    for note, epochs in (("c-crt-fs0", 10), ("c-lws-fs1", 5)):
        m = _metrics(wd, note)
        assert m["final"]["iteration"] == epochs * (n // 32) and m["input"] == "images"
        assert f"{epochs} epochs x {n // 32} steps of 32" in m["recipe"]


@pytest.mark.precision
def test_test_mode_of_each_method_reproduces_its_final_metrics(compared):
    wd, _, root = compared
    for extra, key in ((["finetune.method=tau_norm"], "c-tau-norm-fs0"), (["finetune.method=lws"], "c-lws-fs0"),
                       (["finetune.method=crt"], "c-crt-fs0"),
                       (["finetune.method=la_posthoc", "finetune.tau_from=validation"], "c-la-posthoc-val-fs0")):
        cfg = load_config(NAME, "phase_iii", _ov(root, *extra, "finetune.seed=0"))
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
    rows = {r["key"]: r for r in payload["rows"]}
    assert rows["tau_norm"]["choice"] == "not applicable (cosine head)"
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
    (["--methods", "tau-norm", "dataset.validation=false"], "finetune.method=tau_norm has no default tau"),
    (["--methods", "la-posthoc-val", "dataset.validation=false"],
     "'validation' needs a validation split: set dataset.validation=true"),
    (["dataset.name=inat2018", "dataset.validation=true"], "inat2018 has no validation split"),
    (["baseline.batch_size=0"], "'baseline.batch_size' must be positive"),
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


def test_diagnostics_table_by_hand():
    """Two runs of one arm: start and end averaged, the end being the chosen iteration when one was
    chosen; accuracy at the iterations both runs evaluated; an arm that trained nothing is left out."""
    from fsa_lt.phases import summary

    def h(it, top1, head, tail, ph, norm, gap, shift):
        return {"iteration": it, "top1": top1, "head": head, "tail": tail, "pred_head": ph, "logit_norm": norm,
                "head_tail_gap": gap, "shift": shift}

    a = {"final": {"iteration": 20}, "history": [h(0, 70, 90, 50, 80, 10, 2, None), h(10, 72, 88, 56, 70, 9, 1, 0.1),
                                                h(20, 74, 86, 62, 60, 8, 0, 0.2)]}
    b = {"final": {"iteration": 10}, "history": [h(0, 70, 90, 50, 80, 10, 2, None), h(10, 76, 84, 68, 50, 7, -1, 0.4),
                                                h(15, 1, 1, 1, 1, 1, 1, 1), h(20, 78, 82, 74, 40, 6, -2, 0.6)]}
    text = summary.diagnostics_table([("FSA", [a, b]), ("tau-norm", [{"final": {"iteration": 0}, "history": []}])])
    lines = text.splitlines()
    assert len(lines) == 3 and "tau-norm" not in text
    # ends: a at 20 (60, 8, 0, 0.2), b at 10 (50, 7, -1, 0.4); shared iterations 0, 10, 20
    assert lines[2] == ("| FSA | 2 | 80.0 -> 55.0 | 10.00 -> 7.50 | 2.00 -> -0.50 | 0.300 | 0, 10, 20 | "
                        "70.0, 74.0, 76.0 | 90.0, 86.0, 84.0 | 50.0, 62.0, 68.0 |")
    assert summary.diagnostics_table([("x", [{"history": []}])]) == ""


def test_compare_shows_what_phase_iii_did_to_each_classifier(compared):
    wd, payload, _ = compared
    md = (wd / "log/run" / NAME / "c/compare.md").read_text()
    assert "What Phase III did to each classifier" in md
    fsa = [_metrics(wd, n) for n in _notes("fsa")]
    start = np.mean([m["history"][0]["pred_head"] for m in fsa])
    end = np.mean([m["history"][-1]["pred_head"] for m in fsa])
    line = next(x for x in md.splitlines() if x.startswith("| Phase III, FSA | 2 | "))
    assert f"| {start:.1f} -> {end:.1f} |" in line
    table, diag = md.split("What Phase III did")
    untrained = ("| post-hoc logit adjustment", "| tau-normalisation")
    assert all(any(x.startswith(u) for x in table.splitlines()) for u in untrained)  # in the table, not here
    assert not any(x.startswith(untrained) for x in diag.splitlines())


def test_a_row_pooled_over_phase_i_models_shows_each_models_choice():
    """Pooled over Phase I seeds, a row whose taus differ names each model's own; one shared choice
    (a fixed recipe) stays one text."""
    from fsa_lt.phases import summary

    got = summary.pooled_choice(["tau 1, 1: validation", "tau 1.8, 2: validation"], [0, 1])
    assert got == "Phase I seed 0: tau 1, 1: validation; Phase I seed 1: tau 1.8, 2: validation"
    assert summary.pooled_choice(["none (fixed recipe)"] * 2, [0, 1]) == "none (fixed recipe)"


def test_compare_over_two_phase_i_models_pools_them_and_keeps_each_models_taus(fake_cifar10, tmp_path):
    ov = _ov(fake_cifar10)
    pipeline.run(NAME, "p", tmp_path, "cpu", ov, seeds=[0, 1], print_fn=lambda *a: None, report=cli.run_report)
    payload = pipeline.compare(NAME, "p", tmp_path, "cpu", ov, methods="fsa,la-posthoc-val", seeds=[0, 1],
                               print_fn=lambda *a: None, report=None)
    per = [{r["key"]: r for r in m["rows"]} for m in payload["members"]]
    assert [m["seed"] for m in payload["members"]] == [0, 1]
    for r in payload["rows"]:
        tops = [p[r["key"]]["top1"] for p in per]
        assert r["n"] == 2 and r["top1"] == pytest.approx(np.mean(tops))
        assert r["top1_std"] == pytest.approx(np.std(tops, ddof=1))
        choices = [p[r["key"]]["choice"] for p in per]
        for s, c in zip((0, 1), choices):  # every model's own choice is on the pooled row
            assert c in r["choice"]
            if len(set(choices)) > 1:
                assert f"Phase I seed {s}: {c}" in r["choice"]
    assert "tau" in {r["key"]: r for r in payload["rows"]}["la_posthoc_val"]["choice"]
    # the two models' validation figures differ on this data, so the labelled form is exercised
    assert any(len({p[r["key"]]["choice"] for p in per}) > 1 for r in payload["rows"])
