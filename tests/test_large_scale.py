"""Large-scale configs (ImageNet-LT, Places-LT, iNaturalist 2018) end to end on a tiny image tree.

Everything runs on the CPU in seconds: ResNet-10 at 64 x 64 input (final map 512 x 2 x 2, so
a CAM still has 4 locations; at 32 x 32 it would be 1 x 1 and degenerate), six classes,
50 training and 25 test images written by the tests.

* the OLTR-list pipeline (Phases I, II, III) with the cached store, then with the online mode;
* an iNaturalist-style JSON through Phases I, II and III (online);
* two processes with the gloo backend under torchrun (one launch runs several commands),
  compared with one process:
    - Phase I: only approximately equal.  Full-batch steps (batch 50 = the training set, 25 a
      rank) so that both runs see the same samples in every step, but the augmentation random
      stream and the BatchNorm statistics (per rank, over half the batch) differ, so the weights
      are compared by the direction and size of their update from the common initialisation.  What must hold
      exactly: same steps per epoch and lr schedule, every test image counted once.
    - Phase II from the *same* Phase I checkpoint, sharded over 2 ranks vs 1: the same store
      (maps and CAMs equal to float32 rounding), the same labels, head/tail split and
      confusing classes, the same mean-score matrix.
    - Phase III from that checkpoint: the Phase I test metrics it starts from are identical;
      the backbone stays frozen; the draws differ per rank, so the final accuracy is not compared.
    - Phase III over the 2-shard store memory-mapped (extract.store_access=mmap) vs in memory,
      both under 2 processes: bit-identical classifier and metrics.
    - resume: a 1-epoch run resumed to 2 epochs gives bit-identical weights, optimizer state
      and metrics to an uninterrupted 2-epoch run (train.deterministic=true).
* malformed inputs through the `fsa-lt` commands: one ``fsa-lt: error:`` line, non-zero exit,
  no checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fsa_lt.errors import ConfigError
import torch

from conftest import ROOT
from fsa_lt.config import load_config
from fsa_lt.engine.checkpoint import load_checkpoint
from fsa_lt.phases import phase_ii, phase_iii, pipeline, store
from image_files import write_image_tree, write_inat_json, write_oltr_list

NAME = "imageNet-LT_resnet10"
INAT = "iNat2018_resnet50"
COUNTS = [24, 12, 6, 4, 2, 2]  # 50 training images; head 4 / tail 2 at h_r 0.9
TEST_COUNTS = [4, 4, 4, 4, 4, 5]  # 25: odd, so a padded 2-rank evaluation would count one twice
METRIC_KEYS = {"top1", "many", "medium", "few", "head", "tail", "per_class", "num_test"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CPU is shared with other jobs: one intra-op thread is far faster than two here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_lt")
    train = write_image_tree(root, COUNTS, size=(40, 40), split="train", seed=0)
    test = write_image_tree(root, TEST_COUNTS, size=(40, 40), split="val", seed=1)
    write_oltr_list(root / "ImageNet_LT_train.txt", train)
    write_oltr_list(root / "ImageNet_LT_test.txt", test)
    write_inat_json(root / "train2018.json", train, len(COUNTS), id_offset=100)
    write_inat_json(root / "val2018.json", test, len(COUNTS), id_offset=100)
    return root


def tiny(root, *extra) -> list[str]:
    """Overrides that make the large-scale configs a seconds-long CPU run."""
    return [f"dataset.root={root}", "dataset.num_classes=6", "dataset.image_size=64", "dataset.num_workers=0",
            "model.name=resnet10", "train.epochs=2", "train.batch_size=50", "train.lr=0.05",
            "train.schedule=step", "train.step_size=1", "train.step_gamma=0.5", "train.warmup_epochs=0",
            "train.eval_every=1", "train.save_every=2", "train.eval_batch_size=32", "train.deterministic=true",
            "extract.batch_size=32", "extract.dtype=float32",
            "finetune.n_t=4", "finetune.iterations=20", "finetune.eval_every=10", "finetune.save_every=20",
            *extra]


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", [NAME, "places-LT_resnet152", INAT])
def test_large_scale_configs_load(name):
    cfgs = {ph: load_config(name, ph) for ph in ("phase_i", "phase_ii", "phase_iii")}
    c = cfgs["phase_iii"]
    assert len(c.sources) == 3
    assert (c.extract.h_r, c.extract.tau_s, c.extract.tau_g, c.extract.n_f) == (0.9, 0.8, 0.2, 3)
    assert (c.finetune.n_t, c.finetune.n_a, c.finetune.lr) == (16, 3, 0.001)
    assert c.dataset.image_size == 224 and c.model.pretrained is None
    want = {NAME: ("imagenet_lt", 1000, "resnet10"), "places-LT_resnet152": ("places_lt", 365, "resnet152"),
            INAT: ("inat2018", 8142, "resnet50")}[name]
    assert (c.dataset.name, c.dataset.num_classes, c.model.name) == want
    if name == INAT:  # the paper: lr 0.1 / 10 every 30 epochs, 100 epochs; Phase III lr 0.001, 200 iterations
        t = c.train
        assert (t.lr, t.schedule, t.step_size, t.step_gamma, t.epochs) == (0.1, "step", 30, 0.1, 100)
        assert c.finetune.iterations == 200 and c.extract.mode == "online"
    elif name == NAME:
        assert (c.train.lr, c.train.batch_size, c.train.epochs, c.train.schedule) == (0.2, 512, 90, "cosine")
        assert c.train.weight_decay == 5e-4
    else:
        assert (c.train.batch_size, c.train.epochs, c.train.schedule) == (256, 30, "cosine")


# ------------------------------------------------------------------------------ one process
@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    """The one-process reference: Phases I, II (cached, float32), III on the OLTR lists."""
    work = tmp_path_factory.mktemp("single")
    lines = []
    payload = pipeline.run(NAME, "ref", work, "cpu", tiny(data_root), control=False, print_fn=lines.append)
    return work, payload, lines


def _check_phase_outputs(work: Path, note: str, mode: str, phase_i_done: bool = True):
    if phase_i_done:
        ck = work / "checkpoints" / "phase_i" / NAME / note
        assert sorted(p.name for p in ck.iterdir()) == ["best_model.pt", "last.pt", "model_epoch_0002.pt"]
        log = work / "log" / "phase_i" / NAME / note
        for f in ("log.txt", "config.yaml", "environment.json", "metrics.json"):
            assert (log / f).is_file(), f
        m = _json(log / "metrics.json")
        assert set(m) == {"final", "best", "history", "epochs"}
        assert METRIC_KEYS <= set(m["final"]) and m["final"]["num_test"] == sum(TEST_COUNTS)
        assert [h["epoch"] for h in m["history"]] == [1, 2]
    feat = work / "feature" / NAME / note
    index = store.read_index(feat)
    assert index["mode"] == mode and index["num_samples"] == sum(COUNTS) and index["num_classes"] == 6
    assert index["head"] == [0, 1, 2, 3] and index["tail"] == [4, 5]
    assert set(index["confusing"]) == {"4", "5"} and all(len(v) == 3 for v in index["confusing"].values())
    assert (feat / "confusion.pt").is_file()
    if mode == "cached":
        assert index["fmap_shape"] == [512, 2, 2] and index["dtype"] == "float32"
        assert [sorted(f["file"] for f in s["files"].values()) for s in index["shards"]] == [
            ["shard_000.cams.npy", "shard_000.fmaps.npy", "shard_000.labels.npy", "shard_000.pooled.npy"]]
    else:
        assert index["shards"] == [] and index["fmap_shape"] is None
    ck3 = work / "checkpoints" / "phase_iii" / NAME / note
    assert sorted(p.name for p in ck3.iterdir()) == ["best_model.pt", "last.pt", "model_iter_000020.pt"]
    m3 = _json(work / "log" / "phase_iii" / NAME / note / "metrics.json")
    assert set(m3) == {"final", "best", "phase_i", "history", "method", "loss", "recipe"} and m3["method"] == "fsa"
    assert m3["loss"] == {"loss": "ce"}
    assert METRIC_KEYS <= set(m3["final"]) and m3["final"]["num_test"] == sum(TEST_COUNTS)
    assert [h["iteration"] for h in m3["history"]] == [0, 10, 20]
    return index, m3


def test_oltr_pipeline_cached_then_online(single, data_root, tmp_path):
    work, payload, lines = single
    shutil.copytree(work, tmp_path / "w")  # the shared fixture stays as it was made
    work, lines = tmp_path / "w", list(lines)
    _check_phase_outputs(work, "ref", "cached")
    assert [r["model"] for r in payload["rows"]] == ["Phase I (plain training)", "Phase III, FSA"]
    assert (work / "log" / "run" / NAME / "ref" / "summary.md").is_file()
    state = load_checkpoint(work / "checkpoints" / "phase_iii" / NAME / "ref" / "last.pt", expect_phase="phase_iii")
    assert state["mode"] == "cached" and state["iteration"] == 20

    # online mode on the same note is a change of setting: refused, naming the key, before any work
    with pytest.raises(ConfigError, match="extract.mode: cached -> online.*--force"):
        pipeline.run(NAME, "ref", work, "cpu", tiny(data_root, "extract.mode=online"), print_fn=lines.append)
    # with --force Phase I (same settings) is reused, Phase II/III are replaced, without a store
    lines.clear()
    payload = pipeline.run(NAME, "ref", work, "cpu", tiny(data_root, "extract.mode=online"), force=True,
                           print_fn=lines.append)
    assert any("[phase_i]" in x and "reusing them" in x for x in lines)
    assert set(payload["times_s"]) == {"phase_ii", "phase_iii"}
    assert not list((work / "feature" / NAME).glob("*.staging"))  # swapped into place
    index, m3 = _check_phase_outputs(work, "ref", "online")
    state = load_checkpoint(work / "checkpoints" / "phase_iii" / NAME / "ref" / "last.pt", expect_phase="phase_iii")
    assert state["mode"] == "online"
    # the frozen backbone is the Phase I one; only the classifier moved
    p1 = load_checkpoint(work / "checkpoints" / "phase_i" / NAME / "ref" / "last.pt")["model"]
    for k, v in p1.items():
        if not k.startswith("fc."):
            assert torch.equal(v, state["model"][k]), k
    assert not torch.equal(p1["fc.weight"], state["model"]["fc.weight"])


def test_inat_json_three_phases_online(data_root, tmp_path):
    lines = []
    ov = tiny(data_root, "train.epochs=1", "train.save_every=1", "finetune.iterations=10", "finetune.eval_every=5",
              "finetune.save_every=10")
    cfg = load_config(INAT, "phase_iii", ov)
    assert cfg.dataset.name == "inat2018" and cfg.extract.mode == "online"
    pipeline.run(INAT, "inat", tmp_path, "cpu", ov, print_fn=lines.append)
    m1 = _json(tmp_path / "log" / "phase_i" / INAT / "inat" / "metrics.json")
    assert m1["final"]["num_test"] == sum(TEST_COUNTS) and len(m1["final"]["per_class"]) == 6
    index = store.read_index(tmp_path / "feature" / INAT / "inat")
    assert index["mode"] == "online" and index["shards"] == [] and index["tail"] == [4, 5]
    assert not list((tmp_path / "feature").rglob("shard_*"))
    # class names come from the JSON categories (ids offset by 100, mapped to 0..5)
    assert "tail species_004" in (tmp_path / "log" / "phase_ii" / INAT / "inat" / "log.txt").read_text()
    m3 = _json(tmp_path / "log" / "phase_iii" / INAT / "inat" / "metrics.json")
    assert m3["final"]["num_test"] == sum(TEST_COUNTS) and [h["iteration"] for h in m3["history"]] == [0, 5, 10]
    assert (tmp_path / "checkpoints" / "phase_iii" / INAT / "inat" / "last.pt").is_file()


# ------------------------------------------------------------------------------ two processes
DRIVER = """
import json, os, sys
import torch
torch.set_num_threads(1)
from fsa_lt import cli
from fsa_lt.engine import distributed as dist
# Several `fsa-lt` commands in one torchrun launch (one process group for all of them).
# "!error": the command must fail with a user error; "!interrupt": it is interrupted after
# Phase I's first epoch (the fault-injection hook), as Ctrl-C would.
from fsa_lt.errors import FsaError
try:
    for argv in json.load(open(sys.argv[1])):
        tag = argv[0] if argv[0].startswith("!") else ""
        if tag == "!interrupt":
            os.environ["FSA_LT_FAULT"] = "interrupt_after_epoch:1"
        try:
            cli.dispatch(cli.build_parser().parse_args(argv[1:] if tag else argv))
            assert not tag, f"{argv} should not have finished"
        except FsaError as exc:
            if tag != "!error":
                raise
            print(f"expected error on rank {dist.rank()}: {exc}", flush=True)
        except KeyboardInterrupt:
            if tag != "!interrupt":
                raise
            print(f"interrupted on rank {dist.rank()}", flush=True)
        finally:
            os.environ.pop("FSA_LT_FAULT", None)
