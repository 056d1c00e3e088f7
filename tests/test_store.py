"""The feature store (format fsa-lt-store/2): Phase II's writer, memory-mapped and in-memory
reading, the checks made before Phase III starts, and Phase III over a mapped store.

Synthetic stores are written through `store.ShardWriter`, the writer Phase II uses, in
uneven batches over several shards; the expectations are the arrays handed to it (numpy's
float16 rounding for a float16 store) and numpy's mean over H, W for the pooled features."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_overrides
from fsa_lt import cli
from fsa_lt.engine.checkpoint import load_checkpoint
from fsa_lt.errors import CheckpointError, ConfigError
from fsa_lt.method import FSASampler, build_batch
from fsa_lt.phases import phase_ii, pipeline, records, store

SHARDS = [(0, 7), (7, 12), (12, 21)]  # three ranks' ranges, uneven
C, H, W = 6, 3, 4


def _arrays(n, seed=0):
    g = np.random.RandomState(seed)
    maps = (g.randn(n, C, H, W) * 3).astype(np.float32)
    cams = g.rand(n, H, W).astype(np.float32)
    labels = np.arange(n) % 5
    return maps, cams, labels


def write_store(folder, maps, cams, labels, dtype="float16", shards=SHARDS, batch=3):
    """A cached store of the given arrays, as Phase II writes it (per rank, in batches; index last)."""
    for rank, (lo, hi) in enumerate(shards):
        with store.ShardWriter(folder, rank, lo, hi, dtype, total_rows=len(labels)) as w:
            for a in range(lo, hi, batch):
                b = min(hi, a + batch)
                w.append(torch.from_numpy(maps[a:b]), torch.from_numpy(cams[a:b]), torch.from_numpy(labels[a:b]))
            w.close()
    index = {"mode": "cached", "dtype": dtype, "num_samples": len(labels), "fmap_shape": list(maps.shape[1:]),
             "shards": [store.describe_shard(folder, r, lo, hi) for r, (lo, hi) in enumerate(shards)]}
    store.write_index(folder, index)
    return store.read_index(folder)


def _full(rows):
    return rows[torch.arange(len(rows))] if isinstance(rows, store.MappedRows) else rows


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("access", ["mmap", "memory"])
def test_round_trip_over_shards(tmp_path, dtype, access):
    maps, cams, labels = _arrays(21)
    index = write_store(tmp_path, maps, cams, labels, dtype)
    npdt = np.float16 if dtype == "float16" else np.float32
    want_maps, want_cams = maps.astype(npdt), cams.astype(npdt)  # exact for float32, rounded for float16
    fmaps, fcams, flab, pooled, how = store.open_store(tmp_path, index, "cpu", access)
    assert how.startswith(access + ":") and f"extract.store_access={access}" in how
    assert isinstance(fmaps, store.MappedRows) == (access == "mmap")
    assert fmaps.shape == (21, C, H, W) and fmaps.dtype == getattr(torch, dtype)
    assert np.array_equal(_full(fmaps).numpy(), want_maps)
    assert np.array_equal(_full(fcams).numpy(), want_cams)
    assert flab.dtype == torch.int64 and flab.tolist() == labels.tolist()
    # pooled: the mean over H, W of the *stored* maps, float32
    assert pooled.dtype == torch.float32
    np.testing.assert_allclose(pooled.numpy(), want_maps.astype(np.float64).mean((2, 3)), rtol=1e-6, atol=1e-6)
    if dtype == "float16":
        assert not np.array_equal(want_maps.astype(np.float32), maps)  # the rounding is real
    # one .npy per array per shard, each listed with dtype, shape and size; nothing else left
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["index.json"] + [store.array_name(r, k) for r in range(3) for k in store.ARRAYS])
    s1 = index["shards"][1]
    assert (s1["start"], s1["end"]) == (7, 12)
    assert s1["files"]["fmaps"] == {"file": "shard_001.fmaps.npy", "dtype": dtype, "shape": [5, C, H, W],
                                    "bytes": (tmp_path / "shard_001.fmaps.npy").stat().st_size}
    assert s1["files"]["pooled"]["dtype"] == "float32" and s1["files"]["labels"]["dtype"] == "int64"
    assert np.array_equal(np.load(tmp_path / "shard_001.cams.npy"), want_cams[7:12])  # plain .npy files


def test_mapped_rows_gather_across_shards(tmp_path):
    maps, cams, labels = _arrays(21)
    index = write_store(tmp_path, maps, cams, labels, "float32")
    rows = store.open_store(tmp_path, index, "cpu", "mmap")[0]
    idx = torch.tensor([[20, 0, 7], [6, 12, 6]])  # both boundaries, out of order, repeated, 2-d
    assert np.array_equal(rows[idx].numpy(), maps[idx.numpy()])
    assert np.array_equal(rows[3:9].numpy(), maps[3:9]) and np.array_equal(rows[-1].numpy(), maps[-1])
    assert rows[torch.tensor([], dtype=torch.long)].shape == (0, C, H, W)
    with pytest.raises(IndexError):
        rows[torch.tensor([21])]
    rows.release_bytes = 1  # drop the mapped pages after every gather: the same rows come back
    assert np.array_equal(rows[idx].numpy(), maps[idx.numpy()])
    assert rows._since_release == 0


def test_store_access_rule():
    gb = 10 ** 9
    assert store.choose_access(4 * gb, "cpu", "auto", available=10 * gb)[0] == "memory"
    how, why = store.choose_access(6 * gb, "cpu", "auto", available=10 * gb)
    assert how == "mmap" and "6.00 GB > 0.5 x 10.00 GB" in why
    assert store.choose_access(6 * gb, "cpu", "memory", available=1)[0] == "memory"  # forced
    assert store.choose_access(1, "cpu", "mmap")[0] == "mmap"
    with pytest.raises(ConfigError, match="store_access"):
        store.choose_access(1, "cpu", "disk")


# ----------------------------------------------------------------------------- batches
def test_build_batch_bit_identical_mapped_and_in_memory(tmp_path):
    n = 60
    g = np.random.RandomState(1)
    maps = g.randn(n, 8, 4, 4).astype(np.float32)
    cams = g.rand(n, 4, 4).astype(np.float32)
    labels = np.repeat(np.arange(6), [20, 15, 10, 8, 4, 3])
    index = write_store(tmp_path, maps, cams, labels, "float16", shards=[(0, 25), (25, 41), (41, 60)], batch=7)
    mm = store.open_store(tmp_path, index, "cpu", "mmap")
    mem = store.open_store(tmp_path, index, "cpu", "memory")
    mm[0].release_bytes = mm[1].release_bytes = 40_000  # pages dropped every few batches on the way
    assert torch.equal(mm[3], mem[3])
    lab = torch.as_tensor(labels)
    conf = torch.tensor([[0, 1], [1, 2]])  # tail classes 4, 5 and their confusing classes
    for augment in (True, False):
        outs = []
        for fmaps, fcams, _, pooled, _ in (mm, mem):
            gen = torch.Generator().manual_seed(3)
            sampler = FSASampler(lab, [0, 1, 2, 3], [4, 5], conf, n_t=4, n_a=2, generator=gen)
            outs.append([build_batch(sampler, pooled, fmaps, fcams, 0.8, 0.2, augment=augment, generator=gen)
                         for _ in range(25)])
        for (xa, ya), (xb, yb) in zip(*outs):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert outs[0][0][0].shape == (24, 8)


# ----------------------------------------------------------------------------- integrity
def _one_line_error(folder, index, want, name):
    with pytest.raises(CheckpointError) as e:
        store.check_shards(folder, index)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and want in msg, msg
    with pytest.raises(CheckpointError):  # open_store checks first, too
        store.open_store(folder, index, "cpu", "mmap")
    return msg


def test_damaged_stores_are_one_line_errors_naming_the_file(tmp_path):
    maps, cams, labels = _arrays(21)
    write_store(tmp_path / "ok", maps, cams, labels)
    store.check_shards(tmp_path / "ok", store.read_index(tmp_path / "ok"))

    def fresh(case):
        import shutil

        d = tmp_path / case
        shutil.copytree(tmp_path / "ok", d)
        return d, store.read_index(d)

    d, idx = fresh("missing")
    (d / "shard_001.cams.npy").unlink()
    _one_line_error(d, idx, "feature store file missing", str(d / "shard_001.cams.npy"))

    d, idx = fresh("truncated")
    p = d / "shard_002.fmaps.npy"
    os.truncate(p, p.stat().st_size - 100)
    _one_line_error(d, idx, "its index says", str(p))

    def replace(d, idx, key, arr):  # a file rewritten with another array, its index entry updated
        p = d / f"shard_000.{key}.npy"
        np.save(p, arr)
        idx["shards"][0]["files"][key].update(bytes=p.stat().st_size)
        return p

    d, idx = fresh("dtype")
    p = replace(d, idx, "fmaps", maps[:7].astype(np.float32))
    _one_line_error(d, idx, "holds float32 [7, 6, 3, 4]", str(p))
    idx["shards"][0]["files"]["fmaps"].update(dtype="float32")  # even where the index agrees with the file
    _one_line_error(d, idx, "needs float16 [7, 6, 3, 4]", str(p))

    d, idx = fresh("shape")
    p = replace(d, idx, "cams", cams[:7, :, :3].astype(np.float16))
    _one_line_error(d, idx, "holds float16 [7, 3, 3]", str(p))

    d, idx = fresh("format")
    p = d / "shard_000.labels.npy"
    p.write_bytes(b"\0" * p.stat().st_size)  # right size, not a .npy file
    _one_line_error(d, idx, "is not a feature-store array", str(p))

    d, idx = fresh("noindex")
    (d / "index.json").unlink()
    assert not store.is_complete(d)
    with pytest.raises(CheckpointError, match="feature store not found: .*index.json") as e:
        store.read_index(d)
    assert "\n" not in str(e.value) and str(d / "index.json") in str(e.value)

    d, idx = fresh("old")
    (d / "index.json").write_text(json.dumps(dict(idx, format="fsa-lt-store/1")))
    with pytest.raises(CheckpointError, match=r"older format \(fsa-lt-store/1\).*fsa-lt extract --force") as e:
        store.read_index(d)
    assert "\n" not in str(e.value) and str(d / "index.json") in str(e.value)


def test_an_index_claiming_more_rows_than_its_shards_hold_is_refused(tmp_path):
    """Shards whose files hold fewer rows than the index says: a one-line error before any read,
    whether the index's sample count or a shard's own range claims the missing rows."""
    import shutil

    maps, cams, labels = _arrays(21)
    write_store(tmp_path / "ok", maps, cams, labels)

    # the shards cover 0..21, the index says 25
    d = tmp_path / "count"
    shutil.copytree(tmp_path / "ok", d)
    idx = dict(store.read_index(d), num_samples=25)
    _one_line_error(d, idx, "shards hold 21 samples, the index says 25", str(d / "index.json"))

    # shard 0 says rows 0..7 but its four files (and their index entries, bytes, shapes) hold 5
    d = tmp_path / "short"
    shutil.copytree(tmp_path / "ok", d)
    idx = store.read_index(d)
    pooled = maps.mean((2, 3))
    for key, arr in (("fmaps", maps[:5].astype(np.float16)), ("cams", cams[:5].astype(np.float16)),
                     ("labels", labels[:5].astype(np.int64)), ("pooled", pooled[:5].astype(np.float32))):
        p = d / f"shard_000.{key}.npy"
        np.save(p, arr)
        idx["shards"][0]["files"][key].update(bytes=p.stat().st_size, shape=list(arr.shape))
    assert idx["shards"][0]["start"] == 0 and idx["shards"][0]["end"] == 7
    msg = _one_line_error(d, idx, "needs float16 [7, 6, 3, 4]", str(d / "shard_000.fmaps.npy"))
    assert "holds float16 [5, 6, 3, 4]" in msg


# ----------------------------------------------------------------------------- the writer
def test_writer_writes_each_batch_into_full_size_files(tmp_path):
    maps, cams, labels = _arrays(21)
    seen = []
    with store.ShardWriter(tmp_path, 0, 0, 21, "float16") as w:
        for a in range(0, 21, 4):
            if a == 20:  # before the last batch: the files exist at their final size, under temporary names
                seen = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
                assert not list(tmp_path.glob("shard_*"))
            w.append(torch.from_numpy(maps[a:a + 4]), torch.from_numpy(cams[a:a + 4]),
                     torch.from_numpy(labels[a:a + 4]))
        w.close()
    final = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert sorted(seen) == sorted(f".{n}.tmp" for n in final) and len(final) == 4
    assert all(seen[f".{n}.tmp"] == size for n, size in final.items())
    assert final["shard_000.fmaps.npy"] > 21 * C * H * W * 2
    # a writer stopped by an error leaves nothing behind
    d = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        with store.ShardWriter(d, 0, 0, 21, "float16") as w:
            w.append(torch.from_numpy(maps[:4]), torch.from_numpy(cams[:4]), torch.from_numpy(labels[:4]))
            raise RuntimeError("stop")
    assert list(d.iterdir()) == []
    with store.ShardWriter(d, 0, 0, 21, "float16") as w:  # all rows, or no store
        w.append(torch.from_numpy(maps[:4]), torch.from_numpy(cams[:4]), torch.from_numpy(labels[:4]))
        with pytest.raises(ValueError, match="4 of 21 rows"):
            w.close()


PEAK = textwrap.dedent("""
    import sys, resource, torch
    from fsa_lt.phases import store
    n, batch = 1600, 32
    torch.zeros(batch, 512, 7, 7).half().float().mean((2, 3))  # the ops' own buffers, before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator().manual_seed(0)
    with store.ShardWriter(sys.argv[1], 0, 0, n, "float16") as w:
        for a in range(0, n, batch):
            w.append(torch.randn(batch, 512, 7, 7, generator=g), torch.rand(batch, 7, 7, generator=g),
                     torch.zeros(batch, dtype=torch.long))
        w.close()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


