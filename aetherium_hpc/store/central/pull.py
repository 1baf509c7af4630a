"""The reverse of :mod:`.push`: a selection of the central store back into one SQLite database.

``report`` and ``watch`` stay SQLite readers. A ``postgresql://`` target is first pulled into a
database of the current SQLite schema holding only the selected sources (:class:`Selection`: a job
or every task of an array job, array tasks, a run directory), which they then read as they read a
merged database. The file is the kind a node writes: chunks re-encoded with the SQLite codec
(:func:`..chunks.encode_gridded`: the same JSON text, ``nfin``/``vsum``/``vmax`` filled), rows with
their logged fields; its ids are PostgreSQL's (sources, series, generation and training rows), so a
later pull adds what is new without duplicates.

:class:`Puller` keeps the connection and what the file holds between pulls (``watch``): per series
its last chunk (PostgreSQL's live chunk grows in place: it is rewritten when it grew), per source
the last generation and training row. One source's rows are pushed by one sender, one transaction
after the other, so its ids grow in commit order and "id above the last one pulled" misses nothing.
The selection is resolved again at each pull: tasks that start later join the view. ``--since`` and
``--user`` select a lab's jobs of a time window, or one user's: the report then shows them side by
side (:mod:`...analysis.report.lab`).

A time window (``since``: epoch seconds; ``recent_s``: the last seconds before each series' newest
sample, what ``watch`` draws) pulls of a series it does not hold yet only the chunks that end in it
(``t1 >= since - chunks.T1_SLACK_S``, over the index ``sample_chunks_by_end``), and then, as
without one, what follows them. Generation, training and job rows are pulled whole.

Everything is streamed (binary ``COPY (SELECT ...) TO STDOUT``, inserted in batches of
:data:`BATCH` rows) inside one ``REPEATABLE READ, READ ONLY`` transaction: a consistent snapshot
whose size need not fit in memory. Nothing in PostgreSQL is created or changed.

Which run a source belongs to: the ``run`` key of its job's config snapshot (``job_rows.config``,
written by the runtime since this key exists; it travels with the rows wherever they go), else a
``source_path`` of the form ``<run>/db/<job>_<task>/<node>.db`` (a merged database loaded with
``merge --into``): :meth:`...paths.RunLayout.run_of`.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ...errors import CentralStoreError
from ...paths import RunLayout, safe_component
from .. import chunks, schema
from ..schema import COLUMNS, columns
from . import schema as pg_schema
from .url import connect, mask, psycopg_module, scrub

#: Rows inserted into SQLite per ``executemany`` while a table streams in.
BATCH = 5_000
#: Jobs a refusal lists when no filter was given on a database of many jobs.
LISTED_JOBS = 10


@dataclass(frozen=True)
class Selection:
    """Which sources to pull: every filter given must match (none: the whole database, when it
    holds one job only)."""

    jobs: tuple[str, ...] = ()  # a job id (an array task's own id too) or an array job id: all its tasks
    tasks: tuple[int, ...] = ()  # array task ids
    run: str | None = None  # a run directory's name (``<name>-<YYYYmmdd-HHMMSS>-<hex>``)
    #: Unix seconds: the tasks that overlap the window from then to now (still running, or without an
    #: end recorded; ended at or after it; or started at or after it).
    since: float | None = None
    user: str | None = None  # the tasks this user submitted (``job_rows.user_name``)

    @property
    def empty(self) -> bool:
        return not (self.jobs or self.tasks or self.run or self.since is not None or self.user)

    def describe(self) -> str:
        """The filter as the command line wrote it (``--job 123 --task 0,2``; ``--since`` as a UTC time)."""
        parts = [f"--job {j}" for j in self.jobs]
        if self.tasks:
            parts.append("--task " + ",".join(str(t) for t in self.tasks))
        if self.run:
            parts.append(f"--run {self.run}")
        if self.since is not None:
            when = datetime.datetime.fromtimestamp(self.since, tz=datetime.timezone.utc)
            parts.append("--since " + when.strftime("%Y-%m-%dT%H:%MZ"))
        if self.user:
            parts.append(f"--user {self.user}")
        return " ".join(parts) or "no filter"


@dataclass
class Pulled:
    """What one :meth:`Puller.pull` added to the SQLite file."""

    sources: int = 0  # sources selected
    series: int = 0
    chunks: int = 0  # chunks inserted or rewritten
    samples: int = 0
    generation_rows: int = 0
    training_rows: int = 0
    job_rows: int = 0


@dataclass
class _Held:
    """What the SQLite file holds already (what the next pull need not read again)."""

    local: dict[int, int] = field(default_factory=dict)  # PostgreSQL source_id -> SQLite source_id (1, 2, ...)
    series: set[int] = field(default_factory=set)
    last_chunk: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # series -> (k0, n, SQLite rowid)
    last_row: dict[str, dict[int, int]] = field(default_factory=lambda: {"generation_rows": {}, "training_rows": {}})


class Puller:
    """Pulls ``selection`` of the central store at ``url`` into the SQLite file ``path`` (created by
    the first :meth:`pull`; later ones add what is new). Close it, or use it as a context manager."""

    def __init__(
        self,
        url: str,
        selection: Selection,
        path: str | os.PathLike[str],
        since: float | None = None,
        *,
        recent_s: float | None = None,
    ) -> None:
        """``since``: pull only the chunks that end at or after this time (epoch seconds; None: from
        the first); ``recent_s``: only those that end within this many seconds of their series'
        newest sample. Both: the later bound. Either applies to a series' first pull; later pulls
        add what follows what the file holds."""
        self.url = url
        self.since = since
        self.recent_s = recent_s
        self.where = mask(url)
        self.selection = selection
        self.path = os.fspath(path)
        self.source_ids: list[int] = []  # SQLite ids of the sources the last pull selected
        self.runs: set[str] = set()  # the run directories they belong to (where known)
        self._pg: Any = None
        self._held = _Held()

    def __enter__(self) -> Puller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            finally:
                self._pg = None

    # -- one pull ----------------------------------------------------------------------------------
    def pull(self) -> Pulled:
        """Copy what is new of the selection into the SQLite file, in one transaction of each side.

        Raises :class:`CentralStoreError` (one line, password masked) when the server cannot be
        reached or read, when the filter selects nothing, and when no filter was given on a
        database of several jobs (naming the most recent ones)."""
        psycopg = psycopg_module()
        if self._pg is None:
            pg = connect(self.url, application="aetherium-hpc report/watch")
            try:
                pg_schema.check(pg, self.where)
                pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                pg.read_only = True
            except BaseException:
                pg.close()
                raise
            self._pg = pg
        lite = self._open_sqlite()
        try:
            with self._pg.cursor() as cur:
                out = self._pull(cur, lite)
            self._pg.rollback()  # read only: this ends the snapshot
        except BaseException as exc:
            if lite.in_transaction:
                lite.execute("ROLLBACK")
            if isinstance(exc, psycopg.Error):
                self.close()  # the next pull reconnects
                raise CentralStoreError(
                    f"central store {self.where}: reading {self.selection.describe()} failed: "
                    f"{scrub(str(exc), self.url)}"
                ) from None
            self._pg.rollback()
            raise
        finally:
            lite.close()
        return out

    def _open_sqlite(self) -> sqlite3.Connection:
        conn = schema.connect(self.path)
        if not schema.check_version(conn, self.path):
            schema.create(conn)
        return conn

    def _pull(self, cur: Any, lite: sqlite3.Connection) -> Pulled:
        sources = self._select(cur)
        ids = [r[0] for r in sources]
        local = self._held.local
        for pg_id in ids:  # numbered as a merge numbers its inputs' sources: 1, 2, ... in load order
            local.setdefault(pg_id, len(local) + 1)
        self.source_ids = [local[i] for i in ids]
        out = Pulled(sources=len(ids))
        lite.execute("BEGIN IMMEDIATE")
        lite.executemany(
            f"INSERT OR REPLACE INTO sources({columns('sources')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(local[r[0]], *r[1:8]) for r in sources],
        )
        self._pull_series(cur, lite, ids, out)
        self._pull_chunks(cur, lite, ids, out)
        self._pull_rows(cur, lite, ids, out)
        job_cols = COLUMNS["job_rows"]
        as_text = ", ".join(f"{c}::text" if c in _JSONB else c for c in job_cols)  # (SQLite holds JSON as text)
        rows = _stream(cur, f"SELECT {as_text} FROM job_rows WHERE source_id = ANY(%s)", (ids,),
                       ["int8", "float8", "float8", "text", "int8", "text", "text", "text", "text"])  # fmt: skip
        for batch in _batches(rows):
            lite.executemany(
                f"INSERT OR REPLACE INTO job_rows({columns('job_rows')}) VALUES (?{', ?' * (len(job_cols) - 1)})",
                self._local(batch, 0),
            )
            out.job_rows += len(batch)
        stats = _stream(cur, f"SELECT {columns('store_stats')} FROM store_stats WHERE source_id = ANY(%s)", (ids,),
                        ["int8", "text", "float8"])  # fmt: skip
        for batch in _batches(stats):
            lite.executemany(
                f"INSERT OR REPLACE INTO store_stats({columns('store_stats')}) VALUES (?, ?, ?)",
                self._local(batch, 0),
            )
        lite.execute("COMMIT")
        return out

    def _local(self, rows: list[tuple[Any, ...]], at: int) -> list[tuple[Any, ...]]:
        """``rows`` with the PostgreSQL source id in column ``at`` replaced by the SQLite one."""
        local = self._held.local
        return [(*r[:at], local[r[at]], *r[at + 1 :]) for r in rows]

    def _select(self, cur: Any) -> list[tuple[Any, ...]]:
        """The selected sources' rows (the ``sources`` columns, then the job's config)."""
        sel = self.selection
        if sel.empty:
            (jobs,) = cur.execute(f"SELECT count(DISTINCT {_JOB}) FROM sources s").fetchone()
            if jobs > 1:
                raise CentralStoreError(self._refusal(cur, jobs))
        where: list[str] = []
        params: list[Any] = []
        if sel.jobs:
            where.append("(s.job_id = ANY(%s) OR s.array_job_id = ANY(%s))")
            params += [list(sel.jobs), list(sel.jobs)]
        if sel.tasks:
            where.append("s.array_task_id = ANY(%s)")
            params.append(list(sel.tasks))
        if sel.run:  # a cheap first cut; the run itself is read from the config below
            where.append(
                "(strpos(coalesce(j.config::text, ''), %s) > 0 OR strpos(coalesce(s.source_path, ''), %s) > 0)"
            )
            params += [sel.run, sel.run]
        if sel.since is not None:  # overlapping the window (a task without a job row has no end: kept)
            where.append("(j.end_time IS NULL OR j.end_time >= %s OR j.start_time >= %s)")
            params += [sel.since, sel.since]
        if sel.user:
            where.append("j.user_name = %s")
            params.append(sel.user)
        rows: list[tuple[Any, ...]] = cur.execute(
            f"SELECT {columns('sources', prefix='s.')}, j.config::text FROM sources s LEFT JOIN job_rows j USING (source_id)"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY s.source_id",
            params,
        ).fetchall()
        runs = [RunLayout.run_of(r[8], r[6]) for r in rows]
        if sel.run:
            rows = [r for r, run in zip(rows, runs, strict=True) if run == sel.run]
        self.runs = {run for run in runs if run} if not sel.run else {sel.run}
        if not rows:
            raise CentralStoreError(
                f"central store {self.where}: nothing matches {sel.describe()}; "
                + ("the database holds no sources yet" if sel.empty else self._hint(cur))
            )
        return rows

    def _hint(self, cur: Any) -> str:
        listed = self._recent(cur)
        return "run it without a filter to list the jobs it holds" if not listed else f"the most recent jobs: {listed}"

    def _refusal(self, cur: Any, jobs: int) -> str:
        return (
            f"central store {self.where}: {jobs} jobs there, choose one with --job ID (an array job id: all its "
            f"tasks; --task N of them) or --run NAME; the {LISTED_JOBS} most recent: {self._recent(cur)}"
        )

    def _recent(self, cur: Any) -> str:
        """The most recent jobs as ``ID (run NAME, N tasks, started DATE)``, newest first."""
        recent = cur.execute(
            f"SELECT {_JOB} AS job, count(DISTINCT s.array_task_id), max(j.start_time) AS started, min(s.source_id)"
            " FROM sources s LEFT JOIN job_rows j USING (source_id) GROUP BY 1"
            " ORDER BY started DESC NULLS LAST, 1 DESC LIMIT %s",
            (LISTED_JOBS,),
        ).fetchall()
        first = [r[3] for r in recent]
        where = {
            r[0]: RunLayout.run_of(r[1], r[2])
            for r in cur.execute(
                "SELECT s.source_id, j.config::text, s.source_path FROM sources s LEFT JOIN job_rows j USING (source_id)"
                " WHERE s.source_id = ANY(%s)",
                (first,),
            )
        }
        out = []
        for job, tasks, started, sid in recent:
            facts = [f"run {where[sid]}"] if where.get(sid) else []
            if tasks:
                facts.append(f"{tasks} tasks")
            if started is not None:
                when = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc)
                facts.append("started " + when.strftime("%Y-%m-%d %H:%M UTC"))
            out.append(f"{job}" + (f" ({', '.join(facts)})" if facts else ""))
        return "; ".join(out)

    def _pull_series(self, cur: Any, lite: sqlite3.Connection, ids: list[int], out: Pulled) -> None:
        held = self._held.series
        rows = _stream(cur, f"SELECT {columns('series')} FROM series"
                            " WHERE source_id = ANY(%s) AND NOT series_id = ANY(%s)", (ids, sorted(held)),
                       ["int8", "int8", "text", "text", "text", "text", "text"])  # fmt: skip
        for batch in _batches(rows):
            lite.executemany(
                f"INSERT OR IGNORE INTO series({columns('series')}) VALUES (?, ?, ?, ?, ?, ?, ?)", self._local(batch, 1)
            )
            held.update(r[0] for r in batch)
            out.series += len(batch)

    def _pull_chunks(self, cur: Any, lite: sqlite3.Connection, ids: list[int], out: Pulled) -> None:
        """New chunks of the selected series, and the last chunk of each when it grew (rewritten in place)."""
        last = self._held.last_chunk
        known = sorted(last)
        window = ""
        bounds: list[Any] = []
        if self.recent_s is not None:  # each series' newest end: one probe of sample_chunks_by_end
            window = (
                " AND c.t1 >= greatest(%s::float8, (SELECT max(e.t1) FROM sample_chunks e"
                " WHERE e.series_id = s.series_id) - %s::float8) - %s::float8"
            )
            bounds = [self.since, self.recent_s, chunks.T1_SLACK_S]
        elif self.since is not None:
            window = " AND c.t1 >= %s::float8 - %s::float8"
            bounds = [self.since, chunks.T1_SLACK_S]
        cols = ", ".join(f"c.{c}" for c in pg_schema.COLUMNS["sample_chunks"])
        rows = _stream(
            cur,
            # Per series (a LATERAL subquery kept apart by OFFSET 0: one index range scan each, whatever the
            # planner guesses of the bound), of those the file does not hold yet the chunks that end in the
            # window (sample_chunks_by_end) ...
            f"SELECT {cols} FROM series s CROSS JOIN LATERAL (SELECT * FROM sample_chunks c"
            f" WHERE c.series_id = s.series_id{window} OFFSET 0) c"
            " WHERE s.source_id = ANY(%s) AND NOT s.series_id = ANY(%s)"
            # ... and of those it holds, the chunks after its last one and that one when it grew (the key)
            f" UNION ALL SELECT {cols} FROM unnest(%s::bigint[], %s::bigint[], %s::int[]) AS m(series_id, k0, n)"
            " JOIN series s ON s.series_id = m.series_id"
            " CROSS JOIN LATERAL (SELECT * FROM sample_chunks c WHERE c.series_id = m.series_id AND c.k0 >= m.k0"
            " AND (c.k0 > m.k0 OR c.n > m.n) OFFSET 0) c"
            " WHERE s.source_id = ANY(%s)"
            " ORDER BY 1, 2",
            [*bounds, ids, known, known, [last[s][0] for s in known], [last[s][1] for s in known], ids],
            ["int8", "int8", "float8", "float8", "int4", "int4", "int4[]", "float8[]"],
        )
        insert, update = chunks.INSERT_SQL, chunks.UPDATE_SQL
        for batch in _batches(rows):
            for series_id, k0, t0, t1, n, dt_ms, jit, vals in batch:
                row = chunks.encode_gridded(t0, t1, n, dt_ms, jit, vals)
                was = last.get(series_id)
                if was is not None and was[0] == k0:  # the live chunk grew: the same row, rewritten
                    lite.execute(update, (*row, was[2]))
                    rowid = was[2]
                else:
                    rowid = lite.execute(insert, (series_id, *row)).lastrowid or 0
                if was is None or k0 >= was[0]:
                    last[series_id] = (k0, n, rowid)
                out.chunks += 1
                out.samples += n

    def _pull_rows(self, cur: Any, lite: sqlite3.Connection, ids: list[int], out: Pulled) -> None:
        for table, types in (
            ("generation_rows", ["float8", "text", "int8", "int8", "float8", "int8", "float8", "int8"]),
            ("training_rows", ["float8", "text", "float8", "int8", "int8", "text"]),
        ):
            last = self._held.last_row[table]
            known = sorted(last)
            rows = _stream(
                cur,
                f"SELECT {columns(table, prefix='r.')} FROM {table} r"
                " LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS m(source_id, id) ON m.source_id = r.source_id"
                " WHERE r.source_id = ANY(%s) AND r.id > coalesce(m.id, 0) ORDER BY r.id",
                (known, [last[s] for s in known], ids),
                ["int8", "int8", *types],
            )
            marks = ", ".join("?" * (len(types) + 2))
            for batch in _batches(rows):
                lite.executemany(
                    f"INSERT OR IGNORE INTO {table}({columns(table)}) VALUES ({marks})", self._local(batch, 1)
                )
                for r in batch:
                    last[r[1]] = max(last.get(r[1], 0), r[0])
                setattr(out, table, getattr(out, table) + len(batch))


@contextmanager
def pulled(url: str, selection: Selection) -> Iterator[str]:
    """The path of a temporary SQLite database holding ``selection`` of the central store at ``url``
    (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="aeth-pull-") as folder:
        path = os.path.join(folder, "central", "central.db")
        os.mkdir(os.path.dirname(path))
        with Puller(url, selection, path) as puller:
            puller.pull()
        if len(puller.runs) == 1:  # the folder's name is the report's run name when no config names one
            (run,) = puller.runs
            named = os.path.join(folder, safe_component(run), "central.db")
            os.rename(os.path.dirname(path), os.path.dirname(named))
            path = named
        yield path


#: A source's job: its array job, else its job id, else (a store outside any job) its host.
_JOB = "coalesce(s.array_job_id, s.job_id, 'host ' || coalesce(s.hostname, s.node, '?'))"
#: The columns PostgreSQL holds as ``jsonb`` (SQLite: JSON text).
_JSONB = ("config", "requested")


def _stream(cur: Any, sql: str, params: Sequence[Any], types: list[str]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql``, streamed with one binary ``COPY ... TO STDOUT`` (nothing held but a buffer)."""
    with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy:
        copy.set_types(types)
        yield from copy.rows()


def _batches(rows: Iterator[tuple[Any, ...]], size: int = BATCH) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
