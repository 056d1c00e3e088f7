"""The run report: plots of a finished `fsa-lt run` and one self-contained HTML page.

`write_run_report(workdir, config, note)` (the command line hands it to `fsa_lt.phases.pipeline`'s
`run` and `compare`, which call it when done) writes
into ``<workdir>/log/run/<config>/<note>/``

    curves.png               Phase I test top-1 and training loss by epoch, Phase III test
                             top-1 by iteration, one line per run (seed)
    per_class_accuracy.png   per-class test accuracy of Phase I and Phase III (and the
                             No-Aug control when it ran) against training-set size; with
                             several runs behind a row, the mean over them (the legend says
                             over how many)
    confusion_matrices.png   row-normalised confusion matrices before (Phase I) and after
                             (Phase III, FSA) of one run, named when the summary has several;
                             per-cell numbers only for K <= 50
    confusing_classes.png    graph of the tail classes and their confusing classes
    report.html              the summary table, these figures (and the Phase II figures
                             of `fsa-lt visualize` when they exist) as data: URIs, the
                             resolved configs and the versions; no external resource

and adds the figures (images tab), the summary scalars and the table (text tab) to
TensorBoard under ``<workdir>/run_summary/run/<config>/<note>/`` (a report is one picture of the
summary, so writing it again replaces the earlier event file instead of adding one).

A summary with a suffix (``summary-<variant>+seeds0-1.json``, see `fsa_lt.phases.pipeline.
summary_suffix`) has its own report and figures with the same suffix (``report-<variant>+seeds0-1
.html``), and its TensorBoard record in ``report<suffix>/`` below the note's.

The confusion matrices are read from ``metrics.json`` (key ``confusion_matrix``, or
``final.confusion_matrix``) when a phase saved them; otherwise they are computed by
evaluating ``last.pt`` of Phase I and Phase III on the test set.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import numpy as np
import torch

from . import figures as F

COLUMNS = ("top1", "many", "medium", "few", "head", "tail")
RUN_FIGURES = ("curves", "per_class_accuracy", "confusion_matrices", "confusing_classes")


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def config_from_dict(d: dict, name: str):
    """A Config from a resolved config dict (as saved in summary.json)."""
    from ..config import Config, apply_mapping

    cfg = Config()
    apply_mapping(cfg, {k: v for k, v in d.items() if k not in ("name", "sources")}, "summary.json")
    cfg.name = d.get("name") or name
    cfg.sources = list(d.get("sources") or [])
    return cfg


def _load_cfg(workdir: Path, config: str, summary: dict | None, phase: str = "phase_iii"):
    if summary and summary.get("configs", {}).get(phase):
        return config_from_dict(summary["configs"][phase], config)
    from ..config import load_config

    return load_config(config, phase)


def _saved_confusion(log_dir: Path):
    """The final model's confusion matrix as the phase saved it (``confusion_matrix.pt``)."""
    path = log_dir / "confusion_matrix.pt"
    if not path.is_file():
        return None
    try:
        return np.asarray(torch.load(path, map_location="cpu", weights_only=True), dtype=np.int64)
    except Exception:
        return None


@torch.no_grad()
def evaluate_confusion(cfg, checkpoint: Path, phase: str, num_classes: int, device) -> np.ndarray:
    """K x K confusion matrix (rows true class) of a checkpoint on the test set (this process only, fp32)."""
    from ..data import build_dataset, make_loader
    from ..engine.metrics import confusion_matrix
    from ..engine.trainer import forward_in_chunks
    from ..phases.common import load_phase_model

    model, _ = load_phase_model(cfg, checkpoint, phase, num_classes, device, expect_phase=phase)
    model.eval()
    test_set = build_dataset(cfg, "test")
    loader = make_loader(test_set, cfg, device, train=False, batch_size=cfg.train.eval_batch_size, shard=False)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        logits = forward_in_chunks(model, x)  # fp32, as every evaluation (engine.trainer.PRECISION_RULE)
        cm += confusion_matrix(logits.argmax(1).cpu(), y.cpu(), num_classes)
    return cm.numpy()


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v) -> str:
    return "–" if v is None else f"{float(v):.2f}"


