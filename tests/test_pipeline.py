"""Phases II and III and `fsa-lt run` end to end on generated CIFAR files."""
import json

import numpy as np
import pytest
import torch

from conftest import interrupted_phase_i, tiny_overrides
from fsa_lt.config import load_config
from fsa_lt.errors import CheckpointError
from fsa_lt.method import head_tail_split
from fsa_lt.phases import phase_ii, phase_iii, pipeline, store

NAME = "cifar10-LT_resnet32"


def _overrides(root):
    return tiny_overrides(root) + ["train.epochs=3", "finetune.iterations=30", "finetune.eval_every=15",
                                   "finetune.save_every=30"]


@pytest.fixture(scope="module")
def ran(fake_cifar10, tmp_path_factory):
    wd = tmp_path_factory.mktemp("wd")
    out = []
    payload = pipeline.run(NAME, "e2e", wd, "cpu", _overrides(fake_cifar10), control=True, print_fn=out.append)
    return wd, payload, "\n".join(map(str, out)), fake_cifar10


def test_run_layout_and_summary(ran):
    wd, payload, printed, _ = ran
    for ph in ("phase_i", "phase_iii"):
        ck = wd / "checkpoints" / ph / NAME / "e2e"
        assert (ck / "best_model.pt").is_file() and (ck / "last.pt").is_file()
        m = json.loads((wd / "log" / ph / NAME / "e2e" / "metrics.json").read_text())
        assert {"top1", "many", "medium", "few", "head", "tail", "per_class"} <= set(m["final"])
    assert (wd / "checkpoints/phase_iii" / NAME / "e2e/model_iter_000030.pt").is_file()
    assert (wd / "checkpoints/phase_iii" / NAME / "e2e-noaug/last.pt").is_file()  # the control
    assert store.is_complete(wd / "feature" / NAME / "e2e")
    summary = json.loads((wd / "log/run" / NAME / "e2e/summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["Phase I (plain training)",
                                                     "Phase III, augmentation off (No-Aug control)", "Phase III, FSA",
                                                     "FSA minus control (paired run by run)"]
    md = (wd / "log/run" / NAME / "e2e/summary.md").read_text()
    assert "| Phase III, FSA | 1 |" in md and "| model | n | top1 | many | medium | few | head | tail |" in md
    assert "| Phase III, FSA |" in printed
    # every row is read from the run it names
    rows = {r["key"]: r for r in summary["rows"]}
    assert rows["fsa"]["runs"] == ["e2e"] and rows["control"]["runs"] == ["e2e-noaug"]
    m1 = json.loads((wd / "log/phase_i" / NAME / "e2e/metrics.json").read_text())["final"]
    mf = json.loads((wd / "log/phase_iii" / NAME / "e2e/metrics.json").read_text())["final"]
    mc = json.loads((wd / "log/phase_iii" / NAME / "e2e-noaug/metrics.json").read_text())["final"]
    assert rows["phase_i"]["top1"] == m1["top1"] and rows["fsa"]["top1"] == mf["top1"]
    assert rows["fsa_minus_control"]["top1"] == pytest.approx(mf["top1"] - mc["top1"])
    # head / tail of every row on the store's split, from the per-class accuracies
    index = store.read_index(wd / "feature" / NAME / "e2e")
    pc = np.array(m1["per_class"])
    assert rows["phase_i"]["tail"] == pytest.approx(pc[index["tail"]].mean())
    # a finished phase has its record, and no pending marker
    for ph, n in (("phase_i", "e2e"), ("phase_ii", "e2e"), ("phase_iii", "e2e"), ("phase_iii", "e2e-noaug")):
        d = wd / "log" / ph / NAME / n
        assert (d / "record.json").is_file() and not (d / "pending.json").exists()


def test_store_contents_match_independent_computation(ran):
    wd, _, _, root = ran
    folder = wd / "feature" / NAME / "e2e"
    index = store.read_index(folder)
    data = store.load_shards(folder, index)
    counts = np.array(index["class_counts"])
    # fake CIFAR-10, n_max 60, IR 10: n_i = int(60 * 0.1 ** (i / 9))
    assert counts.tolist() == [int(60 * 0.1 ** (i / 9)) for i in range(10)]
    head, tail = head_tail_split(counts, 0.9)
    assert index["head"] == head.tolist() and index["tail"] == tail.tolist()
    assert data["fmaps"].dtype == torch.float16 and list(data["fmaps"].shape[1:]) == [64, 8, 8]
    # CAM of the stored maps with the Phase I classifier row of the true class, min-max normalised
    cfg = load_config(NAME, "phase_ii", _overrides(root))
    model, _ = phase_i_model(cfg, wd)
    w = model.get_classifier().weight.detach()
    f = data["fmaps"][:20].float()
    expect = torch.einsum("bchw,bc->bhw", f, w[data["labels"][:20]])
    lo = expect.amin((1, 2), keepdim=True)
    hi = expect.amax((1, 2), keepdim=True)
    expect = (expect - lo) / (hi - lo)
    assert torch.allclose(data["cams"][:20].float(), expect, atol=2e-3)
    # confusing classes: row-wise top-3 of the mean-softmax matrix, self excluded
    scores = store.load_confusion(folder)
    for c in index["tail"]:
        row = scores[c].clone()
        row[c] = -1
        assert index["confusing"][str(c)] == torch.argsort(row, descending=True, stable=True)[:3].tolist()
    assert torch.allclose(scores.sum(1), torch.ones(10), atol=1e-4)


def phase_i_model(cfg, wd):
    from fsa_lt.phases.common import load_phase_model

    return load_phase_model(cfg, wd / "checkpoints/phase_i" / cfg.name / "e2e/last.pt", "phase_ii", 10,
                            torch.device("cpu"), expect_phase="phase_i")


def test_phase_iii_starts_from_phase_i_and_changes_only_the_classifier(ran):
    wd, _, _, root = ran
    from fsa_lt.engine.checkpoint import load_checkpoint

    a = load_checkpoint(wd / "checkpoints/phase_i" / NAME / "e2e/last.pt")["model"]
    b = load_checkpoint(wd / "checkpoints/phase_iii" / NAME / "e2e/last.pt")["model"]
    for k in a:
        if k.startswith("fc."):
            assert not torch.equal(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k]), k
    m = json.loads((wd / "log/phase_iii" / NAME / "e2e/metrics.json").read_text())
    m1 = json.loads((wd / "log/phase_i" / NAME / "e2e/metrics.json").read_text())["final"]
    # iteration 0 of Phase III (the Phase I classifier on the frozen features) reproduces Phase I
    assert m["phase_i"]["top1"] == pytest.approx(m1["top1"])
    # the saved full model evaluates to the logged final metrics
    cfg = load_config(NAME, "phase_iii", _overrides(root))
    t = phase_iii.test(cfg, "e2e", wd, "cpu", checkpoint="last")
    assert t["top1"] == pytest.approx(m["final"]["top1"])


