"""Run records: a result is always from the settings it names (issue: provenance and kill -9).

Generated CIFAR files, ResNet-20, seconds-long phases."""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, folder_digest, interrupted_phase_i, tiny_overrides
from fsa_lt import cli
from fsa_lt.config import load_config
from fsa_lt.engine.checkpoint import load_checkpoint, save_checkpoint
from fsa_lt.errors import BusyError, CheckpointError, ConfigError, DataError
from fsa_lt.phases import phase_i, phase_ii, phase_iii, pipeline, records, store

NAME = "cifar10-LT_resnet32"
SHORT = ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10", "finetune.save_every=20"]


def _ov(root, *extra):
    return tiny_overrides(root) + list(extra)


def _cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- scenario 1
def test_test_mode_never_rewrites_the_record_and_run_refuses_other_settings(fake_cifar10, tmp_path, capsys):
    """train 1 epoch; test without the override; then `run` without it must not reuse the 1-epoch model."""
    c = ["--config", NAME, "--note", "smoke", "--workdir", tmp_path, "--device", "cpu"]
    assert _cli(capsys, "train", *c, *_ov(fake_cifar10, "train.epochs=1"))[0] == 0
    log = tmp_path / "log/phase_i" / NAME / "smoke"
    saved = {f: (log / f).read_bytes() for f in ("config.yaml", "environment.json", "metrics.json", "record.json")}
    assert "epochs: 1" in saved["config.yaml"].decode()
    rc, _, err = _cli(capsys, "test", *c, "--checkpoint", "best", *_ov(fake_cifar10))  # epochs back to 200
    assert rc == 0, err
    assert {f: (log / f).read_bytes() for f in saved} == saved  # the record is as training left it
    t = json.loads((log / "test_best_model.json").read_text())
    assert "final" not in t and t["best_model"]["top1"] is not None and t["epoch"] == 1
    assert t["sha256"] == hashlib.sha256((tmp_path / "checkpoints/phase_i" / NAME / "smoke/best_model.pt").read_bytes()).hexdigest()
    # `fsa-lt run` with the default 200 epochs: refused before any work, the key named, the way on said
    rc, _, err = _cli(capsys, "run", *c, *_ov(fake_cifar10))
    assert rc == 2 and len(err) == 1
    assert "train.epochs: 1 -> 200" in err[0] and "--force" in err[0] and "--note" in err[0]
    assert not (tmp_path / "feature").exists() and not (tmp_path / "log/phase_ii").exists()
    assert {f: (log / f).read_bytes() for f in saved} == saved


# ----------------------------------------------------------------------------- scenario 2
@pytest.fixture(scope="module")
def finished(fake_cifar10, tmp_path_factory):
    wd = tmp_path_factory.mktemp("fin")
    pipeline.run(NAME, "r1", wd, "cpu", _ov(fake_cifar10, *SHORT), control=True, print_fn=lambda *a: None)
    return wd


def test_changed_seed_on_a_finished_note_is_refused_with_the_key(finished, fake_cifar10):
    before = folder_digest(finished / "checkpoints")
    with pytest.raises(ConfigError, match=r"seed: 0 -> 1;?.*--force"):
        pipeline.run(NAME, "r1", finished, "cpu", _ov(fake_cifar10, *SHORT, "seed=1"), print_fn=lambda *a: None)
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        phase_i.train(load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT, "seed=1")), "r1", finished, "cpu")
    assert folder_digest(finished / "checkpoints") == before


def test_a_setting_that_cannot_change_the_result_is_not_a_change(finished, fake_cifar10, tmp_path):
    """Where the data lie, loader workers and checkpoint cadence are not settings of the result."""
    cfg = load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT, "train.save_every=7", "dataset.num_workers=1"))
    assert records.inspect_phase(finished, "phase_i", cfg, "r1").status == "complete"


