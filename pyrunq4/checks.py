"""The argument rules of the Python layer, each written once: Model, the
Sampler and the command lines call these and raise ArgumentError (a
ValueError) with a one-line message.

Limits the engine also enforces (the thread maximum) are read from C through
pyrunq4._lib, never retyped here.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ArgumentError

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1

__all__ = ["INT32_MAX", "UINT64_MAX", "check_int", "check_threads", "check_sampling",
           "check_max_new_tokens"]


def check_int(name, value, lo, hi, allow_none=False):
    """value as an int in [lo, hi] (None passes through when allow_none)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ArgumentError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def check_threads(n_threads):
    """None (the C default: the CPUs this process may use, at most
    RQ4_MAX_THREADS) or an explicit count in [1, RQ4_MAX_THREADS]."""
    from ._lib import MAX_THREADS

    return check_int("n_threads", n_threads, 1, MAX_THREADS, allow_none=True)


def check_max_new_tokens(max_new_tokens):
    """None (until the end of turn or a full context) or a count >= 0."""
    return check_int("max_new_tokens", max_new_tokens, 0, INT32_MAX, allow_none=True)


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(f"{name} must be a number, got {value!r}")


def check_sampling(temperature=0.0, top_p=1.0, top_k=0, seed=None, min_p=0.0, repeat_penalty=1.0,
                   repeat_last_n=0):
    """The sampling parameters: temperature finite and >= 0 (0: greedy),
    top_p in (0, 1], top_k >= 0 (0: off), seed None or in [0, 2^64), min_p in
    [0, 1] (0: off), repeat_penalty finite and > 0 (1: off), repeat_last_n in
    [0, RQ4_MAX_REPEAT_LAST_N]. (The C sampler checks its ranges again, in
    float: a temperature beyond float's range is refused there.)"""
    from ._lib import MAX_REPEAT_LAST_N

    _check_number("min_p", min_p)
    if not (0.0 <= min_p <= 1.0):
        raise ArgumentError(f"min_p must be in [0, 1], got {min_p!r}")
    _check_number("repeat_penalty", repeat_penalty)
    if not (math.isfinite(repeat_penalty) and repeat_penalty > 0):
        raise ArgumentError(f"repeat_penalty must be finite and > 0, got {repeat_penalty!r}")
    check_int("repeat_last_n", repeat_last_n, 0, MAX_REPEAT_LAST_N)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
        raise ArgumentError(f"temperature must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ArgumentError(f"temperature must be finite and >= 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating)):
        raise ArgumentError(f"top_p must be a number, got {top_p!r}")
    if not (0.0 < top_p <= 1.0):  # also rejects NaN
        raise ArgumentError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise ArgumentError(f"top_k must be an integer, got {top_k!r}")
    if top_k < 0:
        raise ArgumentError(f"top_k must be >= 0, got {top_k!r}")
    if seed is not None:
        check_int("seed", seed, 0, UINT64_MAX)
