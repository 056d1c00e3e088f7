#!/usr/bin/env python
"""Phase III: fine-tune the classifier with feature-space augmentation (--mode train|test).

Usage: python phase_iii_train_or_test.py --config NAME --note NOTE [--device cpu|cuda[:i]] [--workdir DIR] [KEY=VALUE ...]
Same as the `fsa-lt` subcommand; see `fsa-lt --help`.
"""
import sys

from fsa_lt.cli import seed_script

if __name__ == "__main__":
    sys.exit(seed_script("phase_iii"))
