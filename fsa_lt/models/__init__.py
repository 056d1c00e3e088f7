"""Models: a name registry; CIFAR ResNets, ResNets with a CIFAR stem, ImageNet ResNets.

Every model has ``num_features``, ``forward_features(x)`` (final map B x C x H x W),
``forward_head(fmap, pre_logits=False)`` (global average pooling, then ``fc``),
``get_classifier()`` and ``reset_classifier(num_classes)``, and
``forward(x) == forward_head(forward_features(x))``.  The classifier is ``nn.Linear`` or,
with ``create_model(..., classifier="cosine")``, a `CosineClassifier` (LDAM's head).
"""

from .heads import CosineClassifier
from .registry import (
    CLASSIFIERS,
    PretrainedReport,
    check_pretrained_file,
    create_model,
    is_model,
    list_models,
    load_pretrained,
    register_model,
)
from . import cifar_resnet as _cifar_resnet  # noqa: F401  (registers the models)
from . import resnet as _resnet  # noqa: F401
from .cifar_resnet import CifarResNet
from .resnet import ResNet

__all__ = [
    "create_model",
    "CLASSIFIERS",
    "CosineClassifier",
    "list_models",
    "is_model",
    "register_model",
    "load_pretrained",
    "check_pretrained_file",
    "PretrainedReport",
    "CifarResNet",
    "ResNet",
]