def test_force_replaces_only_when_the_new_run_finishes(finished, fake_cifar10, monkeypatch, tmp_path):
    import shutil

    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    old = records.read_record(wd / "log/phase_i" / NAME / "r1")
    before = folder_digest(wd / "checkpoints/phase_i" / NAME / "r1")
    ov = _ov(fake_cifar10, *SHORT, "train.epochs=2")
    with interrupted_phase_i(monkeypatch, epoch=2):
        pipeline.run(NAME, "r1", wd, "cpu", ov, force=True, print_fn=lambda *a: None)
    # interrupted replacement: the old outputs and their record are intact and still complete
    assert folder_digest(wd / "checkpoints/phase_i" / NAME / "r1") == before
    cfg1 = load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT))
    assert records.inspect_phase(wd, "phase_i", cfg1, "r1").status == "complete"
    assert (wd / "checkpoints/phase_i" / NAME / ".r1.staging").is_dir()  # hidden: a name no note can have
    out = []
    pipeline.run(NAME, "r1", wd, "cpu", ov, force=True, print_fn=out.append)
    new = records.read_record(wd / "log/phase_i" / NAME / "r1")
    assert new["run_id"] != old["run_id"] and new["config"]["train"]["epochs"] == 2
    assert not list(wd.rglob("*.staging"))
    # Phases II and III were redone from the new Phase I: they name its run
    rec2 = records.read_record(wd / "log/phase_ii" / NAME / "r1")
    rec3 = records.read_record(wd / "log/phase_iii" / NAME / "r1")
    assert rec2["inputs"]["phase_i"]["run_id"] == new["run_id"] == rec3["inputs"]["phase_i"]["run_id"]
    assert rec3["inputs"]["phase_ii"]["run_id"] == rec2["run_id"]
    # the record names the checkpoint by its hash; a changed file is noticed
    last = wd / "checkpoints/phase_i" / NAME / "r1/last.pt"
    assert new["outputs"]["last.pt"]["sha256"] == records.sha256_file(last)
    st = load_checkpoint(last)
    save_checkpoint(last, dict(st, epoch=99))
    cfg2 = load_config(NAME, "phase_i", ov)
    with pytest.raises(CheckpointError, match="has changed since the record was written"):
        records.inspect_phase(wd, "phase_i", cfg2, "r1")


# ----------------------------------------------------------------------------- variants (10)
def test_variant_summary_rows_come_from_the_runs_they_name(finished, fake_cifar10):
    payload = pipeline.run(NAME, "r1", finished, "cpu",
                           _ov(fake_cifar10, *SHORT, "phase_iii.finetune.variant=s1", "phase_iii.seed=1"),
                           control=True, print_fn=lambda *a: None)
    rows = {r["key"]: r for r in payload["rows"]}
    assert rows["fsa"]["runs"] == ["r1-s1"] and rows["control"]["runs"] == ["r1-s1-noaug"]
    for key, note in (("fsa", "r1-s1"), ("control", "r1-s1-noaug")):
        m = json.loads((finished / "log/phase_iii" / NAME / note / "metrics.json").read_text())["final"]
        assert rows[key]["top1"] == m["top1"]
    # and the default run's outputs were not touched or read in
    d = json.loads((finished / "log/phase_iii" / NAME / "r1/metrics.json").read_text())
    assert records.read_record(finished / "log/phase_iii" / NAME / "r1-s1")["config"]["seed"] == 1
    assert d["final"]["iteration"] == 20


