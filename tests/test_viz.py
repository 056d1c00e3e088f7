"""Figures, `fsa-lt visualize` and the HTML run report, on a tiny pipeline run of generated CIFAR files."""
import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fsa_lt.config import load_config
from fsa_lt.viz import figures as F
from fsa_lt.viz.report import write_run_report

NAME = "cifar10-LT_resnet32"
NOTE = "viz"
PER_CLASS = 2


def _overrides(root):
    return [f"dataset.root={root}", "dataset.imb_ratio=10", "dataset.download=false", "dataset.num_workers=0",
            "model.name=resnet8", "train.epochs=1", "train.batch_size=64", "train.warmup_epochs=0",
            "train.lr=0.05", "train.eval_batch_size=200", "finetune.iterations=20", "finetune.eval_every=10",
            "finetune.save_every=20"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A whole `fsa-lt run --control` (which writes the report), then `visualize`."""
    from cifar_files import write_fake_cifar10
    from fsa_lt import cli

    root = str(tmp_path_factory.mktemp("cifar"))
    write_fake_cifar10(root, n_per_class=40, n_test_per_class=10, seed=0)
    work = tmp_path_factory.mktemp("work")
    rc = cli.main(["run", "--config", NAME, "--note", NOTE, "--workdir", str(work), "--device", "cpu", "--control",
                   *_overrides(root)])
    assert rc == 0
    cfg = load_config(NAME, "phase_iii", _overrides(root))
    figs = F.visualize(cfg, NOTE, work, "cpu", per_class=PER_CLASS, print_fn=lambda *a: None)
    return {"root": root, "work": work, "cfg": cfg, "figures": figs}


def _png(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    w, h = F.png_size(data)
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return w, h


def _expected(figsize_px):
    w, h = figsize_px
    fig = F.new_figure(w, h)
    # what matplotlib itself makes of figsize x dpi
    return int(fig.get_size_inches()[0] * fig.dpi), int(fig.get_size_inches()[1] * fig.dpi)


# ----------------------------------------------------------------------------- unit
def test_png_size_rejects_non_png():
    with pytest.raises(ValueError):
        F.png_size(b"GIF89a" + b"\x00" * 40)
    fig = F.new_figure(321, 123)
    assert F.png_size(F.render_png(fig)) == (321, 123) == F.figure_pixels(fig)


def test_large_confusion_matrix_has_no_cell_text():
    K = 60
    rng = np.random.RandomState(0)
    counts = np.sort(rng.randint(5, 500, K))[::-1]
    cm = rng.randint(0, 5, (K, K)) + np.eye(K, dtype=int) * 20
    fig = F.confusion_figure([("a", cm), ("b", cm)], counts)
    assert all(len(ax.texts) == 0 for ax in fig.axes)
    assert _png(F.render_png(fig)) == F.CONFUSION_PX
    small = F.confusion_figure([("a", cm[:10, :10])], counts[:10])
    assert sum(len(ax.texts) for ax in small.axes) >= 10


# ----------------------------------------------------------------------------- visualize
def test_visualize_writes_cam_and_synthetic_figures(tiny_run):
    work, cfg = tiny_run["work"], tiny_run["cfg"]
    index = json.loads((work / "feature" / NAME / NOTE / "index.json").read_text())
    out = work / "log" / "visualize" / NAME / NOTE
    names = sorted(p.name for p in out.glob("*.png"))
    # its own folder: the Phase II run's record and folder are as the phase left them
    from fsa_lt.phases import records

    assert not (work / "log" / "phase_ii" / NAME / NOTE / "figures").exists()
    assert records.inspect_phase(work, "phase_ii", cfg, NOTE).status != "absent"
    assert records.read_record(work / "log" / "phase_ii" / NAME / NOTE)["outputs"]
    tail = index["tail"]
    assert len(tail) >= 1
    expect_cam = {f"cam_tail_{c:03d}_" for c in tail}
    assert {n[:13] for n in names if n.startswith("cam_tail_")} == expect_cam
    assert "synthetic.png" in names
    assert sorted(p.name for p in tiny_run["figures"]) == names
    n_f = cfg.extract.n_f
    for n in names:
        size = _png(out / n)
        if n.startswith("cam_tail_"):
            rows = PER_CLASS * (1 + n_f)
            assert size == _expected(F.grid_pixels(rows, 4))
        else:
            assert size == _expected(F.grid_pixels(PER_CLASS, 1 + 2 * cfg.finetune.n_a, row_title=True))
    # a 32 x 32 CIFAR image shows at >= 128 px
    assert F.PANEL_PX >= 128


def test_visualize_online_store(tiny_run, tmp_path):
    """Online mode: no stored maps, the CAMs of the images shown come from the Phase I model."""
    from fsa_lt.phases import phase_ii

    work = tmp_path
    for top in ("checkpoints", "log"):  # the finished Phase I, in another work folder
        shutil.copytree(tiny_run["work"] / top / "phase_i" / NAME / NOTE, work / top / "phase_i" / NAME / NOTE)
    cfg = load_config(NAME, "phase_iii", _overrides(tiny_run["root"]) + ["extract.mode=online"])
    phase_ii.extract(cfg, NOTE, work, "cpu")
    assert not list((work / "feature" / NAME / NOTE).glob("shard_*"))
    figs = F.visualize(cfg, NOTE, work, "cpu", per_class=1, max_tail_classes=1, print_fn=lambda *a: None)
    assert [p.name for p in figs][-1] == "synthetic.png" and len(figs) == 2
    assert _png(figs[0]) == _expected(F.grid_pixels(1 + cfg.extract.n_f, 4))


# ----------------------------------------------------------------------------- report
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.attrs, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        if tag == "img":
            self.imgs.append(d)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "action", "data", "poster", "background") and v is not None:
                self.attrs.append((tag, k, v))


def _report(tiny_run):
    return tiny_run["work"] / "log" / "run" / NAME / NOTE / "report.html"


def test_run_plots_have_fixed_sizes(tiny_run):
    out = tiny_run["work"] / "log" / "run" / NAME / NOTE
    for name, px in (("curves", F.CURVES_PX), ("per_class_accuracy", F.PER_CLASS_PX),
                     ("confusion_matrices", F.CONFUSION_PX), ("confusing_classes", F.GRAPH_PX)):
        assert _png(out / f"{name}.png") == _expected(px) == px, name


def test_report_is_self_contained(tiny_run):
    # the report written by `run` has the run plots; rewrite it now that visualize ran
    # (it then embeds the Phase II figures too), as a user would after `fsa-lt visualize`
    path = write_run_report(tiny_run["work"], NAME, NOTE, print_fn=lambda *a: None, device="cpu")
    assert path == _report(tiny_run)
    text = path.read_text(encoding="utf-8")
    p = _Refs()
    p.feed(text)
    n_phase_ii = len(tiny_run["figures"])
    assert len(p.imgs) == 4 + n_phase_ii  # curves, per-class, confusion, graph + visualize's figures
    for img in p.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        w, h = _png(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert (int(img["width"]), int(img["height"])) == (w, h)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    for tag, k, v in p.attrs:
        assert v.startswith("data:"), (tag, k, v[:80])
        assert "http://" not in v and "https://" not in v and not v.startswith("//")
    assert not re.search(r"https?://", text)
    assert "@import" not in text and "url(" not in text
    # the summary table, the configs and the versions
    summary = json.loads((path.parent / "summary.json").read_text())
    for row in summary["rows"]:
        assert row["model"] in text
    assert "phase_iii" in text and "finetune" in text and "resnet8" in text
    env = json.loads((tiny_run["work"] / "log" / "phase_i" / NAME / NOTE / "environment.json").read_text())
    assert env["torch"] in text


def test_tensorboard_has_images_and_scalars(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tiny_run["work"] / "run_summary" / "run" / NAME / NOTE
    assert list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"run/per_class_accuracy", "run/confusion_matrices", "run/confusing_classes"} <= set(tags["images"])
    assert "summary/phase_iii_fsa/top1" in tags["scalars"] and "summary/phase_i/top1" in tags["scalars"]
    im = acc.Images("run/per_class_accuracy")[-1]
    assert (im.width, im.height) == F.PER_CLASS_PX


def _chromium():
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    text = _report(tiny_run).read_text(encoding="utf-8")
    n_img = len(re.findall(r"<img\b", text))
    probe = ("<script>window.addEventListener('load', function () { var n = 0, im = document.images;"
             " for (var i = 0; i < im.length; i++) { if (im[i].complete && im[i].naturalWidth > 0) n++; }"
             " document.title = 'loaded:' + n + '/' + im.length; });</script>\n")
    copy = tmp_path / "report_probe.html"
    copy.write_text(text + probe, encoding="utf-8")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish in 90 s")
    m = re.search(r"<title>loaded:(\d+)/(\d+)</title>", res.stdout)
    assert m, f"no probe result; chromium rc {res.returncode}: {res.stderr[-500:]}"
    assert int(m.group(1)) == int(m.group(2)) == n_img


def test_very_large_confusion_matrix_is_binned():
    K = 900
    counts = np.arange(K, 0, -1)
    cm = np.eye(K, dtype=np.int64) * 3 + 1
    fig = F.confusion_figure([("a", cm)], counts)
    ims = [a.images[0] for a in fig.axes if a.images]
    assert ims[0].get_array().shape == (F.MAX_CM_BINS, F.MAX_CM_BINS)
    assert _png(F.render_png(fig)) == F.CONFUSION_PX


def test_confusing_graph_caps_tail_classes():
    K = 100
    counts = np.arange(200, 200 - K, -1)
    tail = list(range(40, K))
    conf = {t: [0, 1, 2] for t in tail}
    scores = np.full((K, K), 0.01)
    fig = F.confusing_graph_figure(scores, tail, conf, counts, head=list(range(40)), max_tail=10)
    assert _png(F.render_png(fig)) == F.GRAPH_PX
    ax = fig.axes[0]
    assert len([p for p in ax.patches if type(p).__name__ == "FancyArrowPatch"]) == 30
