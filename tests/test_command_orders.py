"""Commands in the orders a user types them (issue #23): bad notes and work folders, forced runs cut
short, summaries of variants and seed lists, keys aimed at the wrong phase, the commands that read a
run, signals and pipes. Generated CIFAR files, ResNet-20, seconds-long phases."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, folder_digest, tiny_overrides
from fsa_lt import cli
from fsa_lt.cli import run_report
from fsa_lt.engine.checkpoint import load_checkpoint, save_checkpoint
from fsa_lt.phases import phase_iii, pipeline, records

NAME = "cifar10-LT_resnet32"
SHORT = ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10", "finetune.save_every=20"]
QUIET = {"print_fn": lambda *a: None, "report": run_report}  # the report as `fsa-lt run` writes it


def _ov(root, *extra):
    return tiny_overrides(root) + SHORT + list(extra)


def _cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def finished(fake_cifar10, tmp_path_factory):
    """`fsa-lt run --control` of note r1, finished."""
    wd = tmp_path_factory.mktemp("orders")
    pipeline.run(NAME, "r1", wd, "cpu", _ov(fake_cifar10), control=True, **QUIET)
    return wd


def _copy(finished, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    return wd


def _status(capsys, wd, *extra):
    rc, out, err = _cli(capsys, "status", "--workdir", wd, "--json", *extra)
    assert rc == 0 and not err, err
    return {(r["phase"], r["note"]): r for r in json.loads(out)}


# ----------------------------------------------------------------------------- 1, 10: notes, work folders
@pytest.mark.parametrize("note", ["../../x", "", ".", "..", "a/b", ".hidden"])
def test_a_note_is_one_plain_folder_name(note, capsys, tmp_path):
    wd = tmp_path / "a" / "b"
    for cmd in ("train", "run", "visualize"):
        rc, _, err = _cli(capsys, cmd, "--config", NAME, "--note", note, "--workdir", wd)
        assert rc == 2 and len(err) == 1 and f"--note {note!r}: a note is one plain folder name" in err[0], err
    assert not any(tmp_path.rglob("*"))  # nothing made, inside the work folder or beside it


def test_a_work_folder_that_is_a_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    for argv in (["train", "--config", NAME, "--note", "n", "--workdir", f],
                 ["run", "--config", NAME, "--note", "n", "--workdir", f / "sub"],
                 ["status", "--workdir", f]):
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and len(err) == 1 and f"--workdir {argv[-1]}: " in err[0] and "not a folder" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ----------------------------------------------------------------------------- 2: staging
def test_force_leaves_a_note_named_like_a_staging_folder_alone(finished, fake_cifar10, capsys, tmp_path):
    wd = _copy(finished, tmp_path)
    # the user's own finished note "r1.staging" (a copy of r1's Phase III, as a run under that note makes it)
    mine = []
    for top in ("checkpoints/phase_iii", "log/phase_iii", "run_summary/phase_iii"):
        src = wd / top / NAME / "r1"
        if src.is_dir():
            shutil.copytree(src, wd / top / NAME / "r1.staging")
            mine.append(wd / top / NAME / "r1.staging")
    before = [folder_digest(d) for d in mine]
    # a forced Phase III with another lr stages beside r1, and swaps in
    rc, out, err = _cli(capsys, "run", "--config", NAME, "--note", "r1", "--workdir", wd, "--device", "cpu", "--force",
                        *_ov(fake_cifar10, "phase_iii.finetune.lr=0.002"))
    assert rc == 0, err
    assert records.read_record(wd / "log/phase_iii" / NAME / "r1")["config"]["finetune"]["lr"] == 0.002
    assert [folder_digest(d) for d in mine] == before
    assert not list(wd.rglob(".r1.staging"))  # swapped in, nothing left
    assert ("phase_iii", "r1.staging") in _status(capsys, wd)  # a note like any other


# ----------------------------------------------------------------------------- 3: a forced run cut short
def test_a_forced_run_cut_in_phase_iii_marks_what_it_left_stale(finished, fake_cifar10, capsys, tmp_path, monkeypatch):
    wd = _copy(finished, tmp_path)
    c = ["--config", NAME, "--note", "r1", "--workdir", wd, "--device", "cpu"]
    new = _ov(fake_cifar10, "train.epochs=2")
    summary = wd / "log/run" / NAME / "r1"
    old_fsa = records.read_record(wd / "log/phase_iii" / NAME / "r1")
    real = phase_iii.finetune

    def killed_in_fsa(cfg, *a, **k):  # the control finishes, then the run dies in FSA's Phase III
        if cfg.finetune.augment:
            raise KeyboardInterrupt
        return real(cfg, *a, **k)

    monkeypatch.setattr(phase_iii, "finetune", killed_in_fsa)
    rc, _, err = _cli(capsys, "run", *c, "--control", "--force", *new)
    monkeypatch.setattr(phase_iii, "finetune", real)
    assert rc == 130, err
    # Phase I, II and the control are the new runs, FSA is the old one: status says so
    st = _status(capsys, wd)
    assert [st["phase_i", "r1"]["state"], st["phase_ii", "r1"]["state"], st["phase_iii", "r1-noaug"]["state"]] == \
        ["finished"] * 3
    assert records.read_record(wd / "log/phase_iii" / NAME / "r1")["run_id"] == old_fsa["run_id"]
    assert st["phase_iii", "r1"]["state"] == "stale" and "Phase I input has been redone" in st["phase_iii", "r1"]["detail"]
    # the table still showing the old FSA says it is out of date, at its top
    assert (summary / "summary.md").read_text().startswith("> **Out of date:** Phase I of")
    assert json.loads((summary / "summary.json").read_text())["stale"].startswith(f"Phase I of {NAME} / r1 was redone")
    assert 'class="stale"' in (summary / "report.html").read_text()
    # test mode refuses the stale checkpoint, in one line
    rc, _, err = _cli(capsys, "finetune", *c, "--mode", "test", *new)
    assert rc == 4 and len(err) == 1 and f"Phase III of {NAME} / r1 is out of date" in err[0], err
    # the same command finishes the job: FSA redone from the new Phase I, a fresh summary, all finished
    rc, _, err = _cli(capsys, "run", *c, "--control", "--force", *new)
    assert rc == 0, err
    st = _status(capsys, wd)
    assert {r["state"] for r in st.values()} == {"finished"}
    assert not (summary / "summary.md").read_text().startswith("> **Out of date")
    assert records.read_record(wd / "log/phase_iii" / NAME / "r1")["inputs"]["phase_i"]["run_id"] == \
        records.read_record(wd / "log/phase_i" / NAME / "r1")["run_id"]


# ----------------------------------------------------------------------------- 4, 5: summaries
def test_a_variant_summary_is_a_file_of_its_own_that_names_it(finished, fake_cifar10, tmp_path):
    wd = _copy(finished, tmp_path)
    out = wd / "log/run" / NAME / "r1"
    plain = (out / "summary.md").read_bytes()
    pipeline.run(NAME, "r1", wd, "cpu", _ov(fake_cifar10, "phase_iii.finetune.variant=v1", "phase_iii.seed=3"), **QUIET)
    assert (out / "summary.md").read_bytes() == plain  # the default table is as it was
    md = (out / "summary-v1.md").read_text()
    assert md.startswith(f"# {NAME} / r1, variant v1\n") and "Phase I seed 0; Phase III seed 3." in md
    js = json.loads((out / "summary-v1.json").read_text())
    assert js["variant"] == "v1" and js["phase_iii_seed_values"] == [[3]]
    assert [r["runs"] for r in js["rows"]] == [["r1"], ["r1-v1"]]
    assert (out / "report-v1.html").is_file() and (out / "per_class_accuracy-v1.png").is_file()


def test_seed_lists_write_their_own_summaries_and_the_figures_say_what_they_show(fake_cifar10, tmp_path, capsys,
                                                                                monkeypatch):
    # the digits demo: its --seeds are Phase I seeds, each end to end (the CIFAR demo's are Phase III seeds)
    name = "digits-LT_resnet20"
    quick = ["train.epochs=1", "finetune.iterations=20", "finetune.eval_every=10", "finetune.save_every=20"]
    c = ["--config", name, "--note", "d", "--workdir", tmp_path, "--device", "cpu"]
    assert _cli(capsys, "demo", *c, "--seeds", "0", *quick)[0] == 0
    out = tmp_path / "log/run" / name / "d"
    one = (out / "summary+seeds0.md").read_text()
    from fsa_lt.viz import figures as F
    from fsa_lt.viz import report

    shown = {}
    real = F.per_class_accuracy_figure

    def keep(counts, series, **kw):
        shown["series"], shown["title"] = series, kw.get("title")
        return real(counts, series, **kw)

    monkeypatch.setattr(F, "per_class_accuracy_figure", keep)
    assert _cli(capsys, "demo", *c, "--seeds", "0", "1", *quick)[0] == 0
    assert (out / "summary+seeds0.md").read_text() == one  # the one-seed table is still there, as it was
    two = (out / "summary+seeds0-1.md").read_text()
    assert "Phase I seeds 0, 1" in two and "Phase I seed 0;" in one
    assert not (out / "summary.md").exists()  # the default demo (seeds 0 1 2) has not run
    # per-class: the mean of the runs behind each row, read from the runs' own metrics
    series = dict(shown["series"])

    def per_class(phase, note):
        return json.loads((tmp_path / "log" / phase / name / note / "metrics.json").read_text())["final"]["per_class"]

    want = {"Phase I (plain training), mean of 2 runs": [per_class("phase_i", f"d-s{s}") for s in (0, 1)],
            "Phase III, No-Aug control, mean of 2 runs": [per_class("phase_iii", f"d-s{s}-noaug") for s in (0, 1)],
            "Phase III, FSA, mean of 2 runs": [per_class("phase_iii", f"d-s{s}") for s in (0, 1)]}
    assert set(series) == set(want)
    for label, lists in want.items():
        a = np.array([[np.nan if v is None else v for v in pc] for pc in lists], dtype=float)
        np.testing.assert_allclose(np.array([np.nan if v is None else v for v in series[label]], dtype=float),
                                   np.nanmean(a, 0))
    # the confusion matrices are of one run, and say which
    figs, _ = report.run_figures(tmp_path, name, "d", "cpu", suffix="+seeds0-1", print_fn=lambda *a: None)
    cm = next(f for f in figs if f["name"] == "confusion_matrices")
    assert "Phase I seed 0" in cm["title"] and "d-s0" in cm["title"] and "not the mean" in cm["caption"]
    pc = next(f for f in figs if f["name"] == "per_class_accuracy")
    assert "mean over the runs behind the row" in pc["caption"]


# ----------------------------------------------------------------------------- 6: keys aimed at the wrong phase
@pytest.mark.parametrize("key,owner", [("phase_iii.train.epochs=99", "Phase I"),
                                       ("phase_ii.dataset.imb_ratio=50", "Phase I"),
                                       ("phase_iii.extract.h_r=0.8", "Phase II")])
def test_a_prefixed_key_of_an_earlier_phase_is_refused_before_any_work(key, owner, fake_cifar10, capsys, tmp_path):
    for cmd in ("run", "compare", "visualize", "finetune"):
        rc, _, err = _cli(capsys, cmd, "--config", NAME, "--note", "k", "--workdir", tmp_path, "--device", "cpu",
                          *_ov(fake_cifar10, key))
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert f"override '{key}'" in err[0] and f"a setting of {owner}'s result" in err[0], err[0]
    assert not any(tmp_path.iterdir())
    from fsa_lt.config import load_config

    with pytest.raises(Exception, match="a setting of"):
        pipeline.run(NAME, "k", tmp_path, "cpu", _ov(fake_cifar10, key), **QUIET)
    assert not any(tmp_path.iterdir())
    load_config(NAME, "phase_iii", _ov(fake_cifar10, "extract.tau_s=0.7"))  # Phase III's own thresholds are fine


# ----------------------------------------------------------------------------- 7: commands that read a run
def test_visualize_takes_the_run_command_line_and_names_the_settings_to_give(fake_cifar10, capsys, tmp_path):
    base = tiny_overrides(fake_cifar10) + ["finetune.iterations=20", "finetune.eval_every=10",
                                           "finetune.save_every=20"]
    c = ["--config", NAME, "--note", "v", "--workdir", tmp_path, "--device", "cpu"]
    rc, _, err = _cli(capsys, "run", *c, *base, "phase_i.train.epochs=1", "phase_iii.finetune.n_a=2")
    assert rc == 0, err
    # the run's overrides as typed: accepted by visualize and by test mode
    rc, _, err = _cli(capsys, "visualize", *c, "--per-class", "1", *base, "phase_i.train.epochs=1",
                      "phase_iii.finetune.n_a=2")
    assert rc == 0, err
    assert any((tmp_path / "log/visualize" / NAME / "v").glob("cam_tail_*.png"))
    rc, _, err = _cli(capsys, "finetune", *c, "--mode", "test", *base, "phase_i.train.epochs=1",
                      "phase_iii.finetune.n_a=2")
    assert rc == 0, err
    # without them: one line naming the settings to give again, and no option visualize lacks
    rc, _, err = _cli(capsys, "visualize", *c, *base)
    assert rc == 2 and len(err) == 1, err
    assert "train.epochs: 1 -> 200" in err[0] and "(train.epochs=1)" in err[0] and "add --force" not in err[0]


# ----------------------------------------------------------------------------- 8: --force with the same settings
def test_run_force_with_the_same_settings_says_it_replaces_nothing(finished, fake_cifar10, capsys, tmp_path):
    wd = _copy(finished, tmp_path)
    ids = {ph: records.read_record(wd / "log" / ph / NAME / "r1")["run_id"] for ph in ("phase_i", "phase_ii", "phase_iii")}
    rc, out, err = _cli(capsys, "run", "--config", NAME, "--note", "r1", "--workdir", wd, "--device", "cpu", "--force",
                        "--control", *_ov(fake_cifar10))
    assert rc == 0, err
    assert ids == {ph: records.read_record(wd / "log" / ph / NAME / "r1")["run_id"] for ph in ids}
    assert "(--force retrains)" not in out and "nothing is replaced" in out
    helps = cli.build_parser()._subparsers._group_actions[0].choices
    run_force = next(a.help for a in helps["run"]._actions if "--force" in a.option_strings)
    assert "made with other settings" in run_force and "reused" in run_force
    train_force = next(a.help for a in helps["train"]._actions if "--force" in a.option_strings)
    assert "even when it has finished" in train_force
    # and train --force does what its help says: trains again with the same settings
    phase_i_ov = [o for o in _ov(fake_cifar10) if not o.startswith("finetune.")]
    rc, _, err = _cli(capsys, "train", "--config", NAME, "--note", "r1", "--workdir", wd, "--device", "cpu", "--force",
                      *phase_i_ov)
    assert rc == 0 and records.read_record(wd / "log/phase_i" / NAME / "r1")["run_id"] != ids["phase_i"]


# ----------------------------------------------------------------------------- 9, 11: pipes and signals
def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "fsa_lt.cli", "status", "--workdir", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=_env())
    p.stdout.close()  # `| head -1` that has gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(60) == 141 and err == "", err


def test_sigterm_prints_the_command_that_resumes(fake_cifar10, tmp_path):
    argv = ["train", "--config", NAME, "--note", "t", "--workdir", str(tmp_path), "--device", "cpu",
            *tiny_overrides(fake_cifar10), "train.epochs=50"]
    p = subprocess.Popen([sys.executable, "-m", "fsa_lt.cli", *argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=ROOT, env=_env())
    last = tmp_path / "checkpoints/phase_i" / NAME / "t/last.pt"
    t0 = time.time()
    while not last.is_file() and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.2)
    assert last.is_file(), "training did not save an epoch"
    p.send_signal(signal.SIGTERM)
    err = [ln for ln in p.stderr.read().decode().splitlines() if ln.strip()]
    assert p.wait(60) == 143
    assert len(err) == 1 and err[0].startswith("fsa-lt: stopped (SIGTERM); resume it with: fsa-lt train --config")
    assert err[0].endswith("--resume")
    st = records.inspect_phase(tmp_path, "phase_i", cli._phase_config(cli.build_parser().parse_args(argv), "phase_i"),
                               "t")
    assert st.status == "interrupted" and st.resume_from == last


# ----------------------------------------------------------------------------- 12: run --resume
def test_run_resume_with_nothing_to_resume_is_an_error_as_for_train(fake_cifar10, capsys, tmp_path):
    c = ["--config", NAME, "--note", "none", "--workdir", tmp_path, "--device", "cpu", "--resume", *_ov(fake_cifar10)]
    rc_train, _, err_train = _cli(capsys, "train", *c)
    rc_run, _, err_run = _cli(capsys, "run", *c)
    assert rc_train == rc_run == 4 and len(err_run) == 1 and "nothing to resume" in err_run[0], err_run
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 13: model.pretrained
class Foreign:
    """An object a weights file must not hold."""


def test_a_missing_or_unsafe_pretrained_file_is_said_before_the_data_are_read(capsys, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Foreign()}, bad)
    wd = tmp_path / "w"
    for path, want in ((tmp_path / "missing.pt", "weights file not found"),
                       (bad, "it holds Python objects other than tensors and plain data")):
        # the data folder does not exist either: the weights are checked first
        rc, _, err = _cli(capsys, "train", "--config", NAME, "--note", "p", "--workdir", wd, "--device", "cpu",
                          f"model.pretrained={path}", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false")
        assert rc == 4 and len(err) == 1, err
        assert err[0].startswith(f"fsa-lt: error: model.pretrained: ") and str(path) in err[0] and want in err[0]
        assert "weights_only" not in err[0]
    assert not wd.exists()


# ----------------------------------------------------------------------------- 15: damaged
def test_status_tells_a_checkpoint_changed_in_place(finished, capsys, tmp_path):
    wd = _copy(finished, tmp_path)
    last = wd / "checkpoints/phase_i" / NAME / "r1/last.pt"
    save_checkpoint(last, dict(load_checkpoint(last), epoch=99))  # still a valid file, not the one recorded
    st = _status(capsys, wd, "--note", "r1")
    assert st["phase_i", "r1"]["state"] == "damaged" and f"{last} has changed" in st["phase_i", "r1"]["detail"]
    assert st["phase_ii", "r1"]["state"] == "finished"


# ----------------------------------------------------------------------------- 16: help, README, test mode, TensorBoard
def test_every_option_has_help_and_the_readme_says_which_commands_take_device():
    import re

    choices = cli.build_parser()._subparsers._group_actions[0].choices
    for name, p in choices.items():
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, f"{name} {a.option_strings[0]} has no help"
    for phase in ("phase_i", "phase_iii"):
        mode = next(a for a in cli._seed_script_parser(phase)._actions if "--mode" in a.option_strings)
        assert mode.help
    text = (ROOT / "README.md").read_text()
    m = re.search(r"every command but `(\w+)` and `(\w+)` takes `--device", text)
    assert m, "README does not say which commands take --device"
    without = {n for n, p in choices.items() if not any("--device" in a.option_strings for a in p._actions)}
    assert without == {m.group(1), m.group(2)}


def test_test_mode_names_what_is_missing_and_the_file_it_writes(finished, fake_cifar10, capsys, tmp_path):
    rc, _, err = _cli(capsys, "finetune", "--config", NAME, "--note", "none", "--workdir", tmp_path, "--mode", "test",
                      *_ov(fake_cifar10))
    assert rc == 4 and len(err) == 1 and f"Phase III of {NAME} / none has not been run" in err[0], err
    assert not any(tmp_path.iterdir())
    wd = _copy(finished, tmp_path)
    rc, _, err = _cli(capsys, "test", "--config", NAME, "--note", "r1", "--workdir", wd, "--device", "cpu",
                      *_ov(fake_cifar10))
    assert rc == 0, err
    written = [p.name for p in (wd / "log/phase_i" / NAME / "r1").glob("test_*.json")]
    assert written == ["test_best_model.json"] and "`test_best_model.json`" in (ROOT / "README.md").read_text()


def test_a_rerun_that_runs_nothing_adds_no_tensorboard_file(finished, fake_cifar10, tmp_path):
    wd = _copy(finished, tmp_path)

    def events():
        return sorted((p.relative_to(wd), p.stat().st_size) for p in (wd / "run_summary").rglob("events.out.tfevents.*"))

    before = events()
    pipeline.run(NAME, "r1", wd, "cpu", _ov(fake_cifar10), control=True, **QUIET)
    after = events()
    assert len(after) == len(before)
    assert sum(s for _, s in after) <= sum(s for _, s in before) * 1.01
