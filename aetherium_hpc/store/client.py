"""The store API the pipeline calls: init_db, log_*, get_db, shutdown_db.

The log calls are here; opening, joining and closing this process's store is :mod:`.process`'s,
the store objects :mod:`.stores`' (``init_db``, ``get_db``, ``shutdown_db``, ``close_store``,
:class:`MetricsStore`, :class:`JoinedStore` and ``set_recent_source`` are offered here too).

In the process that called :func:`init_db`, a log call appends a tuple to the writer's in-memory
queue and returns (no disk, no lock). In any other process -- a fork or spawn child, another
``srun`` task, a command started by the runtime -- the same call appends to a per-process buffer
that a :class:`SocketSink` sends to the node socket, found through ``AETHERIUM_METRICS_ADDR`` /
``AETHERIUM_METRICS_KEY``.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import process, records
from .address import StoreAddress
from .process import close_store as close_store
from .process import get_db as get_db
from .process import init_db as init_db
from .process import shutdown_db as shutdown_db
from .process import worker_args as worker_args
from .process import worker_initializer as worker_initializer
from .records import GENERATION, JOB, MAX_NAME, RESOURCE, SERIES, TRAINING
from .stores import JoinedStore as JoinedStore
from .stores import MetricsStore as MetricsStore
from .stores import set_recent_source as set_recent_source
from .transport import SocketSink

_time = time.time
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _timestamp(timestamp: float | None) -> float:
    """Now, or ``timestamp`` checked: a Unix time in seconds."""
    return _time() if timestamp is None else records.timestamp(timestamp, "timestamp")


# -- the log calls ---------------------------------------------------------------------------
def log_data_generation_start(
    operation: str = "data_generation", round_number: int | None = None, chunk_number: int | None = None
) -> float:
    """Mark the start of a data-generation chunk; returns the start time to pass to ``..._complete``."""
    records.name(operation, "operation")
    return _time()


def log_data_generation_complete(
    start_time: float,
    operation: str = "data_generation",
    samples_generated: int | None = None,
    round_number: int | None = None,
    chunk_number: int | None = None,
    memory_used_mb: float | None = None,
) -> float:
    """Record one finished chunk; duration_seconds = now - start_time. Returns the duration."""
    now = _time()
    start = records.number(start_time, "start_time")
    rec = (
        GENERATION,
        now,
        records.name(operation, "operation"),
        records.optional_int(round_number, "round_number"),
        records.optional_int(chunk_number, "chunk_number"),
        now - start,
        records.optional_int(samples_generated, "samples_generated"),
        None if memory_used_mb is None else records.number(memory_used_mb, "memory_used_mb"),
        os.getpid(),
    )
    sink = process.sink or process.resolve_sink()
    if sink is not None:
        sink.put(rec)
    return now - start


def log_training_epoch_metric(
    metric_name: str,
    metric_value: float,
    round_number: int | None = None,
    epoch_number: int | None = None,
    phase: str = "train",
) -> None:
    """Record one training metric (loss, accuracy, learning rate ...) of one epoch."""
    if type(metric_name) is not str or not 0 < len(metric_name) <= MAX_NAME:
        records.name(metric_name, "metric_name")
    if type(metric_value) is not float:
        metric_value = records.number(metric_value, "metric_value")
    if round_number is not None and (type(round_number) is not int or not _I64_MIN <= round_number <= _I64_MAX):
        round_number = records.optional_int(round_number, "round_number")
    if epoch_number is not None and (type(epoch_number) is not int or not _I64_MIN <= epoch_number <= _I64_MAX):
        epoch_number = records.optional_int(epoch_number, "epoch_number")
    if type(phase) is not str or len(phase) > MAX_NAME:
        records.name(phase, "phase")
    sink = process.sink or process.resolve_sink()
    if sink is not None:
        sink.put((TRAINING, _time(), metric_name, metric_value, round_number, epoch_number, phase))


def log_resource_metric(
    metric_type: str,
    metric_name: str,
    value: float,
    unit: str = "",
    device: str = "",
    timestamp: float | None = None,
) -> None:
    """Record one resource sample (the monitors use :func:`log_resource_samples`)."""
    ts = _timestamp(timestamp)
    if type(metric_type) is not str or not 0 < len(metric_type) <= MAX_NAME:
        records.name(metric_type, "metric_type")
    if type(metric_name) is not str or not 0 < len(metric_name) <= MAX_NAME:
        records.name(metric_name, "metric_name")
    if type(value) is not float:
        value = records.number(value, "value")
    if type(unit) is not str or len(unit) > MAX_NAME:
        unit = records.name(unit, "unit", optional=True)
    if type(device) is not str or len(device) > MAX_NAME:
        device = records.name(str(device) if isinstance(device, int) else device, "device", optional=True)
    sink = process.sink or process.resolve_sink()
    if sink is not None:
        sink.put((RESOURCE, ts, metric_type, metric_name, value, unit, device))


def log_resource_samples(samples: Iterable[tuple[str, str, float, str, str]], timestamp: float | None = None) -> None:
    """Record many samples taken at one moment: (metric_type, metric_name, value, unit, device) each."""
    ts = _timestamp(timestamp)
    recs = []
    for t, n, v, u, d in samples:
        if type(t) is not str or not 0 < len(t) <= MAX_NAME:
            records.name(t, "metric_type")
        if type(n) is not str or not 0 < len(n) <= MAX_NAME:
            records.name(n, f"{t}: metric_name")
        if type(v) is not float:
            v = records.number(v, f"{t}/{n}")
        if type(u) is not str or len(u) > MAX_NAME:
            u = records.name(u, f"{t}/{n}: unit", optional=True)
        if type(d) is not str or len(d) > MAX_NAME:
            d = records.name(str(d) if isinstance(d, int) else d, f"{t}/{n}: device", optional=True)
        recs.append((RESOURCE, ts, t, n, v, u, d))
    sink = process.sink or process.resolve_sink()
    if sink is not None and recs:
        sink.put_many(recs)


def log_builtin_ticks(ticks: list[tuple[float, list[tuple[str, str, float, str, str]]]]) -> None:
    """Queue ticks of the monitor's built-in collectors, (timestamp, samples) each, as one SERIES
    record (:func:`series_record`).

    No per-field checks (:func:`log_resource_samples` has them): the names and units are the
    constants of ``store/catalogue.py``, the values numbers, the devices short text; the writer
    still checks each series' types and times, and refuses, alone, a record it cannot store."""
    sink = process.sink or process.resolve_sink()
    if sink is not None:
        rec = series_record(ticks)
        if rec is not None:
            sink.put(rec)


