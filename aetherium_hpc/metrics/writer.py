"""The single writer: one thread owns the only SQLite connection of a database.

Producers (log calls in this process, socket readers for other processes) append
record tuples to a :class:`RecordQueue`; the :class:`StoreWriter` thread drains it
and writes each batch in one transaction, every ``flush_interval`` seconds or as
soon as ``buffer_size`` records are waiting, whichever comes first.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..background import block_job_signals
from ..errors import StoreError
from . import records, schema
from .records import GENERATION, JOB, RESOURCE, STATS, TRAINING

log = logging.getLogger(__name__)

#: What a full queue does to the caller: wait for room (default, loses nothing) or drop and count.
ON_FULL = ("block", "drop")

_JOB_COLUMNS = (
    "job_id", "array_job_id", "array_task_id", "node", "start_time", "end_time",
    "status", "exit_code", "config", "requested", "detail",
)  # fmt: skip


class FlushBarrier:
    """A marker put in the queue; set once every record queued before it is committed."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class RecordQueue:
    """A bounded, thread-safe FIFO of records, cheap on the producer side.

    ``put`` is a ``deque.append`` plus a length check (atomic under the GIL); the
    writer is woken once ``wake_at`` records are waiting. When ``maxsize`` records
    are waiting, ``on_full='block'`` makes the producer wait for room (nothing it
    was told was accepted is ever lost); ``on_full='drop'`` drops the new record
    and counts it in ``dropped`` (and in the database's ``store_stats``).
    """

    def __init__(self, maxsize: int, wake_at: int, on_full: str = "block") -> None:
        if on_full not in ON_FULL:
            raise ValueError(f"on_full={on_full!r}: use one of {', '.join(ON_FULL)}")
        self.maxsize = maxsize
        self.wake_at = wake_at
        self.on_full = on_full
        self.dropped = 0
        self.wake = threading.Event()
        self._dq: deque[Any] = deque()
        self._room = threading.Condition(threading.Lock())
        self._closed = False

    def __len__(self) -> int:
        return len(self._dq)

    def put(self, rec: Any) -> bool:
        dq = self._dq
        if len(dq) >= self.maxsize:
            return self._put_when_full([rec])
        dq.append(rec)
        if len(dq) >= self.wake_at and not self.wake.is_set():
            self.wake.set()
        return True

    def put_many(self, recs: list[Any]) -> bool:
        dq = self._dq
        if len(dq) + len(recs) > self.maxsize:
            return self._put_when_full(recs)
        dq.extend(recs)
        if len(dq) >= self.wake_at and not self.wake.is_set():
            self.wake.set()
        return True

    def _put_when_full(self, recs: list[Any]) -> bool:
        if self.on_full == "drop" or self._closed:
            self.dropped += len(recs)
            return False
        self.wake.set()
        with self._room:
            while len(self._dq) + len(recs) > self.maxsize and not self._closed:
                self._room.wait(0.5)
        if self._closed:
            self.dropped += len(recs)
            return False
        self._dq.extend(recs)
        return True

    def drain(self) -> list[Any]:
        dq = self._dq
        n = len(dq)
        out = [dq.popleft() for _ in range(n)]
        if n:
            with self._room:
                self._room.notify_all()
        return out

    def close(self) -> None:
        self._closed = True
        with self._room:
            self._room.notify_all()


