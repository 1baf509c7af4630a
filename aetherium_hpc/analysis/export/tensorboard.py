"""TensorBoard event files (written with tensorboardX): one run per task of a database.

Layout of ``OUT``, the log folder (``tensorboard --logdir OUT``):

* one run folder per task: named by its parameters in a sweep (``learning_rate=0.01,seed=1``:
  the ``task_params`` of its configuration snapshot, :mod:`..sweep`), otherwise by its task
  (``900_3`` for an array task, the job id for a plain job); a task that ran on several nodes
  gets one run per node, ``<task>/<node>``. Every attempt of a requeued task goes to its run.
* training metrics: tag ``<phase>/<metric>`` (``val/loss``; a metric without a phase: its name),
  step = ``epoch_number``; when a task has several rounds, the epochs of each round follow those
  of the round before (round 1's first epoch is one step after round 0's last); wall time = the
  row's timestamp.
* resource series: tag ``resource/<type>/<name>`` (``resource/cpu/system_total``), with
  ``/<device>`` for a per-device series (``resource/gpu/utilization/0``), step = the sample's
  index in its series, wall time = the sample's timestamp (TensorBoard's "Relative" or "Wall"
  horizontal axis shows them against time).

The database is read in one pass per kind: the training rows sorted by run (SQLite sorts on
disk when it must), the chunks of one series at a time in batches; one event file is open at a
time. tensorboardX's synchronous ``EventsWriter`` is used, not ``SummaryWriter``: the latter
hands every event to a background thread through a queue, four times slower here.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...store import chunks
from ..sweep import metric_key, task_key, task_label, task_params
from .output import ExportError, missing_extra

#: Chunks decoded at a time (about 180 samples each).
CHUNK_BATCH = 500
#: The suffix of the event files this export writes.
FILE_SUFFIX = ".aetherium"
_UNSAFE = re.compile(r"[\x00-\x1f/\\]")


def require() -> None:
    """:class:`ExportError` with the install line when tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise missing_extra("tensorboard", "tensorboardX", "tensorboard") from None


@dataclass
class Run:
    """One run folder: its name (a relative path) and the sources whose rows it holds."""

    name: str
    sources: list[int] = field(default_factory=list)


def _safe(part: str) -> str:
    """``part`` as one folder name: no separators or control characters, not ``.``/``..``, bounded."""
    text = _UNSAFE.sub("_", part).strip() or "_"
    return "_" + text if text in (".", "..") else text[:200]


