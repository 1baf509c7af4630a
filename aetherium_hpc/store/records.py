"""Record tuples that travel from log calls to the writer, and their validation.

Records are plain tuples of str / int / float / None so that they cost little to
build, and cross process boundaries with :mod:`marshal` (no code is ever
unpickled). The first element is the kind.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from .schema import COLUMNS

RESOURCE = 0  # (RESOURCE, ts, metric_type, metric_name, value, unit, device)
GENERATION = 1  # (GENERATION, ts, operation, round, chunk, duration_s, samples, memory_mb, pid)
TRAINING = 2  # (TRAINING, ts, metric_name, value, round, epoch, phase)
JOB = 3  # (JOB, ts, {column: value})
STATS = 4  # (STATS, ts, {counter: increment}) -- counters sent by other processes
SERIES = 5  # (SERIES, [(metric_type, metric_name, unit, device, [ts, ...], [value, ...]), ...]) -- a monitor's batch

KIND_NAMES = {
    RESOURCE: "resource",
    GENERATION: "generation",
    TRAINING: "training",
    JOB: "job",
    STATS: "stats",
    SERIES: "resource series",
}

#: The columns of the ``jobs`` view that name the job: a JOB record may set them, and the writer
#: stores them in its ``sources`` row.
JOB_IDENTITY_COLUMNS = ("job_id", "array_job_id", "array_task_id", "node")
#: The columns of the ``jobs`` row a JOB record may set (:func:`job_fields`): those, then ``job_rows``'.
JOB_COLUMNS = (*JOB_IDENTITY_COLUMNS, *COLUMNS["job_rows"][1:])
#: The logged fields of a GENERATION and a TRAINING record (after the kind), as their tables name
#: them: the columns after ``id`` and ``source_id``.
GENERATION_FIELDS = COLUMNS["generation_rows"][2:]
TRAINING_FIELDS = COLUMNS["training_rows"][2:]

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


#: Timestamps are Unix seconds; beyond ±1e11 s (year 5138) a value is a unit mistake.
MAX_TIMESTAMP = 1e11


def count(recs: Iterable[Any]) -> int:
    """How many samples and rows ``recs`` hold: one a record, but a SERIES record's values each
    (what ``store_stats`` counts as written, dropped or lost)."""
    n = 0
    for rec in recs:
        if rec[0] == SERIES:
            try:
                n += sum(len(col[5]) for col in rec[1])
            except (TypeError, IndexError):  # (malformed: the writer refuses it as one)
                n += 1
        else:
            n += 1
    return n


def timestamp(value: Any, what: str) -> float:
    """Validate a Unix timestamp in seconds: a finite number within ±:data:`MAX_TIMESTAMP`."""
    ts = number(value, what)
    if not -MAX_TIMESTAMP <= ts <= MAX_TIMESTAMP:
        raise ValueError(f"{what}={ts!r} is not a Unix time in seconds (finite, within ±{MAX_TIMESTAMP:.0e})")
    return ts


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


# -- the jobs row ---------------------------------------------------------------------------
def _job_text(value: Any, what: str, *, optional: bool = True, limit: int | None = MAX_NAME) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise TypeError(
            f"{what} must be a str{' or None' if optional else ''}, got {type(value).__name__} {value!r:.80}"
        )
    if limit is not None and len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if not optional and not value:
        raise ValueError(f"{what} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid text ({exc.reason} at position {exc.start})") from None
    return value


def _job_id(value: Any, what: str) -> str | None:
    """A scheduler id: a str, or an int (stored as its decimal text)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(optional_int(value, what))
    if value is not None and type(value) is not str:
        raise TypeError(f"{what} must be a str, an int or None, got {type(value).__name__} {value!r:.80}")
    return _job_text(value, what)


def _job_task_id(value: Any, what: str) -> int | None:
    """An array task id: an int, or a str holding one."""
    if type(value) is str:
        try:
            return optional_int(int(value), what)
        except ValueError:
            raise ValueError(f"{what}={value!r:.40} is not an integer") from None
    return optional_int(value, what)


def _job_status(value: Any, what: str) -> str | None:
    return _job_text(value, what, optional=False)


def _job_time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    return timestamp(value, what)


def _job_json(value: Any, what: str) -> str | None:
    """A dict (stored as JSON text), JSON text already, or None."""
    if value is None or type(value) is str:
        return _job_text(value, what, limit=None)
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict (stored as JSON), a JSON str or None, got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be stored as JSON") from None
    except (TypeError, ValueError) as exc:
        error = TypeError if isinstance(exc, TypeError) else ValueError
        raise error(
            f"{what} must be JSON-serialisable (str keys; str, finite number, bool, None, list and dict values): {exc}"
        ) from None


def _job_detail(value: Any, what: str) -> str | None:
    return _job_text(value, what, limit=None)


_JOB_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "job_id": _job_id,
    "array_job_id": _job_id,
    "array_task_id": _job_task_id,
    "node": _job_text,
    "start_time": _job_time,
    "end_time": _job_time,
    "status": _job_status,
    "exit_code": optional_int,
    "config": _job_json,
    "requested": _job_json,
    "detail": _job_detail,
    "user_name": _job_text,
}
assert tuple(_JOB_CHECKS) == JOB_COLUMNS


def job_fields(fields: Any) -> dict[str, Any]:
    """Check the columns of a ``jobs`` update and return them as SQLite binds them.

    Raises a TypeError or ValueError naming the column: an unknown column, a value of
    the wrong type (``job_id`` / ``array_job_id``: str or int; ``array_task_id``,
    ``exit_code``: int; ``start_time`` / ``end_time``: finite numbers; ``node``,
    ``status``, ``detail``, ``user_name``: str; ``config`` / ``requested``: a JSON-serialisable dict,
    stored as JSON text). None clears a column, except ``status``.
    """
    if not isinstance(fields, dict):
        raise TypeError(f"job fields must be a dict of column: value, got {type(fields).__name__}")
    out: dict[str, Any] = {}
    for column, value in fields.items():
        check = _JOB_CHECKS.get(column) if type(column) is str else None
        if check is None:
            raise TypeError(f"unknown jobs column {column!r:.60}: use one of {', '.join(JOB_COLUMNS)}")
        out[column] = check(value, column)
    return out


_SQL_TYPES = (type(None), int, float, str)


def sql_row(row: tuple[Any, ...], fields: tuple[str, ...]) -> tuple[Any, ...]:
    """Check a record's ``fields`` (from another process: never checked at a call) before SQLite binds
    them; the error names the field."""
    if len(row) != len(fields):
        raise TypeError(f"{len(row)} fields instead of {len(fields)} ({', '.join(fields)})")
    for name, x in zip(fields, row, strict=True):
        if type(x) not in _SQL_TYPES or type(x) is int and not -(2**63) <= x < 2**63:
            raise TypeError(f"{name} is {type(x).__name__} {x!r:.60}, not a str, number or None")
    return row
