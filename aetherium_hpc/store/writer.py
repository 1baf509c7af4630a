"""The single writer: one thread owns the only SQLite connection of a database.

Producers (log calls in this process, socket readers for other processes) append
record tuples to a :class:`RecordQueue`; the :class:`StoreWriter` thread drains it
and writes each batch in one transaction, every ``flush_interval`` seconds or as
soon as ``buffer_size`` records are waiting, whichever comes first.

One bad record never stops it: a record SQLite cannot store (from any process) is
refused alone -- counted in ``store_stats.bad_records``, logged once per cause, never
retried -- and the rest of its batch is stored. Only failures that can pass on a later
try (disk full, I/O error, a lock, read-only, cannot open, out of memory) keep the batch
in memory for a retry; see :mod:`.failures`.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..errors import StoreError
from ..identity import SourceInfo, submitting_user
from ..signal_policy import block_job_signals, childless
from . import catalogue, chunks, records, schema
from .failures import RECORD_ERRORS, Reports, retry_cause
from .options import StoreOptions
from .record_queue import FlushBarrier, RecordQueue
from .records import GENERATION, JOB, RESOURCE, SERIES, STATS, TRAINING

log = logging.getLogger(__name__)

#: Seconds the writer keeps retrying a failed write when it stops (then what is left is counted as lost).
FINAL_RETRY_S = 2.0


@dataclass
class WriterStats:
    received: int = 0
    written: int = 0
    bad_records: int = 0
    write_errors: int = 0
    dropped_on_error: int = 0
    #: Records logged into this store that it could not store, in this session: its queue full
    #: (on_full='drop'), or lost in a client process (``dropped_client``, as the clients report them).
    lost: int = 0
    #: Records still unwritten when the store closed (the disk full to the end): lost, not in the file.
    unwritten: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0


class StoreWriter(threading.Thread):
    """The only writer of one database file; a daemon thread. Its settings: a :class:`StoreOptions`."""

    def __init__(
        self,
        path: str,
        *,
        options: StoreOptions | None = None,
        source: SourceInfo | None = None,
        telemetry: bool = True,
    ) -> None:
        super().__init__(name="aetherium-store-writer", daemon=True)
        opts = options if options is not None else StoreOptions()
        self.path = path
        self.source = source or SourceInfo()
        #: Who submitted the job: the ``user_name`` of the job row when a JOB record creates it without one.
        self.user_name = submitting_user()
        self.buffer_size = opts.buffer_size
        self.flush_interval = opts.flush_interval_s
        self.queue = RecordQueue(opts.max_queue, opts.buffer_size, opts.on_full)
        self.stats = WriterStats()
        self.telemetry = telemetry
        self._stop_requested = threading.Event()
        self._started_ok = threading.Event()
        self._start_error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        #: This writer's row in ``sources`` (set when the database is opened).
        self.source_id = 0
        self._own: tuple[Any, ...] | None = None  # the writer's own telemetry sample in the batch being written
        #: What the last failed write that is retried failed of (``the disk is full: ...``).
        self.last_error: str | None = None
        self._series: dict[tuple[str, str, str, str], int] = {}
        self._open: dict[int, chunks.OpenChunk] = {}
        self._retry: list[Any] = []
        self.reports = Reports(path)
        self._bad_pending = 0  # records refused one by one, not yet counted in store_stats
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

    def write_soon(self, span_s: float) -> None:
        """Write what is queued now, without waiting for it, when the records just queued span at
        least the flush interval (``span_s`` seconds: the resource monitor's batch of ticks). They
        are written while still in the CPU's caches, and the next timed write comes an interval
        later, so that a monitor batching a flush interval's ticks costs one transaction each."""
        if span_s >= self.flush_interval:
            self.queue.wake.set()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Drain everything, commit, close the connection. Safe to call twice."""
        self._stop_requested.set()
        self.queue.wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # -- thread body ------------------------------------------------------------------------
    def run(self) -> None:
        childless(self._run)()

    def _run(self) -> None:
        block_job_signals()
        try:
            self._conn = self._open_db()
        except BaseException as exc:  # reported to the thread that called start_and_wait
            self._start_error = exc if isinstance(exc, StoreError) else StoreError(f"{self.path}: {exc}")
            self._started_ok.set()
            return
        self._started_ok.set()
        q = self.queue
        q.writer_ident = threading.get_ident()
        next_flush = time.monotonic() + self.flush_interval
        try:
            while True:
                stopping = self._stop_requested.is_set()
                if not stopping:
                    q.wake.wait(max(0.0, next_flush - time.monotonic()))
                q.wake.clear()
                # The flush interval is up, or woken early (a barrier, a full buffer, write_soon):
                # write now; the next timed write is an interval after this one.
                now = time.monotonic()
                self._write(q.drain())
                next_flush = now + self.flush_interval
                if self._stop_requested.is_set() and not len(q):
                    break
        finally:
            q.close()
            self._write(q.drain())
            deadline = time.monotonic() + FINAL_RETRY_S
            while self._retry and self._conn is not None and time.monotonic() < deadline:
                time.sleep(FINAL_RETRY_S / 10)  # the disk may free in a moment
                self._write([])
            self.stats.unwritten, self._retry = records.count(self._retry), []
            self._close_db()

    def _open_db(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"{self.path}: folder {directory} does not exist; create it or choose another path")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, schema.DB_FILE_MODE)
        os.close(fd)
        conn = schema.connect(self.path)
        exists = schema.check_version(conn, self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if not exists:
            schema.create(conn)
        conn.execute("BEGIN IMMEDIATE")
        self.source_id = sid = self._source_row(conn)
        for ser, mtype, mname, unit, device in conn.execute(
            "SELECT series_id, metric_type, metric_name, unit, device FROM series WHERE source_id = ?", (sid,)
        ):
            self._series[(mtype, mname, unit, device)] = ser
        conn.execute("COMMIT")
        return conn

    def _source_row(self, conn: sqlite3.Connection) -> int:
        """The ``sources`` row this writer's records go to: the one of the same job, task, node and
        attempt (a store reopened within one run of the job), else a new one (a first open, a
        requeued job's next attempt, another job writing to the same file)."""
        src = self.source
        who = (src.job_id, src.array_job_id, src.array_task_id, src.node, src.attempt)
        row = conn.execute(
            "SELECT source_id FROM sources WHERE job_id IS ? AND array_job_id IS ? AND array_task_id IS ?"
            " AND node IS ? AND attempt = ? ORDER BY source_id DESC LIMIT 1",
            who,
        ).fetchone()
        if row is not None:
            return int(row[0])
        cur = conn.execute(
            f"INSERT INTO sources({schema.columns('sources', without=('source_id',))}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*who[:4], src.hostname, os.path.abspath(self.path), src.attempt),
        )
        return int(cur.lastrowid or 0)

    def _close_db(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning(
                "aetherium-hpc: checkpoint of %s failed at close (%s): what was written is in %s and %s-wal; "
                "keep the two files together (SQLite reads the -wal file when it opens the database)",
                self.path, exc, self.path, self.path,
            )  # fmt: skip
        conn.close()

    # -- one batch --------------------------------------------------------------------------
    def _write(self, batch: list[Any]) -> None:
        barriers: list[FlushBarrier] = []
        if FlushBarrier in set(map(type, batch)):  # (the scan in C: most batches hold none)
            barriers = [r for r in batch if type(r) is FlushBarrier]
            batch = [r for r in batch if type(r) is not FlushBarrier]
        if self._retry:
            batch = self._retry + batch
            self._retry = []
        self._own = None
        if self.telemetry and batch:
            now = time.time()
            # not for a batch of counters alone (the central sender's last ones, after the job's data)
            if now - self._last_telemetry >= self.flush_interval and any(
                type(r) is not tuple or r[0] != STATS for r in batch
            ):
                self._last_telemetry = now
                self._own = self._telemetry_record(now)
                batch.append(self._own)
        ok = True
        if batch:
            ok = self._commit(batch)
        for b in barriers:
            b.ok = ok
            b.done.set()

    def _telemetry_record(self, now: float) -> tuple[Any, ...]:
        return (RESOURCE, now, *catalogue.STORE_BATCH_WRITE.sample(self.stats.last_batch_ms))

    def _commit(self, batch: list[Any]) -> bool:
        """Write a batch: True once every record is stored or refused (and counted), False when
        the write failed for a reason that can pass (disk full, I/O, lock) and the batch is kept."""
        if self._conn is None:
            return False
        exc = self._transaction(batch)
        if exc is None:
            return True
        if retry_cause(exc) is not None:
            self._keep(batch, exc)
            return False
        return self._isolate(batch, exc)

    def _isolate(self, batch: list[Any], exc: BaseException) -> bool:
        """The batch holds something SQLite refused that no check caught: write it in halves
        until each record that fails stands alone; refuse (and count) only those."""
        parts: deque[tuple[list[Any], BaseException | None]] = deque([(batch, exc)])
        while parts:
            part, err = parts.popleft()
            if err is None:
                err = self._transaction(part)
                if err is None:
                    continue
                if retry_cause(err) is not None:
                    self._keep(part + [rec for rest, _ in parts for rec in rest], err)
                    return False
            if len(part) == 1:
                self.reports.refused(part[0], err)
                self.stats.bad_records += 1
                self._bad_pending += 1
                continue
            mid = len(part) // 2
            parts.appendleft((part[mid:], None))
            parts.appendleft((part[:mid], None))
        if self._bad_pending:
            self._transaction([])  # count the refused records now (else with the next batch)
        return True

    def _keep(self, batch: list[Any], exc: BaseException) -> None:
        self.last_error = self.reports.write_failed(exc)
        self.stats.write_errors += 1
        self._keep_for_retry(batch)

    def _transaction(self, batch: list[Any]) -> BaseException | None:
        """Write ``batch`` in one transaction; None on success, else the exception (rolled back)."""
        conn = self._conn
        assert conn is not None
        started = time.perf_counter()
        res: dict[tuple[str, str, str, str], tuple[list[float], list[float | None]]] = {}  # per series: times, values
        gen: list[tuple[Any, ...]] = []
        trn: list[tuple[Any, ...]] = []
        jobs: list[dict[str, Any]] = []
        counters: dict[str, float] = {}
        bad = 0
        samples = 0  # the samples of SERIES records beyond one each (store_stats counts samples and rows)
        max_ts = records.MAX_TIMESTAMP
        for rec in batch:
            try:
                kind = rec[0]
                if kind == RESOURCE:
                    _, ts, mtype, mname, value, unit, device = rec
                    ts = float(ts)
                    if not -max_ts <= ts <= max_ts:
                        raise ValueError(f"timestamp {ts!r} is not a Unix time in seconds")
                    key = (str(mtype), str(mname), str(unit or ""), str(device or ""))
                    series = res.get(key)
                    if series is None:
                        series = res[key] = ([], [])
                    # the value first: one that float() refuses leaves the two lists the same length
                    series[1].append(None if value is None else float(value))
                    series[0].append(ts)
                elif kind == SERIES:
                    samples += _add_series(rec[1], res) - 1
                elif kind == GENERATION:
                    gen.append(rec[1:9])
                elif kind == TRAINING:
                    trn.append(rec[1:7])
                elif kind == JOB:
                    jobs.append(records.job_fields(rec[2]))
                elif kind == STATS:
                    items = [(str(k), float(v)) for k, v in rec[2].items()]
                    for k, v in items:
                        if not math.isfinite(v):
                            raise ValueError(f"counter {k!r:.60} = {v!r} is not a finite number")
                    for k, v in items:
                        counters[k] = counters.get(k, 0.0) + v
                else:
                    raise ValueError(f"unknown record kind {kind!r:.40}")
            except Exception as exc:  # one malformed record never stops the writer
                bad += 1
                self.reports.refused(rec, exc)
        # What a rollback restores: the open chunks this batch touches.
        touched = [self._series[k] for k in res if k in self._series]
        snapshot = {sid: (c, c.state()) for sid in touched if (c := self._open.get(sid)) is not None}
        new_series: list[tuple[str, str, str, str]] = []
        pending_bad = self._bad_pending
        try:
            if conn.in_transaction:  # a rollback that failed earlier left one open
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            if res:
                self._write_samples(conn, res, new_series)
            if gen:
                bad += self._insert_rows(conn, "generation_rows", gen, records.GENERATION_FIELDS)
            if trn:
                bad += self._insert_rows(conn, "training_rows", trn, records.TRAINING_FIELDS)
            for job in jobs:
                bad += self._write_job(conn, job)
            n_ok = len(batch) - bad + samples
            counters["records_written"] = counters.get("records_written", 0.0) + n_ok
            if bad or pending_bad:
                counters["bad_records"] = counters.get("bad_records", 0.0) + bad + pending_bad
            dropped = self.queue.dropped
            if dropped:
                counters["dropped_queue_full"] = counters.get("dropped_queue_full", 0.0) + dropped
            conn.executemany(
                f"INSERT INTO store_stats({schema.columns('store_stats')}) VALUES (?, ?, ?)"
                " ON CONFLICT(source_id, name) DO UPDATE SET value = value + excluded.value",
                [(self.source_id, k, v) for k, v in counters.items()],
            )
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback(conn, snapshot, touched, new_series)
            return exc
        # Counted in the file only now: a failed commit keeps them for the next one.
        if dropped:
            self.queue.count_dropped(-dropped)
        self._bad_pending -= pending_bad
        stats = self.stats
        stats.lost += int(dropped + counters.get("dropped_client", 0.0))
        stats.written += n_ok
        stats.bad_records += bad
        stats.batches += 1
        stats.last_batch_ms = (time.perf_counter() - started) * 1000.0
        return None

    def _write_samples(
        self,
        conn: sqlite3.Connection,
        res: dict[tuple[str, str, str, str], tuple[list[float], list[float | None]]],
        new_series: list[tuple[str, str, str, str]],
    ) -> None:
        """Append each series' samples (its times, its values) to its open chunk, in time order;
        a full chunk is written a last time and the next one started."""
        limit = chunks.CHUNK_SAMPLES
        insert = chunks.INSERT_SQL
        updates: list[tuple[Any, ...]] = []
        for key, (times, values) in res.items():
            if not times:  # (its only record was refused)
                continue
            sid = self._series.get(key)
            if sid is None:
                cur = conn.execute(
                    f"INSERT INTO series({schema.columns('series', without=('series_id',))}) VALUES (?, ?, ?, ?, ?, ?)",
                    (self.source_id, key[0], key[1], key[2], self.source.node, key[3]),
                )
                sid = int(cur.lastrowid or 0)
                self._series[key] = sid
                new_series.append(key)
            chunk = self._open.get(sid)
            if chunk is None:
                chunk = self._open[sid] = chunks.OpenChunk()
            n = len(times)
            if any(map(operator.gt, times, islice(times, 1, None))):  # (in C) not in time order: sort, stably
                order = sorted(range(n), key=times.__getitem__)
                times, values = [times[i] for i in order], [values[i] for i in order]
            done = 0
            while done < n:
                room = limit - len(chunk.ts)
                if room <= 0:  # full: write it one last time, then start the next one
                    self._write_chunk(conn, sid, chunk, insert, updates)
                    chunk = self._open[sid] = chunks.OpenChunk()
                    room = limit
                chunk.ts += times[done : done + room]
                chunk.vals += values[done : done + room]
                done += room
            self._write_chunk(conn, sid, chunk, insert, updates)
        if updates:
            conn.executemany(chunks.UPDATE_SQL, updates)

    def _write_chunk(
        self, conn: sqlite3.Connection, sid: int, chunk: chunks.OpenChunk, insert: str, updates: list[tuple[Any, ...]]
    ) -> None:
        """Insert the chunk, or queue its rewrite in place (the row keeps its rowid, so pages stay dense)."""
        if not chunk.ts:
            return
        row = chunk.row()
        if chunk.rowid is None:
            chunk.rowid = int(conn.execute(insert, (sid, *row)).lastrowid or 0)
        else:
            updates.append((*row, chunk.rowid))

    def _write_job(self, conn: sqlite3.Connection, job: dict[str, Any]) -> int:
        """Write a JOB record in a savepoint: the identity columns into this writer's ``sources`` row
        (the one place a job's identity is stored), the others into its ``job_rows`` row (created,
        status ``running``, at the first record, with :attr:`user_name` unless the record names the
        user). A record SQLite refuses is skipped. Returns rows refused."""
        who = [c for c in records.JOB_IDENTITY_COLUMNS if c in job]
        cols = [c for c in records.JOB_COLUMNS if c in job and c not in who]
        if not who and not cols:
            return 0
        upsert = f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols)}" if cols else "DO NOTHING"
        values = [job[c] for c in cols]
        if "user_name" not in job and self.user_name:  # set when the row is created, never changed after
            cols, values = [*cols, "user_name"], [*values, self.user_name]
        conn.execute("SAVEPOINT job")
        try:
            if who:
                conn.execute(
                    f"UPDATE sources SET {', '.join(f'{c} = ?' for c in who)} WHERE source_id = ?",
                    [*(job[c] for c in who), self.source_id],
                )
            conn.execute(
                f"INSERT INTO job_rows(source_id{''.join(f', {c}' for c in cols)}) VALUES (?{', ?' * len(cols)})"
                f" ON CONFLICT(source_id) {upsert}",
                [self.source_id, *values],
            )
        except RECORD_ERRORS as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self.reports.refused((JOB,), exc)
            return 1
        conn.execute("RELEASE job")
        return 0

    def _insert_rows(
        self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]], fields: tuple[str, ...]
    ) -> int:
        """Insert the ``fields`` of GENERATION or TRAINING records into ``table``: executemany, fast
        path; if a row cannot be stored, the others one by one. Returns rows refused."""
        sql = (
            f"INSERT INTO {table}({schema.columns(table, without=('id',))})"
            f" VALUES ({self.source_id:d}{', ?' * len(fields)})"
        )
        conn.execute("SAVEPOINT rows")
        try:
            conn.executemany(sql, rows)
            conn.execute("RELEASE rows")
            return 0
        except RECORD_ERRORS:
            conn.execute("ROLLBACK TO rows")
            conn.execute("RELEASE rows")
        kind = (GENERATION,) if fields is records.GENERATION_FIELDS else (TRAINING,)
        refused = 0
        for row in rows:
            try:
                # A refused statement changes nothing (SQLite aborts only that statement).
                conn.execute(sql, records.sql_row(row, fields))
            except RECORD_ERRORS as exc:
                refused += 1
                self.reports.refused(kind, exc)
        return refused

    def _rollback(
        self,
        conn: sqlite3.Connection,
        snapshot: dict[int, tuple[chunks.OpenChunk, chunks.State]],
        touched: list[int],
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
        # Only the chunks this batch touched changed; the others keep their rows.
        for sid in touched:
            if sid in snapshot:
                chunk, state = snapshot[sid]
                chunk.restore(state)  # drops the samples and the text this batch appended
                self._open[sid] = chunk
            else:
                self._open.pop(sid, None)

    def _keep_for_retry(self, batch: list[Any]) -> None:
        if batch and batch[-1] is self._own:  # the writer's own sample is not retried: what is kept (and
            batch = batch[:-1]  # counted as lost, should it never be written) is what was logged
        room = self.queue.maxsize - len(self.queue)
        if len(batch) > room:
            cut = len(batch) - max(room, 0)
            lost = records.count(batch[:cut])  # (a monitor's batch counts its samples)
            self.stats.dropped_on_error += lost
            self.queue.count_dropped(lost)
            batch = batch[cut:]
        self._retry = batch


def _add_series(cols: Any, res: dict[tuple[str, str, str, str], tuple[list[float], list[float | None]]]) -> int:
    """Add a SERIES record's columns (:mod:`.records`) to ``res``, per series its times and values;
    its samples. The record is checked whole before any of it is added: one that is not what
    :func:`~.client.log_builtin_ticks` sends raises, and is refused as one."""
    max_ts = records.MAX_TIMESTAMP
    checked = []
    for mtype, mname, unit, device, times, values in cols:
        if not (type(mtype) is type(mname) is type(unit) is type(device) is str and mtype and mname):
            raise ValueError(f"a series named {mtype!r:.60}/{mname!r:.60} ({unit!r:.20}, {device!r:.60})")
        times = list(map(float, times))
        if not times or len(times) != len(values):
            raise ValueError(f"series {mtype}/{mname}: {len(times)} times for {len(values)} values")
        if not -max_ts <= min(times) <= max(times) <= max_ts:  # (a NaN time is refused by the chunk's codec)
            raise ValueError(f"series {mtype}/{mname}: a timestamp is not a Unix time in seconds")
        try:
            values = list(map(float, values))
        except TypeError:  # a None (NaN's text)
            values = [None if v is None else float(v) for v in values]
        checked.append(((mtype, mname, unit, device), times, values))
    n = 0
    for key, times, values in checked:
        series = res.get(key)
        if series is None:
            res[key] = (times, values)
        else:
            series[0].extend(times)
            series[1].extend(values)
        n += len(times)
    return n