finally:
    dist.cleanup()
"""


@pytest.fixture(scope="module")
def ddp(data_root, tmp_path_factory):
    """One torchrun launch, 2 processes, gloo: Phase I/II/III (cached) on note 'ddp'; a 2-epoch
    run interrupted after epoch 1 and resumed, plus Phase II/III online, on note 'res'."""
    work = tmp_path_factory.mktemp("ddp")
    c = ["--config", NAME, "--workdir", str(work), "--device", "cpu"]
    ov = tiny(data_root)
    steps = [["train", *c, "--note", "ddp", *ov],
             ["extract", *c, "--note", "ddp", *ov],
             ["finetune", *c, "--note", "ddp", *ov],
             ["finetune", *c, "--note", "ddp", *ov, "extract.store_access=mmap", "finetune.variant=mm"],
             ["!interrupt", "train", *c, "--note", "res", *ov],
             ["train", *c, "--note", "res", "--resume", *ov],
             ["extract", *c, "--note", "res", *ov, "extract.mode=online"],
             ["finetune", *c, "--note", "res", *ov, "extract.mode=online"],
             ["!error", "train", *c, "--note", "syncbn", *ov, "model.sync_bn=true"]]
    (work / "steps.json").write_text(json.dumps(steps))
    (work / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(work / "driver.py"), str(work / "steps.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:  # show the ranks' own error lines, not torchrun's wrapper
        lines = [ln for ln in proc.stderr.splitlines() if "rror" in ln or "File " in ln]
        pytest.fail("torchrun failed:\n" + "\n".join(lines[-30:]), pytrace=False)
    return work, proc.stdout


@pytest.mark.slow  # a torchrun launch of 2 processes running 9 commands
def test_ddp_phase_i_matches_single_within_tolerance(ddp, single):
    dwork, out = ddp
    swork = single[0]
    assert "world size 2" in out and "1 steps/epoch of 25 per rank x 2 rank(s)" in out
    d = load_checkpoint(dwork / "checkpoints" / "phase_i" / NAME / "ddp" / "last.pt")
    s = load_checkpoint(swork / "checkpoints" / "phase_i" / NAME / "ref" / "last.pt")
    assert d["epoch"] == s["epoch"] == 2
    assert d["scheduler"]["_last_lr"] == s["scheduler"]["_last_lr"]  # same steps and schedule
    assert set(d["model"]) == set(s["model"])
    # Rank 0 alone writes checkpoints and logs.
    ck = dwork / "checkpoints" / "phase_i" / NAME / "ddp"
    assert sorted(p.name for p in ck.iterdir()) == ["best_model.pt", "last.pt", "model_epoch_0002.pt"]
    assert out.count("final: top1") == 2  # ddp, res (resumed): rank 0 only
    assert out.count("interrupted on rank") == 2  # both ranks stopped at the same epoch
    # Every test image counted once (no DistributedSampler padding), metrics gathered from both ranks.
    md = _json(dwork / "log" / "phase_i" / NAME / "ddp" / "metrics.json")
    ms = _json(swork / "log" / "phase_i" / NAME / "ref" / "metrics.json")
    assert md["final"]["num_test"] == ms["final"]["num_test"] == sum(TEST_COUNTS)
    assert set(md["final"]) == set(ms["final"])
    # Same initialisation (a function of the seed), then updates that agree in direction.
    torch.manual_seed(0)
    from fsa_lt.models import create_model

    init = create_model("resnet10", 6).state_dict()
    keys = [k for k, v in init.items() if v.is_floating_point() and "running" not in k]
    du = torch.cat([(d["model"][k] - init[k]).flatten() for k in keys])
    su = torch.cat([(s["model"][k] - init[k]).flatten() for k in keys])
    cos = float(torch.nn.functional.cosine_similarity(du, su, dim=0))
    ratio = float(du.norm() / su.norm())
    # measured here: cos 0.73, ratio 0.82 (fc alone: cos 0.97); summed instead of averaged
    # gradients would double the ratio, a wrong schedule would fail the _last_lr check above
    assert cos > 0.5 and 0.67 < ratio < 1.5, (cos, ratio)
    fc_cos = float(torch.nn.functional.cosine_similarity((d["model"]["fc.weight"] - init["fc.weight"]).flatten(),
                                                         (s["model"]["fc.weight"] - init["fc.weight"]).flatten(), dim=0))
    assert fc_cos > 0.85, fc_cos
    assert abs(md["final"]["top1"] - ms["final"]["top1"]) <= 40.0


@pytest.mark.slow  # the torchrun launch above
def test_ddp_phase_ii_store_matches_single(ddp, data_root, tmp_path):
    dwork, _ = ddp
    # the same finished Phase I (checkpoints and record), extracted by one process
    src = dwork / "checkpoints" / "phase_i" / NAME / "ddp"
    shutil.copytree(src, tmp_path / "checkpoints" / "phase_i" / NAME / "ddp")
    shutil.copytree(dwork / "log" / "phase_i" / NAME / "ddp", tmp_path / "log" / "phase_i" / NAME / "ddp")
    cfg = load_config(NAME, "phase_ii", tiny(data_root))
    phase_ii.extract(cfg, "ddp", tmp_path, "cpu")
    fd, fs = dwork / "feature" / NAME / "ddp", tmp_path / "feature" / NAME / "ddp"
    idx_d, idx_s = store.read_index(fd), store.read_index(fs)
    assert [(s["files"]["fmaps"]["file"], s["start"], s["end"]) for s in idx_d["shards"]] == [
        ("shard_000.fmaps.npy", 0, 25), ("shard_001.fmaps.npy", 25, 50)]
    assert [(s["start"], s["end"]) for s in idx_s["shards"]] == [(0, 50)]
    for k in ("head", "tail", "confusing", "class_counts", "num_samples", "fmap_shape", "mode", "dtype"):
        assert idx_d[k] == idx_s[k], k
    a, b = store.load_shards(fd, idx_d), store.load_shards(fs, idx_s)
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["fmaps"], b["fmaps"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["cams"], b["cams"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(store.load_confusion(fd), store.load_confusion(fs), rtol=1e-5, atol=1e-6)

    # Phase III from the same store: it starts from identical Phase I test metrics (test
    # features gathered from both ranks); the draws differ per rank, so the end point does not.
    phase_iii.finetune(load_config(NAME, "phase_iii", tiny(data_root)), "ddp", tmp_path, "cpu")
    m_d = _json(dwork / "log" / "phase_iii" / NAME / "ddp" / "metrics.json")
    m_s = _json(tmp_path / "log" / "phase_iii" / NAME / "ddp" / "metrics.json")
    assert m_d["phase_i"] == m_s["phase_i"]
    assert m_d["phase_i"]["top1"] == _json(dwork / "log" / "phase_i" / NAME / "ddp" / "metrics.json")["final"]["top1"]
    assert set(m_d) == set(m_s) and m_d["final"]["num_test"] == sum(TEST_COUNTS)
    ck3 = dwork / "checkpoints" / "phase_iii" / NAME / "ddp"
    assert sorted(p.name for p in ck3.iterdir()) == ["best_model.pt", "last.pt", "model_iter_000020.pt"]
    p1 = load_checkpoint(src / "last.pt")["model"]
    p3 = load_checkpoint(ck3 / "last.pt", expect_phase="phase_iii")["model"]
    assert all(torch.equal(v, p3[k]) for k, v in p1.items() if not k.startswith("fc."))
    assert not torch.equal(p1["fc.weight"], p3["fc.weight"])


@pytest.mark.slow  # the torchrun launch above
def test_ddp_phase_iii_mapped_store_matches_in_memory(ddp):
    """Phase III under two gloo processes over the 2-shard store, memory-mapped (the shards
    stitched virtually, every rank mapping the same files) vs in memory: the same run, bit for bit."""
    dwork, _ = ddp
    logs = {n: (dwork / "log" / "phase_iii" / NAME / n / "log.txt").read_text() for n in ("ddp", "ddp-mm")}
    assert "feature store memory: in host memory" in logs["ddp"]
    assert "feature store mmap: memory-mapped from 2 shard file(s)" in logs["ddp-mm"]
    ck = dwork / "checkpoints" / "phase_iii" / NAME
    a = load_checkpoint(ck / "ddp" / "last.pt", expect_phase="phase_iii")["model"]
    b = load_checkpoint(ck / "ddp-mm" / "last.pt", expect_phase="phase_iii")["model"]
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
    p1 = load_checkpoint(dwork / "checkpoints" / "phase_i" / NAME / "ddp" / "last.pt")["model"]
    assert not torch.equal(a["fc.weight"], p1["fc.weight"])  # it did train
    ma, mb = (_json(dwork / "log" / "phase_iii" / NAME / n / "metrics.json") for n in ("ddp", "ddp-mm"))
    assert ma["history"] == mb["history"] and ma["final"] == mb["final"]


@pytest.mark.slow  # the torchrun launch above
def test_ddp_resume_matches_uninterrupted(ddp):
    dwork, out = ddp
    assert "resumed from" in out and "at epoch 1" in out
    # SyncBatchNorm has no CPU kernel: refused with a config error on every rank, nothing written
    for r in (0, 1):
        assert f"expected error on rank {r}: model.sync_bn: SyncBatchNorm runs on CUDA devices only" in out
    assert not (dwork / "checkpoints" / "phase_i" / NAME / "syncbn").exists()
    full = load_checkpoint(dwork / "checkpoints" / "phase_i" / NAME / "ddp" / "last.pt")
    res = load_checkpoint(dwork / "checkpoints" / "phase_i" / NAME / "res" / "last.pt")
    assert res["epoch"] == full["epoch"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, res["model"][k]), k
    for i, st in full["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], res["optimizer"]["state"][i]["momentum_buffer"])
    assert full["scheduler"] == res["scheduler"]
    assert full["history"] == res["history"]
    mf = _json(dwork / "log" / "phase_i" / NAME / "ddp" / "metrics.json")
    mr = _json(dwork / "log" / "phase_i" / NAME / "res" / "metrics.json")
    for m in (mf, mr):  # the wall time of each epoch differs between runs; all else is equal
        for e in m["epochs"]:
            e.pop("seconds")
    assert mf == mr
    segs = _json(dwork / "log" / "phase_i" / NAME / "res" / "record.json")["segments"]
    assert [s["start_epoch"] for s in segs] == [0, 1]  # trained in two sittings, both recorded
    # Phase II/III online under torchrun, from the resumed model
    idx = store.read_index(dwork / "feature" / NAME / "res")
    assert idx["mode"] == "online" and idx["shards"] == []
    assert idx["confusing"] == store.read_index(dwork / "feature" / NAME / "ddp")["confusing"]
    m3 = _json(dwork / "log" / "phase_iii" / NAME / "res" / "metrics.json")
    assert m3["final"]["num_test"] == sum(TEST_COUNTS) and m3["phase_i"]["top1"] == mf["final"]["top1"]
    assert load_checkpoint(dwork / "checkpoints" / "phase_iii" / NAME / "res" / "last.pt")["mode"] == "online"


# ------------------------------------------------------------------------------ malformed input
def _bad_data(root: Path, case: str) -> tuple[list[str], str]:
    """A copy of the lists with one defect; returns (overrides, expected message part)."""
    lines = (root / "ImageNet_LT_train.txt").read_text().splitlines()
    d = root / "bad" / case
    d.mkdir(parents=True)
    train, extra = lines, []
    if case == "missing_image":
        train = lines + ["train/class_000/9999.jpg 0"]
        want = "image not found"
    elif case == "label_out_of_range":
        train = lines[:-1] + [lines[-1].rsplit(" ", 1)[0] + " 6"]
        want = "label 6 out of range for num_classes 6"
    elif case == "class_without_image":
        train = [x for x in lines if not x.endswith(" 3")]
        want = "class 3 has no training image"
    elif case == "num_classes_disagrees":
        extra = ["dataset.num_classes=7"]
        want = "has 6 classes, config says 7"
    else:
        raise AssertionError(case)
    (d / "train.txt").write_text("\n".join(train) + "\n")
    return [f"dataset.train_list={d / 'train.txt'}", *extra], want


CASES = ["missing_image", "label_out_of_range", "class_without_image", "num_classes_disagrees"]


def test_malformed_inputs_one_line_error_no_checkpoint(data_root, single, tmp_path, capsys):
    """Each defect through `fsa-lt train`; two also through `extract` and `finetune` over the
    finished earlier phases of the same settings, the data having changed on disk since (the
    same lists under another dataset.root, which is not a setting: where the data lie).
    In this process (`cli.main`, what the `fsa-lt` script calls): its exit code and stderr."""
    from fsa_lt import cli

    bad = {case: _bad_data(data_root, case) for case in CASES}
    swork = single[0]
    jobs = [("train", case, tmp_path / f"train_{case}", bad[case][0]) for case in CASES]
    for cmd, case in (("extract", "missing_image"), ("finetune", "label_out_of_range")):
        w = tmp_path / f"{cmd}_{case}"
        upto = ("phase_i",) if cmd == "extract" else ("phase_i", "phase_ii")  # the phase itself has not run
        for ph in upto:
            for top in ("checkpoints", "log"):
                if (swork / top / ph).exists():
                    shutil.copytree(swork / top / ph, w / top / ph)
        if cmd == "finetune":
            shutil.copytree(swork / "feature", w / "feature")
        moved = tmp_path / f"root_{case}"
        shutil.copytree(data_root, moved, ignore=shutil.ignore_patterns("bad"))
        shutil.copy(data_root / "bad" / case / "train.txt", moved / "ImageNet_LT_train.txt")
        jobs.append((cmd, case, w, [f"dataset.root={moved}"]))
    for cmd, case, w, extra in jobs:
        w.mkdir(parents=True, exist_ok=True)
        before = sorted(w.rglob("*.pt"))
        capsys.readouterr()
        rc = cli.main([cmd, "--config", NAME, "--note", "ref", "--workdir", str(w), "--device", "cpu",
                       *tiny(data_root), *extra])
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip()]
        assert rc == 3, (cmd, case, rc, err[-2000:])  # DataError's exit code
        assert len(lines) == 1 and lines[0].startswith("fsa-lt: error: "), (cmd, case, err[-2000:])
        assert bad[case][1] in lines[0], (cmd, case, lines[0])
        assert sorted(w.rglob("*.pt")) == before, (cmd, case)  # no checkpoint, no store
        if cmd == "train":
            assert not any(w.iterdir()), (cmd, case)  # not even an empty run folder