def series_record(ticks: Iterable[tuple[float, Sequence[tuple[str, str, float, str, str]]]]) -> tuple[Any, ...] | None:
    """The SERIES record of ticks (timestamp, samples), in time order: per series its times and
    its values, the columns the writer appends to its chunks; None for no sample.

    Consecutive ticks that name the same series in the same order (a monitor's batch, but for a
    process that came or went) are turned into columns in C, so a sample costs no Python of its own."""
    cols: dict[tuple[str, str, str, str], tuple[list[float], list[float]]] = {}
    keys: list[tuple[str, str, str, str]] = []  # the series of the run of ticks being gathered
    times: list[float] = []
    rows: list[list[float]] = []  # the values of each tick of the run, in the order of keys
    for ts, samples in ticks:
        names = list(map(_SERIES_KEY, samples))
        if names != keys:
            _add_columns(cols, keys, times, rows)
            keys, times, rows = names, [], []
        times.append(ts)
        rows.append(list(map(_VALUE, samples)))
    _add_columns(cols, keys, times, rows)
    return (SERIES, [(*key, t, v) for key, (t, v) in cols.items()]) if cols else None


_SERIES_KEY = operator.itemgetter(0, 1, 3, 4)  # a sample's series: (metric_type, metric_name, unit, device)
_VALUE = operator.itemgetter(2)


def _add_columns(
    cols: dict[tuple[str, str, str, str], tuple[list[float], list[float]]],
    keys: list[tuple[str, str, str, str]],
    times: list[float],
    rows: list[list[float]],
) -> None:
    """Append a run of ticks (their ``times``, their values ``rows`` in the order of ``keys``) to
    the columns ``cols``; a series named twice in a tick gets both values at that time."""
    for key, column in zip(keys, zip(*rows, strict=True), strict=True):
        series = cols.get(key)
        if series is None:
            cols[key] = (times[:], list(column))
        else:
            series[0].extend(times)
            series[1].extend(column)


def send_one_record(address: StoreAddress, kind: str, fields: Mapping[str, Any]) -> bool:
    """The store's side of ``aetherium-hpc log``: send one ``kind`` record ("training",
    "resource" or "generation") built from the command's options to the node store at
    ``address``; True once it is sent. A bad value raises ValueError/TypeError naming the option."""
    now = _time()
    name = records.name
    if kind == "training":
        rec: tuple[object, ...] = (
            TRAINING, now, name(fields["name"], "metric name"), fields["value"],
            fields["round"], fields["epoch"], name(fields["phase"], "--phase"),
        )  # fmt: skip
    elif kind == "resource":
        rec = (
            RESOURCE, now, name(fields["type"], "metric type"), name(fields["name"], "metric name"), fields["value"],
            name(fields["unit"], "--unit", optional=True), name(fields["device"], "--device", optional=True),
        )  # fmt: skip
    else:
        rec = (
            GENERATION, now, name(fields["operation"], "operation"), fields["round"], fields["chunk"],
            fields["duration"], fields["samples"], fields["memory_mb"], None,
        )  # fmt: skip
    sink = SocketSink(address)
    sink.put(rec)
    sent = sink.flush()
    sink.close()
    return sent


def log_job(**fields: Any) -> None:
    """Write or update this database's row in ``jobs`` (status, exit_code, start/end, config ...).

    Only the columns of ``jobs`` are accepted, each checked at the call (a TypeError or
    ValueError naming it): ids str or int, times numbers, ``exit_code`` an int, ``node``,
    ``status``, ``detail`` and ``user_name`` str, ``config`` / ``requested`` JSON-serialisable
    dicts. ``user_name`` (who submitted the job) need not be given: the row is created with
    SLURM_JOB_USER, else the user the writing process runs as. ``job_id``, ``array_job_id``, ``array_task_id`` and ``node`` change the database's
    ``sources`` row: the job's identity is stored there only, and every view shows it.
    """
    rec = (JOB, _time(), records.job_fields(fields))
    sink = process.sink or process.resolve_sink()
    if sink is not None:
        sink.put(rec)
