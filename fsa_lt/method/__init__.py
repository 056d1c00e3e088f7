"""Feature Space Augmentation itself: pure tensor functions, no I/O (see docs/METHOD.md)."""

from fsa_lt.method.augment import (FSASampler, batch_prior, build_batch, check_gamma_range, fuse_pooled, synthesize,
                                   usable_masks)
from fsa_lt.method.cam import cam_weights, class_activation_maps, decompose_masks, normalize_cams, usable_locations
from fsa_lt.method.confusion import confusing_classes, mean_scores_by_class
from fsa_lt.method.split import frequency_order, head_tail_split, shot_groups

__all__ = [
    "cam_weights",
    "class_activation_maps",
    "normalize_cams",
    "decompose_masks",
    "usable_locations",
    "head_tail_split",
    "shot_groups",
    "frequency_order",
    "mean_scores_by_class",
    "confusing_classes",
    "FSASampler",
    "batch_prior",
    "check_gamma_range",
    "fuse_pooled",
    "synthesize",
    "usable_masks",
    "build_batch",
]
