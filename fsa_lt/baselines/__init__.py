"""The standard long-tailed baselines FSA is compared with, as pure tensor functions.

FSA's own code is `fsa_lt.method`; this folder holds the classifier re-balancing
methods run on the frozen Phase I backbone, and what they need to pick their tau on
data held out from the training set (never on the test set):

* `decoupling`: Kang et al., ICLR 2020 ("Decoupling representation and classifier"):
  class-balanced sampling, cRT (a fresh classifier), tau-normalisation, LWS.
* `posthoc`: Menon et al., ICLR 2021, post-hoc logit adjustment.
* `selection`: the held-out slice of the training set and the choice of tau on it.

The Phase I losses of the baselines (LDAM, DRW, logit-adjusted, balanced softmax)
are in `fsa_lt.engine.losses`; the cosine head is `fsa_lt.models.heads`.
Nothing here reads files or imports `fsa_lt.phases`.
"""

from .decoupling import (  # noqa: F401 (re-exported: __all__ below)
    ClassBalancedSampler,
    LearnableWeightScaling,
    class_balanced_indices,
    crt_classifier,
    tau_normalize,
    tau_normalized_classifier,
)
from .posthoc import posthoc_adjust  # noqa: F401
from .selection import HoldoutSplit, TauChoice, balanced_accuracy, choose_tau, holdout_counts, holdout_split  # noqa: F401

from . import decoupling, posthoc, selection

# each submodule names what it exports; the package exports all of it
__all__ = [*decoupling.__all__, *posthoc.__all__, *selection.__all__]
