#!/usr/bin/env python
"""Phase II: CAMs, feature decomposition, confusing classes and the feature store.

Usage: python phase_ii_extract_feature.py --config NAME --note NOTE [--device cpu|cuda[:i]] [--workdir DIR] [KEY=VALUE ...]
Same as the `fsa-lt` subcommand; see `fsa-lt --help`.
"""
import sys

from fsa_lt.cli import seed_script

if __name__ == "__main__":
    sys.exit(seed_script("phase_ii"))
