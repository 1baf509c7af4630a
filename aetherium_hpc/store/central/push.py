"""One routine copies SQLite into PostgreSQL: what is new since a high-water mark, idempotently.

:func:`push` reads one consistent snapshot of an SQLite database (a read-only connection, one
read transaction), copies into PostgreSQL what the :class:`Mark` says it has not sent yet, in one
PostgreSQL transaction, and returns the new mark. The live sender keeps the mark in memory
between pushes; ``merge --into`` starts from an empty mark. Either way nothing is stored twice:

* sources, series: upserted on their natural keys (:mod:`.schema`);
* chunks: each SQLite chunk gets ``k0``, the ordinal of its first sample in its series. A chunk
  PostgreSQL already holds whole is skipped; the chunk the node writer still fills in place is
  upserted (``ON CONFLICT DO UPDATE`` when it grew); a chunk cut differently (a run-directory
  copy cuts the live chunks at each checkpoint) sends only the samples PostgreSQL lacks;
* generation and training rows: ``INSERT ... ON CONFLICT DO NOTHING`` on their logged fields;
* job rows and store_stats: upserted when they changed.

What PostgreSQL holds for a series (its sample count) is read once per series and mark, so a new
mark (a restarted sender, a merge) resumes where PostgreSQL stands without resending samples.
Each table's rows go in one statement, ``INSERT ... SELECT FROM unnest(<one array per column>)
... ON CONFLICT``: one round trip per table, and nothing that lives on in the session (no
temporary table, no prepared statement), so a push through PgBouncer's transaction pooling costs
the server what the rows cost (bench/central.py measures it against a bare ``COPY``). Each array
is one parameter built at C speed (:func:`_array`): a float8 column without NULL in PostgreSQL's
binary format, any other as one array literal; never a list psycopg adapts element by element in
Python, which held the GIL ~5 µs per training row (a sender streaming 70,000 rows/s held it ~40 %
of the time, and the job's threads waited for it). At most :data:`BATCH_ROWS`
chunks and rows of each table are read per call; ``Pushed.more`` says there is more to send.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import chunks as codec
from ..schema import COLUMNS, columns
from .schema import COLUMNS as PG_COLUMNS
from .url import mask

#: Chunks, and rows of each table, one push reads at most (bounds the sender's memory).
BATCH_ROWS = 20_000
#: The SQLite chunk columns PostgreSQL holds (it keys a chunk by ``k0`` instead of its rowid).
_CHUNK_COLS = ", ".join(c for c in PG_COLUMNS["sample_chunks"] if c != "k0")
#: The types of the arrays a push of chunks sends (series_id, k0, t0, t1, n, dt_ms, jit and vals as text).
_CHUNK_TYPES = ("int8", "int8", "float8", "float8", "int4", "int4", "text", "text")


@dataclass(frozen=True)
class _SeriesMark:
    """One SQLite series: its PostgreSQL series, and where its chunks stand."""

    pg_id: int
    next_k0: int = 0  # ordinal of the first sample of the series' next chunk not yet read
    last_rowid: int | None = None  # its last chunk read, while that may still grow in place
    last_k0: int = 0
    last_n: int = 0


@dataclass
class Mark:
    """How far one SQLite database has been copied into one PostgreSQL database."""

    sources: dict[int, int] = field(default_factory=dict)  # SQLite source_id -> PostgreSQL source_id
    source_rows: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # as last sent
    series: dict[int, _SeriesMark] = field(default_factory=dict)  # SQLite series_id ->
    stored: dict[int, tuple[int, int]] = field(default_factory=dict)  # PG series_id -> (samples held, last k0)
    max_series: int = 0
    max_chunk: int = 0
    max_generation: int = 0
    max_training: int = 0
    jobs: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # SQLite source_id -> job row as sent
    stats: dict[tuple[int, str], float] = field(default_factory=dict)

    def copy(self) -> Mark:
        """A copy whose dicts can change without touching this one (their values are immutable)."""
        return Mark(
            dict(self.sources), dict(self.source_rows), dict(self.series), dict(self.stored), self.max_series,
            self.max_chunk, self.max_generation, self.max_training, dict(self.jobs), dict(self.stats),
        )  # fmt: skip


@dataclass
class Pushed:
    """What one :func:`push` sent (rows PostgreSQL inserted or updated, per table)."""

    sources: int = 0
    series: int = 0
    chunks: int = 0
    samples: int = 0  # samples in the chunks sent (a chunk that grew counts whole)
    generation_rows: int = 0
    training_rows: int = 0
    job_rows: int = 0
    store_stats: int = 0
    read: int = 0  # rows read from SQLite that had to be offered
    more: bool = False  # a table had more than BATCH_ROWS new rows: push again

    @property
    def rows(self) -> int:
        return (
            self.sources + self.series + self.chunks + self.generation_rows + self.training_rows
            + self.job_rows + self.store_stats
        )  # fmt: skip

    def add(self, other: Pushed) -> None:
        for name in ("sources", "series", "chunks", "samples", "generation_rows", "training_rows", "job_rows",
                     "store_stats", "read"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))


def source_key(job_id: Any, array_job_id: Any, array_task_id: Any, node: Any, hostname: Any, attempt: Any) -> str:
    """The natural key of a source in PostgreSQL (see :mod:`.schema`): a first attempt's key has
    no attempt, so keys written before attempts were told apart still name the same source."""
    key = [job_id, array_job_id, array_task_id, node or "", hostname or ""] + ([attempt] if attempt else [])
    return json.dumps(key, separators=(",", ":"))


# -- reading SQLite ---------------------------------------------------------------------------------
@dataclass
class _Snapshot:
    sources: list[tuple[Any, ...]]
    series: list[tuple[Any, ...]]
    regrown: list[tuple[Any, ...]]  # chunks read before that grew since (rowid, series_id, t0, t1, n, dt_ms, jit, vals)
    chunks: list[tuple[Any, ...]]  # new chunks, in rowid order
    generation: list[tuple[Any, ...]]
    training: list[tuple[Any, ...]]
    jobs: list[tuple[Any, ...]]
    stats: list[tuple[Any, ...]]
    more: bool

    def news(self, mark: Mark) -> bool:
        """Whether it holds anything ``mark`` has not sent (else a push would change nothing)."""
        return bool(
            self.series or self.regrown or self.chunks or self.generation or self.training
            or any(mark.source_rows.get(r[0]) != tuple(r) for r in self.sources)
            or any(mark.jobs.get(r[0]) != tuple(r) for r in self.jobs if r[0] in mark.sources)
            or any(mark.stats.get((r[0], r[1])) != r[2] for r in self.stats if r[0] in mark.sources)
        )  # fmt: skip


def _read(conn: sqlite3.Connection, mark: Mark) -> _Snapshot:
    """Everything :func:`push` needs, from one read transaction (a consistent snapshot)."""
    q = conn.execute
    sources = q(f"SELECT {columns('sources')} FROM sources").fetchall()
    series = q(
        f"SELECT {columns('series')} FROM series WHERE series_id > ? ORDER BY series_id", (mark.max_series,)
    ).fetchall()
    chunk_cols = f"rowid, {_CHUNK_COLS}"
    regrown: list[tuple[Any, ...]] = []
    growing = {s.last_rowid: s.last_n for s in mark.series.values() if s.last_rowid is not None}
    if growing:
        ids = list(growing)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            grown = [
                rowid
                for rowid, n in q(
                    f"SELECT rowid, n FROM sample_chunks WHERE rowid IN ({','.join('?' * len(part))})", part
                )
                if n > growing[rowid]
            ]
            if grown:
                regrown += q(
                    f"SELECT {chunk_cols} FROM sample_chunks WHERE rowid IN ({','.join('?' * len(grown))})", grown
                ).fetchall()
    limit = BATCH_ROWS + 1
    new_chunks = q(
        f"SELECT {chunk_cols} FROM sample_chunks WHERE rowid > ? ORDER BY rowid LIMIT ?", (mark.max_chunk, limit)
    ).fetchall()
    generation = q(
        f"SELECT {columns('generation_rows')} FROM generation_rows WHERE id > ? ORDER BY id LIMIT ?",
        (mark.max_generation, limit),
    ).fetchall()
    training = q(
        f"SELECT {columns('training_rows')} FROM training_rows WHERE id > ? ORDER BY id LIMIT ?",
        (mark.max_training, limit),
    ).fetchall()
    jobs = q(f"SELECT {columns('job_rows')} FROM job_rows").fetchall()
    stats = q(f"SELECT {columns('store_stats')} FROM store_stats").fetchall()
    more = False
    for rows in (new_chunks, generation, training):
        if len(rows) > BATCH_ROWS:
            del rows[BATCH_ROWS:]
            more = True
    return _Snapshot(sources, series, regrown, new_chunks, generation, training, jobs, stats, more)


def snapshot(conn: sqlite3.Connection, mark: Mark) -> _Snapshot:
    """:func:`_read` inside one read transaction of ``conn`` (opened with ``isolation_level=None``)."""
    conn.execute("BEGIN")
    try:
        return _read(conn, mark)
    finally:
        conn.execute("ROLLBACK")


# -- writing PostgreSQL ---------------------------------------------------------------------------
def push(sqlite_conn: sqlite3.Connection, pg: Any, mark: Mark | None = None) -> tuple[Mark, Pushed]:
    """Copy what ``sqlite_conn`` holds beyond ``mark`` into the PostgreSQL connection ``pg`` in one
    transaction; return the new mark and what was sent. On an error nothing is committed and
    ``mark`` is unchanged (the caller retries with it)."""
    old = mark if mark is not None else Mark()
    return send(snapshot(sqlite_conn, old), pg, old)


def send(snap: _Snapshot, pg: Any, old: Mark) -> tuple[Mark, Pushed]:
    """The PostgreSQL half of :func:`push`: ``snap`` (read with ``old``) in one transaction of ``pg``.
    The live sender reads first and connects only when the snapshot has :meth:`~_Snapshot.news`."""
    new = old.copy()
    out = Pushed(more=snap.more)
    out.read = len(snap.regrown) + len(snap.chunks) + len(snap.generation) + len(snap.training)
    try:
        with pg.cursor() as cur:
            cur.adapters.register_dumper(_Float8s, _float8s_dumper())
            _push_sources(cur, snap, new, out)
            _push_series(cur, snap, new, out)
            _push_chunks(cur, snap, new, out)
            _push_rows(cur, snap, new, out)
            _push_jobs_and_stats(cur, snap, new, out)
        pg.commit()
    except BaseException:
        try:
            pg.rollback()
        except Exception:  # the connection is gone: the caller reconnects
            pass
        raise
    return new, out


def _push_sources(cur: Any, snap: _Snapshot, new: Mark, out: Pushed) -> None:
    for row in snap.sources:
        sid, job, ajob, task, node, host, path, attempt = row
        if new.source_rows.get(sid) == tuple(row):
            continue
        cur.execute(
            f"INSERT INTO sources({', '.join(PG_COLUMNS['sources'][1:])})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source_key) DO UPDATE"
            " SET source_path = excluded.source_path RETURNING source_id, xmax = 0",
            (source_key(job, ajob, task, node, host, attempt), job, ajob, task, node, host, path, attempt),
        )
        pg_id, inserted = cur.fetchone()
        new.sources[sid] = pg_id
        new.source_rows[sid] = tuple(row)
        out.sources += int(inserted)


def _push_series(cur: Any, snap: _Snapshot, new: Mark, out: Pushed) -> None:
    if not snap.series:
        return
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for sid, src, mtype, mname, unit, node, device in snap.series:
        pg_src = new.sources.get(src)
        if pg_src is None:  # a series of no source (not written by aetherium-hpc): skipped
            continue
        by_key.setdefault((pg_src, mtype, mname, unit or "", node or "", device or ""), []).append(sid)
    keys = list(by_key)
    if not keys:
        return
    cols = [list(c) for c in zip(*keys, strict=True)]
    # DO UPDATE (a no-op) so that RETURNING names the series that existed already too.
    natural = columns("series", without=("series_id",))
    cur.execute(
        f"INSERT INTO series({natural})"
        " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        f" ON CONFLICT ({natural}) DO UPDATE SET metric_type = excluded.metric_type"
        f" RETURNING {columns('series')}, xmax = 0",
        cols,
    )
    returned = cur.fetchall()
    pg_of = {tuple(r[1:7]): r[0] for r in returned}
    out.series += sum(1 for r in returned if r[7])
    fresh = [pg_of[k] for k in keys if pg_of[k] not in new.stored]
    if fresh:
        cur.execute(
            "SELECT series_id, max(k0 + n), max(k0) FROM sample_chunks WHERE series_id = ANY(%s) GROUP BY series_id",
            (fresh,),
        )
        held = {r[0]: (int(r[1]), int(r[2])) for r in cur.fetchall()}
        for pid in fresh:
            new.stored[pid] = held.get(pid, (0, -1))
    for key, sids in by_key.items():
        for sid in sids:
            new.series[sid] = _SeriesMark(pg_of[key])
    new.max_series = max(new.max_series, snap.series[-1][0])


def _push_chunks(cur: Any, snap: _Snapshot, new: Mark, out: Pushed) -> None:
    limit = codec.CHUNK_SAMPLES
    pending: dict[tuple[int, int], tuple[Any, ...]] = {}  # (pg series, k0) -> row: one upsert per key

    def offer(mark: _SeriesMark, k0: int, t0: float, t1: float, n: int, dt_ms: int, jit: str, vals: str) -> None:
        held, last = new.stored.get(mark.pg_id, (0, -1))
        if k0 + n <= held:
            return
        if k0 >= held or k0 == last:
            row = (mark.pg_id, k0, t0, t1, n, dt_ms, json.loads(jit), _floats(json.loads(vals)))
            new.stored[mark.pg_id] = (max(held, k0 + n), max(last, k0))
        else:  # cut differently: only the samples PostgreSQL lacks, as a chunk of their own
            t0c, t1c, nc, dtc, jitc, valsc = codec.tail(t0, t1, n, dt_ms, jit, vals, held - k0)[:6]
            row = (mark.pg_id, held, t0c, t1c, nc, dtc, json.loads(jitc), _floats(json.loads(valsc)))
            new.stored[mark.pg_id] = (k0 + n, held)
        pending[(row[0], row[1])] = row

    for rowid, sid, t0, t1, n, dt_ms, jit, vals in snap.regrown:
        m = new.series.get(sid)
        if m is None or m.last_rowid != rowid:
            continue
        offer(m, m.last_k0, t0, t1, n, dt_ms, jit, vals)
        new.series[sid] = replace(m, next_k0=m.last_k0 + n, last_n=n, last_rowid=rowid if n < limit else None)
    for rowid, sid, t0, t1, n, dt_ms, jit, vals in snap.chunks:
        m = new.series.get(sid)
        if m is None:
            continue
        k0 = m.next_k0
        offer(m, k0, t0, t1, n, dt_ms, jit, vals)
        new.series[sid] = replace(m, next_k0=k0 + n, last_rowid=rowid if n < limit else None, last_k0=k0, last_n=n)
    if snap.chunks:
        new.max_chunk = snap.chunks[-1][0]
    if not pending:
        return
    rows = list(pending.values())
    cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)]
    cols[6] = [_array_text(jit) for jit in cols[6]]
    cols[7] = [_array_text(vals) for vals in cols[7]]
    cur.execute(
        f"INSERT INTO sample_chunks({', '.join(PG_COLUMNS['sample_chunks'])})"
        " SELECT s, k, t0, t1, n, dt, jit::integer[], vals::double precision[]"
        f" FROM unnest({', '.join(f'%s::{t}[]' for t in _CHUNK_TYPES)}) AS u(s, k, t0, t1, n, dt, jit, vals)"
        f" ON CONFLICT (series_id, k0) DO UPDATE SET {_set_excluded(PG_COLUMNS['sample_chunks'][2:])}"
        " WHERE excluded.n > sample_chunks.n",
        [_array(c, t) for c, t in zip(cols, _CHUNK_TYPES, strict=True)],
    )
    out.chunks += max(cur.rowcount, 0)
    out.samples += sum(r[4] for r in pending.values())


def _set_excluded(cols: tuple[str, ...]) -> str:
    """The SET list of an upsert that takes ``cols`` from the row offered."""
    return ", ".join(f"{c} = excluded.{c}" for c in cols)


def _push_rows(cur: Any, snap: _Snapshot, new: Mark, out: Pushed) -> None:
    for table, types, rows, attr in (
        ("generation_rows", ["float8", "text", "int8", "int8", "float8", "int8", "float8", "int8"],
         snap.generation, "max_generation"),
        ("training_rows", ["float8", "text", "float8", "int8", "int8", "text"], snap.training, "max_training"),
    ):  # fmt: skip
        if not rows:
            continue
        sources = new.sources
        cols = list(zip(*rows, strict=True))[1:]  # (source_id, the logged fields...), without id
        if not sources.keys() >= set(cols[0]):  # rows of a source not written by aetherium-hpc: skipped
            cols = list(zip(*(r for r in rows if r[1] in sources), strict=True))[1:]
        if cols:
            cols[0] = tuple(map(sources.__getitem__, cols[0]))
            types = ["int8", *types]
            arrays = ", ".join(f"%s::{t}[]" for t in types)
            cur.execute(
                f"INSERT INTO {table}({columns(table, without=('id',))}) SELECT * FROM unnest({arrays})"
                " ON CONFLICT DO NOTHING",
                [_array(c, t) for c, t in zip(cols, types, strict=True)],
            )
            setattr(out, table, getattr(out, table) + max(cur.rowcount, 0))
        setattr(new, attr, rows[-1][0])


def _push_jobs_and_stats(cur: Any, snap: _Snapshot, new: Mark, out: Pushed) -> None:
    jobs: dict[int, tuple[Any, ...]] = {}
    for row in snap.jobs:
        sid = row[0]
        if sid in new.sources and new.jobs.get(sid) != tuple(row):
            config = row[5]
            # a URL's password never reaches the central store, even from a database written before masking
            jobs[new.sources[sid]] = (
                new.sources[sid], *row[1:5], _jsonb(mask(config) if config else config), _jsonb(row[6]), *row[7:]
            )  # fmt: skip
            new.jobs[sid] = tuple(row)
    if jobs:
        fields = COLUMNS["job_rows"][1:]
        cur.executemany(
            f"INSERT INTO job_rows({columns('job_rows')}) VALUES (%s{', %s' * len(fields)})"
            f" ON CONFLICT (source_id) DO UPDATE SET {_set_excluded(fields)}"
            f" WHERE ({columns('job_rows', without=('source_id',), prefix='job_rows.')})"
            f" IS DISTINCT FROM ({columns('job_rows', without=('source_id',), prefix='excluded.')})",
            list(jobs.values()),
        )
        out.job_rows += max(cur.rowcount, 0)
    stats: dict[tuple[int, str], float] = {}
    for sid, name, value in snap.stats:
        if sid in new.sources and new.stats.get((sid, name)) != value:
            stats[(new.sources[sid], name)] = value
            new.stats[(sid, name)] = value
    if stats:
        cur.executemany(
            f"INSERT INTO store_stats({columns('store_stats')}) VALUES (%s, %s, %s)"
            " ON CONFLICT (source_id, name) DO UPDATE SET value = excluded.value"
            " WHERE store_stats.value IS DISTINCT FROM excluded.value",
            [(s, n, v) for (s, n), v in stats.items()],
        )
        out.store_stats += max(cur.rowcount, 0)


def _array(values: Sequence[Any], pg_type: str) -> Any:
    """One column of a push as the parameter of ``%s::<pg_type>[]``: a float8 column without NULL
    in PostgreSQL's binary array format (:class:`_Float8s`), any other as :func:`_array_text`."""
    if pg_type == "float8" and values:
        try:
            return _Float8s.of(values)
        except (TypeError, OverflowError):  # a None (NULL) among them, or not a float
            pass
    return _array_text(values)


