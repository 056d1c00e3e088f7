"""The Phase I model shipped in the package and the demo that starts from it: the file against its
recorded hash, its recorded accuracy on real CIFAR-10 (when present), a work folder taking a shipped
model in as its Phase I (refusing a changed file or other settings), and the real-data demo end to
end on generated CIFAR files."""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from fsa_lt import cli
from fsa_lt.config import load_config
from fsa_lt.phases import pipeline, records, shipped

NAME = "cifar10-LT_resnet32"
DEMO = shipped.DEMO_MODELS[NAME]


def test_the_shipped_model_matches_its_record():
    pt, js = shipped.shipped_files(DEMO)
    rec = json.loads(js.read_text())
    assert pt.is_file() and records.sha256_file(pt) == rec["sha256"] and pt.stat().st_size == rec["bytes"]
    assert shipped.verify(DEMO)["run_id"] == rec["run_id"]
    # what it is: the 200-epoch cross-entropy ResNet-32 on CIFAR-10-LT imbalance 100, seed 0, LDAM-DRW's subset
    c = rec["config"]
    assert (c["model"]["name"], c["train"]["loss"], c["train"]["epochs"], c["seed"], c["dataset"]["subset_seed"],
            c["dataset"]["imb_ratio"]) == ("resnet32", "ce", 200, 0, 0, 100.0)
    f = rec["metrics"]["final"]
    assert len(f["per_class"]) == 10 and f["top1"] == pytest.approx(np.mean(f["per_class"]), abs=1e-6)
    # its test confusion matrix: CIFAR-10's 1,000 test images per class, its diagonal the per-class accuracies
    cm = np.asarray(rec["confusion_matrix"])
    assert cm.shape == (10, 10) and (cm.sum(1) == 1000).all()
    assert (100.0 * np.diag(cm) / 1000.0).tolist() == pytest.approx(f["per_class"], abs=1e-9)
    assert rec["commit"] and rec["command"].startswith("fsa-lt train") and rec["train_seconds"] > 0
    st = torch.load(pt, map_location="cpu", weights_only=True)
    assert st["phase"] == "phase_i" and st["epoch"] == 200 and "optimizer" not in st