def test_rerun_reuses_complete_phases(ran):
    wd, _, _, root = ran
    out = []
    pipeline.run(NAME, "e2e", wd, "cpu", _overrides(root), control=True, print_fn=out.append)
    text = "\n".join(map(str, out))
    assert text.count("reusing them") == 4  # Phase I, II, III and the control


def test_phase_ii_without_phase_i_is_a_clear_error(fake_cifar10, tmp_path):
    cfg = load_config(NAME, "phase_ii", _overrides(fake_cifar10))
    with pytest.raises(CheckpointError, match="Phase I of cifar10-LT_resnet32 / none has not been run: run fsa-lt train"):
        phase_ii.extract(cfg, "none", tmp_path, "cpu")
    cfg3 = load_config(NAME, "phase_iii", _overrides(fake_cifar10))
    with pytest.raises(CheckpointError, match="Phase I of cifar10-LT_resnet32 / none has not been run"):
        phase_iii.finetune(cfg3, "none", tmp_path, "cpu")
    assert not any(tmp_path.iterdir())  # nothing made


def test_class_ids_not_in_frequency_order(ran, monkeypatch):
    """Relabel the classes by a permutation: head/tail and confusing classes follow the labels."""
    wd, _, _, root = ran
    perm = np.array([7, 2, 9, 0, 5, 1, 8, 3, 6, 4])
    real_build = phase_ii.build_dataset

    def permuted(cfg, split="train", augment=None):
        ds = real_build(cfg, split, augment)
        ds.targets = perm[np.asarray(ds.targets)]
        return ds

    # a Phase I model for the permuted labels: permute the rows of the trained classifier
    from fsa_lt.engine.checkpoint import load_checkpoint, save_checkpoint

    src = load_checkpoint(wd / "checkpoints/phase_i" / NAME / "e2e/last.pt")
    st = dict(src)
    inv = np.argsort(perm)
    st["model"] = dict(src["model"])
    st["model"]["fc.weight"] = src["model"]["fc.weight"][inv]
    st["model"]["fc.bias"] = src["model"]["fc.bias"][inv]
    st["class_counts"] = src["class_counts"][inv]
    path = save_checkpoint(wd / "checkpoints/phase_i" / NAME / "perm/last.pt", st)
    monkeypatch.setattr(phase_ii, "build_dataset", permuted)
    cfg = load_config(NAME, "phase_ii", _overrides(root))
    from fsa_lt.phases import records

    rec = dict(records.read_record(wd / "log/phase_i" / NAME / "e2e"))  # stands for a Phase I run of "perm"
    rec["outputs"] = {"last.pt": records.file_output(wd, path)}
    phase_ii.extract(cfg, "perm", wd, "cpu", upstream={"phase_i": rec})
    index = store.read_index(wd / "feature" / NAME / "perm")
    orig = store.read_index(wd / "feature" / NAME / "e2e")
    assert sorted(index["head"]) == sorted(perm[orig["head"]].tolist())
    assert sorted(index["tail"]) == sorted(perm[orig["tail"]].tolist())
    for c, conf in orig["confusing"].items():
        assert index["confusing"][str(perm[int(c)])] == perm[conf].tolist()