def _tag(name: str) -> str:
    n = name.lower()
    if "no-aug" in n or "noaug" in n or "augmentation off" in n:
        return "phase_iii_noaug"
    if "phase iii" in n:
        return "phase_iii_fsa"
    if "phase i" in n:
        return "phase_i"
    return F.slug(n).lower()


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1450px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; max-width: 1000px; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.note { color: #666; font-size: 0.9em; }
"""


def _rows_html(rows: list[dict], diffs: dict | None = None) -> str:
    """A table of summary rows; with `diffs` (a comparison), the input, the choice and the paired
    top-1 difference to FSA as well."""
    from ..phases.summary import cell

    e = html.escape
    extra = diffs is not None
    out = ["<table><thead><tr><th>model</th>" + ("<th>input</th><th>choice</th>" if extra else "") + "<th>n</th>"
           + "".join(f"<th>{c}</th>" for c in COLUMNS) + ("<th>top1 minus FSA</th>" if extra else "")
           + "</tr></thead><tbody>"]
    for r in rows:
        signed = bool(r.get("difference"))
        info = f"<td>{e(str(r.get('input', '-')))}</td><td>{e(str(r.get('choice', '-')))}</td>" if extra else ""
        d = (diffs or {}).get(r.get("key"))
        tail = (f"<td>{'–' if d is None or d.get('top1') is None else e(cell(d['top1'], d.get('top1_std'), signed=True))}"
                "</td>") if extra else ""
        out.append(f"<tr><td>{e(str(r.get('model', '')))}</td>{info}<td>{r.get('n', 1)}</td>"
                   + "".join(f"<td>{'–' if r.get(c) is None else e(cell(r[c], r.get(f'{c}_std'), signed=signed))}</td>"
                             for c in COLUMNS) + tail + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure_html(fig: dict) -> str:
    w, h = F.png_size(fig["png"])
    return (f'<figure id="{html.escape(fig["name"])}"><img src="{_b64_png(fig["png"])}" width="{w}" height="{h}" '
            f'alt="{html.escape(fig["title"])}"><figcaption><b>{html.escape(fig["title"])}.</b> '
            f'{html.escape(fig.get("caption", ""))}</figcaption></figure>')


def build_html(title: str, intro: str, summary: dict | None, run_figs: list[dict], phase_ii_figs: list[dict],
               configs: dict, env: dict | None, problems: list[str], compare: dict | None = None) -> str:
    import yaml

    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{e(intro)}</p>"]
    parts.append("<h2>Summary</h2>")
    rows = (summary or {}).get("rows") or []
    if rows:
        parts.append(_rows_html(rows))
        parts.append('<p class="note">Test accuracy in %, final models (not test-selected); mean ± sample std '
                     'where n runs (seeds) stand behind a row. many / medium / few: more than 100 / 20 to 100 / '
                     'fewer than 20 training images; head / tail: the h_r split of the Phase II store; – : no class '
                     'in the group.</p>')
        members = (summary or {}).get("members") or []
        if len(members) > 1:
            for m in members:
                parts.append(f"<h3>seed {e(str(m.get('seed')))} ({e(str(m.get('note')))})</h3>")
                parts.append(_rows_html(m.get("rows") or []))
        for line in ((summary or {}).get("evidence") or {}).get("text") or []:
            parts.append(f'<p class="note">{e(line)}</p>')
        times = (summary or {}).get("times_s") or {}
        if times:
            parts.append('<p class="note">Time of the invocation that wrote the summary: '
                         + e(", ".join(f"{k} {float(v):.0f} s" for k, v in times.items())) + ".</p>")
    else:
        parts.append("<p>No summary.json found.</p>")
    if problems:
        parts.append("<p><b>Not shown:</b></p><ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>")
    if compare and compare.get("rows"):
        parts.append("<h2>FSA and the baselines (fsa-lt compare)</h2>")
        parts.append(_rows_html(compare["rows"], compare.get("diffs") or {}))
        seeds = compare.get("phase_iii_seeds")
        val = compare.get("validation")
        parts.append('<p class="note">Every method on the same frozen Phase I backbone; '
                     + (f"mean ± sample std over Phase III seeds {e(', '.join(map(str, seeds)))}" if seeds else "one seed")
                     + ". Choices made on " + (f"the validation split ({e(val)})" if val else
                                               "nothing (no validation split: every method at its fixed default)")
                     + "; never on the test set. Last column: top-1 minus FSA's, paired run by run.</p>")
        recipes = compare.get("recipes") or {}
        if recipes:
            parts.append("<ul>" + "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in recipes.items()) + "</ul>")
    parts.append("<h2>Run figures</h2>")
    parts.extend(_figure_html(f) for f in run_figs)
    if phase_ii_figs:
        parts.append("<h2>Phase II: CAMs, decomposition, synthetic samples</h2>")
        parts.extend(_figure_html(f) for f in phase_ii_figs)
    parts.append("<h2>Resolved configurations</h2>")
    for ph, cfgd in (configs or {}).items():
        parts.append(f"<details><summary>{e(ph)}</summary><pre>{e(yaml.safe_dump(cfgd, sort_keys=False))}</pre>"
                     "</details>")
    parts.append("<h2>Versions</h2>")
    if env:
        parts.append("<table><tbody>" + "".join(
            f"<tr><td>{e(str(k))}</td><td style=\"text-align:left\">{e(json.dumps(v) if not isinstance(v, str) else v)}"
            "</td></tr>" for k, v in env.items()) + "</tbody></table>")
    else:
        parts.append("<p>No environment.json found.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _phase_ii_figures(workdir: Path, config: str, note: str, limit: int = 12) -> list[dict]:
    folder = F.figures_dir(workdir, config, note)
    if not folder.is_dir():
        return []
    out = []
    files = sorted(folder.glob("cam_tail_*.png"))[:limit] + sorted(folder.glob("synthetic*.png"))
    for p in files:
        data = p.read_bytes()
        try:
            F.png_size(data)
        except ValueError:
            continue
        if p.name.startswith("synthetic"):
            title, cap = "Synthetic tail samples", ("Each row: a real tail sample and, per confusing class, the "
                                                    "locations drawn from the tail map (red) and from the donor map "
                                                    "(blue) with the mixing ratio gamma.")
        else:
            title, cap = f"CAMs and masks: {p.stem}", ("Training images of a tail class and of its confusing "
                                                      "classes: image, CAM of the own class, class-specific and "
                                                      "class-generic locations.")
        out.append({"name": f"phase_ii_{p.stem}", "title": title, "caption": cap + f" ({p.name})", "png": data})
    return out


def _notes(summary: dict | None, note: str) -> dict:
    """The runs the figures are drawn from: the first member's Phase I note and its first FSA and
    control runs (as the summary names them), and every member's runs for the curves."""
    members = (summary or {}).get("members") or [{"note": note, "rows": []}]

    def runs(m, key):
        return next((r.get("runs") or [] for r in m.get("rows") or [] if r.get("key") == key), [])

    first = members[0]
    return {"phase_i": first["note"], "fsa": (runs(first, "fsa") or [note])[0],
            "control": (runs(first, "control") or [f"{note}-noaug"])[0],
            "members": [{"seed": m.get("seed"), "note": m["note"], "fsa": runs(m, "fsa"), "control": runs(m, "control")}
                        for m in members]}


def _mean_per_class(lists: list) -> list | None:
    """The per-class mean over runs (None for a class no run has a value for)."""
    if not lists:
        return None
    a = np.array([[np.nan if v is None else float(v) for v in pc] for pc in lists], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        seen = ~np.isnan(a)
        mean = np.where(seen.any(0), np.nansum(a, 0) / np.maximum(seen.sum(0), 1), np.nan)
    return [None if np.isnan(v) else float(v) for v in mean]


def run_figures(workdir, config: str, note: str, device=None, compute_confusion: bool = True,
                print_fn=print, suffix: str = "") -> tuple[list[dict], list[str]]:
    """The run plots as PNG bytes: [{name, title, caption, png}], and what could not be made."""
    from ..engine.run import resolve_device
    from ..phases import store

    workdir = Path(workdir)
    summary = _read_json(workdir / "log" / "run" / config / note / f"summary{suffix}.json")
    cfg = _load_cfg(workdir, config, summary)
    notes = _notes(summary, note)
    folder = workdir / "feature" / config / notes["phase_i"]
    index = store.read_index(folder)
    counts = np.asarray(index["class_counts"], dtype=np.int64)
    K = len(counts)
    head, tail = index["head"], index["tail"]
    names = index.get("class_names")  # Phase II keeps them; an older store: read the data set
    if not names:
        try:
            from ..data import build_dataset

            names = list(build_dataset(cfg, "train", augment=False).classes)
        except Exception as exc:  # names are a nicety: the class ids will do
            print_fn(f"[report] class names unavailable ({str(exc).splitlines()[0][:120]}); using class ids")
    if not names or len(names) != K:
        names = [str(i) for i in range(K)]
    logs = {k: workdir / "log" / ph / config / n for k, ph, n in
            (("phase_i", "phase_i", notes["phase_i"]), ("phase_iii", "phase_iii", notes["fsa"]),
             ("control", "phase_iii", notes["control"]))}
    figs, problems = [], []

    curves = _curves(workdir, config, notes)
    if curves is not None:
        figs.append(curves)
    else:
        problems.append("training curves: no Phase I history found")

    # per-class accuracy: every run behind a row, averaged (the table's rows are means too)
    members = notes["members"]
    behind = {"phase_i": [("phase_i", m["note"]) for m in members],
              "control": [("phase_iii", r) for m in members for r in m["control"]],
              "phase_iii": [("phase_iii", r) for m in members for r in m["fsa"]]}
    series, many = [], False
    for key, label in (("phase_i", "Phase I (plain training)"), ("control", "Phase III, No-Aug control"),
                       ("phase_iii", "Phase III, FSA")):
        runs = behind[key] or [("phase_i" if key == "phase_i" else "phase_iii",
                                notes[{"phase_i": "phase_i", "control": "control", "phase_iii": "fsa"}[key]])]
        lists = []
        for ph, n in runs:
            m = _read_json(workdir / "log" / ph / config / n / "metrics.json")
            if m and m.get("final") and m["final"].get("per_class") is not None:
                lists.append(m["final"]["per_class"])
        if lists:
            many = many or len(lists) > 1
            series.append((label + (f", mean of {len(lists)} runs" if len(lists) > 1 else ""), _mean_per_class(lists)))
    if series:
        fig = F.per_class_accuracy_figure(counts, series, head=head, names=names,
                                          title=f"{config} / {note}: per-class test accuracy"
                                                + (" (mean over the runs of each row)" if many else ""))
        figs.append({"name": "per_class_accuracy", "title": "Per-class accuracy against training-set size",
                     "caption": "Each point is one class; x: its training images (log scale, most frequent on the "
                                "left), y: its test accuracy" + (", the mean over the runs behind the row (the legend "
                                "says how many), as in the table" if many else "") + ". The dashed line separates "
                                "head and tail (h_r split).",
                     "png": F.render_png(fig)})
    else:
        problems.append("per-class accuracy: no metrics.json with final.per_class")

    # confusion matrices before / after: of one run, named when the table stands on several
    several = len(members) > 1 or any(len(m["fsa"]) > 1 for m in members)
    one = ""
    if several:
        first = members[0]
        seed = f"Phase I seed {first['seed']}, " if first.get("seed") is not None else ""
        one = (f"one run of {len(behind['phase_iii'])}: {seed}Phase I {notes['phase_i']}, FSA {notes['fsa']}")
    mats = []
    dev = None
    for key, ph, label in (("phase_i", "phase_i", "before: Phase I" + (f" ({notes['phase_i']})" if several else "")),
                           ("phase_iii", "phase_iii", "after: Phase III, FSA" + (f" ({notes['fsa']})" if several else ""))):
        cm = _saved_confusion(logs[key])
        if cm is None and compute_confusion:
            ck = workdir / "checkpoints" / ph / config / (notes["phase_i"] if ph == "phase_i" else notes["fsa"]) / "last.pt"
            if ck.is_file():
                try:
                    dev = dev or resolve_device(device)
                    pcfg = _load_cfg(workdir, config, summary, ph)
                    cm = evaluate_confusion(pcfg, ck, ph, K, dev)
                except Exception as exc:
                    problems.append(f"confusion matrix {ph}: {str(exc).splitlines()[0][:200]}")
            else:
                problems.append(f"confusion matrix {ph}: {ck} not found")
        if cm is not None:
            if cm.shape != (K, K):
                problems.append(f"confusion matrix {ph}: shape {cm.shape}, expected {K} x {K}")
                continue
            mats.append((label, cm))
    if mats:
        fig = F.confusion_figure(mats, counts, names=names)
        figs.append({"name": "confusion_matrices", "title": "Confusion matrices before and after Phase III"
                     + (f" ({one})" if one else ""),
                     "caption": (f"Of {one}, not the mean of the table's rows. " if one else "")
                                + "Rows: true class, columns: predicted class, each row in % of its test images; "
                                "classes sorted by training frequency (most frequent first), so the tail is at "
                                "the bottom right." + (" Numbers in the cells for K <= 50." if K <= 50 else ""),
                     "png": F.render_png(fig)})

    # confusing-class graph
    try:
        scores = store.load_confusion(folder)
        conf = {int(k): [int(u) for u in v] for k, v in index["confusing"].items()}
        fig = F.confusing_graph_figure(scores.numpy(), tail, conf, counts, head=head, names=names,
                                       title=f"{config} / {note}: confusing classes of the tail classes")
        figs.append({"name": "confusing_classes", "title": "Confusing classes of the tail classes",
                     "caption": "Arrow t → u: u is one of the confusing classes of tail class t (Phase II), "
                                "labelled with the mean softmax score of u over the training images of t "
                                "(Phase I model, no augmentation).", "png": F.render_png(fig)})
    except Exception as exc:
        problems.append(f"confusing-class graph: {str(exc).splitlines()[0][:200]}")
    return figs, problems


def _curves(workdir: Path, config: str, notes: dict) -> dict | None:
    """Phase I test top-1 and training loss by epoch, Phase III test top-1 by iteration; a line per run."""
    p1, p3 = [], []
    for i, m in enumerate(notes["members"]):
        label = f"seed {m['seed']}" if m["seed"] is not None else m["note"]
        met = _read_json(workdir / "log" / "phase_i" / config / m["note"] / "metrics.json") or {}
        if met.get("history") or met.get("epochs"):
            p1.append((label, met.get("history") or [], met.get("epochs") or []))
        for kind in ("fsa", "control"):
            for r in m[kind]:
                h = (_read_json(workdir / "log" / "phase_iii" / config / r / "metrics.json") or {}).get("history")
                if h:
                    p3.append((r, kind, h, i))
    if not p1:
        return None
    fig = F.curves_figure(p1, p3, title=f"{config}: training curves")
    return {"name": "curves", "title": "Training curves",
            "caption": "Left: Phase I test top-1 at the evaluated epochs; middle: Phase I training loss by epoch; "
                       "right: Phase III test top-1 by iteration (FSA solid, No-Aug control dashed). One line per run.",
            "png": F.render_png(fig)}


def _tensorboard(workdir: Path, config: str, note: str, figs: list[dict], summary: dict | None,
                 suffix: str = "") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    from ..phases.summary import table

    log_dir = workdir / "run_summary" / "run" / config / note
    if suffix:
        log_dir = log_dir / f"report{suffix}"
    # the report is one picture of the summary, not a time series: the earlier one goes
    earlier = sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []
    w = SummaryWriter(log_dir=str(log_dir))
    try:
        for f in figs:
            w.add_image(f"run/{f['name']}", F.png_to_array(f["png"]), 0, dataformats="HWC")
        rows = (summary or {}).get("rows") or []
        for r in rows:
            for c in COLUMNS:
                if r.get(c) is not None:
                    w.add_scalar(f"summary/{_tag(str(r.get('model')))}/{c}", float(r[c]), 0)
        if rows:
            w.add_text("summary", table(rows), 0)
    finally:
        w.flush()
        w.close()
    for f in earlier:
        f.unlink(missing_ok=True)
    return log_dir


def write_run_report(workdir, config: str, note: str, print_fn=print, device=None, compute_confusion: bool = True,
                     tensorboard: bool = True, suffix: str = "") -> Path | None:
    """Write the run plots, report.html and the TensorBoard record of a run; returns report.html's path.

    device: where the confusion matrices are computed when no phase saved them (default:
    CUDA when available).  Under torchrun only rank 0 writes (other ranks return None).
    suffix: that of the summary to show (``summary<suffix>.json``); its files carry it too.
    """
    from ..engine import distributed as dist
    from ..engine.io import write_bytes, write_text

    if not dist.is_main():
        return None
    workdir = Path(workdir)
    out = workdir / "log" / "run" / config / note
    summary = _read_json(out / f"summary{suffix}.json")
    figs, problems = run_figures(workdir, config, note, device, compute_confusion, print_fn, suffix=suffix)
    for f in figs:
        write_bytes(out / f"{f['name']}{suffix}.png", f["png"])
    first = _notes(summary, note)["phase_i"]
    p2 = _phase_ii_figures(workdir, config, first)
    env = _read_json(workdir / "log" / "phase_i" / config / first / "environment.json")
    configs = (summary or {}).get("configs") or {}
    intro = f"Feature Space Augmentation (fsa-lt) run {config} / {note}."
    if summary and summary.get("phase_i_seed_values") is not None:
        intro += (f" {'Phase III variant ' + summary['variant'] if summary.get('variant') else 'Default Phase III'}; "
                  f"Phase I seeds {', '.join(map(str, summary['phase_i_seed_values']))}; Phase III seeds "
                  + "; ".join(", ".join(map(str, v)) for v in summary.get("phase_iii_seed_values") or []) + ".")
    c3 = configs.get("phase_iii")
    if c3:
        d = c3["dataset"]
        intro += (f" {d['name']}, imbalance {float(d['imb_ratio']):g} ({d['imb_type']}), {c3['model']['name']}; "
                  f"Phase I {configs.get('phase_i', c3)['train']['epochs']} epochs, Phase III "
                  f"{c3['finetune']['iterations']} iterations (n_t {c3['finetune']['n_t']}, "
                  f"n_a {c3['finetune']['n_a']});"
                  f" tau_s {c3['extract']['tau_s']}, tau_g {c3['extract']['tau_g']}, h_r {c3['extract']['h_r']}.")
    intro += f" Report written {datetime.datetime.now().isoformat(timespec='seconds')}."
    page = build_html(f"fsa-lt run report: {config} / {note}{' (' + suffix + ')' if suffix else ''}", intro, summary,
                      figs, p2, configs, env, problems, compare=_read_json(out / "compare.json") if not suffix else None)
    path = write_text(out / f"report{suffix}.html", page)
    if tensorboard:
        _tensorboard(workdir, config, note, figs + p2, summary, suffix)
    for p in problems:
        print_fn(f"[report] not shown: {p}")
    print_fn(f"[report] {path}")
    return path


__all__ = ["write_run_report", "run_figures", "build_html", "evaluate_confusion", "config_from_dict", "RUN_FIGURES"]