def test_writer_memory_does_not_grow_with_the_store(tmp_path):
    """80 MB of fp16 maps in 3.2 MB batches: the writer's peak resident memory grows by a few
    batches, not by the store (a store held in memory would add 80 MB, in fp32 twice that)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    grown = int(r.stdout.split()[-1])
    size = (tmp_path / "shard_000.fmaps.npy").stat().st_size
    assert size > 80e6 and grown < 30e6, (size, grown)


def test_forward_store_sink_gets_every_batch_and_keeps_nothing():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 3)

        def forward_features(self, x):
            return x

        def forward_head(self, f, pre_logits=False):
            return self.fc(f.mean((2, 3)))

        def get_classifier(self):
            return self.fc

    x = torch.rand(10, 2, 3, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    got, net = [], Net()
    out = phase_ii.forward_store(net, loader, torch.device("cpu"), True, torch.float16,
                                 sink=lambda f, c, lab: got.append((f, c, lab)))
    assert "fmaps" not in out and out["labels"].tolist() == y.tolist()
    assert [g[0].shape[0] for g in got] == [4, 6] and all(g[0].dtype == torch.float16 for g in got)
    assert torch.equal(torch.cat([g[0] for g in got]), x.half())
    ref = phase_ii.forward_store(net, loader, torch.device("cpu"), True, torch.float16)
    assert torch.equal(ref["cams"], torch.cat([g[1] for g in got]))


# ----------------------------------------------------------------------------- Phase III
NAME = "cifar10-LT_resnet32"


def _ov(root, *extra):
    return tiny_overrides(root) + ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10",
                                   "finetune.save_every=20", *extra]


@pytest.fixture(scope="module")
def finished(fake_cifar10, tmp_path_factory):
    wd = tmp_path_factory.mktemp("store_run")
    pipeline.run(NAME, "s", wd, "cpu", _ov(fake_cifar10), control=False, print_fn=lambda *a: None)
    return wd, fake_cifar10


def test_phase_iii_over_a_mapped_store_equals_in_memory(finished):
    wd, root = finished
    folder = wd / "feature" / NAME / "s"
    index = store.read_index(folder)
    assert [s["files"]["fmaps"]["file"] for s in index["shards"]] == ["shard_000.fmaps.npy"]
    log = (wd / "log/phase_iii" / NAME / "s/log.txt").read_text()
    assert "feature store memory: in host memory (cpu)" in log and "extract.store_access=auto" in log
    rc = cli.main(["finetune", "--config", NAME, "--note", "s", "--workdir", str(wd), "--device", "cpu",
                   *_ov(root, "extract.store_access=mmap", "finetune.variant=mm")])
    assert rc == 0
    assert "feature store mmap: memory-mapped" in (wd / "log/phase_iii" / NAME / "s-mm/log.txt").read_text()
    a = load_checkpoint(wd / "checkpoints/phase_iii" / NAME / "s/last.pt", expect_phase="phase_iii")
    b = load_checkpoint(wd / "checkpoints/phase_iii" / NAME / "s-mm/last.pt", expect_phase="phase_iii")
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    ma = json.loads((wd / "log/phase_iii" / NAME / "s/metrics.json").read_text())
    mb = json.loads((wd / "log/phase_iii" / NAME / "s-mm/metrics.json").read_text())
    assert ma["history"] == mb["history"] and ma["final"] == mb["final"]
    # how the store is read is not a setting of the result: the finished run stands for any access
    from fsa_lt.config import load_config

    for access in ("mmap", "memory"):
        cfg = load_config(NAME, "phase_iii", _ov(root, f"extract.store_access={access}"))
        assert records.inspect_phase(wd, "phase_iii", cfg, "s").status == "complete"
        assert records.inspect_phase(wd, "phase_ii", cfg, "s").status == "complete"


@pytest.mark.parametrize("case", ["truncated", "missing", "old_format", "no_index"])
def test_phase_iii_refuses_a_damaged_store_before_any_folder(finished, tmp_path, capsys, case):
    import shutil

    wd, root = finished
    shutil.copytree(wd, tmp_path / "w", ignore=shutil.ignore_patterns("*-mm"))
    w = tmp_path / "w"
    folder = w / "feature" / NAME / "s"
    name = {"truncated": folder / "shard_000.cams.npy", "missing": folder / "shard_000.pooled.npy",
            "old_format": folder / "index.json", "no_index": folder / "index.json"}[case]
    if case == "truncated":
        os.truncate(name, name.stat().st_size - 8)
    elif case == "missing":
        name.unlink()
    elif case == "old_format":  # as the previous version wrote it: shard_000.pt, its record naming this index
        old = json.loads(name.read_text())
        old.update(format="fsa-lt-store/1", shards=[{"file": "shard_000.pt", "start": 0, "end": old["num_samples"]}])
        for f in folder.glob("shard_*.npy"):
            f.unlink()
        torch.save({"format": "fsa-lt-store/1", "start": 0}, folder / "shard_000.pt")
        name.write_text(json.dumps(old))
        rec_path = w / "log/phase_ii" / NAME / "s/record.json"
        rec = json.loads(rec_path.read_text())
        rec["outputs"]["index.json"]["sha256"] = records.sha256_file(name)
        rec_path.write_text(json.dumps(rec))
    else:
        name.unlink()
    rc = cli.main(["finetune", "--config", NAME, "--note", "s", "--workdir", str(w), "--device", "cpu",
                   *_ov(root, "finetune.variant=v")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 4 and len(err) == 1 and str(name) in err[0], (rc, err)
    if case == "old_format":
        assert "older format (fsa-lt-store/1)" in err[0] and "fsa-lt extract --force" in err[0]
    assert not list(w.rglob("*s-v*"))  # no output folder of the refused run


@pytest.mark.slow  # the store benchmark script in a subprocess
def test_store_scale_benchmark_smoke(tmp_path):
    """benchmarks/store_scale.py on a 10 MB store: the tables, the three cases, the targets, cleaned up."""
    d = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "store_scale.py"), "--sizes", "0.01", "--iters", "3",
                        "--repeats", "1", "--no-cifar", "--threads", "1", "--dir", str(d),
                        "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "processor:" in out and "disk free" in out and "numpy" in out and "torch" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| 0.01 GB |")]
    assert len(rows) == 4  # the write row and the three reading cases
    assert any("reference: load + concatenate" in ln for ln in rows) and any("| mmap |" in ln for ln in rows)
    assert "page-cache eviction" in out and out.count("target:") == 3
    res = json.loads((tmp_path / "r.json").read_text())
    case = res["stores"][0]["cases"]["mmap"]
    assert case["batch"] == 128 and case["warm_its"] > 0 and case["vmhwm"] > 0
    assert not d.exists()  # the synthetic store is removed