@pytest.mark.slow  # 10,000 test images through ResNet-32: half a minute on one core (CI's slow step runs it)
def test_the_shipped_model_reproduces_its_recorded_accuracy_on_real_cifar10():
    root = os.environ.get("FSA_DATA_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "cifar-10-batches-py", "test_batch")):
        pytest.skip("FSA_DATA_ROOT does not hold a real cifar-10-batches-py (set it to check the shipped model)")
    from fsa_lt.data import build_dataset, make_loader
    from fsa_lt.engine.trainer import evaluate
    from fsa_lt.phases.common import load_phase_model

    rec = shipped.verify(DEMO)
    cfg = load_config(NAME, "phase_i", [f"dataset.root={root}"])
    test = build_dataset(cfg, "test")
    model, _ = load_phase_model(cfg, shipped.shipped_files(DEMO)[0], "phase_i", 10, torch.device("cpu"), "phase_i")
    cm = evaluate(model, make_loader(test, cfg, torch.device("cpu"), train=False, batch_size=1000), 10,
                  torch.device("cpu"))
    top1 = 100.0 * float(cm.diag().sum()) / float(cm.sum())
    assert top1 == pytest.approx(rec["metrics"]["final"]["top1"], abs=0.05)
    per_class = (100.0 * cm.diag().double() / cm.sum(1).double()).tolist()
    assert per_class == pytest.approx(rec["metrics"]["final"]["per_class"], abs=0.15)
    # and its recorded confusion matrix (what the demo's report shows for Phase I) to a handful of images
    assert int(np.abs(cm.numpy() - np.asarray(rec["confusion_matrix"])).sum()) <= 10


@pytest.fixture(scope="module")
def tiny_shipped(fake_cifar10, tmp_path_factory):
    """A shipped model made the way the real one was: a finished Phase I, exported."""
    wd = tmp_path_factory.mktemp("train")
    ov = tiny_overrides(fake_cifar10) + ["train.epochs=2"]
    from fsa_lt.phases import phase_i

    phase_i.train(load_config(NAME, "phase_i", ov), "t", wd, "cpu", say=lambda *a: None)
    out = tmp_path_factory.mktemp("pretrained")
    rec = shipped.export(wd, NAME, "t", out, name="tiny", command="fsa-lt train --config cifar10-LT_resnet32 --note t")
    return out, rec, ov


def test_adopted_phase_i_is_an_input_like_any_other(tiny_shipped, tmp_path):
    out, rec, ov = tiny_shipped
    cfg = load_config(NAME, "phase_i", ov)
    got = shipped.adopt(cfg, "a", tmp_path, "tiny", folder=out, say=lambda *a: None)
    assert got["run_id"] == rec["run_id"] and got["adopted"]["sha256"] == rec["sha256"]
    # the training run's test confusion matrix comes with it (the report reads it instead of re-evaluating)
    cm = torch.load(tmp_path / "log/phase_i" / NAME / "a/confusion_matrix.pt", weights_only=True)
    assert rec["confusion_matrix"] is not None and cm.tolist() == rec["confusion_matrix"]
    assert (100.0 * cm.diag().double() / cm.sum(1).double()).tolist() == pytest.approx(
        rec["metrics"]["final"]["per_class"], abs=1e-9)
    # taking it in again reuses it; Phase II's record names its run id and its checkpoint's hash
    assert shipped.adopt(cfg, "a", tmp_path, "tiny", folder=out, say=lambda *a: None)["run_id"] == rec["run_id"]
    pipeline.run(NAME, "a", tmp_path, "cpu", ov + ["finetune.iterations=20", "finetune.eval_every=10",
                                                  "finetune.save_every=20"], print_fn=lambda *a: None)
    ii = records.read_record(records.log_dir(tmp_path, "phase_ii", NAME, "a"))
    assert ii["inputs"]["phase_i"]["run_id"] == rec["run_id"]
    assert ii["inputs"]["phase_i"]["sha256"] == records.sha256_file(tmp_path / "checkpoints/phase_i" / NAME / "a/last.pt")
    assert records.sha256_file(tmp_path / "checkpoints/phase_i" / NAME / "a/last.pt") == rec["sha256"]


def test_a_replaced_shipped_file_is_refused_with_exit_4(tiny_shipped, tmp_path, capsys, monkeypatch):
    out, rec, ov = tiny_shipped
    bad = tmp_path / "pretrained"
    shutil.copytree(out, bad)
    with open(bad / "tiny.pt", "r+b") as f:  # one byte changed in place
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", bad)
    monkeypatch.setitem(shipped.DEMO_MODELS, NAME, "tiny")
    rc = cli.main(["demo", "--note", "d", "--workdir", str(tmp_path / "wd"), "--data-root", ov[0].split("=", 1)[1], *ov])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 4 and len(err) == 1 and "the file was replaced or corrupted" in err[0], err
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_a_model_trained_on_other_settings_is_refused_naming_the_keys(tiny_shipped, tmp_path):
    out, rec, ov = tiny_shipped
    from fsa_lt.errors import ConfigError

    cfg = load_config(NAME, "phase_i", ov + ["train.epochs=3", "train.lr=0.01"])
    with pytest.raises(ConfigError, match=r"train.epochs: 2 -> 3; train.lr: 0.05 -> 0.01"):
        shipped.adopt(cfg, "a", tmp_path, "tiny", folder=out)
    assert not any(tmp_path.iterdir())


def test_real_data_demo_end_to_end_on_generated_files(tiny_shipped, tmp_path, monkeypatch):
    out, rec, ov = tiny_shipped
    monkeypatch.setattr(shipped, "SHIPPED_DIR", out)
    monkeypatch.setitem(shipped.DEMO_MODELS, NAME, "tiny")
    root = ov[0].split("=", 1)[1]
    lines = []
    args = SimpleNamespace(config=None, note="demo", workdir=str(tmp_path), device="cpu", force=False, seeds=[0, 1],
                           data_root=root, train=False,
                           overrides=ov + ["finetune.iterations=20", "finetune.eval_every=10", "finetune.save_every=20"])
    assert pipeline.demo(args, print_fn=lines.append, report=cli.run_report) == 0  # the report as the CLI hands it in
    s = json.loads((tmp_path / "log/run" / NAME / "demo/summary+fs0-1.json").read_text())  # not the default 0 1 2
    keys = [r.get("key") for r in s["rows"]]
    assert keys == ["phase_i", "control", "fsa", "la_posthoc", "fsa_minus_control"]
    assert s["rows"][0]["top1"] == pytest.approx(rec["metrics"]["final"]["top1"])  # the shipped model's own figure
    assert any(line.startswith("[demo] FSA minus control, top-1, paired:") for line in lines)
    assert (tmp_path / "log/run" / NAME / "demo/report+fs0-1.html").is_file()


def test_without_cifar10_the_demo_says_why_and_runs_digits(tmp_path, monkeypatch):
    from fsa_lt.data import cifar

    def offline(name, root, timeout=30.0):
        raise cifar.DataError("CIFAR-10 not found (download from https://x failed: URLError: no network)")

    monkeypatch.setattr(cifar, "download_cifar", offline)
    ran = {}
    monkeypatch.setattr(pipeline, "_digits_demo", lambda args, print_fn=print, report=None: ran.setdefault("digits", True) and 0)
    lines = []
    args = SimpleNamespace(config=None, note="demo", workdir=str(tmp_path), device="cpu", force=False, seeds=None,
                           data_root=str(tmp_path / "nothing"), train=False, overrides=[])
    assert pipeline.demo(args, print_fn=lines.append) == 0 and ran == {"digits": True}
    why = [ln for ln in lines if "offline digits demo" in ln]
    assert len(why) == 1 and "no network" in why[0]