def test_phase_iii_seeds_summary_mean_std_and_paired_difference(finished, fake_cifar10):
    payload = pipeline.run(NAME, "r1", finished, "cpu", _ov(fake_cifar10, *SHORT), control=True,
                           phase_iii_seeds=[3, 4, 5], print_fn=lambda *a: None)
    rows = {r["key"]: r for r in payload["rows"]}
    f = [json.loads((finished / "log/phase_iii" / NAME / f"r1-fs{k}/metrics.json").read_text())["final"]["top1"]
         for k in (3, 4, 5)]
    c = [json.loads((finished / "log/phase_iii" / NAME / f"r1-fs{k}-noaug/metrics.json").read_text())["final"]["top1"]
         for k in (3, 4, 5)]
    assert rows["fsa"]["n"] == 3 and rows["fsa"]["top1"] == pytest.approx(np.mean(f))
    assert rows["fsa"]["top1_std"] == pytest.approx(np.std(f, ddof=1))
    d = np.array(f) - np.array(c)
    assert rows["fsa_minus_control"]["top1"] == pytest.approx(d.mean())
    assert rows["fsa_minus_control"]["top1_std"] == pytest.approx(d.std(ddof=1))
    md = (finished / "log/run" / NAME / "r1/summary+fs3-4-5.md").read_text()  # beside r1's own summary.md
    assert f"{np.mean(f):.2f} ± {np.std(f, ddof=1):.2f}" in md and "Phase III seeds 3, 4, 5." in md
    # the Phase III seeds differ in their draws (else the std says nothing)
    assert len({records.read_record(finished / "log/phase_iii" / NAME / f"r1-fs{k}")["run_id"] for k in (3, 4, 5)}) == 3


