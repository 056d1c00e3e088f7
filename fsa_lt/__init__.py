"""fsa-lt: Feature Space Augmentation (Chu et al., ECCV 2020) for long-tailed classification."""

__version__ = "0.1.0"
