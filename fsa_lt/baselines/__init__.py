"""The standard long-tailed baselines FSA is compared with, as pure tensor functions.

FSA's own code is `fsa_lt.method`; this folder holds the classifier re-balancing
methods run on the frozen Phase I backbone, and what they need to pick their tau on
a validation split (never on the test set, never on images Phase I trained on):

* `decoupling`: Kang et al., ICLR 2020 ("Decoupling representation and classifier"):
  class-balanced sampling, cRT (a fresh classifier), tau-normalisation, LWS.
* `posthoc`: Menon et al., ICLR 2021, post-hoc logit adjustment.
* `selection`: the choice of tau on a validation split.

The Phase I losses of the baselines (LDAM, DRW, logit-adjusted, balanced softmax)
are in `fsa_lt.engine.losses`; the cosine head is `fsa_lt.models.heads`.
Nothing here reads files or imports `fsa_lt.phases`.
"""

from .decoupling import (  # noqa: F401 (re-exported: __all__ below)
    ClassAwareSampler,
    ClassBalancedSampler,
    LearnableWeightScaling,
    class_balanced_indices,
    crt_classifier,
    recipe_lr,
    recipe_steps_per_epoch,
    tau_normalize,
    tau_normalized_classifier,
)
from .posthoc import posthoc_adjust  # noqa: F401
from .selection import TauChoice, balanced_accuracy, choose_tau  # noqa: F401

from . import decoupling, posthoc, selection

# each submodule names what it exports; the package exports all of it
__all__ = [*decoupling.__all__, *posthoc.__all__, *selection.__all__]
