"""Model name registry, `create_model` and loading of local pretrained weights.

A model factory is a function ``fn(num_classes, **kwargs) -> nn.Module`` registered
under a name with `register_model`.  `create_model` looks the name up, builds the
model and optionally loads a local state dict (nothing is ever downloaded).
`register_deferred` names models whose module is imported only when one of them is
built (the torchvision ResNets: CIFAR runs do not import torchvision).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from fsa_lt.errors import CheckpointError, ConfigError

__all__ = [
    "CLASSIFIERS",
    "register_model",
    "register_deferred",
    "create_model",
    "list_models",
    "is_model",
    "load_pretrained",
    "check_pretrained_file",
    "PretrainedReport",
]

_log = logging.getLogger(__name__)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFERRED: dict[str, str] = {}  # model name -> the module that registers it when imported

# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def register_model(name: str | Callable | None = None):
    """Register a model factory; use as ``@register_model`` or ``@register_model("name")``.

    Without a name the function's ``__name__`` is used.  Registering a name twice
    raises ``ValueError`` (a programming error, not a user error).
    """

    def deco(fn: Callable[..., nn.Module], _name: str | None = None):
        key = _name or fn.__name__
        if (key in _MODELS and _MODELS[key] is not fn) or _DEFERRED.get(key, fn.__module__) != fn.__module__:
            raise ValueError(f"model name '{key}' registered twice")
        _MODELS[key] = fn
        return fn

    if callable(name):  # bare @register_model
        return deco(name)
    return lambda fn: deco(fn, name)


def register_deferred(module: str, names) -> None:
    """Register `names` as models that `module` registers with `register_model` when it is
    imported; `create_model` imports it the first time one of them is built."""
    for key in names:
        if (key in _MODELS and _MODELS[key].__module__ != module) or _DEFERRED.get(key, module) != module:
            raise ValueError(f"model name '{key}' registered twice")
        _DEFERRED[key] = module


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS and name in _DEFERRED:
        importlib.import_module(_DEFERRED[name])
        if name not in _MODELS:  # a programming error: the module does not register the name
            raise ValueError(f"model '{name}': {_DEFERRED[name]} does not register it")
    return _MODELS[name]


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(set(_MODELS) | set(_DEFERRED))


def is_model(name: str) -> bool:
    return name in _MODELS or name in _DEFERRED


CLASSIFIERS = ("linear", "cosine")


def create_model(
    name: str,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    classifier: str = "linear",
    cosine_scale: float = 30.0,
    **kwargs,
) -> nn.Module:
    """Build the model registered as `name` with a `num_classes`-way classifier.

    `classifier`: "linear" (``nn.Linear``, what the factory builds) or "cosine" (a
    `fsa_lt.models.heads.CosineClassifier` returning ``cosine_scale * cos(x, w_j)``,
    LDAM-DRW's ``NormedLinear``); the model's ``reset_classifier`` keeps the kind.
    `pretrained`: path to a local state dict file (see `load_pretrained`); the
    classifier is skipped when its shape does not match.  The load report is kept
    on the model as ``model.pretrained_report`` (None when nothing was loaded).
    Extra keyword arguments go to the factory (e.g. ``zero_init_residual=True``).
    """
    if not is_model(name):
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"model.classifier: {classifier!r} is not one of {', '.join(map(repr, CLASSIFIERS))}")
    if (isinstance(cosine_scale, bool) or not isinstance(cosine_scale, (int, float))
            or not math.isfinite(cosine_scale) or cosine_scale <= 0):
        raise ConfigError(f"model.cosine_scale: must be a positive number, got {cosine_scale!r}")
    fn = _factory(name)
    try:
        inspect.signature(fn).bind(num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model '{name}': bad arguments {sorted(kwargs)}: {e}") from None
    model = fn(num_classes, **kwargs)
    if classifier == "cosine":
        if not hasattr(model, "use_cosine_classifier"):
            raise ConfigError(f"model.classifier: model '{name}' has no cosine classifier option")
        model.use_cosine_classifier(cosine_scale)
    model.pretrained_report = None
    if pretrained is not None and str(pretrained) != "":
        model.pretrained_report = load_pretrained(model, pretrained)
    return model


@dataclass
class PretrainedReport:
    path: str
    loaded: list[str] = field(default_factory=list)  # keys copied into the model
    skipped: list[str] = field(default_factory=list)  # classifier keys left at their init
    unexpected: list[str] = field(default_factory=list)  # keys in the file the model lacks


def check_pretrained_file(path) -> None:
    """`model.pretrained` before any work: the file is there and holds tensors only (read with
    ``weights_only=True``, nothing in it is run); else a one-line `CheckpointError` of our own."""
    _read_state_dict(os.fspath(path))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise CheckpointError(f"model.pretrained: weights file not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"model.pretrained: {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, not a torch file, pickled objects
        from ..engine.checkpoint import load_error_reason

        reason = load_error_reason(Path(path), e, origin="so it is not a plain state dict of weights")
        raise CheckpointError(f"model.pretrained: cannot read weights {path}: {reason}") from None
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"model.pretrained: cannot read weights {path}: expected a state dict, got {type(obj).__name__}"
        )
    sd = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            continue
        for p in _STRIP_PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        sd[k] = v
    if not sd:
        raise CheckpointError(f"model.pretrained: cannot read weights {path}: no tensors in the file")
    return sd


def _classifier_prefix(model: nn.Module) -> str:
    get = getattr(model, "get_classifier", None)
    if get is None:
        return "fc."
    clf = get()
    for n, m in model.named_modules():
        if m is clf:
            return n + "."
    return "fc."


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Copy the weights in the local file `path` into `model` (in place).

    The file holds a plain state dict, or a dict with a 'state_dict' or 'model'
    entry; leading 'module.' (and torch.compile's '_orig_mod.') are stripped.
    Classifier keys whose shape differs (another class count) or that are absent
    are skipped; every other model key must be present with the same shape, else
    `CheckpointError`.  BatchNorm ``num_batches_tracked`` may be absent (older
    torchvision files).  Keys in the file that the model lacks are reported only.
    """
    path = os.fspath(path)
    sd = _read_state_dict(path)
    own = model.state_dict()
    clf = _classifier_prefix(model)
    report = PretrainedReport(path=path)

    missing, bad_shape = [], []
    new_sd = {}
    for k, t in own.items():
        if k in sd:
            v = sd[k]
            if v.shape == t.shape:
                new_sd[k] = v
                report.loaded.append(k)
            elif k.startswith(clf):
                report.skipped.append(k)
            else:
                bad_shape.append(f"{k} {tuple(v.shape)} vs {tuple(t.shape)}")
        elif k.startswith(clf):
            report.skipped.append(k)
        elif k.endswith("num_batches_tracked"):
            continue
        else:
            missing.append(k)
    report.unexpected = sorted(k for k in sd if k not in own)

    if missing:
        few = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise CheckpointError(f"pretrained weights {path} lack model keys: {few}")
    if bad_shape:
        few = "; ".join(bad_shape[:3]) + (f"; ... ({len(bad_shape)} in all)" if len(bad_shape) > 3 else "")
        raise CheckpointError(f"pretrained weights {path} do not fit the model: {few}")
    # A classifier is loaded only as a whole (weight and bias together).
    clf_loaded = [k for k in report.loaded if k.startswith(clf)]
    if clf_loaded and report.skipped:
        for k in clf_loaded:
            report.loaded.remove(k)
            new_sd.pop(k)
            report.skipped.append(k)
    report.skipped.sort()

    model.load_state_dict(new_sd, strict=False)
    _log.info(
        "loaded %d tensors from %s; skipped %s; ignored %d unexpected keys%s",
        len(report.loaded), path, report.skipped or "nothing", len(report.unexpected),
        f" ({', '.join(report.unexpected[:5])})" if report.unexpected else "",
    )
    return report
