#!/usr/bin/env python
"""Phase I: train the network on long-tailed data, or test a checkpoint (--mode train|test).

Usage: python phase_i_train_or_test.py --config NAME --note NOTE [--device cpu|cuda[:i]] [--workdir DIR] [KEY=VALUE ...]
Same as the `fsa-lt` subcommand; see `fsa-lt --help`.
"""
import sys

from fsa_lt.cli import seed_script

if __name__ == "__main__":
    sys.exit(seed_script("phase_i"))