@pytest.mark.parametrize("seeds,msg", [([], "give at least one seed"), ([1, 2, 1], "seed 1 is given twice")])
def test_bad_seed_lists_exit_2(capsys, tmp_path, seeds, msg):
    rc, _, err = _cli(capsys, "run", "--config", NAME, "--note", "x", "--workdir", tmp_path, "--seeds", *seeds)
    assert rc == 2 and len(err) == 1 and msg in err[0]
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 3, 4, 5
def test_interrupt_message_names_the_command_that_resumes(fake_cifar10, tmp_path, capsys, monkeypatch):
    c = ["--config", NAME, "--note", "int", "--workdir", tmp_path, "--device", "cpu", *_ov(fake_cifar10, "train.epochs=2")]
    real, calls = phase_i.train_epoch, []

    def dying(*a, **k):  # Ctrl-C in the second epoch; the CLI catches it itself
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(phase_i, "train_epoch", dying)
    rc = cli.main(["train", *map(str, c)])
    monkeypatch.setattr(phase_i, "train_epoch", real)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1
    assert err[0].startswith("fsa-lt: interrupted; resume it with: fsa-lt train --config") and err[0].endswith("--resume")
    resume = err[0].split("resume it with: ", 1)[1].split()[1:]
    assert cli.main(resume) == 0  # the printed command works as printed
    assert records.read_record(tmp_path / "log/phase_i" / NAME / "int")["segments"][1]["start_epoch"] == 1
    # `run --resume` is accepted (and, with nothing to resume, just reuses)
    assert cli.main(["run", "--resume", *map(str, c), "finetune.iterations=10", "finetune.eval_every=10",
                     "finetune.save_every=10"]) == 0
    # the summary's time per phase counts Phase I over both segments (its record's `seconds` is the
    # last segment's wall time only), and names the machine every segment ran on
    ev = json.loads((tmp_path / "log/run" / NAME / "int/summary.json").read_text())["evidence"]
    epochs = json.loads((tmp_path / "log/phase_i" / NAME / "int/metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert ev["phase_i"][0]["segments"] == 2 and ev["phase_i"][0]["seconds"] == pytest.approx(sum(e["seconds"] for e in epochs))
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        if model:
            assert ev["machine"]["processor"] == [model]
    md = (tmp_path / "log/run" / NAME / "int/summary.md").read_text()
    assert "over 2 epochs in 2 segments" in md and "Phase III: " in md and "per FSA run (mean of 1)" in md


def _hold_in_another_process(workdir, phase, note):
    """A separate process that takes the note's lock and keeps it (as a long run would)."""
    code = ("import sys, time; from pathlib import Path; from fsa_lt.phases import records; "
            "h = records.hold_note(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]); "
            "print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(workdir), phase, NAME, note], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_second_command_on_a_running_note_stops_and_a_killed_holder_frees_it(fake_cifar10, tmp_path, capsys):
    """`fsa-lt train --resume` or `fsa-lt run` typed while a background run of the same note is
    alive must not train beside it into the same files; a holder killed with -9 leaves no lock."""
    c = ["--config", NAME, "--note", "busy", "--workdir", tmp_path, "--device", "cpu",
         *_ov(fake_cifar10, *SHORT)]
    holder = _hold_in_another_process(tmp_path, "phase_i", "busy")
    try:
        before = _files(tmp_path)
        assert before == [f"log/phase_i/{NAME}/.busy.lock"]
        for cmd in (["train"], ["train", "--resume"], ["run", "--control"]):
            rc, _, err = _cli(capsys, *cmd, *c)
            assert rc == 5 and len(err) == 1, (cmd, err)
            assert f"phase_i of {NAME} / busy is being run by pid {holder.pid} " in err[0] and "wait for it" in err[0]
            assert _files(tmp_path) == before  # nothing made, nothing cleaned
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process: the same command now runs, and leaves no lock file
    assert _cli(capsys, "train", *c)[0] == 0
    assert not (tmp_path / "log/phase_i" / NAME / ".busy.lock").exists()
    assert records.read_record(tmp_path / "log/phase_i" / NAME / "busy") is not None
    # `run` checks every phase before any work: a busy Phase III stops it before Phase II is made
    holder = _hold_in_another_process(tmp_path, "phase_iii", "busy")
    try:
        rc, _, err = _cli(capsys, "run", "--control", *c)
        assert rc == 5 and len(err) == 1 and f"phase_iii of {NAME} / busy is being run by pid {holder.pid}" in err[0]
        assert not (tmp_path / "log/phase_ii").exists() and not (tmp_path / "feature").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_file_system_without_locks_is_not_taken_for_a_busy_note(tmp_path, monkeypatch):
    import errno

    fcntl = pytest.importorskip("fcntl")
    held = records.hold_note(tmp_path, "phase_i", NAME, "n")  # the real lock, then a second taker is refused
    with pytest.raises(BusyError, match=f"phase_i of {NAME} / n is being run by pid {os.getpid()} "):
        records.check_not_busy(tmp_path, "phase_i", NAME, "n")
    records.release_note(held)
    assert not any(tmp_path.iterdir())  # the lock file and the folders made for it went with it

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # e.g. a network mount without lock support
    assert records.hold_note(tmp_path, "phase_i", NAME, "n") is None
    records.check_not_busy(tmp_path, "phase_i", NAME, "n")  # no error


def test_status_tells_running_interrupted_and_finished_apart(fake_cifar10, tmp_path, capsys, monkeypatch):
    c = ["--config", NAME, "--workdir", tmp_path, "--device", "cpu"]
    assert _cli(capsys, "train", *c, "--note", "done", *_ov(fake_cifar10, "train.epochs=1"))[0] == 0
    real, calls = phase_i.train_epoch, []

    def dying(*a, **k):  # killed in the second of three epochs: last.pt holds epoch 1
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(phase_i, "train_epoch", dying)
    assert _cli(capsys, "train", *c, "--note", "cut", *_ov(fake_cifar10, "train.epochs=3"))[0] == 130
    monkeypatch.setattr(phase_i, "train_epoch", real)
    before = _files(tmp_path)

    def rows(*extra):
        rc, out, err = _cli(capsys, "status", "--workdir", tmp_path, "--json", *extra)
        assert rc == 0 and not err
        return {(r["phase"], r["note"]): r for r in json.loads(out)}

    top1 = json.loads((tmp_path / "log/phase_i" / NAME / "done/metrics.json").read_text())["final"]["top1"]
    r = rows()
    assert set(r) == {("phase_i", "done"), ("phase_i", "cut")}
    assert r["phase_i", "done"]["state"] == "finished" and f"final top1 {top1:.2f}" in r["phase_i", "done"]["detail"]
    assert r["phase_i", "cut"]["state"] == "interrupted" and "epoch 1/3 saved in last.pt" in r["phase_i", "cut"]["detail"]
    holder = _hold_in_another_process(tmp_path, "phase_i", "cut")
    try:
        r = rows("--note", "cut")
        assert list(r) == [("phase_i", "cut")] and r["phase_i", "cut"]["state"] == "running"
        assert f"pid {holder.pid} " in r["phase_i", "cut"]["detail"] and "epoch 1/3" in r["phase_i", "cut"]["detail"]
    finally:
        holder.kill()
        holder.wait()
    r = rows("--config", NAME)  # the killed holder's lock file is left: not running, and it says what ran
    assert r["phase_i", "cut"]["state"] == "interrupted" and "it was started as: " in r["phase_i", "cut"]["detail"]
    assert _files(tmp_path) == sorted(before + [f"log/phase_i/{NAME}/.cut.lock"])  # status itself wrote nothing
    rc, out, _ = _cli(capsys, "status", "--workdir", tmp_path)
    assert rc == 0 and out.splitlines()[0].split() == ["phase", "config", "note", "state", "detail"]
    assert _cli(capsys, "status", "--workdir", tmp_path, "--config", "other")[1].startswith("no runs under")
    rc, _, err = _cli(capsys, "status", "--workdir", tmp_path / "nowhere")
    assert rc == 2 and len(err) == 1 and "no such folder" in err[0]


def test_resume_with_nothing_to_resume_is_an_error(fake_cifar10, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        phase_i.train(load_config(NAME, "phase_i", _ov(fake_cifar10, "train.epochs=1")), "none", tmp_path, "cpu",
                      resume=True)
    assert not any(tmp_path.iterdir())


def test_seed_script_help_lists_mode_and_checkpoint():
    r = subprocess.run([sys.executable, str(ROOT / "phase_i_train_or_test.py"), "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: phase_i_train_or_test.py") and "--mode {train,test}" in r.stdout
    assert "--checkpoint" in r.stdout and "--resume" in r.stdout


def test_unknown_model_exits_2_and_leaves_no_folder(capsys, tmp_path, fake_cifar10):
    rc, _, err = _cli(capsys, "train", "--config", NAME, "--note", "m", "--workdir", tmp_path,
                      *_ov(fake_cifar10, "model.name=resnet33"))
    assert rc == 2 and len(err) == 1 and "'model.name' unknown model 'resnet33'" in err[0] and "resnet32" in err[0]
    assert not any(tmp_path.iterdir())


def test_errors_found_at_the_start_leave_no_run_folder(capsys, tmp_path):
    rc, _, err = _cli(capsys, "train", "--config", NAME, "--note", "d", "--workdir", tmp_path,
                      f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false")
    assert rc == 3 and len(err) == 1 and "cifar-10-batches-py" in err[0]
    rc, _, err = _cli(capsys, "finetune", "--config", NAME, "--note", "d", "--workdir", tmp_path)
    assert rc == 4 and len(err) == 1 and "Phase I of cifar10-LT_resnet32 / d has not been run" in err[0]
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 6: checkpoints
class Foreign:
    """An object a checkpoint must not hold."""


def test_broken_checkpoints_each_give_their_whole_one_line_message(finished, capsys, tmp_path):
    good = (finished / "checkpoints/phase_i" / NAME / "r1/last.pt").read_bytes()

    import io

    buf = io.BytesIO()
    torch.save({"model": Foreign()}, buf)
    cases = {"empty": (b"", "the file is empty (0 bytes)"),
             "truncated": (good[: len(good) // 3], "the file is truncated or corrupt"),
             "foreign": (buf.getvalue(), "it holds Python objects other than tensors and plain data (it names"),
             "text": (b"not a checkpoint\n" * 3, "it is not a PyTorch checkpoint (51 bytes, not a zip archive)")}
    for name, (data, want) in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        rc, _, err = _cli(capsys, "test", "--config", NAME, "--note", "x", "--workdir", tmp_path / "w",
                          "--checkpoint", p)
        assert rc == 4 and len(err) == 1, (name, err)
        assert want in err[0] and str(p) in err[0], (name, err[0])
        assert not err[0].rstrip().endswith(("is", "the", "your", "a")), err[0]  # not cut mid-sentence
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- 7, 8
def test_phase_ii_plain_path_equals_fast_path(finished, fake_cifar10, tmp_path):
    import shutil

    for top in ("checkpoints", "log"):
        shutil.copytree(finished / top / "phase_i", tmp_path / top / "phase_i")
    cfg = load_config(NAME, "phase_ii", _ov(fake_cifar10, *SHORT, "train.fast_path=off"))
    with pytest.raises(ConfigError, match="train.fast_path: auto -> off"):  # a setting of Phase I too
        phase_ii.extract(cfg, "r1", tmp_path, "cpu")
    rec_i = records.read_record(tmp_path / "log/phase_i" / NAME / "r1")
    phase_ii.extract(cfg, "r1", tmp_path, "cpu", upstream={"phase_i": rec_i})
    a_dir, b_dir = finished / "feature" / NAME / "r1", tmp_path / "feature" / NAME / "r1"
    a, b = store.load_shards(a_dir, store.read_index(a_dir)), store.load_shards(b_dir, store.read_index(b_dir))
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["fmaps"].float(), b["fmaps"].float(), rtol=2e-3, atol=2e-3)  # fp16 store
    torch.testing.assert_close(a["cams"].float(), b["cams"].float(), rtol=0, atol=2e-3)
    assert store.read_index(a_dir)["confusing"] == store.read_index(b_dir)["confusing"]


def test_phase_iii_h_r_must_match_the_store(finished, fake_cifar10):
    cfg = load_config(NAME, "phase_iii", _ov(fake_cifar10, *SHORT, "extract.h_r=0.95", "finetune.variant=hr"))
    with pytest.raises(ConfigError, match=r"Phase II of .* other settings .extract.h_r: 0.9 -> 0.95.*\(extract.h_r=0.9\)"):
        phase_iii.finetune(cfg, "r1", finished, "cpu")
    up = {"phase_i": records.read_record(finished / "log/phase_i" / NAME / "r1"),
          "phase_ii": records.read_record(finished / "log/phase_ii" / NAME / "r1")}
    with pytest.raises(ConfigError, match=r"extract.h_r=0.95 differs from the h_r=0.9 of the Phase II store"):
        phase_iii.finetune(cfg, "r1", finished, "cpu", upstream=up)


def test_float16_store_refuses_maps_beyond_its_range():
    class Big(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.fc, self.scale = torch.nn.Linear(2, 3), scale

        def forward_features(self, x):
            return x * self.scale

        def forward_head(self, f, pre_logits=False):
            return self.fc(f.mean((2, 3)))

        def get_classifier(self):
            return self.fc

    x = torch.rand(6, 2, 2, 2) + 0.5
    loader = [(x, torch.tensor([0, 1, 2, 0, 1, 2]))]
    with pytest.raises(ConfigError, match="beyond float16's range.*extract.dtype=float32"):
        phase_ii.forward_store(Big(1e5), loader, torch.device("cpu"), True, torch.float16)
    out = phase_ii.forward_store(Big(1e5), loader, torch.device("cpu"), True, torch.float32)
    assert torch.isfinite(out["fmaps"]).all()
    with pytest.raises(DataError, match="non-finite feature maps"):
        phase_ii.forward_store(Big(float("inf")), loader, torch.device("cpu"), False)


# ----------------------------------------------------------------------------- 9, 11
def test_progress_lines_without_a_terminal(monkeypatch):
    from fsa_lt.engine import run as run_mod

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    lines = []
    assert list(run_mod.progress(range(5), 5, "epoch 3/9", log=lines.append, every_s=0.0)) == list(range(5))
    assert len(lines) == 4 and lines[0].startswith("epoch 3/9: 1/5 steps (20%)") and "left" in lines[0]
    lines.clear()
    list(run_mod.progress(range(5), 5, "e", log=lines.append, every_s=3600.0))
    assert lines == []  # a fast epoch prints nothing extra


def test_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    from cifar_files import write_fake_cifar10

    write_fake_cifar10(str(tmp_path), n_per_class=5, n_test_per_class=2, seed=0)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    target.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    rc, _, err = _cli(capsys, "train", "--config", NAME, "--note", "p", "--workdir", tmp_path / "w",
                      f"dataset.root={tmp_path}", "dataset.download=false", "model.name=resnet20")
    assert rc == 3 and len(err) == 1 and str(target) in err[0] and "refused without running it" in err[0]
    assert "system" in err[0]
    assert not marker.exists() and not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- mutants
def test_resume_across_a_learning_rate_drop_equals_uninterrupted(fake_cifar10, tmp_path, monkeypatch):
    """The scheduler's state must come back on resume: the interruption falls after a drop."""
    extra = ["train.epochs=3", "train.deterministic=true", "train.milestones=[1,2]", "train.lr_factors=[0.1,0.01]"]
    cfg = load_config(NAME, "phase_i", _ov(fake_cifar10, *extra))
    phase_i.train(cfg, "straight", tmp_path, "cpu")
    with interrupted_phase_i(monkeypatch, epoch=3):
        phase_i.train(cfg, "resumed", tmp_path, "cpu")
    phase_i.train(cfg, "resumed", tmp_path, "cpu", resume=True)
    ck = tmp_path / "checkpoints/phase_i" / NAME
    a, b = load_checkpoint(ck / "straight/last.pt"), load_checkpoint(ck / "resumed/last.pt")
    # lr at the end of each epoch (that of the next step): x0.1 from epoch 1, x0.01 from epoch 2
    assert [e["lr"] for e in b["epochs"]] == pytest.approx([0.005, 0.0005, 0.0005])
    assert a["epochs"][2]["lr"] == b["epochs"][2]["lr"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.precision
def test_stored_maps_are_the_eval_mode_forward_of_the_phase_i_model(finished, fake_cifar10):
    from fsa_lt.data import build_dataset
    from fsa_lt.models import create_model

    cfg = load_config(NAME, "phase_ii", _ov(fake_cifar10, *SHORT))
    st = load_checkpoint(finished / "checkpoints/phase_i" / NAME / "r1/last.pt")
    model = create_model("resnet8", 10)
    model.load_state_dict(st["model"])
    model.eval()  # BatchNorm with its running statistics, not the batch's
    ds = build_dataset(cfg, "train", augment=False)
    x = torch.stack([ds[i][0] for i in range(24)])
    with torch.no_grad():
        want = model.forward_features(x)
    folder = finished / "feature" / NAME / "r1"
    got = store.load_shards(folder, store.read_index(folder))["fmaps"][:24].float()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(x), got, atol=2e-2)  # train mode would differ


def test_gamma_is_uniform_over_rows():
    """gamma ~ U(0, 1) per synthetic sample, and the tail share of the draws is round(gamma L)."""
    from fsa_lt.method import synthesize

    n, c, h, w = 4000, 4, 4, 4
    g = torch.Generator().manual_seed(0)
    ft, fd = torch.rand(n, c, h, w, generator=g), torch.rand(n, c, h, w, generator=g)
    cam = torch.linspace(0, 1, h * w).reshape(1, h, w).expand(n, h, w).contiguous()
    _, gamma, cs, cg = synthesize(ft, cam, fd, cam, 0.8, 0.2, generator=g, return_counts=True)
    assert gamma.shape == (n,)
    assert abs(float(gamma.mean()) - 0.5) < 0.02 and abs(float(gamma.std()) - (1 / 12) ** 0.5) < 0.02
    assert float(gamma.min()) < 0.01 and float(gamma.max()) > 0.99
    hist = torch.histc(gamma, bins=10, min=0, max=1)
    assert float(hist.min()) > 0.8 * n / 10 and float(hist.max()) < 1.2 * n / 10
    assert torch.equal(cs.sum(1), torch.round(gamma * h * w))


def test_seeds_run_each_seed_end_to_end_and_pool_them(fake_cifar10, tmp_path):
    payload = pipeline.run(NAME, "sd", tmp_path, "cpu", _ov(fake_cifar10, *SHORT), control=True, seeds=[0, 1],
                           print_fn=lambda *a: None, report=cli.run_report)
    assert [m["note"] for m in payload["members"]] == ["sd-s0", "sd-s1"] and payload["seeds"] == [0, 1]
    for s in (0, 1):  # each member trained with its seed, on the same long-tailed subset
        rec = records.read_record(tmp_path / "log/phase_i" / NAME / f"sd-s{s}")
        assert rec["config"]["seed"] == s and rec["config"]["dataset"]["subset_seed"] == 0
    rows = {r["key"]: r for r in payload["rows"]}
    per = [json.loads((tmp_path / "log/phase_iii" / NAME / f"sd-s{s}/metrics.json").read_text())["final"]["top1"]
           for s in (0, 1)]
    assert rows["fsa"]["n"] == 2 and rows["fsa"]["top1"] == pytest.approx(np.mean(per))
    assert rows["fsa"]["top1_std"] == pytest.approx(np.std(per, ddof=1))
    p1 = [json.loads((tmp_path / "log/phase_i" / NAME / f"sd-s{s}/metrics.json").read_text())["final"]["top1"]
          for s in (0, 1)]
    assert rows["phase_i"]["top1"] == pytest.approx(np.mean(p1))
    md = (tmp_path / "log/run" / NAME / "sd/summary+seeds0-1.md").read_text()  # a seed list's own table
    assert "## seed 0 (sd-s0)" in md and "## seed 1 (sd-s1)" in md and "2 Phase I seeds (0, 1" in md
    html = (tmp_path / "log/run" / NAME / "sd/report+seeds0-1.html").read_text()
    assert "seed 1 (sd-s1)" in html and 'id="curves"' in html


def test_a_list_setting_that_grew_or_shrank_is_a_change(finished, fake_cifar10):
    """train.milestones [160] -> [160, 180] is another schedule: compared element by element and by length."""
    one = load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT, "train.milestones=[160]", "train.lr_factors=[0.01]"))
    two = load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT, "train.milestones=[160,180]",
                                           "train.lr_factors=[0.01,0.0001]"))
    assert records.config_diff(one.to_dict(), two.to_dict(), "phase_i") == [
        "train.lr_factors: [0.01] -> [0.01, 0.0001]", "train.milestones: [160] -> [160, 180]"]
    assert records.config_diff(two.to_dict(), one.to_dict(), "phase_i") == [
        "train.lr_factors: [0.01, 0.0001] -> [0.01]", "train.milestones: [160, 180] -> [160]"]
    assert records.config_diff(two.to_dict(), two.to_dict(), "phase_i") == []
    # the finished run has the config's [160, 180]: a shorter list is refused with the key
    assert load_config(NAME, "phase_i", _ov(fake_cifar10, *SHORT)).train.milestones == [160, 180]
    with pytest.raises(ConfigError, match=r"train.milestones: \[160, 180\] -> \[160\]"):
        records.inspect_phase(finished, "phase_i", one, "r1")
