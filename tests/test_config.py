"""Config schema: every key checked, errors name the file and the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from fsa_lt.config import Config, load_config, phase_files, split_phase_overrides
from fsa_lt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cifar10-LT_resnet32", "cifar10-LT_resnet18", "cifar10-LT_resnet34",
         "cifar100-LT_resnet32", "cifar100-LT_resnet18", "cifar100-LT_resnet34", "digits-LT_resnet20"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("phase", ["phase_i", "phase_ii", "phase_iii"])
def test_shipped_configs_load(name, phase):
    cfg = load_config(name, phase)
    assert cfg.name == name
    assert len(cfg.sources) == ["phase_i", "phase_ii", "phase_iii"].index(phase) + 1


def test_protocols_as_published():
    c = load_config("cifar10-LT_resnet32", "phase_iii")
    # LDAM-DRW: 200 epochs, lr 0.1, 5 warm-up epochs, x0.01 at 160, x0.0001 at 180, wd 2e-4
    assert (c.train.epochs, c.train.lr, c.train.warmup_epochs) == (200, 0.1, 5)
    assert c.train.milestones == [160, 180] and c.train.lr_factors == [0.01, 0.0001]
    assert c.train.weight_decay == pytest.approx(2e-4)
    # the paper's Phase III: N_t 16, N_a = N_f = 3, tau 0.8 / 0.2, lr 0.001, 6,400 iterations
    assert (c.finetune.n_t, c.finetune.n_a, c.extract.n_f) == (16, 3, 3)
    assert (c.extract.tau_s, c.extract.tau_g, c.extract.h_r) == (0.8, 0.2, 0.9)
    assert (c.finetune.lr, c.finetune.iterations) == (0.001, 6400)
    r18 = load_config("cifar10-LT_resnet18")
    assert (r18.train.epochs, r18.train.schedule, r18.train.step_size, r18.train.step_gamma) == (300, "step", 150, 0.1)
    assert r18.model.name == "resnet18_cifar"
    assert load_config("cifar100-LT_resnet32").dataset.name == "cifar100"


def test_overrides_typed():
    c = load_config("cifar10-LT_resnet32", "phase_i", ["train.epochs=2", "dataset.root=/data", "seed=3",
                                                      "train.milestones=[1, 2]", "train.lr_factors=[0.1, 0.01]",
                                                      "dataset.imb_ratio=50"])
    assert c.train.epochs == 2 and c.dataset.root == "/data" and c.seed == 3
    assert c.train.milestones == [1, 2] and c.dataset.imb_ratio == 50.0


@pytest.mark.parametrize("override, key", [
    ("train.epoch=2", "train.epoch"),
    ("train.epochs=two", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("dataset.imb_type=linear", "dataset.imb_type"),
    ("train.amp=3", "train.amp"),
    ("extract.tau_g=0.9", "extract.tau_g"),
    ("finetune.n_a=4", "finetune.n_a"),
    ("dataset.imb_ratio=0.5", "dataset.imb_ratio"),
    ("colour=red", "colour"),
])
def test_bad_overrides(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("cifar10-LT_resnet32", "phase_iii", [override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_file_errors_name_file_and_key(tmp_path):
    (tmp_path / "phase_i").mkdir()
    f = tmp_path / "phase_i" / "x.yaml"
    f.write_text("train:\n  epochs: 3\n  lr_schedule: cosine\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert str(f) in str(e.value) and "train.lr_schedule" in str(e.value)
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert "invalid YAML" in str(e.value) and str(f) in str(e.value)
    f.write_text("train:\n  epochs: 3\n")
    assert load_config(str(f)).train.epochs == 3
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-experiment")


def test_phase_files_merge_in_order(tmp_path):
    for ph, body in [("phase_i", "seed: 5\ntrain:\n  epochs: 7\n"), ("phase_ii", "extract:\n  tau_s: 0.7\n"),
                     ("phase_iii", "seed: 6\nfinetune:\n  iterations: 9\n")]:
        (tmp_path / ph).mkdir()
        (tmp_path / ph / "exp.yaml").write_text(body)
    c = load_config(str(tmp_path / "phase_iii" / "exp.yaml"), "phase_iii")
    assert (c.seed, c.train.epochs, c.extract.tau_s, c.finetune.iterations) == (6, 7, 0.7, 9)
    name, files = phase_files(str(tmp_path / "phase_iii" / "exp.yaml"), "phase_ii")
    assert name == "exp" and [f.parent.name for f in files][:2] == ["phase_i", "phase_ii"]


def test_split_phase_overrides():
    o = ["phase_i.train.epochs=2", "phase_iii.finetune.iterations=5", "seed=1"]
    assert split_phase_overrides(o, "phase_i") == ["train.epochs=2", "seed=1"]
    # a phase_i. override binds the later phases too (they record the Phase I they build on)
    assert split_phase_overrides(o, "phase_ii") == ["train.epochs=2", "seed=1"]
    assert split_phase_overrides(o, "phase_iii") == ["train.epochs=2", "finetune.iterations=5", "seed=1"]


def test_data_root_env(monkeypatch):
    monkeypatch.setenv("FSA_DATA_ROOT", "/somewhere")
    assert Config().data_root == "/somewhere"
    monkeypatch.delenv("FSA_DATA_ROOT")
    assert Config().data_root == "data"


def test_cli_config_error_exit_code(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "phase_i_train_or_test.py"), "--config", "cifar10-LT_resnet32",
                        "--workdir", str(tmp_path), "train.epoch=2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epoch" in lines[0] and lines[0].startswith("fsa-lt: error:")
    assert not any(tmp_path.iterdir())  # nothing written before the error
