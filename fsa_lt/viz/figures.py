"""Figures: CAMs, class-specific / class-generic masks, synthetic samples, run plots.

`fsa-lt visualize` (:func:`visualize`) writes, under its own folder
``<workdir>/log/visualize/<config>/<note>/`` (never into a phase's run record),

    cam_tail_CCC_<name>.png   for one tail class C: a few of its training images and a
                              few of each of its confusing classes; per image the image,
                              its CAM (own class) overlaid, the class-specific mask
                              (CAM > tau_s) and the class-generic mask (CAM < tau_g)
    synthetic.png             a few synthetic tail samples: the tail image and, for
                              each donor (one per confusing class), the donor image,
                              gamma and the locations drawn from each side (counts)

The plot builders for the run report (per-class accuracy against training-set size,
confusion matrices, confusing-class graph) live here as well; `fsa_lt.viz.report`
assembles them.

Only matplotlib's object API with the Agg canvas is used (no pyplot, no global
backend state).  Every figure has a size fixed in pixels by its layout (no "tight"
bounding box), and PNG files are written atomically.
"""
from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

DPI = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# CAM / mask grid layout, in pixels (converted to inches at DPI)
PANEL_PX = 160   # one image panel: a 32 x 32 CIFAR image shows at 5x
GAP_PX = 14
LEFT_PX = 150    # row labels
RIGHT_PX = 12
TOP_PX = 70      # figure title + column titles
BOTTOM_PX = 12
ROW_TITLE_PX = 30  # synthetic figure: a title above each panel

# fixed sizes of the run plots (width, height) in pixels
PER_CLASS_PX = (1000, 560)
CONFUSION_PX = (1400, 720)
GRAPH_PX = (1000, 1000)


# ----------------------------------------------------------------------------- basics
def new_figure(width_px: int, height_px: int):
    """A matplotlib Figure of exactly ``width_px x height_px`` pixels at :data:`DPI`, with an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # +0.25 px: Agg truncates width * dpi to an int, so keep it just above the integer
    fig = Figure(figsize=((width_px + 0.25) / DPI, (height_px + 0.25) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_pixels(fig) -> tuple[int, int]:
    w, h = fig.get_size_inches() * fig.dpi
    return int(w), int(h)


def render_png(fig) -> bytes:
    """PNG bytes of a figure, at its own size (no tight bounding box), no timestamp metadata."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


def save_png(fig, path) -> Path:
    from ..engine.io import write_bytes

    return write_bytes(path, render_png(fig))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if the bytes are not a PNG."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG (bad signature)")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ValueError("not a PNG (first chunk is not IHDR)")
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF != crc:
        raise ValueError("not a PNG (IHDR CRC mismatch)")
    w, h = struct.unpack(">II", body[:8])
    return int(w), int(h)