@dataclass
class SourceInfo:
    """Provenance of the records of one writer: who wrote this database."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str = ""
    hostname: str = ""


@dataclass
class _OpenChunk:
    ts: list[float] = field(default_factory=list)
    vals: list[float | None] = field(default_factory=list)
    rowid: int | None = None  # its row in sample_chunks once written


@dataclass
class WriterStats:
    received: int = 0
    written: int = 0
    bad_records: int = 0
    write_errors: int = 0
    dropped_on_error: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def encode_chunk(ts: list[float], vals: list[float | None]) -> tuple[float, float, int, int, str, str]:
    """(t0, t1, n, dt_ms, jit, vals) of a chunk: see :mod:`.schema` for the encoding."""
    t0 = ts[0]
    n = len(ts)
    dt_ms = round((ts[-1] - t0) * 1000.0 / (n - 1)) if n > 1 else 0
    jit = ",".join([str(round((t - t0) * 1000.0) - k * dt_ms) for k, t in enumerate(ts)])
    enc = records.encode_value
    return t0, ts[-1], n, dt_ms, "[" + jit + "]", "[" + ",".join([enc(v) for v in vals]) + "]"


class StoreWriter(threading.Thread):
    """The only writer of one database file; a daemon thread."""

    def __init__(
        self,
        path: str,
        *,
        source: SourceInfo | None = None,
        buffer_size: int = 100,
        flush_interval: float = 5.0,
        max_queue: int = 1_000_000,
        on_full: str = "block",
        telemetry: bool = True,
    ) -> None:
        super().__init__(name="aetherium-store-writer", daemon=True)
        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size}: must be >= 1")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval={flush_interval}: must be > 0 seconds")
        if max_queue < buffer_size:
            raise ValueError(f"max_queue={max_queue} must be >= buffer_size={buffer_size}")
        self.path = path
        self.source = source or SourceInfo()
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.queue = RecordQueue(max_queue, buffer_size, on_full)
        self.stats = WriterStats()
        self.telemetry = telemetry
        self._stop_requested = threading.Event()
        self._started_ok = threading.Event()
        self._start_error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        self._series: dict[tuple[str, str, str, str], int] = {}
        self._open: dict[int, _OpenChunk] = {}
        self._retry: list[Any] = []
        self._errors_seen: set[str] = set()
        self._last_telemetry = 0.0

    # -- life cycle -------------------------------------------------------------------------
    def start_and_wait(self, timeout: float = 30.0) -> None:
        """Start the thread and return once the database is open (or raise why it could not)."""
        self.start()
        if not self._started_ok.wait(timeout):
            raise StoreError(f"{self.path}: the writer did not open the database within {timeout:.0f} s")
        if self._start_error is not None:
            raise self._start_error

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Block until every record queued before this call is committed; False on timeout."""
        if not self.is_alive():
            return False
        barrier = FlushBarrier()
        self.queue.put(barrier)
        self.queue.wake.set()
        return barrier.done.wait(timeout) and barrier.ok

    def stop(self, timeout: float | None = 60.0) -> None:
        """Drain everything, commit, close the connection. Safe to call twice."""
        self._stop_requested.set()
        self.queue.wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # -- thread body ------------------------------------------------------------------------
    def run(self) -> None:
        block_job_signals()
        try:
            self._conn = self._open_db()
        except BaseException as exc:  # reported to the thread that called start_and_wait
            self._start_error = exc if isinstance(exc, StoreError) else StoreError(f"{self.path}: {exc}")
            self._started_ok.set()
            return
        self._started_ok.set()
        q = self.queue
        next_flush = time.monotonic() + self.flush_interval
        try:
            while True:
                stopping = self._stop_requested.is_set()
                if not stopping:
                    q.wake.wait(max(0.0, next_flush - time.monotonic()))
                q.wake.clear()
                now = time.monotonic()
                if len(q) >= self.buffer_size or now >= next_flush or self._stop_requested.is_set():
                    self._write(q.drain())
                    next_flush = now + self.flush_interval
                    if self._stop_requested.is_set() and not len(q):
                        break
                else:
                    # Woken early by a barrier: honour it now.
                    self._write(q.drain())
        finally:
            q.close()
            self._write(q.drain())
            self._close_db()

    def _open_db(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"{self.path}: folder {directory} does not exist; create it or choose another path")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        os.close(fd)
        conn = schema.connect(self.path)
        exists = schema.check_version(conn, self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if not exists:
            schema.create(conn)
        src = self.source
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT attempt FROM sources WHERE source_id = 1").fetchone()
        conn.execute(
            "INSERT INTO sources(source_id, job_id, array_job_id, array_task_id, node, hostname, source_path, attempt)"
            " VALUES (1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source_id) DO UPDATE SET attempt = excluded.attempt",
            (src.job_id, src.array_job_id, src.array_task_id, src.node, src.hostname,
             os.path.abspath(self.path), 0 if row is None else row[0] + 1),
        )  # fmt: skip
        for sid, mtype, mname, unit, device in conn.execute(
            "SELECT series_id, metric_type, metric_name, unit, device FROM series WHERE source_id = 1"
        ):
            self._series[(mtype, mname, unit, device)] = sid
        conn.execute("COMMIT")
        return conn

    def _close_db(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("aetherium-hpc: checkpoint of %s failed at close: %s", self.path, exc)
        conn.close()

    # -- one batch --------------------------------------------------------------------------
    def _write(self, batch: list[Any]) -> None:
        barriers = [r for r in batch if type(r) is FlushBarrier]
        if barriers:
            batch = [r for r in batch if type(r) is not FlushBarrier]
        if self._retry:
            batch = self._retry + batch
            self._retry = []
        if self.telemetry and batch:
            now = time.time()
            if now - self._last_telemetry >= self.flush_interval:
                self._last_telemetry = now
                batch.append(self._telemetry_record(now))
        ok = True
        if batch:
            ok = self._commit(batch)
        for b in barriers:
            b.ok = ok
            b.done.set()

    def _telemetry_record(self, now: float) -> tuple[Any, ...]:
        return (
            RESOURCE, now, "store", "batch_write_ms", self.stats.last_batch_ms, "ms", "",
        )  # fmt: skip

    def _commit(self, batch: list[Any]) -> bool:
        conn = self._conn
        if conn is None:
            return False
        started = time.perf_counter()
        res: dict[tuple[str, str, str, str], list[tuple[float, float | None]]] = {}
        gen: list[tuple[Any, ...]] = []
        trn: list[tuple[Any, ...]] = []
        jobs: list[dict[str, Any]] = []
        counters: dict[str, float] = {}
        bad = 0
        for rec in batch:
            try:
                kind = rec[0]
                if kind == RESOURCE:
                    _, ts, mtype, mname, value, unit, device = rec
                    key = (str(mtype), str(mname), str(unit or ""), str(device or ""))
                    res.setdefault(key, []).append((float(ts), None if value is None else float(value)))
                elif kind == GENERATION:
                    gen.append(rec[1:9])
                elif kind == TRAINING:
                    trn.append(rec[1:7])
                elif kind == JOB:
                    jobs.append(dict(rec[2]))
                elif kind == STATS:
                    for k, v in rec[2].items():
                        counters[str(k)] = counters.get(str(k), 0.0) + float(v)
                else:
                    bad += 1
            except Exception:  # one malformed record never stops the writer
                bad += 1
        # What a rollback restores: the open chunks this batch touches.
        touched = [self._series[k] for k in res if k in self._series]
        snapshot = {
            sid: (list(c.ts), list(c.vals), c.rowid) for sid in touched if (c := self._open.get(sid)) is not None
        }
        new_series: list[tuple[str, str, str, str]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            if res:
                self._write_samples(conn, res, new_series)
            if gen:
                bad += _insert_rows(
                    conn,
                    "INSERT INTO generation_rows(timestamp, operation, round_number, chunk_number,"
                    " duration_seconds, samples_generated, memory_used_mb, pid) VALUES (?,?,?,?,?,?,?,?)",
                    gen,
                    8,
                )
            if trn:
                bad += _insert_rows(
                    conn,
                    "INSERT INTO training_rows(timestamp, metric_name, metric_value, round_number,"
                    " epoch_number, phase) VALUES (?,?,?,?,?,?)",
                    trn,
                    6,
                )
            for job in jobs:
                self._write_job(conn, job)
            stats = self.stats
            n_ok = len(batch) - bad
            counters["records_written"] = counters.get("records_written", 0.0) + n_ok
            if bad:
                counters["bad_records"] = counters.get("bad_records", 0.0) + bad
            dropped = self.queue.dropped
            if dropped:
                counters["dropped_queue_full"] = counters.get("dropped_queue_full", 0.0) + dropped
            conn.executemany(
                "INSERT INTO store_stats(source_id, name, value) VALUES (1, ?, ?)"
                " ON CONFLICT(source_id, name) DO UPDATE SET value = value + excluded.value",
                list(counters.items()),
            )
            conn.execute("COMMIT")
            if dropped:  # counted in the file only now: a failed commit keeps them for the next one
                self.queue.dropped -= dropped
        except sqlite3.Error as exc:
            self._rollback(conn, snapshot, new_series)
            self._report_error(exc)
            self.stats.write_errors += 1
            self._keep_for_retry(batch)
            return False
        except Exception as exc:  # a record no check caught: never retry it, never die
            self._rollback(conn, snapshot, new_series)
            self._report_error(exc)
            self.stats.bad_records += len(batch)
            return False
        stats.written += n_ok
        stats.bad_records += bad
        stats.batches += 1
        stats.last_batch_ms = (time.perf_counter() - started) * 1000.0
        return True

    def _write_samples(
        self,
        conn: sqlite3.Connection,
        res: dict[tuple[str, str, str, str], list[tuple[float, float | None]]],
        new_series: list[tuple[str, str, str, str]],
    ) -> None:
        limit = schema.CHUNK_SAMPLES
        insert = "INSERT INTO sample_chunks(series_id, t0, t1, n, dt_ms, jit, vals) VALUES (?,?,?,?,?,?,?)"
        for key, samples in res.items():
            sid = self._series.get(key)
            if sid is None:
                cur = conn.execute(
                    "INSERT INTO series(source_id, metric_type, metric_name, unit, node, device)"
                    " VALUES (1, ?, ?, ?, ?, ?)",
                    (key[0], key[1], key[2], self.source.node, key[3]),
                )
                sid = int(cur.lastrowid or 0)
                self._series[key] = sid
                new_series.append(key)
            chunk = self._open.get(sid)
            if chunk is None:
                chunk = self._open[sid] = _OpenChunk()
            samples.sort(key=_first)
            for ts, value in samples:
                if len(chunk.ts) >= limit:  # full: write it one last time, then start the next one
                    self._write_chunk(conn, sid, chunk, insert)
                    chunk = self._open[sid] = _OpenChunk()
                chunk.ts.append(ts)
                chunk.vals.append(value)
            self._write_chunk(conn, sid, chunk, insert)

    def _write_chunk(self, conn: sqlite3.Connection, sid: int, chunk: _OpenChunk, insert: str) -> None:
        """Insert the chunk, or rewrite it in place (the row keeps its rowid, so pages stay dense)."""
        if not chunk.ts:
            return
        row = encode_chunk(chunk.ts, chunk.vals)
        if chunk.rowid is None:
            chunk.rowid = int(conn.execute(insert, (sid, *row)).lastrowid or 0)
        else:
            conn.execute(
                "UPDATE sample_chunks SET t0 = ?, t1 = ?, n = ?, dt_ms = ?, jit = ?, vals = ? WHERE rowid = ?",
                (*row, chunk.rowid),
            )

    def _write_job(self, conn: sqlite3.Connection, job: dict[str, Any]) -> None:
        cols = [c for c in _JOB_COLUMNS if c in job]
        values = [
            json.dumps(job[c])
            if c in ("config", "requested") and not isinstance(job[c], str) and job[c] is not None
            else job[c]
            for c in cols
        ]
        if not cols:
            return
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols)
        conn.execute(
            f"INSERT INTO jobs(source_id, {', '.join(cols)}) VALUES (1, {', '.join('?' * len(cols))})"
            f" ON CONFLICT(source_id) DO UPDATE SET {updates}",
            values,
        )

    def _rollback(
        self,
        conn: sqlite3.Connection,
        snapshot: dict[int, tuple[list[float], list[float | None], int | None]],
        new_series: list[tuple[str, str, str, str]],
    ) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        for key in new_series:
            sid = self._series.pop(key, None)
            if sid is not None:
                self._open.pop(sid, None)
        for sid in list(self._open):
            if sid in snapshot:
                ts, vals, rowid = snapshot[sid]
                self._open[sid] = _OpenChunk(ts, vals, rowid)
            else:
                del self._open[sid]

    def _keep_for_retry(self, batch: list[Any]) -> None:
        room = self.queue.maxsize - len(self.queue)
        if len(batch) > room:
            lost = len(batch) - max(room, 0)
            self.stats.dropped_on_error += lost
            self.queue.dropped += lost
            batch = batch[lost:]
        self._retry = batch

    def _report_error(self, exc: Exception) -> None:
        text = str(exc)
        if text not in self._errors_seen:
            self._errors_seen.add(text)
            log.error(
                "aetherium-hpc: writing %s failed: %s -- records are kept in memory (up to max_queue) "
                "and retried; free disk space or fix the path",
                self.path,
                text,
            )


_SQL_TYPES = (type(None), int, float, str)


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]], width: int) -> int:
    """executemany, fast path; if a row cannot be bound, insert only the valid rows. Returns rows refused."""
    conn.execute("SAVEPOINT rows")
    try:
        conn.executemany(sql, rows)
        conn.execute("RELEASE rows")
        return 0
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError, OverflowError, TypeError, ValueError):
        conn.execute("ROLLBACK TO rows")
        conn.execute("RELEASE rows")
    good = []
    for row in rows:
        try:
            good.append(_sql_row(row, width))
        except TypeError:
            continue
    conn.executemany(sql, good)
    return len(rows) - len(good)


def _sql_row(row: tuple[Any, ...], width: int) -> tuple[Any, ...]:
    """Check a record from another process before it reaches executemany."""
    if len(row) != width or not all(
        type(x) in _SQL_TYPES and (type(x) is not int or -(2**63) <= x < 2**63) for x in row
    ):
        raise TypeError(f"malformed record {row!r:.120}")
    return row


def _first(item: tuple[float, Any]) -> float:
    return item[0]


def put_samples(queue: RecordQueue, ts: float, samples: Iterable[tuple[str, str, float, str, str]]) -> None:
    """Queue many resource samples taken at one moment (used by the monitors)."""
    queue.put_many([(RESOURCE, ts, t, n, v, u, d) for (t, n, v, u, d) in samples])
