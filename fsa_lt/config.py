"""Typed configuration: schema, YAML loading, dotted overrides, phase resolution.

One experiment is one file name under ``configs/phase_i/``, ``configs/phase_ii/`` and
``configs/phase_iii/``.  The configuration of phase k is the phase I file, then the
phase II file, ... up to the phase k file, merged in that order, then the command
line overrides.  Every file may hold any section; keys it does not set keep the value
of the earlier file or the schema default.

Every problem is a `ConfigError` whose one-line message names the file (or the
command line) and the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError

PHASES = ("phase_i", "phase_ii", "phase_iii")
DATASETS = ("cifar10", "cifar100", "digits", "imagenet_lt", "places_lt", "inat2018", "imagefolder", "csv")


@dataclass
class DatasetConfig:
    name: Literal["cifar10", "cifar100", "digits", "imagenet_lt", "places_lt", "inat2018", "imagefolder", "csv"] = "cifar10"
    # Folder holding the data set (cifar-10-batches-py/, an image root, ...).
    # None: $FSA_DATA_ROOT, else ./data.
    root: Optional[str] = None
    # max/min class size of the long-tailed training set (CIFAR, digits); 1 = balanced.
    imb_ratio: float = 100.0
    imb_type: Literal["exp", "step"] = "exp"
    # Seed of the long-tailed subset (CIFAR, digits: which images are kept, and the digits
    # train/test split). Separate from `seed` so that a seed study trains on the same
    # images; 0 is LDAM-DRW's `rand_number`, the subset everybody else uses.
    subset_seed: int = 0
    # CIFAR: fetch the official archive (md5-checked) when missing and the network allows.
    download: bool = True
    # Checked against the data: a split whose class count differs is an error.
    num_classes: Optional[int] = None
    # Image-list data sets (OLTR text lists / iNaturalist JSON), relative to root.
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    # imagefolder: the split folders under root (root/<train_dir>/<class>/<images>);
    # None: "train", and "val" (else "test") for evaluation.  csv: the lists are
    # train_list / test_list (default train.csv / test.csv under root).
    train_dir: Optional[str] = None
    test_dir: Optional[str] = None
    image_size: int = 224
    num_workers: int = 4
    # Validation split: the images every Phase III choice (a tau, a variant's setting) is made on,
    # never the test set and never images Phase I trained on. False: nothing is chosen, every
    # method runs its fixed default, and the tables say so. Phase I and II ignore these keys.
    validation: bool = False
    # CIFAR-LT and digits: up to this many images of each class, drawn (with val_seed) from the
    # training images outside the long-tailed subset. The largest class has all its images in the
    # subset and gives none; a class with fewer spare images gives those it has. The counts are
    # recorded, and a choice is made on the mean accuracy over the classes present (METHOD.md).
    val_per_class: int = 100
    val_seed: int = 0
    # ImageNet-LT / Places-LT: the official val list (default ImageNet_LT_val.txt / Places_LT_val.txt
    # under root); csv: a list like the others (default val.csv). iNaturalist 2018 has none (its val
    # list is the test set): give your own held-out list here or run without validation.
    val_list: Optional[str] = None
    # imagefolder: the validation folder under root (default "val"); the test folder is then
    # test_dir, default "test" (without validation the evaluation folder is "val", else "test").
    val_dir: Optional[str] = None


@dataclass
class ModelConfig:
    name: str = "resnet32"
    # Local file of (e.g. ImageNet-) pretrained weights; nothing is downloaded.
    pretrained: Optional[str] = None
    sync_bn: bool = False
    # Classifier head: "linear", or "cosine" = scale * cos(pooled feature, w_j), no bias (LDAM-DRW's
    # NormedLinear), which train.loss=ldam needs. Linear by default: the FSA paper's models are.
    classifier: Literal["linear", "cosine"] = "linear"
    # The cosine head's scale s: 30 is LDAM's s (Cao et al. 2019), and since the head applies it,
    # it is also the softmax temperature at inference, in Phase II's scores and Phase III's loss.
    cosine_scale: float = 30.0


@dataclass
class TrainConfig:
    """Phase I: the whole network on the long-tailed training set."""

    epochs: int = 200
    batch_size: int = 128  # global batch (divided among ranks under torchrun)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    # multistep: x lr_factors[i] from epoch milestones[i] (LDAM-DRW: x0.01 at 160, x0.0001 at 180);
    # step: x step_gamma every step_size epochs (the paper: /10 every 150 of 300); cosine.
    schedule: Literal["multistep", "step", "cosine"] = "multistep"
    warmup_epochs: int = 5
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    lr_factors: list[float] = field(default_factory=lambda: [0.01, 0.0001])
    step_size: int = 150
    step_gamma: float = 0.1
    loss: Literal["ce", "focal", "cb_ce", "cb_focal", "ldam", "la", "balanced_softmax"] = "ce"
    focal_gamma: float = 1.0
    # Class-balanced weights (Cui et al. 2019) of cb_ce / cb_focal and of DRW; 0.9999 is the value
    # LDAM-DRW uses for DRW.
    cb_beta: float = 0.9999
    # LDAM: the margin of the rarest class, in cosine units (the others: C / n_j^(1/4)); 0.5 is
    # the paper's. The scale s is model.cosine_scale (the head applies it).
    ldam_max_margin: float = 0.5
    # Logit-adjusted loss: CE(z + la_tau * log prior); 1 is Menon et al.'s default (the value for
    # which the loss is consistent for the balanced error).
    la_tau: float = 1.0
    # Deferred re-weighting (LDAM-DRW): from this 0-based epoch on, the loss weights each sample by
    # its class's class-balanced weight (cb_beta); None: never. LDAM-DRW: 160 of 200.
    drw_epoch: Optional[int] = None
    # bf16 autocast where the device runs bf16 natively: CUDA, and CPUs with AVX-512 BF16 or
    # AMX (measured 1.49x on a 2-core EPYC for a ResNet-32 step); fp32 elsewhere, said in the log.
    amp: bool = True
    # CPU without native bf16: "native" runs fp32 there; "always" forces emulated bf16 (slow:
    # about 10x slower than fp32 on a 2-core EPYC without it), for checking numerics only.
    # $FSA_AMP_CPU (native | always), when set, replaces what the config files say; a command
    # line override still wins (the test suite's switch: `FSA_AMP_CPU=always python -m pytest`).
    amp_cpu: Literal["native", "always"] = "native"
    # GPU-resident data path for in-memory data sets (CIFAR, digits): auto = when it applies.
    fast_path: Literal["auto", "on", "off"] = "auto"
    # torch.compile the model; mode "reduce-overhead" adds CUDA graphs (per-step launch
    # overhead dominates small CIFAR models on a GPU).
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    grad_accum: int = 1
    eval_every: int = 10
    save_every: int = 20
    # last.pt (the resume point, with optimiser and RNG state) every this many epochs;
    # a resumed run repeats at most this many epochs. Large models on fast GPUs: raise it.
    checkpoint_every: int = 1
    eval_batch_size: int = 1000
    # Deterministic algorithms (slower on GPU): exact resume equivalence.
    deterministic: bool = False


@dataclass
class ExtractConfig:
    """Phase II: CAMs, decomposition, confusing classes, feature store."""

    checkpoint: Literal["last", "best"] = "last"
    h_r: float = 0.9
    tau_s: float = 0.8
    tau_g: float = 0.2
    n_f: int = 3
    # cached: feature maps of the un-augmented training images stored on disk (fp16);
    # online: Phase III recomputes them through the frozen backbone under augmentation.
    mode: Literal["cached", "online"] = "cached"
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = 500
    # How Phase III reads a cached store (not what Phase II writes; the batches are identical):
    # "memory" loads the maps and CAMs into device memory (host memory on a CPU), the fastest for
    # small stores (CIFAR); "mmap" gathers each batch's maps from the memory-mapped files (the
    # OS page cache is shared by all processes), for stores larger than memory; "auto" takes
    # memory when the store is at most half of the free memory, and logs the choice.
    store_access: Literal["auto", "memory", "mmap"] = "auto"


@dataclass
class FinetuneConfig:
    """Phase III: classifier fine-tuning on balanced batches with synthetic tail features."""

    n_t: int = 16
    n_a: int = 3
    iterations: int = 6400
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    # False: the paper's "No Aug" control (same balanced batches, real samples only).
    augment: bool = True
    tail_sampling: Literal["instance", "class"] = "instance"
    # gamma, the share of a synthetic sample's locations drawn from the tail map, ~ U(lo, hi): [0, 1]
    # is the paper's; a narrower range is a variant (e.g. [0.5, 1]: at least half tail-specific).
    gamma_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    # The batch's other half, n_t (1 + n_a) real samples: "head", the paper (uniform over head
    # samples). Variants, not the paper: "instance", uniform over all training samples (every class
    # at its training frequency, tail classes too); "sqrt", a class with probability proportional
    # to sqrt(n_j), then one of its samples. The tail half (real and synthetic) is unchanged.
    rest_sampling: Literal["head", "instance", "sqrt"] = "head"
    # None: the Phase II store's mode; "online" also works over a cached store (same split
    # and confusing classes, maps recomputed under augmentation).
    mode: Optional[Literal["cached", "online"]] = None
    # Phase III's loss on FSA's batches (FSA and its control; the baselines keep their own). "ce": the
    # paper's cross-entropy. Variants, not the paper: "la", the logit-adjusted loss CE(z + loss_tau *
    # log q) with q the class prior the batches impose ("batch", from the sampler's design: half head,
    # half tail, each half long-tailed within) or the training prior ("train"), so that the loss, not
    # the batch composition, handles the prior; "ldam", LDAM's margins from the training counts
    # (train.ldam_max_margin, a cosine head), the loss of an LDAM-DRW Phase I.
    loss: Literal["ce", "la", "ldam"] = "ce"
    # Which classifier the run ends with: "final", the paper (the last iteration's). "validation" (a
    # variant): of the classifiers before training, every eval_every iterations and at the end, the
    # one with the best class-balanced accuracy on the validation split (an early stop chosen on
    # images no model trained on; needs dataset.validation; FSA and its control).
    select: Literal["final", "validation"] = "final"
    loss_tau: float = 1.0
    loss_prior: Literal["batch", "train"] = "batch"
    # Outputs of a variant (e.g. a threshold sweep) go to <note>-<variant>, beside the
    # default run, reading the same Phase I model and Phase II store.
    variant: str = ""
    # Seed of Phase III alone (the batch draws, gamma, the fusion's draws); None: `seed`. A set
    # seed writes to <note>[-<variant>]-fs<seed>, so several Phase III seeds share one Phase I.
    seed: Optional[int] = None
    # What Phase III does with the frozen Phase I backbone: "fsa" (the paper; augment=false is its
    # No-Aug control), or a classifier re-balancing baseline beside it, written to
    # <note>-<method>: "crt" (a fresh classifier on class-balanced batches), "lws" (learnt
    # per-class logit scales, class-balanced batches), "tau_norm" (w_j / |w_j|^tau) and
    # "la_posthoc" (logits - tau log prior) (Kang et al., ICLR 2020; Menon et al., ICLR 2021).
    # How cRT and LWS train is the `baseline` section (their published recipe by default).
    method: Literal["fsa", "crt", "lws", "tau_norm", "la_posthoc"] = "fsa"
    # tau of tau_norm (in [0, 1]) or la_posthoc (>= 0), fixed. None: the method's default, which is
    # tau = 1 for la_posthoc (Menon et al.'s) and, for tau_norm (no published default), the tau
    # chosen on the validation split.
    tau: Optional[float] = None
    # la_posthoc: "validation" chooses tau on the validation split (dataset.validation) over a grid
    # [0, 2] instead of the default 1, and writes to <note>-la-posthoc-val.
    tau_from: Literal["default", "validation"] = "default"
    eval_every: int = 800
    save_every: int = 1600


@dataclass
class BaselineConfig:
    """Phase III's cRT and LWS (Kang et al., ICLR 2020). By default their published recipe, as the
    authors' code runs it (facebookresearch/classifier-balancing, config/ImageNet_LT/cls_crt.yaml and
    cls_lws.yaml, run_networks.py); METHOD.md gives each value's source."""

    # images: the training images with the training augmentation through the frozen backbone (the
    # recipe). store: the stored, un-augmented pooled features of Phase II with FSA's Phase III
    # optimiser, batch and iterations (finetune.lr, .momentum, .weight_decay, .iterations, batch
    # 2 n_t (1 + n_a)): like for like with FSA's real samples, not the recipe; <note>-<method>-store.
    input: Literal["images", "store"] = "images"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 512
    crt_epochs: int = 10
    lws_epochs: int = 5
    # Class-aware sampling: a class (each round a new random order of all classes), then this many
    # of its images in a row (each class cycles through its images in a new random order each round).
    samples_per_class: int = 4
    # The frozen backbone's BatchNorm while the classifier trains: "train" is what their code does
    # (every network in train() mode: batch statistics, running statistics updated, weights frozen;
    # the model is evaluated with the updated running statistics); "eval" keeps Phase I's.
    bn: Literal["train", "eval"] = "train"


