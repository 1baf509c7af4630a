"""Reading a database for the report: its sources, job rows, decoded series and row tables.

:func:`read` opens the file read-only (through a rolled-back copy when a copy-back was killed
mid-write), checks it and returns everything the report is computed from as a :class:`Loaded`.
:func:`resolve_unfinished` asks Slurm accounting once for the jobs it names and settles the rows
that still say ``running`` (through :mod:`aetherium_hpc.analysis.final_status`, which asks
:mod:`aetherium_hpc.scheduler`).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from ...errors import StoreError
from ...store import chunks, reader, schema
from ...store.backup import readable
from ..merge.unfinished import RESOLVED_TABLE, has_resolved
from ..sweep import task_key
from .across import summarised

Arr = np.ndarray[Any, np.dtype[np.float64]]

#: The metric types whose samples the report reads (statistics and plots).
RESOURCE_TYPES = ("cpu", "ram", "gpu")
#: The series the plots draw against time (:mod:`.plots`); of a large array only these are read
#: with their timestamps, every other one for its statistics alone.
DRAWN = frozenset({("cpu", "process_tree"), ("cpu", "system_total"), ("ram", "process_tree_rss"),
                   ("ram", "system_used"), ("gpu", "utilization"), ("gpu", "memory_used")})  # fmt: skip


class EmptyDatabaseError(StoreError):
    """The database holds no metrics to report."""


@dataclass
class Source:
    """One ``sources`` row: a task on one node, one attempt."""

    sid: int
    job_id: str | None
    array_job_id: str | None
    task: int | None
    node: str
    attempt: int  # 0 the first run, n after n requeues (SLURM_RESTART_COUNT)
    path: str | None
    #: The task was requeued (it has, or had, another attempt): labels name the attempt.
    requeued: bool = False

    @property
    def task_key(self) -> tuple[str, int]:
        return task_key(self.job_id, self.array_job_id, self.task)

    @property
    def label(self) -> str:
        who = self.job_id or self.array_job_id or "local"
        if self.task is not None and self.array_job_id and not str(who).endswith(f"_{self.task}"):
            who = f"{self.array_job_id}_{self.task}"
        text = f"{who}/{self.node or '?'}"
        return text + (f"#{self.attempt + 1}" if self.requeued or self.attempt else "")


@dataclass
class Series:
    """One series with its samples decoded, in time order (``t`` empty when only the values were read)."""

    sid: int  # source id
    mtype: str
    mname: str
    unit: str
    device: str
    t: Arr = field(default_factory=lambda: np.empty(0))
    v: Arr = field(default_factory=lambda: np.empty(0))
    #: Read from the chunks' statistics instead of ``v`` (a large array's series that are not
    #: drawn): (samples, finite values, their sum, their maximum).
    stats: tuple[int, int, float, float | None] | None = None

    @property
    def count(self) -> int:
        """Samples of the series."""
        return self.stats[0] if self.stats is not None else int(self.v.size)

    def mean_max(self) -> tuple[float | None, float | None]:
        """Mean and maximum of the finite values (None, None when there are none)."""
        if self.stats is None:
            return nanstat(self.v)
        _, nfin, vsum, vmax = self.stats
        return (vsum / nfin, vmax) if nfin else (None, None)


def nanstat(v: Arr) -> tuple[float | None, float | None]:
    """Mean and maximum of the finite values of ``v`` (None, None when there are none)."""
    if v.size:
        mean, mx = float(v.mean()), float(v.max())
        if math.isfinite(mean) and math.isfinite(mx):  # no NaN or infinity: the common case, one pass each
            return mean, mx
    finite = v[np.isfinite(v)]
    if not finite.size:
        return None, None
    return float(finite.mean()), float(finite.max())


@dataclass
class Loaded:
    """What the report is computed from; ``jobs`` rows carry their source's attempt, host and path,
    and ``superseded``: True for an attempt of a task that was requeued after it."""

    path: str
    sources: dict[int, Source]
    series: list[Series]  # of every attempt
    generation: list[dict[str, Any]]  # of the last attempt of each task
    training: list[dict[str, Any]]  # the same; in (round, epoch, time) order, a missing round or epoch as 0
    jobs: list[dict[str, Any]]  # of every attempt
    span: tuple[float | None, float | None]  # first and last timestamp of any sample or row
    n_samples: int
    n_series: int
    #: Sources of an attempt a later attempt of the same task followed (the rows above skip them).
    superseded: frozenset[int] = frozenset()


def superseded_attempts(sources: dict[int, Source]) -> frozenset[int]:
    """The sources of every attempt but the last of each task (marking the requeued tasks' sources)."""
    last: dict[tuple[str, int], int] = {}
    for s in sources.values():
        last[s.task_key] = max(last.get(s.task_key, 0), s.attempt)
    for s in sources.values():
        s.requeued = last[s.task_key] > 0
    return frozenset(sid for sid, s in sources.items() if s.attempt < last[s.task_key])


def read(path: str) -> Loaded:
    """Everything the report needs of the database ``path``; :class:`EmptyDatabaseError` if it holds nothing."""
    conn = _open(path)
    try:
        status = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if status != ["ok"]:
            raise StoreError(
                f"{path}: corrupt or truncated (PRAGMA quick_check: {'; '.join(map(str, status))}); "
                "copy it again from the run directory, or merge the other databases without it"
            )
        sources = {
            r["source_id"]: Source(r["source_id"], r["job_id"], r["array_job_id"], r["array_task_id"],
                                   r["node"] or "", r["attempt"] or 0, r["source_path"])
            for r in _rows(conn, f"SELECT {schema.columns('sources')} FROM sources")
        }  # fmt: skip
        superseded = superseded_attempts(sources)
        tasks = {s.task_key for s in sources.values()}
        many = summarised(len(tasks))
        series = _load_series(conn, RESOURCE_TYPES, exact_times=not many, timed=DRAWN if many else None)
        n_samples = conn.execute("SELECT coalesce(sum(n), 0) FROM sample_chunks").fetchone()[0]
        n_series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        # The row tables, not their views: the report keys rows by source_id (a view's join costs a
        # second on a 1,000-task array).
        of_sources = "WHERE source_id IN (SELECT source_id FROM sources)"
        generation = _rows(conn, f"SELECT {schema.columns('generation_rows', without=('id', 'pid'))}"
                                 f" FROM generation_rows {of_sources} ORDER BY timestamp")  # fmt: skip
        training = _rows(conn, f"SELECT {schema.columns('training_rows', without=('id',))} FROM training_rows"
                               f" {of_sources} ORDER BY coalesce(round_number, 0), coalesce(epoch_number, 0), timestamp")  # fmt: skip
        resolved = has_resolved(conn, "main")  # a merged database whose merge resolved unfinished jobs
        resolved_cols = ", r.resolved_from, r.recorded_status" if resolved else ""
        resolved_join = f" LEFT JOIN {RESOLVED_TABLE} r ON r.source_id = j.source_id" if resolved else ""
        jobs = _rows(conn, f"SELECT j.*, s.attempt, s.hostname, s.source_path{resolved_cols} FROM jobs j"
                           f" LEFT JOIN sources s USING (source_id){resolved_join}"
                           " ORDER BY j.array_task_id, j.node, s.attempt")  # fmt: skip
        span = conn.execute(
            "SELECT min(t), max(t) FROM (SELECT min(t0) t FROM sample_chunks UNION ALL SELECT max(t1) FROM sample_chunks"
            " UNION ALL SELECT min(timestamp) FROM generation_rows UNION ALL SELECT max(timestamp) FROM generation_rows"
            " UNION ALL SELECT min(timestamp) FROM training_rows UNION ALL SELECT max(timestamp) FROM training_rows)"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot be read ({exc}); is it a complete aetherium-hpc database?") from exc
    finally:
        conn.close()
    for j in jobs:
        j["superseded"] = j["source_id"] in superseded
    if superseded:  # final values, winners and counts are those of each task's last attempt
        generation = [r for r in generation if r["source_id"] not in superseded]
        training = [r for r in training if r["source_id"] not in superseded]
    if not n_samples and not generation and not training and not jobs:
        raise EmptyDatabaseError(
            f"{path}: no metrics to report (no resource samples, generation, training or job rows); "
            "check the path, or that the job ran with the metrics store enabled"
        )
    return Loaded(path, sources, series, generation, training, jobs, span, n_samples, n_series, superseded)


def _open(db: str) -> sqlite3.Connection:
    if not os.path.exists(db):
        raise StoreError(f"{db}: no such file; pass a database written by aetherium-hpc (or `aetherium-hpc merge`)")
    if os.path.isdir(db):
        raise StoreError(f"{db}: is a folder; merge it first: aetherium-hpc merge {db} -o merged.db")
    # A copy-back killed inside its transaction is read from a rolled-back copy (the file stays
    # as it is); the open connection keeps reading that copy after its folder is removed.
    with readable(db, prefix="aeth-report-") as read_from:
        conn = reader.open_readonly(read_from)
        if read_from != db:  # open the copy before its folder goes
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        if not schema.check_version(conn, db):
            raise EmptyDatabaseError(f"{db}: empty file, no metrics to report; check the path")
    except BaseException:
        conn.close()
        raise
    return conn


#: Samples decoded at a time (bounds the report's memory on a large merged database).
_DECODE_BATCH = 2_000_000


def _load_series(
    conn: sqlite3.Connection,
    types: Sequence[str],
    exact_times: bool = True,
    timed: frozenset[tuple[str, str]] | None = None,
) -> list[Series]:
    """Series of the given metric types with their samples decoded (timestamps, values).

    The chunks of many series are decoded together (one JSON parse per batch of about
    :data:`_DECODE_BATCH` samples: :func:`...store.chunks.decode_many`); without
    ``exact_times`` a timestamp is the chunk's grid ``t0 + k * dt_ms`` (its jitter, a few
    milliseconds, is not read: the summaries of a large array bin time far more coarsely).
    ``timed``: the (type, name) of the series read with their timestamps (default: every one);
    the others are read from their chunks' statistics (``stats``; ``t`` and ``v`` empty): one
    SQL aggregate, no JSON parsed."""
    marks = ",".join("?" * len(types))
    series: dict[int, Series] = {}
    for r in _rows(conn, f"SELECT {schema.columns('series')} FROM series WHERE metric_type IN ({marks})", types):
        series[r["series_id"]] = Series(r["source_id"], r["metric_type"], r["metric_name"], r["unit"], r["device"])
    decoded = f"s.metric_type IN ({marks})"
    if timed is not None:
        pairs = sorted(timed)
        drawn = f"(s.metric_type, s.metric_name) IN (VALUES {','.join(['(?, ?)'] * len(pairs))})"
        flat = tuple(x for pair in pairs for x in pair)
        for ser_id, n, nfin, vsum, vmax in conn.execute(
            "SELECT c.series_id, sum(c.n), sum(c.nfin), sum(c.vsum), max(c.vmax) FROM sample_chunks c"
            f" JOIN series s ON s.series_id = c.series_id WHERE {decoded} AND NOT {drawn}"
            " GROUP BY c.series_id HAVING sum(c.n) > 0",
            (*types, *flat),
        ):
            series[ser_id].stats = (n, nfin, vsum, vmax)
        decoded += f" AND {drawn}"
        params = (*types, *flat)
    else:
        params = tuple(types)
    rows = conn.execute(
        f"SELECT c.series_id, c.t0, c.n, c.dt_ms, {'c.jit' if exact_times else 'NULL'}, c.vals FROM sample_chunks c"
        f" JOIN series s ON s.series_id = c.series_id WHERE {decoded} AND c.n > 0",
        params,
    ).fetchall()
    rows.sort(key=itemgetter(0, 1))  # by series, then time (faster here than SQL's ORDER BY)
    parts: dict[int, tuple[list[Arr], list[Arr]]] = defaultdict(lambda: ([], []))
    unordered: set[int] = set()
    start = 0
    while start < len(rows):
        end, count = start, 0
        while end < len(rows) and (count < _DECODE_BATCH or rows[end][0] == rows[end - 1][0]):
            count += rows[end][2]
            end += 1
        for ser_id, ts, vs in _decode_batch(rows[start:end], exact_times, unordered):
            p = parts[ser_id]
            p[0].append(ts)
            p[1].append(vs)
        start = end
    for ser_id, (ts_list, vs_list) in parts.items():
        s = series[ser_id]
        t, v = (ts_list[0], vs_list[0]) if len(ts_list) == 1 else (np.concatenate(ts_list), np.concatenate(vs_list))
        if ser_id in unordered:  # overlapping chunks: restore time order
            order = np.argsort(t, kind="stable")
            t, v = t[order], v[order]
        s.t, s.v = t, v
    return [s for s in series.values() if s.count]


def _decode_batch(rows: list[tuple[Any, ...]], exact_times: bool, unordered: set[int]) -> list[tuple[int, Arr, Arr]]:
    """(series id, timestamps, values) of consecutive chunks (sorted by series, then t0), parsed at once;
    adds to ``unordered`` the series whose timestamps go back somewhere (overlapping chunks)."""
    ts, vals = chunks.decode_many([r[1:] for r in rows], jitter=exact_times)
    n = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
    ids = [r[0] for r in rows]
    cuts = [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    bounds = np.cumsum(n)
    edges = [0, *(int(bounds[i - 1]) for i in cuts), int(bounds[-1])]
    firsts = [0, *cuts]
    back = np.flatnonzero(np.diff(ts) < 0) + 1  # sample indexes where time goes back
    if back.size:
        sample_series = np.repeat(np.asarray(ids), n)
        unordered.update(int(x) for x in sample_series[back][sample_series[back] == sample_series[back - 1]])
    return [(ids[f], ts[a:b], vals[a:b]) for f, a, b in zip(firsts, edges[:-1], edges[1:], strict=True)]


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def resolve_unfinished(path: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """sacct figures for the Slurm jobs of ``jobs`` (asked once), and the truth about every row
    that still says ``running`` (:mod:`..final_status`): its ``status``, ``exit_code``,
    ``end_time`` and ``detail`` are replaced in place, ``resolved_from`` says how. The answer's
    ``missing``: the tasks the run submitted (``jobs.json``) that left no database."""
    from ...scheduler import ACCOUNTING_LAG_S, sacct_figures_when_final
    from .. import final_status as fs

    cache: dict[str, dict[str, Any] | None] = {}

    def record(j: dict[str, Any]) -> dict[str, Any] | None:
        # A node database in its run directory, else the file a merged source was copied from.
        return fs.run_record(path, cache) or fs.run_record(j.get("source_path"), cache)

    slurm_ids: list[str | None] = []
    ended_recently: list[str] = []
    records: dict[int, dict[str, Any]] = {}
    for j in jobs:
        rec = record(j)
        if rec is not None:
            records[id(rec)] = rec
        cluster, _ = fs.classify(j.get("job_id"), j.get("array_task_id"), j.get("config"), rec)
        if cluster in ("slurm", None):  # never ask Slurm about a local job: its id is a process id
            job_id = fs.slurm_name(j.get("job_id"), j.get("array_job_id"), j.get("array_task_id"))
            slurm_ids.append(job_id)
            end = j.get("end_time")
            if (
                job_id
                and j.get("status") != fs.RUNNING
                and isinstance(end, (int, float))
                and time.time() - end < ACCOUNTING_LAG_S
            ):
                ended_recently.append(job_id)
    present = {fs.task_name(j.get("job_id"), j.get("array_job_id"), j.get("array_task_id")) for j in jobs}
    submitted = [name for rec in records.values() for name, cluster in fs.submitted_tasks(rec) if cluster == "slurm"]
    slurm_ids += [name for name in submitted if name not in present]  # (asked in the same sacct call)
    sacct = sacct_figures_when_final(slurm_ids, ended_recently)
    sacct["missing"] = fs.tasks_without_database(records.values(), present, sacct)
    for j in jobs:
        if j.get("superseded") and j.get("status") == fs.RUNNING:  # accounting speaks of the last attempt only
            j.update(status=fs.LATER_ATTEMPT.status, resolved_from=fs.LATER_ATTEMPT.how, recorded_status=fs.RUNNING,
                     detail=fs.LATER_ATTEMPT.detail)  # fmt: skip
    open_rows = [(i, j, record(j), j.get("hostname")) for i, j in enumerate(jobs) if j.get("status") == fs.RUNNING]
    for i, res in fs.resolve_rows(open_rows, sacct=sacct).items():
        if res.status == fs.RUNNING or not isinstance(i, int):  # (the keys are the row indexes)
            continue
        j = jobs[i]
        j.update(status=res.status, detail=res.detail, resolved_from=res.how or None, recorded_status=fs.RUNNING)
        if j.get("exit_code") is None:
            j["exit_code"] = res.exit_code
        if j.get("end_time") is None:
            j["end_time"] = res.end_time
    return sacct