def _params_name(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def plan_runs(conn: sqlite3.Connection) -> list[Run]:
    """The runs of the database, in task order (array task, then job)."""
    tasks: dict[tuple[str, int], tuple[dict[str, Any], dict[str, list[int]]]] = {}
    for sid, job, array_job, task, node, config in conn.execute(
        "SELECT s.source_id, s.job_id, s.array_job_id, s.array_task_id, s.node, j.config"
        " FROM sources s LEFT JOIN job_rows j USING (source_id) ORDER BY s.source_id"
    ):
        key = task_key(job or "job", array_job, task)
        params, nodes = tasks.setdefault(key, ({}, defaultdict(list)))
        if not params:
            params.update(task_params(config))
        nodes[node or "node"].append(sid)
    sweep = any(params for params, _ in tasks.values())
    names = {key: _safe(_params_name(params) if sweep and params else task_label(key))
             for key, (params, _) in tasks.items()}  # fmt: skip
    repeated = Counter(names.values())
    runs = []
    for key in sorted(tasks):
        name = names[key] if repeated[names[key]] == 1 else _safe(f"{names[key]},task={task_label(key)}")
        nodes = tasks[key][1]
        for node in sorted(nodes):
            runs.append(Run(name if len(nodes) == 1 else f"{name}/{_safe(node)}", nodes[node]))
    return runs


class _RunWriter:
    """The event file of one run, opened at its first event."""

    def __init__(self, folder: str) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        self.folder = folder
        self._event, self._summary = Event, Summary
        self._writer: Any = None
        self.events = 0

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter

            os.makedirs(self.folder, exist_ok=True)
            self._writer = EventsWriter(os.path.join(self.folder, "events"), filename_suffix=FILE_SUFFIX)
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=value)])
        self._writer.write_event(self._event(wall_time=wall_time, step=step, summary=summary))
        self.events += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _round_offsets(conn: sqlite3.Connection) -> dict[int, dict[int, int]]:
    """Per run index: round → the step of its epoch 0 (rounds follow each other without a gap)."""
    spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for run, rnd, first, last in conn.execute(
        "SELECT r.run, coalesce(t.round_number, 0), min(coalesce(t.epoch_number, 0)),"
        " max(coalesce(t.epoch_number, 0)) FROM training_rows t JOIN temp.export_runs r USING (source_id)"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        spans[run].append((rnd, first, last))
    offsets: dict[int, dict[int, int]] = {}
    for run, rounds in spans.items():
        offsets[run] = {}
        offset = 0
        for i, (rnd, first, _last) in enumerate(rounds):
            if i:  # this round's first epoch one step after the last epoch of the round before
                offset += rounds[i - 1][2] + 1 - first
            offsets[run][rnd] = offset
    return offsets


def _training(conn: sqlite3.Connection) -> Iterator[tuple[int, Iterator[tuple[Any, ...]]]]:
    """(run index, its training rows in (round, epoch, time) order), run after run."""
    cur = conn.execute(
        "SELECT r.run, t.timestamp, t.metric_name, t.metric_value, t.round_number, t.epoch_number, t.phase"
        " FROM training_rows t JOIN temp.export_runs r USING (source_id) WHERE t.metric_value IS NOT NULL"
        " ORDER BY r.run, coalesce(t.round_number, 0), coalesce(t.epoch_number, 0), t.timestamp"
    )
    row = next(cur, None)
    while row is not None:
        run = row[0]

        def rows_of(run: int = run) -> Iterator[tuple[Any, ...]]:
            nonlocal row
            while row is not None and row[0] == run:
                yield row
                row = next(cur, None)

        rows = rows_of()
        yield run, rows
        for _ in rows:  # what the consumer left
            pass


def _write_training(out: _RunWriter, rows: Iterator[tuple[Any, ...]], offsets: dict[int, int]) -> None:
    last: dict[str, int] = {}
    several = len(offsets) > 1
    for _run, ts, name, value, rnd, epoch, phase in rows:
        tag = metric_key(name, phase)
        if epoch is None:
            step = last.get(tag, -1) + 1
        else:
            step = epoch + (offsets.get(rnd or 0, 0) if several else 0)
        last[tag] = step
        out.scalar(tag, float(value), step, ts)


def _write_resources(conn: sqlite3.Connection, out: _RunWriter, sources: list[int]) -> None:
    marks = ",".join("?" * len(sources))
    by_tag: dict[str, list[int]] = defaultdict(list)
    for series_id, mtype, mname, device in conn.execute(
        f"SELECT series_id, metric_type, metric_name, device FROM series WHERE source_id IN ({marks})"
        " ORDER BY metric_type, metric_name, device, source_id",
        sources,
    ):
        by_tag["/".join(["resource", mtype, mname] + ([device] if device else []))].append(series_id)
    for tag, series in by_tag.items():
        cur = conn.execute(
            f"SELECT t0, n, dt_ms, jit, vals FROM sample_chunks WHERE series_id IN ({','.join('?' * len(series))})"
            " AND n > 0 ORDER BY t0",
            series,
        )
        step = 0
        while batch := cur.fetchmany(CHUNK_BATCH):
            times, values = chunks.decode_many(batch)
            for t, v in zip(times.tolist(), values.tolist(), strict=True):
                if not math.isnan(v):
                    out.scalar(tag, v, step, t)
                step += 1


def _check_fresh(folder: str, runs: list[Run]) -> None:
    for run in runs:
        path = os.path.join(folder, run.name)
        if os.path.isdir(path) and any(f.startswith("events.out.tfevents.") for f in os.listdir(path)):
            raise ExportError(
                f"{path}: holds event files already (an earlier export?); TensorBoard would show both: "
                "remove them or export into an empty folder"
            )


def write_runs(conn: sqlite3.Connection, folder: str) -> list[str]:
    """The event files of every run of ``conn`` under ``folder``; returns the run folders written."""
    runs = plan_runs(conn)
    _check_fresh(folder, runs)
    conn.execute("CREATE TEMP TABLE export_runs (source_id INTEGER PRIMARY KEY, run INTEGER NOT NULL)")
    try:
        conn.executemany(
            "INSERT INTO temp.export_runs VALUES (?, ?)",
            [(sid, i) for i, run in enumerate(runs) for sid in run.sources],
        )
        offsets = _round_offsets(conn)
        training = _training(conn)
        pending = next(training, None)
        written = []
        for i, run in enumerate(runs):
            out = _RunWriter(os.path.join(folder, run.name))
            try:
                if pending is not None and pending[0] == i:
                    _write_training(out, pending[1], offsets.get(i, {}))
                    pending = next(training, None)
                _write_resources(conn, out, run.sources)
            finally:
                out.close()
            if out.events:
                written.append(out.folder)
        return written
    finally:
        conn.execute("DROP TABLE IF EXISTS temp.export_runs")
