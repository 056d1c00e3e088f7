"""Models: a name registry; CIFAR ResNets, ResNets with a CIFAR stem, ImageNet ResNets.

Every model has ``num_features``, ``forward_features(x)`` (final map B x C x H x W),
``forward_head(fmap, pre_logits=False)`` (global average pooling, then ``fc``),
``get_classifier()`` and ``reset_classifier(num_classes)``, and
``forward(x) == forward_head(forward_features(x))``.  The classifier is ``nn.Linear`` or,
with ``create_model(..., classifier="cosine")``, a `CosineClassifier` (LDAM's head).

The ImageNet ResNets and the CIFAR-stem ResNet-18/34 are built on torchvision
(`fsa_lt.models.resnet`); that module, and torchvision with it, is imported the first
time one of them is built (or ``ResNet`` is asked for), not by ``import fsa_lt.models``.
"""

from .heads import CosineClassifier, FeatureHeadMixin
from .registry import (
    CLASSIFIERS,
    PretrainedReport,
    check_pretrained_file,
    create_model,
    is_model,
    list_models,
    load_pretrained,
    register_deferred,
    register_model,
)
from . import cifar_resnet as _cifar_resnet  # noqa: F401  (registers the models)
from .cifar_resnet import CifarResNet

# what fsa_lt.models.resnet registers (its IMAGENET_MODELS + CIFAR_STEM_MODELS; a test checks)
TORCHVISION_MODELS = (
    "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnet18_cifar", "resnet34_cifar",
)
register_deferred("fsa_lt.models.resnet", TORCHVISION_MODELS)

__all__ = [
    "create_model",
    "CLASSIFIERS",
    "CosineClassifier",
    "FeatureHeadMixin",
    "list_models",
    "is_model",
    "register_model",
    "register_deferred",
    "load_pretrained",
    "check_pretrained_file",
    "PretrainedReport",
    "CifarResNet",
    "ResNet",
]


def __getattr__(name: str):
    if name == "ResNet":
        from .resnet import ResNet

        return ResNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