def png_to_array(data: bytes) -> np.ndarray:
    """H x W x 3 uint8 array of a PNG (for TensorBoard)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()


def grid_pixels(rows: int, cols: int, row_title: bool = False) -> tuple[int, int]:
    """Pixel size of a grid figure of ``rows x cols`` image panels (CAM and synthetic figures)."""
    w = LEFT_PX + cols * PANEL_PX + (cols - 1) * GAP_PX + RIGHT_PX
    cell_h = PANEL_PX + (ROW_TITLE_PX if row_title else 0)
    h = TOP_PX + rows * cell_h + (rows - 1) * GAP_PX + BOTTOM_PX
    return w, h


def _grid_axes(fig, rows: int, cols: int, row_title: bool = False):
    """Axes placed at exact pixel positions: axes[r][c]."""
    W, H = grid_pixels(rows, cols, row_title)
    cell_h = PANEL_PX + (ROW_TITLE_PX if row_title else 0)
    out = []
    for r in range(rows):
        row = []
        top = TOP_PX + r * (cell_h + GAP_PX) + (ROW_TITLE_PX if row_title else 0)
        for c in range(cols):
            left = LEFT_PX + c * (PANEL_PX + GAP_PX)
            ax = fig.add_axes((left / W, 1 - (top + PANEL_PX) / H, PANEL_PX / W, PANEL_PX / H))
            ax.set_xticks([])
            ax.set_yticks([])
            row.append(ax)
        out.append(row)
    return out


def _row_label(fig, rows: int, cols: int, r: int, text: str, row_title: bool = False, color="black"):
    W, H = grid_pixels(rows, cols, row_title)
    cell_h = PANEL_PX + (ROW_TITLE_PX if row_title else 0)
    top = TOP_PX + r * (cell_h + GAP_PX) + (ROW_TITLE_PX if row_title else 0)
    fig.text(8 / W, 1 - (top + PANEL_PX / 2) / H, text, ha="left", va="center", fontsize=8, color=color,
             wrap=False)


def _blank(ax):
    ax.set_axis_off()


def _short(name, n: int = 20) -> str:
    name = str(name)
    return name if len(name) <= n else name[: n - 1] + "…"


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")
    return s[:40] or "class"


# ----------------------------------------------------------------------------- images
def _resize_nearest(m: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")[0, 0].numpy()


def _resize_bilinear(m: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def display_image(ds, i: int, cfg) -> np.ndarray:
    """The i-th training image, un-normalised, H x W x 3 uint8, in the model's input geometry."""
    if hasattr(ds, "data"):
        return np.asarray(ds.data[i], dtype=np.uint8)
    from ..data.image_transforms import imagenet_eval_geometry

    size = cfg.dataset.image_size
    img = imagenet_eval_geometry(resize=int(round(size * 256 / 224)), size=size)(ds.load_image(int(i)))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def cam_overlay(img: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image blended with the (bilinearly upsampled) CAM in the 'jet' colour map; float RGB in [0, 1]."""
    import matplotlib

    h, w = img.shape[:2]
    heat = matplotlib.colormaps["jet"](np.clip(_resize_bilinear(cam, h, w), 0, 1))[..., :3]
    return (1 - alpha) * img.astype(np.float32) / 255.0 + alpha * heat


def mask_view(img: np.ndarray, mask: np.ndarray, tint) -> np.ndarray:
    """Locations in the mask shown as they are (slightly tinted), the others dimmed."""
    h, w = img.shape[:2]
    m = _resize_nearest(mask.astype(np.float32), h, w)[..., None]
    x = img.astype(np.float32) / 255.0
    tinted = 0.8 * x + 0.2 * np.asarray(tint, dtype=np.float32)
    return m * tinted + (1 - m) * 0.2 * x


def counts_view(img: np.ndarray, counts: np.ndarray, color) -> np.ndarray:
    """Drawn locations highlighted in `color` with an intensity growing with the draw count."""
    h, w = img.shape[:2]
    c = np.asarray(counts, dtype=np.float32)
    a = np.where(c > 0, 0.35 + 0.45 * c / max(float(c.max()), 1.0), 0.0)
    a = _resize_nearest(a, h, w)[..., None]
    x = img.astype(np.float32) / 255.0 * 0.45
    return (1 - a) * x + a * np.asarray(color, dtype=np.float32)


def _show(ax, rgb, hw):
    h, w = hw
    ax.imshow(np.clip(rgb, 0, 1) if rgb.dtype != np.uint8 else rgb, interpolation="nearest",
              extent=(0, w, h, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def _cell_grid(ax, map_hw, img_hw):
    """Thin lines at the borders of the feature-map locations."""
    mh, mw = map_hw
    h, w = img_hw
    if mh * mw > 256:
        return
    for k in range(1, mh):
        ax.axhline(k * h / mh, color="white", lw=0.3, alpha=0.5)
    for k in range(1, mw):
        ax.axvline(k * w / mw, color="white", lw=0.3, alpha=0.5)


def _cell_numbers(ax, counts: np.ndarray, img_hw):
    mh, mw = counts.shape
    if mh * mw > 64:
        return
    h, w = img_hw
    for y in range(mh):
        for x in range(mw):
            n = int(round(float(counts[y, x])))
            if n > 0:
                ax.text((x + 0.5) * w / mw, (y + 0.5) * h / mh, str(n), ha="center", va="center",
                        fontsize=6, color="white")


# ----------------------------------------------------------------------------- CAM figure
def cam_figure(rows: list[dict], tau_s: float, tau_g: float, title: str):
    """One row per image: image | CAM overlay | class-specific mask | class-generic mask.

    Each row dict: ``image`` (H x W x 3 uint8 or None for an empty row), ``cam``
    (h x w normalised), ``label`` (left-margin text), ``color`` (label colour).
    """
    n, cols = len(rows), 4
    fig = new_figure(*grid_pixels(n, cols))
    axes = _grid_axes(fig, n, cols)
    W, H = grid_pixels(n, cols)
    fig.text(8 / W, 1 - 22 / H, title, ha="left", va="center", fontsize=9, weight="bold")
    heads = ["image", "CAM (own class)", f"class-specific: CAM > {tau_s:g}", f"class-generic: CAM < {tau_g:g}"]
    for c, t in enumerate(heads):
        x = (LEFT_PX + c * (PANEL_PX + GAP_PX) + PANEL_PX / 2) / W
        fig.text(x, 1 - (TOP_PX - 12) / H, t, ha="center", va="center", fontsize=8)
    for r, row in enumerate(rows):
        if row.get("image") is None:
            for ax in axes[r]:
                _blank(ax)
            _row_label(fig, n, cols, r, row.get("label", ""), color="gray")
            continue
        img, cam = row["image"], np.asarray(row["cam"], dtype=np.float32)
        hw = img.shape[:2]
        spec, gen = cam > tau_s, cam < tau_g
        _show(axes[r][0], img, hw)
        _show(axes[r][1], cam_overlay(img, cam), hw)
        _show(axes[r][2], mask_view(img, spec, (1.0, 0.2, 0.2)), hw)
        _show(axes[r][3], mask_view(img, gen, (0.2, 0.4, 1.0)), hw)
        for ax in axes[r][1:]:
            _cell_grid(ax, cam.shape, hw)
        L = cam.size
        label = f"{row.get('label', '')}\nspecific {int(spec.sum())}/{L}\ngeneric {int(gen.sum())}/{L}"
        _row_label(fig, n, cols, r, label, color=row.get("color", "black"))
    return fig


# ----------------------------------------------------------------------------- synthetic figure
def synthetic_figure(samples: list[dict], n_a: int, title: str):
    """One row per real tail sample: tail image, then per donor: donor image, drawn locations.

    Each sample dict: ``tail_image``, ``tail_label`` (text), ``donors``: list of n_a dicts
    with ``image``, ``label`` (text), ``gamma``, ``counts_spec`` / ``counts_gen`` (h x w),
    ``note`` (extra text, may be empty).
    """
    n, cols = len(samples), 1 + 2 * n_a
    fig = new_figure(*grid_pixels(n, cols, row_title=True))
    axes = _grid_axes(fig, n, cols, row_title=True)
    W, H = grid_pixels(n, cols, row_title=True)
    import textwrap

    fig.text(8 / W, 1 - 20 / H, title, ha="left", va="center", fontsize=9, weight="bold")
    legend = ("red: tail locations drawn (class-specific side), blue: donor locations drawn (class-generic side); "
              "numbers: draw counts (with replacement)")
    fig.text(8 / W, 1 - 50 / H, textwrap.fill(legend, max(40, W // 5)), ha="left", va="center", fontsize=7)
    for r, s in enumerate(samples):
        img = s["tail_image"]
        hw = img.shape[:2]
        _show(axes[r][0], img, hw)
        axes[r][0].set_title("real tail sample", fontsize=7)
        _row_label(fig, n, cols, r, s["tail_label"], row_title=True, color="darkorange")
        for j, d in enumerate(s["donors"]):
            a_t, a_d = axes[r][1 + 2 * j], axes[r][2 + 2 * j]
            cs = np.asarray(d["counts_spec"], dtype=np.float32)
            cg = np.asarray(d["counts_gen"], dtype=np.float32)
            _show(a_t, counts_view(img, cs, (1.0, 0.25, 0.2)), hw)
            _cell_grid(a_t, cs.shape, hw)
            _cell_numbers(a_t, cs, hw)
            dimg = d["image"]
            dhw = dimg.shape[:2]
            _show(a_d, counts_view(dimg, cg, (0.2, 0.45, 1.0)), dhw)
            _cell_grid(a_d, cg.shape, dhw)
            _cell_numbers(a_d, cg, dhw)
            L = cs.size
            a_t.set_title(f"synthetic #{j + 1}: gamma={d['gamma']:.2f}\n{int(cs.sum())}/{L} drawn from tail",
                          fontsize=7)
            a_d.set_title(f"{int(cg.sum())}/{L} from donor {d['label']}" + (f"\n{d['note']}" if d.get("note") else ""),
                          fontsize=7)
    return fig


# ----------------------------------------------------------------------------- maps
@torch.no_grad()
def compute_maps(model, ds, indices, device):
    """Feature maps (float32, CPU) and normalised own-class CAMs of training images, through the model in fp32."""
    from ..method import cam_weights, class_activation_maps, normalize_cams

    model.eval()
    idx = [int(i) for i in indices]
    if not idx:
        return None, None
    weight = cam_weights(model.get_classifier())
    fm, cams = [], []
    for k in range(0, len(idx), 64):
        part = idx[k:k + 64]
        x = torch.stack([ds[i][0] for i in part]).to(device)
        y = torch.as_tensor(np.asarray(ds.targets)[part], dtype=torch.long, device=device)
        f = model.forward_features(x).float()
        fm.append(f.cpu())
        cams.append(normalize_cams(class_activation_maps(f, weight, y)).cpu())
    return torch.cat(fm), torch.cat(cams)


class _Maps:
    """Feature maps and CAMs by training index: from the cached store, or computed on demand."""

    def __init__(self, store_data, model, ds, device):
        self.store, self.model, self.ds, self.device = store_data, model, ds, device

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if self.store is not None:
            return self.store["fmaps"][idx].float(), self.store["cams"][idx].float()
        return compute_maps(self.model, self.ds, idx.tolist(), self.device)


def _pick(targets: np.ndarray, c: int, k: int, rng: np.random.RandomState) -> list[int]:
    pool = np.flatnonzero(targets == c)
    if len(pool) <= k:
        return pool.tolist()
    return np.sort(rng.choice(pool, size=k, replace=False)).tolist()


def _phase_i_checkpoint(index: dict, workdir: Path, cfg, note: str) -> Path:
    from ..phases.records import resolve

    return resolve(workdir, index["checkpoint"])


def figures_dir(workdir, config: str, note: str) -> Path:
    """Where `visualize` writes: its own folder, never inside a phase's run record."""
    return Path(workdir) / "log" / "visualize" / config / note


def visualize(cfg, note: str, workdir=".", device=None, per_class: int = 4, max_tail_classes: int = 10,
              num_synthetic: int | None = None, print_fn=print) -> list[Path]:
    """Write the Phase II figures of ``cfg``/``note``; returns the paths written.

    per_class: images per class in the CAM figures; max_tail_classes: CAM figures for at
    most this many tail classes (the rarest first); num_synthetic: real tail samples in
    the synthetic-sample figure (default ``per_class``), each with ``finetune.n_a`` donors.
    """
    from ..data import build_dataset
    from ..engine.run import resolve_device
    from ..errors import ConfigError
    from ..method import FSASampler, synthesize
    from ..phases import store
    from ..phases.common import load_phase_model, require_phase_output, upstream_record

    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    workdir = Path(workdir)
    dev = resolve_device(device)
    folder = workdir / "feature" / cfg.name / note
    rec_i = upstream_record(workdir, "phase_i", cfg, note, consumer="phase_iii")  # finished I and II, these settings
    upstream_record(workdir, "phase_ii", cfg, note, {"phase_i": rec_i})
    index = store.read_index(folder)
    out = figures_dir(workdir, cfg.name, note)
    ds = build_dataset(cfg, "train", augment=False)
    targets = np.asarray(ds.targets, dtype=np.int64)
    K = int(index["num_classes"])
    counts = np.asarray(index["class_counts"], dtype=np.int64)
    if len(targets) != index["num_samples"] or not np.array_equal(np.bincount(targets, minlength=K), counts):
        from ..errors import DataError

        raise DataError(f"{folder / 'index.json'} was extracted from another training set than {cfg.dataset.name} now")
    names = list(getattr(ds, "classes", None) or [str(i) for i in range(K)])
    ckpt = _phase_i_checkpoint(index, workdir, cfg, note)
    require_phase_output(ckpt, "Phase I checkpoint", f"fsa-lt train --config {cfg.name} --note {note}")
    model, _ = load_phase_model(cfg, ckpt, "phase_ii", K, dev, expect_phase="phase_i")
    model.eval()
    data = (dict(zip(("fmaps", "cams"), store.open_store(folder, index, "cpu", "mmap")[:2]))  # a few maps: mapped
            if index["mode"] == "cached" else None)
    maps = _Maps(data, model, ds, dev)
    tau_s, tau_g = cfg.extract.tau_s, cfg.extract.tau_g
    tail = [int(c) for c in index["tail"]]
    head = [int(c) for c in index["head"]]
    confusing = {int(k): [int(u) for u in v] for k, v in index["confusing"].items()}
    rng = np.random.RandomState(cfg.seed)
    written: list[Path] = []

    # --- CAM / decomposition figures, rarest tail classes first
    shown = sorted(tail, key=lambda c: (counts[c], c))[:max_tail_classes]
    try:
        scores = store.load_confusion(folder)
    except Exception:
        scores = None
    for c in shown:
        groups = [(c, "tail", "darkorange")] + [(u, f"confusing #{j + 1}", "steelblue")
                                                for j, u in enumerate(confusing.get(c, []))]
        picks = [(g, _pick(targets, g[0], per_class, rng)) for g in groups]
        flat = [i for _, idx in picks for i in idx]
        _, cams = maps.get(flat)
        rows, k = [], 0
        for (cls, role, color), idx in picks:
            extra = ""
            if role != "tail" and scores is not None:
                extra = f"\nmean score {float(scores[c, cls]):.3f}"
            for j in range(per_class):
                if j < len(idx):
                    i = idx[j]
                    rows.append({"image": display_image(ds, i, cfg), "cam": cams[k].numpy(), "color": color,
                                 "label": f"{_short(names[cls])}\n{role}{extra}\n{counts[cls]} train images\n"
                                          f"sample #{i}"})
                    k += 1
                else:
                    rows.append({"image": None, "label": f"{_short(names[cls])}\n(no more images)"})
        title = (f"tail class {_short(names[c], 40)} ({counts[c]} images) and its confusing classes\n"
                 f"{cfg.name} / {note}, Phase II {index['mode']} store")
        fig = cam_figure(rows, tau_s, tau_g, title)
        written.append(save_png(fig, out / f"cam_tail_{c:03d}_{slug(names[c])}.png"))

    # --- synthetic samples
    n_a = min(cfg.finetune.n_a, min(len(v) for v in confusing.values()) if confusing else 0)
    n_syn = per_class if num_synthetic is None else num_synthetic
    if n_a >= 1 and n_syn >= 1 and tail and head:
        gen = torch.Generator().manual_seed(cfg.seed)
        conf_t = torch.tensor([confusing[c][:n_a] for c in tail], dtype=torch.long)
        sampler = FSASampler(torch.as_tensor(targets), head, tail, conf_t, n_t=n_syn, n_a=n_a,
                             tail_sampling="class", generator=gen)
        d = sampler.sample()
        t_idx = d["tail_idx"].tolist()
        d_idx = d["donor_idx"].reshape(-1).tolist()
        ft, ct = maps.get(t_idx)
        fd, cd = maps.get(d_idx)
        pooled, gamma, cs, cg = synthesize(ft, ct, fd, cd, tau_s, tau_g, generator=gen, return_counts=True)
        fc = model.get_classifier()
        with torch.no_grad():
            prob = torch.softmax(fc(pooled.to(dev)).float(), 1).cpu()
        mh, mw = ct.shape[1:]
        samples = []
        for r, i in enumerate(t_idx):
            yc = int(targets[i])
            donors = []
            for j in range(n_a):
                b = r * n_a + j
                di = d_idx[b]
                donors.append({
                    "image": display_image(ds, di, cfg), "label": f"{_short(names[int(targets[di])], 14)} #{di}",
                    "gamma": float(gamma[b]), "counts_spec": cs[b].reshape(mh, mw).numpy(),
                    "counts_gen": cg[b].reshape(mh, mw).numpy(),
                    "note": f"Phase I p({names[yc]}) = {float(prob[b, yc]):.2f}",
                })
            samples.append({"tail_image": display_image(ds, i, cfg), "donors": donors,
                            "tail_label": f"{_short(names[yc])}\ntail class\n{counts[yc]} train images\nsample #{i}"})
        title = (f"synthetic tail samples: tail class-specific + donor class-generic\n"
                 f"{cfg.name} / {note}, tau_s {tau_s:g}, tau_g {tau_g:g}")
        written.append(save_png(synthetic_figure(samples, n_a, title), out / "synthetic.png"))
    print_fn(f"[visualize] {len(written)} figures in {out}")
    return written


# ----------------------------------------------------------------------------- run plots
def per_class_accuracy_figure(counts, series: list[tuple[str, list]], head=None, names=None, title: str = ""):
    """Per-class test accuracy against training-set size (log x), classes in frequency order.

    series: (label, per-class accuracy in percent, None for a class without test image).
    """
    counts = np.asarray(counts, dtype=np.float64)
    K = len(counts)
    order = np.argsort(-counts, kind="stable")
    fig = new_figure(*PER_CLASS_PX)
    ax = fig.add_axes((0.08, 0.12, 0.70, 0.72))
    styles = [("tab:gray", "o", "--"), ("tab:red", "s", "-"), ("tab:blue", "^", ":"), ("tab:green", "d", "-.")]
    x = np.maximum(counts[order], 1)
    for k, (label, acc) in enumerate(series):
        y = np.array([np.nan if acc[c] is None else float(acc[c]) for c in order], dtype=np.float64)
        col, mk, ls = styles[k % len(styles)]
        ax.plot(x, y, ls=ls, marker=mk, color=col, ms=5 if K <= 100 else 2, lw=1, label=label, alpha=0.9)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("training images of the class (log scale; most frequent first)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_ylim(-3, 103)
    lo, hi = float(x.min()), float(x.max())
    ax.set_xlim(hi * 1.25, lo / 1.25)  # decreasing: frequent classes on the left, tail on the right
    ax.grid(True, which="both", alpha=0.3)
    if head is not None and len(head) and len(head) < K:
        hmin = float(counts[np.asarray(head)].min())
        tmax = float(np.delete(counts, np.asarray(head)).max())
        b = np.sqrt(max(hmin, 1) * max(tmax, 1))
        ax.axvline(b, color="black", lw=0.8, ls="--")
        ax.text(b, 0.5, "head | tail", fontsize=8, va="center", ha="center", rotation=90,
                transform=ax.get_xaxis_transform(), bbox=dict(facecolor="white", lw=0, pad=1))
    if names is not None and K <= 20:
        top = ax.secondary_xaxis("top")
        top.set_xticks([float(v) for v in x], labels=[_short(names[c], 14) for c in order], fontsize=7,
                       rotation=45, ha="left")
        top.set_xticks([], minor=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.text(0.5, 0.97, title or "per-class accuracy against training-set size", ha="center", va="center",
             fontsize=10)
    return fig


def _row_normalised(cm) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    s = cm.sum(1, keepdims=True)
    return np.where(s > 0, cm / np.maximum(s, 1) * 100.0, 0.0)


MAX_CM_BINS = 400


def _binned(m: np.ndarray, bins: int) -> np.ndarray:
    """Mean of a K x K matrix over blocks of consecutive rows / columns (``bins`` x ``bins``)."""
    K = m.shape[0]
    edges = np.linspace(0, K, bins + 1).round().astype(int)
    rows = np.add.reduceat(m, edges[:-1], axis=0)
    both = np.add.reduceat(rows, edges[:-1], axis=1)
    size = np.diff(edges).astype(np.float64)
    return both / size[:, None] / size[None, :]


def confusion_figure(matrices: list[tuple[str, np.ndarray]], counts, names=None, title: str = ""):
    """Row-normalised confusion matrices side by side (rows true, columns predicted, in %),
    classes in frequency order; numbers in the cells only for K <= 50.  For K > MAX_CM_BINS
    the matrix is shown as the mean over blocks of consecutive frequency ranks."""
    counts = np.asarray(counts)
    K = len(counts)
    order = np.argsort(-counts, kind="stable")
    binned = K > MAX_CM_BINS
    fig = new_figure(*CONFUSION_PX)
    n = max(len(matrices), 1)
    W, H = CONFUSION_PX
    side = min((W - 120 - 110 * n) / n, H - 170)
    im = None
    shown = []
    for label, cm in matrices:
        m = _row_normalised(cm)[np.ix_(order, order)]
        shown.append(_binned(m, MAX_CM_BINS) if binned else m)
    vmax = 100.0 if not binned else max([float(m.max()) for m in shown] + [1e-6])
    for k, ((label, cm), m) in enumerate(zip(matrices, shown)):
        left = 90 + k * (side + 110)
        ax = fig.add_axes((left / W, 90 / H, side / W, side / H))
        im = ax.imshow(m, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
        acc = np.trace(np.asarray(cm)) / max(np.asarray(cm).sum(), 1) * 100
        ax.set_title(f"{label}\n(top-1 {acc:.2f}%)", fontsize=9)
        if K <= 50:
            fs = max(3.0, min(8.0, 160.0 / K))
            for i in range(K):
                for j in range(K):
                    v = m[i, j]
                    if v >= 0.5 or i == j:
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=fs,
                                color="white" if v > 50 else "black")
            lab = [str(names[c]) if names is not None else str(c) for c in order]
            ax.set_xticks(range(K))
            ax.set_yticks(range(K))
            fsl = max(3.0, min(8.0, 200.0 / K))
            ax.set_xticklabels(lab, rotation=90, fontsize=fsl)
            ax.set_yticklabels(lab, fontsize=fsl)
        else:
            n = m.shape[0]
            ticks = np.linspace(0, n - 1, 6).round().astype(int)
            ranks = np.linspace(1, K, 6).round().astype(int)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels([str(r) for r in ranks], fontsize=7)
            ax.set_yticklabels([str(r) for r in ranks], fontsize=7)
            how = f" (mean over blocks of ~{K / n:.0f} classes)" if binned else ""
            ax.set_xlabel("predicted class (frequency rank)" + how, fontsize=8)
            ax.set_ylabel("true class (frequency rank)", fontsize=8)
    if im is not None:
        cax = fig.add_axes(((W - 60) / W, 90 / H, 14 / W, side / H))
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("% of the true class" + (" (block mean)" if binned else ""), fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.text(0.5, 1 - 20 / H, title or "confusion matrices (rows: true class, columns: prediction; "
             "classes by training frequency, most frequent first)", ha="center", va="center", fontsize=10)
    return fig


def confusing_graph_figure(scores, tail, confusing: dict, counts, head=None, names=None, title: str = "",
                           max_tail: int = 40):
    """Tail classes and their confusing classes: arrows tail -> confusing class, weight = mean
    softmax score of the confusing class over the tail class's training samples.  With more
    than ``max_tail`` tail classes only the rarest ``max_tail`` are drawn."""
    from matplotlib.patches import FancyArrowPatch

    counts = np.asarray(counts)
    tail = [int(t) for t in tail]
    if len(tail) > max_tail:
        n_all = len(tail)
        tail = sorted(tail, key=lambda c: (counts[c], c))[:max_tail]
        title = (title or "confusing classes of the tail classes") + f" ({max_tail} rarest of {n_all} tail classes)"
    S = np.asarray(scores, dtype=np.float64)
    edges = [(int(t), int(u), float(S[int(t), int(u)])) for t in tail for u in confusing.get(int(t), [])]
    nodes = sorted({c for e in edges for c in e[:2]} | {int(t) for t in tail}, key=lambda c: (-counts[c], c))
    head_set = set(int(h) for h in (head if head is not None else []))
    fig = new_figure(*GRAPH_PX)
    ax = fig.add_axes((0.06, 0.06, 0.88, 0.86))
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.set_axis_off()
    n = len(nodes)
    ang = np.pi / 2 - 2 * np.pi * np.arange(n) / max(n, 1)
    pos = {c: (float(np.cos(a)), float(np.sin(a))) for c, a in zip(nodes, ang)}
    wmax = max([w for _, _, w in edges] + [1e-12])
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"]
    node_r = 0.07 if n <= 20 else max(0.025, 1.4 / n)
    fs = 8 if n <= 20 else max(4, int(160 / n))
    for t, u, w in edges:
        rel = w / wmax
        arr = FancyArrowPatch(pos[t], pos[u], connectionstyle="arc3,rad=0.12", arrowstyle="-|>",
                              mutation_scale=8 + 8 * rel, lw=0.6 + 3.5 * rel, color=cmap(0.15 + 0.8 * rel),
                              shrinkA=node_r * 260, shrinkB=node_r * 260, alpha=0.85, zorder=1)
        ax.add_patch(arr)
        if len(edges) <= 40:
            (x0, y0), (x1, y1) = pos[t], pos[u]
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            mx, my = mx + 0.06 * (y1 - y0), my - 0.06 * (x1 - x0)  # Bezier midpoint of arc3, rad 0.12
            ax.text(mx, my, f"{w:.3f}", fontsize=7, ha="center", va="center", zorder=3,
                    bbox=dict(facecolor="white", alpha=0.8, pad=0.5, lw=0))
    for c in nodes:
        x, y = pos[c]
        is_head = c in head_set
        circ = matplotlib.patches.Circle((x, y), node_r, facecolor="tab:blue" if is_head else "tab:orange",
                                         edgecolor="black", lw=0.6, zorder=2)
        ax.add_patch(circ)
        label = f"{names[c] if names is not None else c}\n({counts[c]})"
        ax.text(x * (1 + node_r + 0.12), y * (1 + node_r + 0.12), label, fontsize=fs, ha="center",
                va="center", zorder=4)
    ax.text(-1.33, -1.33, "orange: tail class, blue: head class (training images in brackets); arrow t -> u: "
            "u is a confusing class of tail class t;\nwidth, colour and number: mean softmax score of u over "
            "the training images of t (Phase I model)", fontsize=8, ha="left", va="bottom")
    fig.text(0.5, 0.97, title or "confusing classes of the tail classes", ha="center", va="center", fontsize=11)
    return fig


__all__ = [
    "DPI", "new_figure", "render_png", "save_png", "png_size", "png_to_array", "grid_pixels", "figure_pixels",
    "cam_figure", "synthetic_figure", "visualize", "per_class_accuracy_figure", "confusion_figure",
    "confusing_graph_figure", "PER_CLASS_PX", "CONFUSION_PX", "GRAPH_PX", "PANEL_PX",
]


CURVES_PX = (1500, 480)


def curves_figure(phase_i: list[tuple[str, list, list]], phase_iii: list[tuple[str, str, list]], title: str = ""):
    """Training curves, one line per run.

    phase_i: [(label, history, epochs)] with history [{'epoch', 'top1', ...}] (evaluated epochs) and
    epochs [{'epoch', 'loss', ...}] (every epoch); phase_iii: [(label, 'fsa' | 'control', history,
    i)] with history [{'iteration', 'top1', ...}] and i the Phase I run it belongs to (its colour).
    """
    fig = new_figure(*CURVES_PX)
    axes = [fig.add_axes((0.05 + i * 0.325, 0.13, 0.27, 0.74)) for i in range(3)]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, (label, hist, epochs) in enumerate(phase_i):
        c = colors[i % len(colors)]
        pts = [(h["epoch"], h["top1"]) for h in hist if h.get("top1") is not None]
        if pts:
            axes[0].plot(*zip(*pts), marker="o", ms=3, color=c, label=label)
        pts = [(e["epoch"], e["loss"]) for e in epochs if e.get("loss") is not None]
        if pts:
            axes[1].plot(*zip(*pts), color=c, lw=1, label=label)
    for label, kind, hist, i in phase_iii:
        pts = [(h["iteration"], h["top1"]) for h in hist if h.get("top1") is not None]
        if pts:
            axes[2].plot(*zip(*pts), color=colors[i % len(colors)], ls="-" if kind == "fsa" else "--", lw=1,
                         label=label)
    for ax, t, xl, yl in ((axes[0], "Phase I: test top-1", "epoch", "top-1 (%)"),
                          (axes[1], "Phase I: training loss", "epoch", "loss"),
                          (axes[2], "Phase III: test top-1", "iteration", "top-1 (%)")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel(xl, fontsize=9)
        ax.set_ylabel(yl, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if phase_i and any(e for _, _, e in phase_i):
        axes[1].set_yscale("log")
    fig.suptitle(title, fontsize=11)
    return fig
