"""Copies of the live node-local database in the run directory.

The run directory is often on NFS/Lustre/GPFS, where WAL does not work, so its copy is a
plain rollback-journal database, written by one process only (the job's node leader):

* **Full copy** (the first one, after the copy was changed or removed behind our back, after
  an error that may have left it unusable, and at requeue): a fresh database is built in
  ``<dest>.tmp`` from one read snapshot of the source and renamed over ``<dest>``. A reader
  sees the previous complete copy or the new one, never half a file.
* **Incremental copy** (every later checkpoint, and the final copy): only what is new since
  the last copy, applied to ``<dest>`` in ONE transaction (``journal_mode=DELETE``,
  ``synchronous=FULL``). New rows of ``series``, ``generation_rows`` and ``training_rows``
  (ids above the last copied), changed rows of the small tables (``sources``, ``job_rows``,
  ``store_stats``, ``meta``), and, per series, a new ``sample_chunks`` row holding only the
  samples added since the last copy. The node writer rewrites the chunk it is filling in
  place; the copy never rewrites a row, so a checkpoint writes about what is new, not the
  database's size.

To keep the bytes written close to the data's growth (bench/copyback.py: about 2x the
database's growth for 42 metrics at 1 Hz and a copy every 30 s, against some 1,400x for a
full copy each time), the copy uses small pages (:data:`DEST_PAGE_SIZE`: a transaction writes
every page it changes twice, once into the journal) and has neither per-series chunk index
(:data:`CHUNK_INDEXES`: ``sample_chunks_by_series``, ``sample_chunks_by_end``): one new chunk per
series and checkpoint would change one page of each per series (with ``sample_chunks_by_end``
kept, as schema 4 added it, a checkpoint of that job wrote 163 KiB instead of 30 KiB: 11x the
growth instead of 2x). The copy answers the same queries; one that picks a series' chunks
(``series_id = ?``) scans the table instead, so a reader that asks that per series reads a copy
another way (``watch``: a series' newest chunks are its newest rows, read backwards by rowid).
A copy loaded back into a node database (:func:`copy_database`, at requeue) and ``merge``'s
output have every index of the schema again.

A process killed in the middle of an incremental copy leaves ``<dest>-journal`` ("hot
journal"): the file is complete and consistent again as soon as the journal is rolled back,
which any read-write connection does by itself. A read-only connection (``mode=ro``, as
``merge`` opens its inputs) fails instead with ``SQLITE_READONLY_ROLLBACK``; :func:`recover`
rolls such a file back (in place), :func:`readable_copy` without changing it.

``python -m aetherium_hpc.store.backup SRC DEST`` makes a full copy by hand (what to do
when the copy at the end of a job failed, e.g. on a full file system).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import chunks, reader, schema, sqlite_errors

log = logging.getLogger(__name__)

__all__ = [
    "CopyBack",
    "CopyResult",
    "copy_database",
    "has_hot_journal",
    "readable_copy",
    "recover",
]

#: Page size of the run-directory copy (the node database keeps SQLite's default, 4096).
DEST_PAGE_SIZE = 1024
#: The indexes the run-directory copy does without (see above); every other index of the schema it has.
CHUNK_INDEXES = ("sample_chunks_by_series", "sample_chunks_by_end")
#: Tables copied by new ids (rows are only ever appended there): table -> id column.
APPEND_TABLES = {"series": "series_id", "generation_rows": "id", "training_rows": "id"}
#: Small tables whose changed rows are copied (each has a primary key).
SMALL_TABLES = ("sources", "job_rows", "store_stats", "meta")
#: ``store_stats.records_written`` changes at every flush; it is copied every this many
#: increments (and by the final copy): one page less to write at the other checkpoints.
STATS_EVERY = 10
#: ``meta`` key of the copy's identity (written by the full copy, checked by each increment).
TOKEN_KEY = "copy_token"
#: After a full copy failed, the next waits this long (doubling up to FULL_RETRY_MAX_S), so that
#: a full shared file system is not filled up again every checkpoint; the final copy always tries.
FULL_RETRY_S = 60.0
FULL_RETRY_MAX_S = 960.0
#: Failures of the file system (the copy is kept, retried later): SQLite's
#: :data:`~.sqlite_errors.FILE_FAILURES` -- not out of memory, which the writer retries: any other
#: failure, that one included, makes the next copy a full one -- and these errnos.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _chunk_index_sql() -> list[str]:
    """The ``CREATE INDEX`` statements of :data:`CHUNK_INDEXES`, from the schema."""
    found = {name: s for s in schema.index_statements() for name in CHUNK_INDEXES if f" {name} " in s}
    missing = [name for name in CHUNK_INDEXES if name not in found]
    if missing:  # pragma: no cover -- schema.py defines them
        raise StoreError(f"schema has no index {', '.join(missing)}")
    return [found[name] for name in CHUNK_INDEXES]


# -- hot journals -------------------------------------------------------------------------------
def has_hot_journal(path: str | os.PathLike[str]) -> bool:
    """True when ``<path>-journal`` is a hot journal: a writer died inside a transaction after it
    began changing the database file (or one is committing right now; SQLite tells the two apart
    by its locks). As SQLite decides: the journal's first byte is not zero -- it holds zeros
    until the journal is synced, before any page of the database file is written."""
    try:
        with open(f"{os.fspath(path)}-journal", "rb") as f:
            first = f.read(1)
    except OSError:
        return False
    return first not in (b"", b"\0")


def recover(path: str | os.PathLike[str], *, timeout: float = 10.0) -> bool:
    """Roll back the hot journal a killed writer left beside ``path`` (in place).

    Opening the database read-write and reading it is what makes SQLite roll back; the
    content is then the last committed one. Returns True if a journal was there. Raises
    :class:`StoreError` when the file or its folder cannot be written (use
    :func:`readable_copy` there)."""
    if not has_hot_journal(path):
        return False
    try:
        conn = sqlite3.connect(reader.uri(path, "rw"), uri=True, timeout=timeout)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: an interrupted copy left {path}-journal and it cannot be rolled back here ({exc}); "
            "read a copy of both files instead (aetherium_hpc.store.backup.readable_copy)"
        ) from exc
    return True


def readable_copy(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` itself when a read-only connection can read it, else a rolled-back copy in ``folder``.

    For readers that must not change their input (``merge``): the database and its hot journal
    are copied side by side into ``folder`` and the copy is rolled back there."""
    src = os.fspath(path)
    if not has_hot_journal(src):
        return src
    target = os.path.join(os.fspath(folder), os.path.basename(src))
    shutil.copyfile(src, target)
    try:
        shutil.copyfile(f"{src}-journal", f"{target}-journal")
    except FileNotFoundError:  # rolled back meanwhile: copy the database again, now current
        shutil.copyfile(src, target)
    recover(target)
    return target


