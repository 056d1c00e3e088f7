"""Smoke tests of benchmarks/: bench.py (--quick, --end-to-end), make_pack.py and
reproduce_cifar10_lt.sh (--dry, TINY=1), on generated CIFAR files; seconds each on one thread."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "reproduce_cifar10_lt.sh"
CIFAR_TOOL = ROOT.parent / "shared" / "tools" / "cifar10.py"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("bench")


def _env(**kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("OUT", None)
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _script(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], env=_env(**env), capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- bench.py
@pytest.mark.slow  # the speed benchmark over three phases
def test_bench_quick_synthetic(bench, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--device", "cpu", "--quick", "--models", "resnet20", "--num-workers", "0",
                       "--data-root", str(tmp_path / "none"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "- card: CPU" in printed and "torch thread" in printed and "- data: synthetic" in printed
    assert "| phase | model | path |" in printed
    res = json.loads(out.read_text())
    assert res["header"]["torch"] == torch.__version__ and "synthetic" in res["header"]["data"]
    got = {(r["phase"], r["path"]) for r in res["rows"]}
    assert got == {(p, k) for p in ("I", "II", "III") for k in ("reference", "fast")} | {("III", "fast, masks per batch")}
    for r in res["rows"]:
        assert r["rate"] > 0 and r["seconds"] > 0 and r["model"] == "resnet20"
        if r["path"] == "reference":
            assert r["speedup"] == pytest.approx(1.0)
    p1 = [r for r in res["rows"] if r["phase"] == "I"]
    assert all(r["unit"] == "images/s" and r["batch"] == 16 for r in p1)
    assert {r["unit"] for r in res["rows"] if r["phase"] == "III"} == {"it/s"}


@pytest.mark.slow  # the speed benchmark on the generated CIFAR files
def test_bench_quick_real_files(bench, fake_cifar10, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--device", "cpu", "--quick", "--models", "resnet20", "--num-workers", "0", "--phases", "1,3",
                       "--imb-ratio", "10", "--data-root", fake_cifar10, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["header"]["data"].startswith("real CIFAR-10-LT")
    assert {r["phase"] for r in res["rows"]} == {"I", "III"}


@pytest.mark.slow  # two Phase I runs of two epochs each through the benchmark
def test_bench_end_to_end_quick(bench, fake_cifar10, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert bench.main(["--device", "cpu", "--quick", "--end-to-end", "--models", "resnet20", "--epochs", "2",
                       "--num-workers", "0", "--imb-ratio", "10", "--data-root", fake_cifar10,
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Phase I end to end" in printed and "- data: real CIFAR-10-LT" in printed
    rows = json.loads(out.read_text())["end_to_end"]
    assert [r["path"] for r in rows] == ["fast", "reference (fast_path=off)"]
    for r in rows:
        assert len(r["epoch_times_s"]) == 2 and r["median_epoch_s"] > 0 and r["full_epochs"] == 200
        assert r["wall_s"] >= sum(r["epoch_times_s"])
    assert rows[1]["speedup"] == pytest.approx(1.0)


def test_plain_fusion_matches_project_fusion(bench):
    """The reference's per-sample fusion and fsa_lt's vectorised one agree where the draws
    are forced (one usable location on each side)."""
    from fsa_lt.method import synthesize

    g = torch.Generator().manual_seed(0)
    c, h, w = 5, 4, 4
    ft, fd = torch.rand(1, c, h, w, generator=g) + 0.1, torch.rand(1, c, h, w, generator=g) + 0.1
    cam_t, cam_d = torch.full((1, h, w), 0.5), torch.full((1, h, w), 0.5)
    cam_t[0, 1, 2], cam_t[0, 0, 0] = 1.0, 0.0  # specific: only (1, 2)
    cam_d[0, 3, 1], cam_d[0, 2, 2] = 0.0, 1.0  # generic: only (3, 1)
    rng = np.random.default_rng(0)
    for gamma in (0.0, 0.3, 0.5, 1.0):
        ref = bench.fuse_one(ft[0], cam_t[0], fd[0], cam_d[0], gamma, rng)
        k = round(gamma * h * w)
        expect = (k * ft[0, :, 1, 2] + (h * w - k) * fd[0, :, 3, 1]) / (h * w)
        ours, _ = synthesize(ft, cam_t, fd, cam_d, 0.8, 0.2, gamma=torch.tensor([gamma]))
        assert torch.allclose(ref, expect, atol=1e-6)
        assert torch.allclose(ours[0], expect, atol=1e-6)


def test_plain_fsa_batch_layout(bench):
    labels = np.repeat(np.arange(10), [40, 30, 20, 12, 8, 6, 5, 4, 3, 2])
    fmaps, cams, head, tail, conf = bench.synthetic_store(labels, (8, 2, 2), torch.device("cpu"))
    plain = bench.PlainFSA(fmaps, cams, labels, head, tail, conf.tolist(), n_t=4, n_a=3)
    x, y = plain.batch()
    assert x.shape == (2 * 4 * 4, 8) and y.shape == (32,)
    assert set(y[:16].tolist()) <= set(tail.tolist()) and set(y[16:].tolist()) <= set(head.tolist())
    assert y[4:16].tolist() == np.repeat(y[:4].numpy(), 3).tolist()  # synthetic: their tail sample's class


# ----------------------------------------------------------------------------- make_pack.py
def test_make_pack_indices_match_the_loader(fake_cifar10, tmp_path):
    from fsa_lt.data.cifar import CIFARLT

    mp = _load("make_pack")
    idx_file = tmp_path / "idx.npy"
    assert mp.main(["--root", fake_cifar10, "--out", str(idx_file), "--imb-ratio", "10"]) == 0
    idx = np.load(idx_file)
    ds = CIFARLT(fake_cifar10, "cifar10", train=True, imb_ratio=10, seed=0, download=False)
    assert np.array_equal(idx, ds.indices)


@pytest.mark.skipif(not CIFAR_TOOL.is_file(), reason=f"{CIFAR_TOOL} not present")
def test_pack_path_of_the_script(fake_cifar10, tmp_path):
    """make_pack --pack runs the shared tool; the script unpacks with it (the fake data's
    digests differ from real CIFAR-10's, so the unpack refuses, and the script says so)."""
    carry = tmp_path / "carry"
    r = subprocess.run([sys.executable, str(BENCH / "make_pack.py"), "--root", fake_cifar10, "--out",
                        str(tmp_path / "idx.npy"), "--imb-ratio", "10", "--pack", str(carry / "pack"),
                        "--tool", str(CIFAR_TOOL)], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    meta = np.load(carry / "pack" / "meta.npz")
    assert np.array_equal(np.sort(np.load(tmp_path / "idx.npy")), meta["train_indices"])
    (carry / "cifar10.py").write_bytes(CIFAR_TOOL.read_bytes())
    r = _script(PACK=carry / "pack", TINY=1, WORKDIR=tmp_path / "wd")
    assert r.returncode == 3 and "unpacking" in r.stderr


# ----------------------------------------------------------------------------- reproduce script
def test_reproduce_needs_data(tmp_path):
    r = _script(PACK=tmp_path / "nothing")
    assert r.returncode == 2 and "no data" in r.stderr
    r = _script(DATA_ROOT=tmp_path)
    assert r.returncode == 2 and "cifar-10-batches-py" in r.stderr


@pytest.mark.slow  # the reproduction script, twice, in subprocesses
def test_reproduce_dry_scales_the_schedules(fake_cifar10):
    r = _script("--dry", DATA_ROOT=fake_cifar10, EPOCHS_R32=100, EPOCHS_R18=40, ITERS=800, DEVICE="cpu")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("would run")]
    assert len(lines) == 2
    r32, r18 = lines
    assert "--config cifar10-LT_resnet32" in r32 and "--control" in r32 and "model.name=resnet32" in r32
    assert "train.epochs=100" in r32 and "train.milestones=[80,90]" in r32 and "train.warmup_epochs=3" in r32
    assert "--config cifar10-LT_resnet18" in r18 and "model.name=resnet18_cifar" in r18
    assert "train.epochs=40" in r18 and "train.step_size=20" in r18
    assert "finetune.iterations=800" in r32 and "finetune.eval_every=100" in r32
    assert f"dataset.root={fake_cifar10}" in r18
    r = _script("--dry", DATA_ROOT=fake_cifar10, DEVICE="cpu")  # the full protocols: nothing scaled
    assert "train.epochs=200" in r.stdout and "milestones" not in r.stdout and "step_size" not in r.stdout


@pytest.mark.slow  # the GPU reproduction script end to end, in subprocesses
def test_reproduce_tiny_run(fake_cifar10, tmp_path):
    res = tmp_path / "results"
    r = _script(TINY=1, ONLY="r32", DATA_ROOT=fake_cifar10, EXTRA="dataset.imb_ratio=10",
                WORKDIR=tmp_path / "wd", RESULTS_DIR=res, DEVICE="cpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| Phase III, FSA |" in r.stdout and "## Targets" in r.stdout
    report = (res / "repro.md").read_text()
    assert "| FSA ResNet-32 top-1 % | >= 77.0 (LDAM-DRW) |" in report
    assert "n/a (reduced schedule)" in report and "| FSA ResNet-18 top-1 % | >= 80.57 (paper) | - | not run |" in report
    s = json.loads((res / "r32_summary.json").read_text())
    assert {"phase_i", "phase_ii", "phase_iii", "control"} <= set(s["times_s"])
    assert [row["model"] for row in s["rows"]][-2:] == ["Phase III, FSA", "FSA minus control (paired run by run)"]
    assert (res / "r32_run.log").is_file()