class _Float8s(bytes):
    """A ``float8[]`` in PostgreSQL's binary format: exact, and built by :mod:`array` at C speed
    (``repr`` of a float costs ~0.4 µs, against ~0.04 µs here). Sent by :func:`_float8s_dumper`."""

    @classmethod
    def of(cls, values: Sequence[Any]) -> _Float8s:
        data = array("d", values)  # TypeError on None or text
        if sys.byteorder == "little":
            data.byteswap()
        raw, n = data.tobytes(), len(data)
        out = bytearray(_ARRAY_HEADER.pack(1, 0, _FLOAT8_OID, n, 1)) + bytes(12 * n)
        out[_ARRAY_HEADER.size + 3 :: 12] = b"\x08" * n  # each element: its length (int32 8), then its 8 bytes
        for i in range(8):
            out[_ARRAY_HEADER.size + 4 + i :: 12] = raw[i::8]
        return cls(out)


#: ndim, has-NULL flag, element type, then (length, lower bound) of the one dimension.
_ARRAY_HEADER = struct.Struct(">iiIii")
_FLOAT8_OID = 701
_FLOAT8_ARRAY_OID = 1022


@functools.cache
def _float8s_dumper() -> type:
    """psycopg's dumper of :class:`_Float8s` (built on first use: psycopg is an optional dependency)."""
    from psycopg import adapt, pq

    class Float8sDumper(adapt.Dumper):
        format = pq.Format.BINARY
        oid = _FLOAT8_ARRAY_OID

        def dump(self, obj: Any) -> bytes:
            return obj

    return Float8sDumper