@dataclass
class Config:
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # Set by the loader, not by files: the experiment name and the files it came from.
    name: str = "custom"
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def data_root(self) -> str:
        return self.dataset.root or os.environ.get("FSA_DATA_ROOT") or "data"


_SECTION_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}
_NOT_IN_FILES = {"name", "sources"}


# ----------------------------------------------------------------------------- typing
def _resolve_hints(cls):
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type `tp`; return the value converted where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if isinstance(value, bool) and "on" in args and "off" in args:  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp}")  # a bug in the schema, not user input


def _unknown(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _apply_section(obj, values: dict, where: str, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{prefix}' must be a mapping, got {values!r}")
    hints = _resolve_hints(type(obj))
    for key, value in values.items():
        dotted = f"{prefix}.{key}"
        if key not in hints:
            raise _unknown(dotted, [f"{prefix}.{k}" for k in hints], where)
        setattr(obj, key, _coerce(value, hints[key], f"{where}: '{dotted}'"))


def apply_mapping(cfg: Config, data: dict, where: str) -> None:
    """Merge a nested mapping (one YAML file) into `cfg`, checking every key."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    hints = _resolve_hints(Config)
    for key, value in data.items():
        if key in _NOT_IN_FILES or key not in hints:
            raise _unknown(str(key), [k for k in hints if k not in _NOT_IN_FILES], where)
        if dataclasses.is_dataclass(hints[key]):
            _apply_section(getattr(cfg, key), value, where, key)
        else:
            setattr(cfg, key, _coerce(value, hints[key], f"{where}: '{key}'"))


def apply_override(cfg: Config, text: str) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML)."""
    where = f"command line override '{text}'"
    if "=" not in text:
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: cannot parse value: {str(exc).splitlines()[0]}") from None
    parts = key.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    apply_mapping(cfg, nested, where)


def validate(cfg: Config, where: str = "config") -> None:
    """Value checks that types alone cannot express."""

    def need(cond: bool, key: str, msg: str):
        if not cond:
            raise ConfigError(f"{where}: '{key}' {msg}")

    d, t, e, f = cfg.dataset, cfg.train, cfg.extract, cfg.finetune
    from .models import is_model, list_models  # the registry: a name is checked before any work

    need(is_model(cfg.model.name), "model.name",
         f"unknown model {cfg.model.name!r} (known: {', '.join(list_models())})")
    need(d.imb_ratio >= 1, "dataset.imb_ratio", f"must be >= 1 (max/min class size), got {d.imb_ratio}")
    need(d.subset_seed >= 0, "dataset.subset_seed", f"must be >= 0, got {d.subset_seed}")
    need(d.num_classes is None or d.num_classes > 1, "dataset.num_classes", "must be > 1")
    need(d.image_size > 0, "dataset.image_size", "must be positive")
    for key, val in (("train_dir", d.train_dir), ("test_dir", d.test_dir)):
        need(val is None or bool(val.strip()), f"dataset.{key}", "must name a folder under dataset.root")
    need(d.train_dir is None or d.train_dir != d.test_dir, "dataset.test_dir", "must differ from dataset.train_dir")
    need(d.num_workers >= 0, "dataset.num_workers", "must be >= 0")
    need(t.epochs > 0, "train.epochs", f"must be positive, got {t.epochs}")
    need(t.batch_size > 0, "train.batch_size", f"must be positive, got {t.batch_size}")
    need(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    need(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    need(len(t.milestones) == len(t.lr_factors), "train.lr_factors", "needs one factor per milestone")
    need(list(t.milestones) == sorted(t.milestones), "train.milestones", "must be increasing")
    need(t.step_size > 0, "train.step_size", "must be positive")
    need(t.focal_gamma >= 0, "train.focal_gamma", "must be >= 0")
    need(0 <= t.cb_beta < 1, "train.cb_beta", "must be in [0, 1)")
    need(0 < t.ldam_max_margin < float("inf"), "train.ldam_max_margin", f"must be > 0, got {t.ldam_max_margin}")
    need(0 <= t.la_tau < float("inf"), "train.la_tau", f"must be >= 0, got {t.la_tau}")
    need(t.drw_epoch is None or 0 <= t.drw_epoch < t.epochs, "train.drw_epoch",
         f"must be in [0, train.epochs={t.epochs}) or null, got {t.drw_epoch}")
    need(t.drw_epoch is None or t.loss in ("ce", "ldam", "la", "balanced_softmax"), "train.drw_epoch",
         f"combines with train.loss ce, ldam, la or balanced_softmax, not {t.loss!r}")
    need(0 < cfg.model.cosine_scale < float("inf"), "model.cosine_scale", f"must be > 0, got {cfg.model.cosine_scale}")
    need(t.loss != "ldam" or cfg.model.classifier == "cosine", "train.loss",
         f"'ldam' needs model.classifier=cosine (LDAM's margins are in cosine units), got {cfg.model.classifier!r}")
    need(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(t.eval_every > 0, "train.eval_every", "must be positive")
    need(t.save_every > 0, "train.save_every", "must be positive")
    need(t.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
    need(t.eval_batch_size > 0, "train.eval_batch_size", "must be positive")
    need(0 < e.h_r <= 1, "extract.h_r", f"must be in (0, 1], got {e.h_r}")
    need(0 <= e.tau_g <= 1, "extract.tau_g", f"must be in [0, 1], got {e.tau_g}")
    need(0 <= e.tau_s <= 1, "extract.tau_s", f"must be in [0, 1], got {e.tau_s}")
    need(e.tau_g <= e.tau_s, "extract.tau_g", f"must not exceed extract.tau_s ({e.tau_s})")
    need(e.n_f >= 1, "extract.n_f", "must be >= 1")
    need(e.batch_size > 0, "extract.batch_size", "must be positive")
    need(f.n_t >= 1, "finetune.n_t", "must be >= 1")
    need(1 <= f.n_a <= e.n_f, "finetune.n_a", f"must be in [1, extract.n_f={e.n_f}]")
    need(f.iterations > 0, "finetune.iterations", "must be positive")
    need(f.seed is None or f.seed >= 0, "finetune.seed", f"must be >= 0, got {f.seed}")
    need(f.augment or f.method == "fsa", "finetune.augment",
         f"false is FSA's No-Aug control; finetune.method={f.method} has no augmentation to turn off")
    need(f.tau is None or f.method in ("tau_norm", "la_posthoc"), "finetune.tau",
         f"applies to finetune.method tau_norm or la_posthoc, not {f.method}")
    need(f.tau is None or f.method != "tau_norm" or 0.0 <= f.tau <= 1.0, "finetune.tau",
         f"must be in [0, 1] for tau_norm, got {f.tau}")
    need(f.tau is None or f.method != "la_posthoc" or 0.0 <= f.tau < float("inf"), "finetune.tau",
         f"must be >= 0 for la_posthoc, got {f.tau}")
    need(f.loss == "ce" or f.method == "fsa", "finetune.loss",
         f"{f.loss!r} applies to FSA and its control (finetune.method=fsa); {f.method} trains with its own recipe")
    need(f.loss != "ldam" or cfg.model.classifier == "cosine", "finetune.loss",
         f"'ldam' needs model.classifier=cosine (LDAM's margins are in cosine units), got {cfg.model.classifier!r}")
    need(0 <= f.loss_tau < float("inf"), "finetune.loss_tau", f"must be >= 0, got {f.loss_tau}")
    need(len(f.gamma_range) == 2 and 0.0 <= f.gamma_range[0] <= f.gamma_range[1] <= 1.0, "finetune.gamma_range",
         f"must be [lo, hi] with 0 <= lo <= hi <= 1, got {f.gamma_range}")
    need(f.select == "final" or f.method == "fsa", "finetune.select",
         f"'validation' applies to FSA and its control (finetune.method=fsa), not {f.method}")
    need(f.select == "final" or d.validation, "finetune.select",
         "'validation' needs a validation split: set dataset.validation=true")
    need(f.tau_from == "default" or f.method == "la_posthoc", "finetune.tau_from",
         f"'validation' applies to finetune.method la_posthoc (tau_norm always chooses on validation), not {f.method}")
    need(f.tau_from == "default" or f.tau is None, "finetune.tau_from",
         f"'validation' chooses tau, so finetune.tau={f.tau} cannot be set with it")
    need(f.tau_from == "default" or d.validation, "finetune.tau_from",
         "'validation' needs a validation split: set dataset.validation=true")
    need(not d.validation or d.name != "inat2018" or d.val_list is not None, "dataset.validation",
         "inat2018 has no validation split (its val list is the test set): give a held-out list of your own as "
         "dataset.val_list, or run without dataset.validation")
    need(d.val_per_class >= 1, "dataset.val_per_class", f"must be >= 1, got {d.val_per_class}")
    need(d.val_seed >= 0, "dataset.val_seed", f"must be >= 0, got {d.val_seed}")
    for key, val in (("val_list", d.val_list), ("val_dir", d.val_dir)):
        need(val is None or bool(val.strip()), f"dataset.{key}", "must name a file or folder under dataset.root")
    b = cfg.baseline
    need(b.lr > 0, "baseline.lr", f"must be positive, got {b.lr}")
    need(0 <= b.momentum < 1, "baseline.momentum", "must be in [0, 1)")
    need(b.weight_decay >= 0, "baseline.weight_decay", "must be >= 0")
    need(b.batch_size > 0, "baseline.batch_size", f"must be positive, got {b.batch_size}")
    need(b.crt_epochs > 0, "baseline.crt_epochs", f"must be positive, got {b.crt_epochs}")
    need(b.lws_epochs > 0, "baseline.lws_epochs", f"must be positive, got {b.lws_epochs}")
    need(b.samples_per_class >= 1, "baseline.samples_per_class", f"must be >= 1, got {b.samples_per_class}")
    need(f.lr > 0, "finetune.lr", "must be positive")
    need(f.eval_every > 0, "finetune.eval_every", "must be positive")
    need(f.save_every > 0, "finetune.save_every", "must be positive")
    need(all(ch.isalnum() or ch in "-_." for ch in f.variant), "finetune.variant",
         f"may hold letters, digits, '-', '_' and '.' only, got {f.variant!r}")


# ----------------------------------------------------------------------------- files
def config_dirs() -> list[Path]:
    """Where configs are looked up by name: $FSA_CONFIG_DIR, ./configs, the checkout's configs/."""
    dirs = []
    if os.environ.get("FSA_CONFIG_DIR"):
        dirs.append(Path(os.environ["FSA_CONFIG_DIR"]))
    dirs.append(Path.cwd() / "configs")
    dirs.append(Path(__file__).resolve().parent.parent / "configs")
    unique = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None


def phase_files(name_or_path: str, phase: str) -> tuple[str, list[Path]]:
    """The experiment name and the files (phase I .. `phase`) that make up its config.

    `name_or_path` is a name (looked up in `config_dirs()`) or a path to a YAML file of
    any phase; the files of the earlier phases are its siblings ``../phase_x/NAME.yaml``.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown phase '{phase}'")
    upto = PHASES[: PHASES.index(phase) + 1]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        name = p.stem
        base = p.resolve().parent.parent if p.resolve().parent.name in PHASES else None
        files = []
        for ph in upto:
            cand = base / ph / p.name if base is not None else None
            if cand is not None and cand.is_file():
                files.append(cand)
        if p.resolve() not in [f.resolve() for f in files]:
            files.append(p)
        return name, files
    name = name_or_path
    for d in config_dirs():
        if (d / "phase_i" / f"{name}.yaml").is_file() or (d / phase / f"{name}.yaml").is_file():
            files = [d / ph / f"{name}.yaml" for ph in upto if (d / ph / f"{name}.yaml").is_file()]
            return name, files
    searched = ", ".join(str(d / phase) for d in config_dirs())
    raise ConfigError(f"config '{name}' not found for {phase} (looked in {searched})")


def load_config(name_or_path: str, phase: str = "phase_i", overrides: list[str] | None = None) -> Config:
    name, files = phase_files(name_or_path, phase)
    cfg = Config()
    for f in files:
        apply_mapping(cfg, _read_yaml(f), str(f))
    if os.environ.get("FSA_AMP_CPU"):
        apply_mapping(cfg, {"train": {"amp_cpu": os.environ["FSA_AMP_CPU"]}}, "environment variable FSA_AMP_CPU")
    for o in overrides or []:
        apply_override(cfg, o)
    validate(cfg, where=str(files[-1]) if not overrides else f"{files[-1]} (with overrides)")
    cfg.name = name
    cfg.sources = [str(f) for f in files]
    return cfg


def split_phase_overrides(overrides: list[str], phase: str) -> list[str]:
    """For `fsa-lt run`: the overrides that apply to `phase`, prefixes stripped.

    Unprefixed overrides apply to every phase; ``phase_x.KEY=V`` applies to phase x and the
    phases after it (a phase builds on the earlier ones, as its config builds on their files),
    so ``phase_i.train.epochs=30`` is what Phases II and III record as their Phase I too."""
    upto = PHASES.index(phase)
    out = []
    for o in overrides:
        head = o.split("=", 1)[0].split(".", 1)[0]
        if head in PHASES:
            if PHASES.index(head) <= upto:
                out.append(o.split(".", 1)[1])
        else:
            out.append(o)
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(copy.deepcopy(cfg.to_dict()), sort_keys=False)