@contextmanager
def readable(path: str | os.PathLike[str], prefix: str = "aeth-read-") -> Iterator[str]:
    """``path``, or -- when a copy was killed inside its transaction and left a hot journal,
    which a read-only connection cannot roll back -- a rolled-back copy of it in a temporary
    folder that is removed on exit (``path`` stays unchanged; the copy is its last complete state)."""
    if not has_hot_journal(path):
        yield os.fspath(path)
        return
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield readable_copy(path, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the result of one copy -----------------------------------------------------------------------
@dataclass
class CopyResult:
    """What one :meth:`CopyBack.copy` did."""

    kind: str  # "full" or "incremental"
    samples: int = 0  # resource samples written
    rows: int = 0  # other rows written or replaced
    seconds: float = 0.0
    reason: str = ""  # why a full copy (the first, changed behind our back, ...)


@dataclass
class _State:
    """What the copy at ``dest`` holds, as of our last commit (in memory only)."""

    token: str
    src_max: dict[str, int]  # APPEND_TABLES: highest id copied (the same ids in both files)
    chunk_rowid: int  # highest sample_chunks rowid of the source copied
    dest_chunk_rowid: int  # highest sample_chunks rowid of the copy
    indexed: bool
    increments: int = 0  # incremental copies since the full one
    #: series_id -> (rowid in the source of its newest chunk, samples of it copied).
    last_chunk: dict[int, tuple[int, int]] = field(default_factory=dict)


class _Diverged(Exception):
    """The copy at dest is not the one our state describes: make a full copy."""


class CopyBack:
    """Keeps ``dest`` a complete, consistent copy of the live database ``src``.

    One instance per (src, dest), used by one process (calls are not thread-safe: the
    :class:`..runtime.session.NodeSession` serialises them)."""

    def __init__(self, src: str | os.PathLike[str], dest: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.src = os.path.abspath(os.fspath(src))
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.timeout = timeout
        self._state: _State | None = None
        self._full_reason = "first copy"
        self._full_failures = 0
        self._full_not_before = 0.0  # time.monotonic()
        self._full_error = ""
        self.last_success: float | None = None  # time.time() of the last committed copy

    @property
    def tmp(self) -> Path:
        return _tmp_of(self.dest)

    def copy(self, *, final: bool = False, index: bool = False) -> CopyResult:
        """Copy what is new (or everything, when needed). ``final``: the last copy (every counter
        of ``store_stats`` is brought up to date). ``index``: also create the chunk indexes (:data:`CHUNK_INDEXES`).

        On failure the previous copy at ``dest`` stays as it was (complete and consistent), no
        ``.tmp`` is left, and the exception is raised. After a failed full copy, the next ones are
        not tried for :data:`FULL_RETRY_S` (doubling) unless ``final`` (a :class:`StoreError`
        with the same message instead)."""
        started = time.perf_counter()
        if self._state is not None and self.dest.exists():
            try:
                result = self._incremental(self._state, final, index)
            except _Diverged as exc:
                self._state = None
                self._full_reason = str(exc)
            except sqlite3.DatabaseError as exc:
                if sqlite_errors.primary_code(exc) not in sqlite_errors.BROKEN_FILE:  # else: replaced by a full copy
                    if not _is_disk_error(exc):
                        self._state = None
                        self._full_reason = f"the last incremental copy failed ({exc})"
                    raise
                self._state = None  # a corrupt or foreign file in place of the copy: replace it
                self._full_reason = f"the copy is not readable ({exc})"
            except BaseException as exc:
                if not _is_disk_error(exc):  # an unknown failure: do not trust the copy any more
                    self._state = None
                    self._full_reason = f"the last incremental copy failed ({exc})"
                raise
            else:
                result.seconds = time.perf_counter() - started
                self.last_success = time.time()
                return result
        elif self._state is not None:
            self._state = None
            self._full_reason = f"{self.dest} was removed"
        if time.monotonic() < self._full_not_before and not final:
            raise StoreError(self._full_error)  # the same text as the failure: said once by the caller
        try:
            result = self._full(index)
        except BaseException as exc:
            self._full_error = str(exc) or type(exc).__name__
            self._full_failures += 1
            delay = min(FULL_RETRY_S * 2 ** (self._full_failures - 1), FULL_RETRY_MAX_S)
            self._full_not_before = time.monotonic() + delay
            raise
        self._full_failures = 0
        self._full_not_before = 0.0
        result.seconds = time.perf_counter() - started
        self.last_success = time.time()
        return result

    # -- full copy ------------------------------------------------------------------------------
    def _full(self, index: bool) -> CopyResult:
        reason = self._full_reason

        def drop_old_journal() -> None:  # never let an old journal meet the new file
            if has_hot_journal(self.dest):
                try:
                    recover(self.dest, timeout=self.timeout)
                except StoreError:
                    _remove_quietly(Path(f"{self.dest}-journal"))

        state, samples, rows = _replace_with_copy(
            self.src, self.dest, secrets.token_hex(8), page_size=DEST_PAGE_SIZE, index=index,
            timeout=self.timeout, before_replace=drop_old_journal, sync_dir=True,
        )  # fmt: skip
        self._state = state
        self._full_reason = ""
        return CopyResult("full", samples=samples, rows=rows, reason=reason)

    # -- incremental copy -----------------------------------------------------------------------
    def _incremental(self, state: _State, final: bool, index: bool) -> CopyResult:
        conn = sqlite3.connect(str(self.dest), timeout=self.timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("ATTACH DATABASE ? AS src", (reader.uri(self.src),))
            conn.execute("BEGIN IMMEDIATE")  # rolls back a hot journal first, if a copy was killed
            try:
                _check_same(conn, state)
                new_state, samples, rows = _apply_increment(conn, state, final)
                if index and not state.indexed:
                    for statement in _chunk_index_sql():
                        conn.execute(statement)
                    new_state.indexed = True
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        finally:
            conn.close()
        self._state = new_state
        return CopyResult("incremental", samples=samples, rows=rows)


def _is_disk_error(exc: BaseException) -> bool:
    """A failure of the file system (full, read-only, busy): the copy is unchanged, retry later."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_ERRNOS
    return sqlite_errors.primary_code(exc) in sqlite_errors.FILE_FAILURES


def _check_same(conn: sqlite3.Connection, state: _State) -> None:
    """Raise _Diverged unless ``main`` is the copy our state describes (same token, same ends)."""
    try:
        row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (TOKEN_KEY,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise _Diverged(f"the copy cannot be read as an aetherium-hpc database ({exc})") from None
    if row is None or row[0] != state.token:
        raise _Diverged("the copy was replaced by another file")
    for table, col in APPEND_TABLES.items():
        (top,) = conn.execute(f"SELECT coalesce(max({col}), 0) FROM main.{table}").fetchone()
        if top != state.src_max[table]:
            raise _Diverged(f"the copy's {table} changed behind our back")
    (top,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM main.sample_chunks").fetchone()
    if top != state.dest_chunk_rowid:
        raise _Diverged("the copy's sample_chunks changed behind our back")


def _apply_increment(conn: sqlite3.Connection, state: _State, final: bool) -> tuple[_State, int, int]:
    """Inside the caller's transaction: copy what ``src`` has beyond ``state`` into ``main``."""
    rows = 0
    src_max = dict(state.src_max)
    # Append-only tables: new ids. The first read of src opens its snapshot for the whole transaction.
    for table, col in APPEND_TABLES.items():
        (top,) = conn.execute(f"SELECT coalesce(max({col}), 0) FROM src.{table}").fetchone()
        if top > src_max[table]:
            cur = conn.execute(
                f"INSERT INTO main.{table} SELECT * FROM src.{table} WHERE {col} > ? AND {col} <= ?",
                (src_max[table], top),
            )
            rows += max(cur.rowcount, 0)
            src_max[table] = top
    every = final or (state.increments + 1) % STATS_EVERY == 0
    for table in SMALL_TABLES:
        rows += _sync_small(conn, table, "" if every or table != "store_stats" else "s.name <> 'records_written'")
    samples, chunk_rowid, dest_chunk_rowid, last_chunk = _copy_new_samples(conn, state)
    new = _State(state.token, src_max, chunk_rowid, dest_chunk_rowid, state.indexed, state.increments + 1, last_chunk)
    return new, samples, rows


def _sync_small(conn: sqlite3.Connection, table: str, where: str = "") -> int:
    """Write the rows of a small table that differ, updating them in place (an upsert on the
    primary key: its index is not touched); no page is written when nothing changed. The node
    database never deletes rows of these tables."""
    if table == "meta":
        where = f"s.key <> '{TOKEN_KEY}'"
    skip = f" WHERE {where}" if where else ""
    changed = conn.execute(f"SELECT s.* FROM src.{table} s{skip} EXCEPT SELECT m.* FROM main.{table} m").fetchall()
    if not changed:
        return 0
    info = conn.execute(f"PRAGMA main.table_info({table})").fetchall()  # cid, name, type, notnull, default, pk
    cols = [r[1] for r in info]
    keys = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
    rest = [c for c in cols if c not in keys]
    conn.executemany(
        f"INSERT INTO main.{table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT({', '.join(keys)}) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in rest)}",
        changed,
    )
    return len(changed)


_CHUNK_COLS = ", ".join(("rowid", "series_id", *chunks.COLUMNS))


def _copy_new_samples(conn: sqlite3.Connection, state: _State) -> tuple[int, int, int, dict[int, tuple[int, int]]]:
    """New samples of every series as new chunk rows; returns (samples, src top rowid, dest top rowid, tracking)."""
    last = dict(state.last_chunk)
    out: list[tuple[Any, ...]] = []
    samples = 0
    # Chunks the writer may still have grown: the newest of each series, unless it was full.
    growing = [[rowid, done] for rowid, done in last.values() if done < chunks.CHUNK_SAMPLES]
    if growing:
        for row in conn.execute(
            f"SELECT {', '.join('c.' + c for c in _CHUNK_COLS.split(', '))} FROM json_each(?) j"
            " JOIN src.sample_chunks c ON c.rowid = json_extract(j.value, '$[0]')"
            " WHERE c.n > json_extract(j.value, '$[1]')",
            (json.dumps(growing),),
        ):
            rowid, sid, t0, t1, n, dt_ms, jit, vals = row[:8]
            done = last[sid][1]
            out.append((sid, *chunks.tail(t0, t1, n, dt_ms, jit, vals, done)))
            samples += n - done
            last[sid] = (rowid, n)
    top = state.chunk_rowid
    for row in conn.execute(f"SELECT {_CHUNK_COLS} FROM src.sample_chunks WHERE rowid > ? ORDER BY rowid", (top,)):
        out.append(row[1:])
        samples += row[4]
        last[row[1]] = (row[0], row[4])
        top = row[0]
    dest_top = state.dest_chunk_rowid
    if out:
        conn.executemany(chunks.INSERT_SQL, out)  # (main: searched before src)
        (dest_top,) = conn.execute("SELECT max(rowid) FROM main.sample_chunks").fetchone()
    return samples, top, dest_top, last


# -- building a full copy ---------------------------------------------------------------------------
def _build(
    src: str, target: str, token: str, *, page_size: int, index: bool, timeout: float
) -> tuple[_State, int, int]:
    """A fresh copy of ``src`` (one read snapshot) in the empty file ``target``; returns its state."""
    conn = sqlite3.connect(target, timeout=timeout, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {int(page_size)}")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")  # a new file, fsync'ed once before the rename
        schema.create(conn)
        if not index:
            for name in CHUNK_INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS main.{name}")
        conn.execute("ATTACH DATABASE ? AS src", (reader.uri(src),))
        conn.execute("BEGIN IMMEDIATE")
        app_id = conn.execute("PRAGMA src.application_id").fetchone()[0]
        version = conn.execute("PRAGMA src.user_version").fetchone()[0]
        if app_id != schema.APPLICATION_ID or version != schema.SCHEMA_VERSION:
            raise StoreError(
                f"{src}: not an aetherium-hpc database of schema {schema.SCHEMA_VERSION} "
                f"(application_id={app_id:#x}, user_version={version}); nothing copied"
            )
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM src.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        mine = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
        rows = 0
        for name in names:
            if name not in mine:  # a table of an earlier writer (e.g. open_chunks): copied as it is
                (sql,) = conn.execute("SELECT sql FROM src.sqlite_master WHERE name = ?", (name,)).fetchone()
                conn.execute(sql)
            verb = "INSERT OR REPLACE" if name == "meta" else "INSERT"  # meta: schema.create wrote two keys
            cur = conn.execute(f'{verb} INTO main."{name}" SELECT * FROM src."{name}"')
            rows += max(cur.rowcount, 0)
        if token:
            conn.execute("INSERT OR REPLACE INTO main.meta(key, value) VALUES (?, ?)", (TOKEN_KEY, token))
        else:
            conn.execute("DELETE FROM main.meta WHERE key = ?", (TOKEN_KEY,))
        src_max = {
            t: conn.execute(f"SELECT coalesce(max({c}), 0) FROM src.{t}").fetchone()[0]
            for t, c in APPEND_TABLES.items()
        }
        (chunk_rowid,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM src.sample_chunks").fetchone()
        (dest_rowid,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM main.sample_chunks").fetchone()
        last = {  # the newest chunk of each series (one pass, over the index when there is one)
            sid: (rowid, n)
            for sid, rowid, n in conn.execute(
                "SELECT g.sid, c.rowid, c.n FROM (SELECT series_id AS sid, max(rowid) AS r FROM src.sample_chunks"
                " GROUP BY series_id) g JOIN src.sample_chunks c ON c.rowid = g.r"
            )
        }
        (samples,) = conn.execute("SELECT coalesce(sum(n), 0) FROM main.sample_chunks").fetchone()
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()
    return _State(token, src_max, chunk_rowid, dest_rowid, index, 0, last), samples, rows


def copy_database(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, timeout: float = 30.0) -> Path:
    """A complete copy of ``src`` at ``dest`` (folders created; ``<dest>.tmp`` then rename); returns ``dest``.

    With every index of the schema and SQLite's default page size: what a requeued job
    continues from. A hot journal beside ``src`` (a copy killed mid-way) is rolled back first."""
    dest_path = Path(dest)
    recover(src, timeout=timeout)
    _replace_with_copy(src, dest_path, "", page_size=4096, index=True, timeout=timeout)
    return dest_path


def _tmp_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".tmp")


def _replace_with_copy(
    src: str | os.PathLike[str],
    dest: Path,
    token: str,
    *,
    page_size: int,
    index: bool,
    timeout: float,
    before_replace: Callable[[], None] | None = None,
    sync_dir: bool = False,
) -> tuple[_State, int, int]:
    """A complete copy of ``src`` built in ``<dest>.tmp`` and renamed over ``dest`` (folders
    created; no ``.tmp`` left on failure). Returns what :func:`_build` returns."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_of(dest)
    _remove_quietly(tmp, Path(f"{tmp}-journal"))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, schema.DB_FILE_MODE))  # as the node database
        built = _build(os.fspath(src), str(tmp), token, page_size=page_size, index=index, timeout=timeout)
        _fsync(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, dest)
        if sync_dir:
            _fsync_dir(dest.parent)
    except BaseException:
        _remove_quietly(tmp, Path(f"{tmp}-journal"))
        raise
    return built


# -- small helpers --------------------------------------------------------------------------------
def _remove_quietly(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("aetherium-hpc: cannot remove %s: %s", p, exc)


def _fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aetherium_hpc.store.backup SRC DEST``: a complete copy of SRC at DEST."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0].startswith("-"):
        print("usage: python -m aetherium_hpc.store.backup SRC.db DEST.db", file=sys.stderr)
        return 2
    try:
        copy_database(args[0], args[1])
    except (OSError, sqlite3.Error, StoreError) as exc:
        print(f"aetherium-hpc: error: copying {args[0]} to {args[1]} failed: {exc}", file=sys.stderr)
        return 1
    print(f"aetherium-hpc: copied {args[0]} to {args[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