_NUMBERS = frozenset((int, float))
_NUMBERS_OR_NULL = frozenset((int, float, type(None)))
_TEXT_OR_NULL = frozenset((str, type(None)))


def _array_text(values: Sequence[Any]) -> Any:
    """``values`` as one PostgreSQL array literal, built by ``map``/``join`` (cast in the statement:
    ``%s::int8[]``): numbers exact (``repr``; ``inf`` and ``nan`` as PostgreSQL reads them), text
    quoted, NULL for None. Arrays of unequal length (a chunk's values) cannot travel as one 2-D
    array, so each goes as such a string too. Other types: the list, for psycopg to adapt."""
    kinds = set(map(type, values))
    if kinds <= _NUMBERS:
        return "{" + ",".join(map(repr, values)) + "}"
    if kinds <= _NUMBERS_OR_NULL:
        return "{" + ",".join(["NULL" if v is None else repr(v) for v in values]) + "}"
    if kinds <= _TEXT_OR_NULL:
        quoted = {v: _quoted(v) for v in set(values)}  # few distinct names, many rows
        return "{" + ",".join(map(quoted.__getitem__, values)) + "}"
    return list(values)


def _quoted(text: str | None) -> str:
    """An element of an array literal: text in double quotes (backslash and quote escaped), or NULL."""
    if text is None:
        return "NULL"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _jsonb(text: str | None) -> str | None:
    """``text`` as PostgreSQL ``jsonb`` accepts it: JSON as it is; text that is not JSON (or JSON
    with NaN, which jsonb refuses) as a JSON string, so that a job row is never refused for it."""
    if text is None:
        return None
    try:
        json.loads(text, parse_constant=_refuse)
    except ValueError:
        return json.dumps(text)
    return text


def _refuse(name: str) -> None:
    raise ValueError(name)


def _floats(values: list[Any]) -> list[float | None]:
    """JSON values as floats (``3`` is a float in a double precision array; null stays None)."""
    return [None if v is None or v != v else float(v) for v in values]
