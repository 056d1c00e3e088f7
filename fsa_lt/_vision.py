"""torchvision, imported where it is needed, with a one-line error when it cannot be.

The ImageNet ResNets (`fsa_lt.models.resnet`) and the ImageNet-style transforms
(`fsa_lt.data.image_transforms`) are torchvision's; this module is the one place that
imports it.  Those two modules are themselves imported only when an ImageNet model or an
image-file data set is built, so CIFAR and digits runs neither wait for torchvision's
import (about 2 s) nor depend on it loading.

A torchvision built for another torch fails on import with a message from deep inside it
(a CUDA build beside a CPU torch: "operator torchvision::nms does not exist", because its
compiled operators need ``libtorch_cuda.so``); `load` turns that, and a missing
torchvision, into an `FsaError` that says which torch is installed and what to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import FsaError

__all__ = ["load"]

INSTALL_HINT = "install the torchvision built for this torch (README, Install)"


def load(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a torchvision module, or a one-line `FsaError`."""
    import torch

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "torchvision":
            raise FsaError(f"torchvision is not installed (torch {torch.__version__}): {INSTALL_HINT}") from None
        raise
    except (ImportError, RuntimeError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise FsaError(
            f"torchvision does not load beside torch {torch.__version__} ({build}): {reason}; {INSTALL_HINT}"
        ) from None