def test_online_variant_over_cached_store(ran):
    """finetune.mode=online recomputes maps under augmentation; a variant writes beside the run."""
    wd, _, _, root = ran
    cfg = load_config(NAME, "phase_iii", _overrides(root) + ["finetune.mode=online", "finetune.variant=online",
                                                             "finetune.iterations=4", "finetune.eval_every=2"])
    res = phase_iii.finetune(cfg, "e2e", wd, "cpu")
    assert len(res["history"]) == 3  # iteration 0, 2, 4
    out = wd / "log/phase_iii" / NAME / "e2e-online-online"  # the variant, then the mode
    assert json.loads((out / "metrics.json").read_text())["final"]["iteration"] == 4
    from fsa_lt.engine.checkpoint import load_checkpoint

    assert load_checkpoint(wd / "checkpoints/phase_iii" / NAME / "e2e-online-online/last.pt")["mode"] == "online"
    # the default run's outputs are untouched
    assert json.loads((wd / "log/phase_iii" / NAME / "e2e/metrics.json").read_text())["final"]["iteration"] == 30


def test_run_resumes_an_interrupted_phase_i(fake_cifar10, tmp_path, monkeypatch):
    with interrupted_phase_i(monkeypatch, epoch=2):
        pipeline.run(NAME, "int", tmp_path, "cpu", _overrides(fake_cifar10), print_fn=lambda *a: None)
    assert not (tmp_path / "log/phase_i" / NAME / "int/record.json").exists()  # interrupted: not complete
    out = []
    pipeline.run(NAME, "int", tmp_path, "cpu", _overrides(fake_cifar10), print_fn=out.append)
    assert any("resuming it" in str(o) for o in out)
    log = (tmp_path / "log/phase_i" / NAME / "int/log.txt").read_text()
    assert "resumed from" in log and "at epoch 1" in log
    assert json.loads((tmp_path / "log/phase_i" / NAME / "int/metrics.json").read_text())["final"]["epoch"] == 3
