"""Record tuples that travel from log calls to the writer, and their validation.

Records are plain tuples of str / int / float / None so that they cost little to
build, and cross process boundaries with :mod:`marshal` (no code is ever
unpickled). The first element is the kind.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

RESOURCE = 0  # (RESOURCE, ts, metric_type, metric_name, value, unit, device)
GENERATION = 1  # (GENERATION, ts, operation, round, chunk, duration_s, samples, memory_mb, pid)
TRAINING = 2  # (TRAINING, ts, metric_name, value, round, epoch, phase)
JOB = 3  # (JOB, ts, {column: value})
STATS = 4  # (STATS, ts, {counter: increment}) -- counters sent by other processes

KINDS = (RESOURCE, GENERATION, TRAINING, JOB, STATS)

#: Longest accepted name (metric names, operations, phases, units, devices).
MAX_NAME = 256
_INT64 = 2**63


def number(value: Any, what: str) -> float:
    """Return ``value`` as a float, or raise a TypeError/ValueError that says what was wrong.

    NaN and ±inf are accepted: NaN is stored as NULL, ±inf as ±inf (SQLite's REAL Inf).
    """
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{what} must be a real number (int, float or numpy scalar), got {type(value).__name__} {value!r:.80}"
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what}={value!r:.40} is too large for a float; log a scaled value") from None


def optional_int(value: Any, what: str) -> int | None:
    """Validate an optional integer field (round, epoch, chunk numbers ...)."""
    if value is None or type(value) is int and -_INT64 <= value < _INT64:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int or None, got {type(value).__name__} {value!r:.80}")
    value = int(value)
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"{what}={value} does not fit in a 64-bit integer")
    return value


def name(value: Any, what: str, *, optional: bool = False) -> str:
    """Validate a short text field (metric name, operation, unit ...)."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r:.80}")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME}: use a shorter name")
    if not optional and not value:
        raise ValueError(f"{what} must not be empty")
    return value


def encode_value(value: float | None) -> str:
    """JSON text of one sample value: 7 significant digits, NaN → null, ±inf → ±9e999."""
    if value is None or value != value:
        return "null"
    if math.isinf(value):
        return "9e999" if value > 0 else "-9e999"
    return "%.7g" % value  # noqa: UP031 -- fastest formatting on the writer path
