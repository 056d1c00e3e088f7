"""Fault injection, for the tests and `benchmarks/fault_injection.py` (never set in normal use).

``FSA_LT_FAULT=<kind>:<n>`` in the environment makes the n-th event of that kind fail:

    kill_in_write:N           SIGKILL this process in the middle of its N-th atomic file
                              write: half the bytes are in the temporary file, nothing is
                              renamed (a checkpoint, a store shard, a record being written)
    interrupt_after_epoch:N   raise KeyboardInterrupt once Phase I has saved epoch N, as
                              Ctrl-C would (on every rank of a torchrun launch alike)

Random-time kills need no hook (the benchmark sends SIGKILL from outside); these two make
the moments that a random time rarely hits happen on purpose.
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}
events: list[tuple[str, str]] = []  # (kind, what) of every counted event: the script's map of a run


def _spec() -> tuple[str, str, int] | None:
    raw = os.environ.get("FSA_LT_FAULT", "").strip()
    if not raw:
        return None
    kind, _, n = raw.partition(":")
    try:
        return raw, kind, int(n)
    except ValueError:
        return None


def due(kind: str, what: str = "") -> bool:
    """Count one event of `kind` (`what`: the file, for the record of a counting run); True when
    it is the one the environment asks to fail."""
    spec = _spec()
    if spec is None or spec[1] != kind:
        return False
    _counts[spec[0]] = _counts.get(spec[0], 0) + 1
    events.append((kind, what))
    return _counts[spec[0]] == spec[2]


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
