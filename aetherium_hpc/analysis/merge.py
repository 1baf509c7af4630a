"""Merge many aetherium-hpc databases (one per task and node) into one of the same schema.

Rules (also in docs/REPORT.md):

* **Inputs** are database files or folders (searched recursively for ``*.db``). They are
  opened read-only (``file:...?mode=ro``) and never changed. The output itself is never
  read as an input, so ``merge runs/x -o runs/x/merged.db`` can be run again.
* **Same schema**: the output is created with :func:`..store.schema.create`, so it answers
  the same views and can itself be merged again.
* **Provenance**: every ``sources`` row of an input gets a new ``source_id`` in the output,
  ``source_path`` set to the input file; series, chunks and rows follow with new ids.
* **Idempotent**: a source is identified by ``(job_id, array_job_id, array_task_id, node,
  hostname, attempt, first timestamp)`` and fingerprinted by a hash of that identity, its job
  status row and the counts and last timestamps of its series, chunks and rows. A source
  whose fingerprint is already in the output adds nothing. A source with the same identity but
  a different fingerprint is a newer or older copy of the same database (a checkpoint copy,
  or a merge taken while the job was running): the copy with the later last timestamp (then
  more rows) is kept, the other dropped, so merging again after a job finished updates it.
* **Requeue**: each attempt of a requeued job is a source of its own (``attempt`` is Slurm's
  SLURM_RESTART_COUNT). The same ``(job_id, array_task_id, node)`` with another ``attempt`` is
  another identity, so every attempt is kept once, tagged by its ``attempt`` in ``sources``.
* **Broken inputs** (not SQLite, truncated or corrupt -- ``PRAGMA quick_check`` of every table but
  the chunks, which the copy reads whole: a malformed page there fails it --, foreign
  ``application_id``, another schema version, missing tables) are skipped with a one-line
  reason; the rest is merged and :attr:`MergeResult.exit_code` is 3.
* **Fast**: each input is ATTACHed to the output connection and copied with
  ``INSERT ... SELECT`` and id offsets; up to :data:`INPUTS_PER_COMMIT` inputs share one
  transaction, each in a savepoint of its own (one that fails while copying is rolled back alone).
* **One at a time**: a merge holds ``<output>.lock`` (``flock``) from before it reads the output
  until it is done, so a second merge into the same file waits (at most :data:`LOCK_TIMEOUT_S`,
  then one line and exit 2) and then finds every source present: two merges at once give the
  result of one.
* **Unfinished jobs**: a ``jobs`` row still saying ``running`` after all inputs are in is checked
  (:mod:`.final_status`: sacct once for all Slurm jobs, else squeue; the process of a local job).
  A job that has ended gets Slurm's state (``out_of_memory``, ``node_fail``, ``cancelled`` ...) or
  ``lost`` in its row, ``detail`` saying it was resolved after the fact and from what; table
  ``jobs_resolved`` keeps what the row said before, and the fingerprint uses that, so merging the
  same inputs again adds nothing, while a copy in which the job wrote its own final status
  replaces the resolved one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import AetheriumError, SchemaError, StoreError
from ..paths import RunLayout
from ..scheduler import SLURM_TIMEOUT_S as SACCT_TIMEOUT_S
from ..store import check_path, chunks, reader, schema
from ..store.backup import readable

#: Exit code of ``aetherium-hpc merge`` when one or more inputs were skipped.
SKIPPED_EXIT_CODE = 3
#: Tables every input must have.
REQUIRED_TABLES = (
    "sources", "series", "sample_chunks", "generation_rows", "training_rows", "job_rows", "store_stats",
)  # fmt: skip
#: Inputs attached together and copied in one transaction, each in its own savepoint: one commit
#: (two fsyncs) per input was most of a merge's time. SQLite attaches at most 10 databases.
INPUTS_PER_COMMIT = 8
#: Tables that ``check_input`` leaves to the copy (it reads every page of them): see there.
COPY_CHECKED_TABLES = ("sample_chunks",)
#: Table of a merged database: what a ``jobs`` row said before merge resolved its status after
#: the fact (the job ended without writing one), and from what (sacct, squeue, process).
RESOLVED_TABLE = "jobs_resolved"
#: An index of the output that a merge of many inputs drops while it copies and builds once at
#: the end: each input's series would otherwise land all over it (one page per metric name
#: rewritten and journaled per input, more as the output grows). A merge killed before the end
#: leaves it missing; the next open of the output (merge, or :func:`open_output`) builds it.
DEFERRED_INDEX = "series_by_name"
#: From this many inputs on, the merge defers :data:`DEFERRED_INDEX`.
DEFER_INDEX_MIN_INPUTS = 20
#: More inputs than this, and stderr a terminal: a progress line.
PROGRESS_MIN_INPUTS = 10
#: Seconds a merge waits for another merge into the same output before it gives up (exit 2).
LOCK_TIMEOUT_S = 600.0
#: Poll interval while waiting for that lock.
_LOCK_POLL_S = 0.1

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)


class MergeInputError(AetheriumError):
    """An input path of ``merge`` does not exist or holds no database."""


@dataclass(frozen=True)
class Skipped:
    """An input that was not merged, and why (one line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class MergeResult:
    """What :func:`merge` did."""

    output: str
    inputs: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # inputs that added or replaced a source
    unchanged: list[str] = field(default_factory=list)  # inputs whose sources were all present already
    skipped: list[Skipped] = field(default_factory=list)
    sources_added: int = 0
    sources_present: int = 0  # same fingerprint already in the output
    sources_replaced: int = 0  # an older copy of the same source was dropped for this one
    sources_outdated: int = 0  # this input held an older copy than the output: not copied
    resolved: list[str] = field(default_factory=list)  # "<task>: running -> <status> (<how>)" per job resolved now
    still_running: int = 0  # jobs rows saying running whose job really still runs
    status_unknown: int = 0  # jobs rows saying running that could not be checked from here
    status_pending: int = 0  # ended, but accounting has not the details yet: not stored, merge again later
    missing: list[str] = field(default_factory=list)  # "<task>: no database; <what Slurm says>" per task
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return SKIPPED_EXIT_CODE if self.skipped else 0

    def summary(self) -> str:
        n_ok = len(self.inputs) - len(self.skipped)
        line = (
            f"merged {n_ok} of {len(self.inputs)} inputs into {self.output} in {self.seconds:.2f} s: "
            f"{self.sources_added} sources added, {self.sources_present} already present"
        )
        if self.sources_replaced:
            line += f", {self.sources_replaced} replaced by a newer copy"
        if self.sources_outdated:
            line += f", {self.sources_outdated} older copies ignored"
        if self.resolved:
            line += f", {len(self.resolved)} ended without a status (resolved after the fact)"
        if self.still_running:
            line += f", {self.still_running} still running"
        if self.status_unknown:
            line += f", {self.status_unknown} with a status that cannot be checked from here"
        if self.status_pending:
            line += f", {self.status_pending} ended but not in Slurm accounting yet (merge again later)"
        if self.missing:
            line += f"; {len(self.missing)} submitted task(s) left no database"
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (exit code {SKIPPED_EXIT_CODE})"
        return "\n".join([*(f"status of {r}" for r in self.resolved), *(f"task {m}" for m in self.missing), line])


@dataclass
class _Facts:
    """Identity and fingerprint of one source of one database."""

    identity: tuple[Any, ...]
    fingerprint: str
    rank: tuple[float, int, int]  # (last timestamp, rows, final status written): the larger is the newer copy


# -- inputs -----------------------------------------------------------------------------------
def collect_inputs(inputs: Iterable[PathLike], output: PathLike | None = None) -> list[str]:
    """Files named, and ``*.db`` files under folders named, in order, without the output or repeats."""
    out_real = os.path.realpath(output) if output is not None else None
    seen: set[str] = set()
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and RunLayout.is_run_dir(p):
            # A run directory: its task databases only, never its own merged.db (or other outputs).
            found = sorted(str(f) for f in RunLayout(p).databases())
            if not found:
                raise MergeInputError(f"{p}: run directory without databases under db/ yet; has its job started?")
        elif p.is_dir():
            found = sorted(str(f) for f in p.rglob("*.db") if f.is_file())
            if not found:
                raise MergeInputError(f"{p}: folder holds no *.db file; pass a run directory or database files")
        elif p.exists():
            found = [str(p)]
        else:
            raise MergeInputError(f"{p}: no such file or folder; pass database files or run directories")
        for f in found:
            real = os.path.realpath(f)
            if real == out_real or real in seen:
                continue
            seen.add(real)
            files.append(os.path.abspath(f))
    return files


def _header_truncation(path: str) -> str | None:
    """Why the file is shorter than its header says (a copy cut short), else None.

    The header's page count is trusted only when it is current (its "version-valid-for" number
    equals the change counter) and no write-ahead log holds later pages."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
        size = os.path.getsize(path)
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    except OSError:
        return None
    if len(header) < 100 or wal:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] != header[92:96] or not pages:
        return None
    if size < pages * page_size:
        return f"truncated: the header says {pages} pages of {page_size} bytes, the file has {size} bytes"
    return None


def check_input(path: str) -> str | None:
    """None if ``path`` is a readable, intact aetherium-hpc database of this schema, else why not.

    ``PRAGMA quick_check`` runs on every table but the chunk tables (:data:`COPY_CHECKED_TABLES`),
    nearly all of a file: the copy reads every page of those, and a page SQLite finds malformed
    fails the copy, which rolls back and skips the input. A file shorter than its header says is
    refused here."""
    try:
        conn = sqlite3.connect(reader.uri(path), uri=True)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        return _check_attached(conn, "main", path)
    finally:
        conn.close()


def _check_attached(conn: sqlite3.Connection, db: str, path: str) -> str | None:
    """:func:`check_input` of the database ``path`` open on ``conn`` as schema ``db``."""
    try:
        if not schema.check_version(conn, path, db):
            return f"empty ({os.path.getsize(path)} bytes), not an aetherium-hpc database"
        cut = _header_truncation(path)
        if cut is not None:
            return "corrupt or " + cut
        names = {r[0] for r in conn.execute(f"SELECT name FROM {db}.sqlite_master WHERE type = 'table'")}
        for table in ["sqlite_master", *sorted(names - set(COPY_CHECKED_TABLES))]:
            status = [r[0] for r in conn.execute("SELECT * FROM pragma_quick_check(?, ?)", (table, db))][:3]
            if status != ["ok"]:
                return "corrupt or truncated: PRAGMA quick_check says " + "; ".join(str(s) for s in status)
        missing = [t for t in REQUIRED_TABLES if t not in names]
        if missing:
            return f"tables {', '.join(missing)} missing; not a complete aetherium-hpc database"
    except SchemaError as exc:
        text = str(exc)
        return text[len(path) + 2 :] if text.startswith(path + ": ") else text
    except sqlite3.DatabaseError as exc:
        return f"unreadable ({exc})"
    return None


# -- output -----------------------------------------------------------------------------------
def _check_folder(out: str) -> None:
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise StoreError(f"{out}: folder {folder} does not exist; create it or choose another -o path")


def _try_lock(fd: int) -> bool | str:
    """True: locked; False: another process holds it; a text: this file system cannot lock (why)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        why = exc.strerror or str(exc)
    try:  # flock unsupported (some Lustre / NFS mounts): POSIX record locks
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        return f"flock: {why}; lockf: {exc.strerror or exc}"


@contextmanager
def output_lock(output: PathLike, timeout: float | None = None, notify: TextIO | None = None) -> Iterator[str]:
    """Hold ``<output>.lock`` exclusively (``flock``) while the body runs; yields the lock's path.

    A second merge into the same output waits here, at most ``timeout`` seconds
    (:data:`LOCK_TIMEOUT_S`), writing one line to ``notify`` when it starts waiting; then it
    raises :class:`~..errors.StoreError`. The lock file stays (removing it would let a waiting
    merge and a new one both lock different files of the same name)."""
    out = os.path.abspath(os.fspath(output))
    lock = out + ".lock"
    limit = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except PermissionError:
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(
                f"{out}: cannot open the merge lock {lock} ({exc.strerror}); merge into another -o file"
            ) from None
    except OSError as exc:
        raise StoreError(
            f"{out}: cannot create the merge lock {lock} ({exc.strerror}); merge into another -o file"
        ) from None
    try:
        deadline = time.monotonic() + limit
        waiting = False
        while True:
            got = _try_lock(fd)
            if got is True:
                break
            if isinstance(got, str):
                log.warning(
                    "aetherium-hpc merge: cannot lock %s (%s); do not run two merges into %s at once", lock, got, out
                )
                break
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{out}: another merge into this file still runs after {limit:.0f} s of waiting (lock {lock}); "
                    "wait until it ends, or merge into another -o file"
                )
            if not waiting and notify is not None:
                notify.write(f"aetherium-hpc merge: waiting for another merge into {out} to finish\n")
                notify.flush()
            waiting = True
            time.sleep(_LOCK_POLL_S)
        yield lock
    finally:
        os.close(fd)  # releases the lock


def open_output(output: PathLike) -> sqlite3.Connection:
    """Open (creating if new) the output database, read-write, URI filenames enabled for ATTACH."""
    out = os.path.abspath(os.fspath(output))
    _check_folder(out)
    check_path(out)  # a regular file or a new path; not a link another user planted
    try:  # a new output gets the mode of every database aetherium-hpc writes: 0640 (docs/SECURITY.md)
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, schema.DB_FILE_MODE))
    except FileExistsError:
        pass
    uri = reader.uri(out, "rwc")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        exists = schema.check_version(conn, out)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        if not exists:
            schema.create(conn)
        else:  # an index a merge killed half-way had dropped (see DEFERRED_INDEX)
            schema.create_indexes(conn)
    except BaseException:
        conn.close()
        raise
    return conn


# -- fingerprints -----------------------------------------------------------------------------
def _source_facts(conn: sqlite3.Connection, db: str) -> dict[int, _Facts]:
    """Identity, fingerprint and rank of every source of the database attached as ``db``."""
    rows: dict[int, dict[str, Any]] = {}
    for sid, job, ajob, task, node, host, attempt in conn.execute(
        f"SELECT source_id, job_id, array_job_id, array_task_id, node, hostname, attempt FROM {db}.sources"
    ):
        rows[sid] = {"who": [job, ajob, task, node, host, attempt], "first": [], "last": [], "n": {}}

    def add(sql: str, what: str) -> None:
        for sid, n, first, last in conn.execute(sql):
            r = rows.get(sid)
            if r is None:
                continue
            r["n"][what] = r["n"].get(what, 0) + n
            if first is not None:
                r["first"].append(first)
            if last is not None:
                r["last"].append(last)

    add(f"SELECT source_id, count(*), NULL, NULL FROM {db}.series GROUP BY source_id", "series")
    # Index-only: chunks per source and their first / last start.
    add(
        f"SELECT s.source_id, count(*), min(c.t0), max(c.t0) FROM {db}.series s"
        f" JOIN {db}.sample_chunks c ON c.series_id = s.series_id GROUP BY s.source_id",
        "chunks",
    )
    # The last chunk of a series grows in place while a job runs: its n and t1. Chunks are
    # appended, so a series' last one has its highest rowid (one pass; a run directory's copy
    # has no index on series_id).
    add(
        f"SELECT s.source_id, sum(c.n), NULL, max(c.t1) FROM {db}.series s JOIN"
        f" (SELECT series_id, max(rowid) AS last FROM {db}.sample_chunks GROUP BY series_id) l"
        f" ON l.series_id = s.series_id JOIN {db}.sample_chunks c ON c.rowid = l.last GROUP BY s.source_id",
        "last_chunk_samples",
    )
    for table in ("generation_rows", "training_rows"):
        add(f"SELECT source_id, count(*), min(timestamp), max(timestamp) FROM {db}.{table} GROUP BY source_id", table)
    # What the job itself wrote: a status resolved after the fact by an earlier merge is not part
    # of the fingerprint (its jobs_resolved row keeps what the database said).
    if _has_table(conn, db, RESOLVED_TABLE):
        sql = (
            f"SELECT j.source_id, coalesce(r.recorded_status, j.status),"
            f" CASE WHEN r.source_id IS NULL THEN j.exit_code ELSE r.recorded_exit_code END, j.start_time,"
            f" CASE WHEN r.source_id IS NULL THEN j.end_time ELSE r.recorded_end_time END"
            f" FROM {db}.job_rows j LEFT JOIN {db}.{RESOLVED_TABLE} r ON r.source_id = j.source_id"
        )
    else:
        sql = f"SELECT source_id, status, exit_code, start_time, end_time FROM {db}.job_rows"
    jobs = {r[0]: list(r[1:]) for r in conn.execute(sql)}
    out: dict[int, _Facts] = {}
    for sid, r in rows.items():
        first = min(r["first"]) if r["first"] else None
        last = max(r["last"]) if r["last"] else None
        identity = (*r["who"], first)
        content = [list(identity), sorted(r["n"].items()), last, jobs.get(sid)]
        digest = hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:32]
        job = jobs.get(sid)
        ended = int(job is not None and job[0] != "running")
        out[sid] = _Facts(identity, digest, (last if last is not None else float("-inf"), sum(r["n"].values()), ended))
    return out


def _has_table(conn: sqlite3.Connection, db: str, name: str) -> bool:
    return (
        conn.execute(f"SELECT 1 FROM {db}.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        is not None
    )


def _ensure_resolved_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS main.{RESOLVED_TABLE} (source_id INTEGER PRIMARY KEY REFERENCES sources(source_id),"
        " recorded_status TEXT, recorded_exit_code INTEGER, recorded_end_time REAL, recorded_detail TEXT,"
        " resolved_from TEXT NOT NULL, resolved_at REAL NOT NULL)"
    )


# -- one input --------------------------------------------------------------------------------
_SOURCE_COLS = "job_id, array_job_id, array_task_id, node, hostname"
_SERIES_COLS = "metric_type, metric_name, unit, node, device"
_CHUNK_COLS = ", ".join(chunks.COLUMNS)
_GEN_COLS = "timestamp, operation, round_number, chunk_number, duration_seconds, samples_generated, memory_used_mb, pid"
_TRN_COLS = "timestamp, metric_name, metric_value, round_number, epoch_number, phase"
_JOB_COLS = "start_time, end_time, status, exit_code, config, requested, detail, user_name"  # identity: in sources


def _delete_source(conn: sqlite3.Connection, sid: int) -> None:
    series = "(SELECT series_id FROM main.series WHERE source_id = ?)"
    conn.execute(f"DELETE FROM main.sample_chunks WHERE series_id IN {series}", (sid,))
    resolved = (RESOLVED_TABLE,) if _has_table(conn, "main", RESOLVED_TABLE) else ()
    for table in ("series", "generation_rows", "training_rows", "job_rows", *resolved, "store_stats", "sources"):
        conn.execute(f"DELETE FROM main.{table} WHERE source_id = ?", (sid,))


def _copy(conn: sqlite3.Connection, path: str, take: list[int], all_taken: bool, src: str = "src") -> None:
    """Copy the sources ``take`` of the database attached as ``src`` into main (inside the caller's transaction)."""
    (src_off,) = conn.execute("SELECT coalesce(max(source_id), 0) FROM main.sources").fetchone()
    (ser_off,) = conn.execute("SELECT coalesce(max(series_id), 0) FROM main.series").fetchone()
    conn.execute("DELETE FROM temp.srcmap")
    conn.executemany("INSERT INTO temp.srcmap(old, new) VALUES (?, ?)", [(s, s + src_off) for s in take])
    conn.execute(
        f"INSERT INTO main.sources(source_id, {_SOURCE_COLS}, source_path, attempt)"
        f" SELECT m.new, {_cols('s', _SOURCE_COLS)}, ?, s.attempt FROM {src}.sources s JOIN temp.srcmap m ON m.old = s.source_id",
        (path,),
    )
    conn.execute(
        f"INSERT INTO main.series(series_id, source_id, {_SERIES_COLS})"
        f" SELECT s.series_id + ?, m.new, {_cols('s', _SERIES_COLS)} FROM {src}.series s"
        " JOIN temp.srcmap m ON m.old = s.source_id",
        (ser_off,),
    )
    where = "" if all_taken else (
        f" WHERE c.series_id IN (SELECT series_id FROM {src}.series WHERE source_id IN (SELECT old FROM temp.srcmap))"
    )  # fmt: skip
    conn.execute(
        f"INSERT INTO main.sample_chunks(series_id, {_CHUNK_COLS})"
        f" SELECT c.series_id + ?, {_cols('c', _CHUNK_COLS)} FROM {src}.sample_chunks c{where}",
        (ser_off,),
    )
    for table, cols in (("generation_rows", _GEN_COLS), ("training_rows", _TRN_COLS), ("job_rows", _JOB_COLS)):
        conn.execute(
            f"INSERT INTO main.{table}(source_id, {cols})"
            f" SELECT m.new, {_cols('g', cols)} FROM {src}.{table} g JOIN temp.srcmap m ON m.old = g.source_id"
        )
    conn.execute(
        "INSERT INTO main.store_stats(source_id, name, value)"
        f" SELECT m.new, g.name, g.value FROM {src}.store_stats g JOIN temp.srcmap m ON m.old = g.source_id"
    )
    if _has_table(conn, src, RESOLVED_TABLE):  # a merged input: keep what its jobs said before resolution
        _ensure_resolved_table(conn)
        cols = "recorded_status, recorded_exit_code, recorded_end_time, recorded_detail, resolved_from, resolved_at"
        conn.execute(
            f"INSERT INTO main.{RESOLVED_TABLE}(source_id, {cols}) SELECT m.new, {_cols('r', cols)}"
            f" FROM {src}.{RESOLVED_TABLE} r JOIN temp.srcmap m ON m.old = r.source_id"
        )


def _cols(alias: str, cols: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in cols.split(","))


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total = total
        self.stream = stream
        self.started = time.perf_counter()

    def update(self, done: int, name: str) -> None:
        if self.stream is None:
            return
        width = 30
        filled = width * done // max(self.total, 1)
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.stream.write(
            f"\rmerging [{'#' * filled}{' ' * (width - filled)}] {done}/{self.total} "
            f"{rate:5.1f}/s {os.path.basename(name)[:30]:<30}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self.stream = None


def _progress_stream(n_inputs: int, progress: bool | None) -> TextIO | None:
    if progress is None:
        progress = n_inputs > PROGRESS_MIN_INPUTS and sys.stderr.isatty()
    return sys.stderr if progress else None


# -- merge ------------------------------------------------------------------------------------
def merge(
    inputs: Sequence[PathLike],
    output: PathLike,
    *,
    progress: bool | None = None,
    lock_timeout: float | None = None,
    resolve_timeout: float = SACCT_TIMEOUT_S,
) -> MergeResult:
    """Merge the databases ``inputs`` (files or folders) into ``output``; see the module docstring.

    Raises :class:`MergeInputError` for a path that does not exist and :class:`SchemaError`
    when ``output`` exists and is not an aetherium-hpc database of this schema; a broken
    *input* is skipped and listed in :attr:`MergeResult.skipped`. Waits up to ``lock_timeout``
    seconds (:data:`LOCK_TIMEOUT_S`) for another merge into ``output``, then raises
    :class:`StoreError`; ``resolve_timeout`` bounds each Slurm query about unfinished jobs.
    """
    started = time.perf_counter()
    files = collect_inputs(inputs, output)
    if not files:
        raise MergeInputError("no input databases: pass database files or run directories (the output is not an input)")
    result = MergeResult(output=os.path.abspath(os.fspath(output)), inputs=files)
    _check_folder(result.output)
    # One merge at a time per output: the idempotency check and the copies must see each other.
    with output_lock(result.output, lock_timeout, notify=sys.stderr):
        _merge_locked(files, result, progress, resolve_timeout)
    result.seconds = time.perf_counter() - started
    return result


def _merge_locked(files: list[str], result: MergeResult, progress: bool | None, resolve_timeout: float) -> None:
    conn = open_output(result.output)
    bar = _Progress(len(files), _progress_stream(len(files), progress))
    try:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS srcmap(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
        facts = _source_facts(conn, "main")
        by_fp = {f.fingerprint: sid for sid, f in facts.items()}
        by_id: dict[tuple[Any, ...], tuple[int, _Facts]] = {f.identity: (sid, f) for sid, f in facts.items()}
        deferred = len(files) >= DEFER_INDEX_MIN_INPUTS
        if deferred:
            conn.execute(f"DROP INDEX IF EXISTS main.{DEFERRED_INDEX}")
        try:
            for i in range(0, len(files), INPUTS_PER_COMMIT):
                group = files[i : i + INPUTS_PER_COMMIT]
                _merge_group(conn, group, result, by_fp, by_id)
                bar.update(i + len(group), group[-1])
        finally:
            if deferred:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    schema.create_indexes(conn)
                except sqlite3.Error as exc:  # (the error that stopped the merge, if any, is the news)
                    log.warning(
                        "aetherium-hpc merge: index %s not rebuilt (%s); the next merge builds it", DEFERRED_INDEX, exc
                    )
        bar.close()
        _resolve_unfinished(conn, result, resolve_timeout)
        _name_tasks_without_database(conn, result, resolve_timeout)
    finally:
        bar.close()
        conn.close()


def _attach(conn: sqlite3.Connection, readable: str, alias: str) -> str | None:
    """ATTACH ``readable`` read-only as ``alias`` (SQLite reads its schema); why not, if it cannot."""
    try:
        conn.execute(f"ATTACH DATABASE ? AS {alias}", (reader.uri(readable),))
    except sqlite3.Error as exc:  # the words of schema.check_version
        if "locked" in str(exc):
            return f"locked by another process ({exc}); wait until it ends, or work on a copy"
        return f"not a readable SQLite database ({exc}); pass an aetherium-hpc .db file"
    return None


def _merge_group(
    conn: sqlite3.Connection,
    group: list[str],
    result: MergeResult,
    by_fp: dict[str, int],
    by_id: dict[tuple[Any, ...], tuple[int, _Facts]],
) -> None:
    """Merge up to :data:`INPUTS_PER_COMMIT` inputs: attach and check each, then copy them in one
    transaction, each input in a savepoint of its own (an input that fails while copying is
    rolled back alone and skipped), one commit for the group."""
    with ExitStack() as stack:
        ready: list[tuple[str, str]] = []  # (input path, alias)
        attached: list[str] = []
        try:
            for k, path in enumerate(group):
                read_from = stack.enter_context(readable(path, prefix="aeth-merge-"))
                alias = f"src{k}"
                reason = _attach(conn, read_from, alias)
                if reason is None:
                    attached.append(alias)
                    reason = _check_attached(conn, alias, read_from)
                if reason is not None:
                    result.skipped.append(Skipped(path, reason))
                    continue
                ready.append((path, alias))
            if ready:
                _copy_group(conn, ready, result, by_fp, by_id)
        finally:
            for alias in attached:
                conn.execute(f"DETACH DATABASE {alias}")


def _copy_group(
    conn: sqlite3.Connection,
    ready: list[tuple[str, str]],
    result: MergeResult,
    by_fp: dict[str, int],
    by_id: dict[tuple[Any, ...], tuple[int, _Facts]],
) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        for path, alias in ready:
            conn.execute("SAVEPOINT input")
            try:
                _merge_one(conn, path, result, by_fp, by_id, alias)
            except Exception as exc:  # this input's data or file: it alone is rolled back and skipped
                if not conn.in_transaction:  # SQLite rolled the whole group back (disk full, I/O error)
                    raise
                conn.execute("ROLLBACK TO input")
                conn.execute("RELEASE input")
                if isinstance(exc, sqlite3.DatabaseError) and "locked" in str(exc):
                    raise _output_locked(result, exc) from exc  # (the input was readable: checked)
                why = (
                    f"unreadable while copying ({exc})"
                    if isinstance(exc, sqlite3.DatabaseError)
                    else f"bad data ({type(exc).__name__}: {exc}); check its rows with the sqlite3 shell"
                )
                result.skipped.append(Skipped(path, why))
                continue
            conn.execute("RELEASE input")
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.DatabaseError) and "locked" in str(exc):
            raise _output_locked(result, exc) from exc
        raise


def _output_locked(result: MergeResult, exc: BaseException) -> StoreError:
    return StoreError(
        f"{result.output}: locked by another process ({exc}); wait until it ends, or merge into another -o file"
    )


def _resolve_unfinished(conn: sqlite3.Connection, result: MergeResult, timeout: float) -> None:
    """Jobs rows of the output that still say ``running``: ask what became of the job
    (:mod:`.final_status`); store a final answer in the row, what it said before in
    :data:`RESOLVED_TABLE`."""
    from .final_status import LATER_ATTEMPT, RUNNING, resolve_rows, run_record

    cur = conn.execute(
        "SELECT j.source_id, s.job_id, s.array_job_id, s.array_task_id, s.node, j.start_time, j.status, j.config,"
        " s.hostname, s.source_path, s.attempt,"
        " EXISTS (SELECT 1 FROM main.sources n WHERE n.job_id IS s.job_id AND n.array_job_id IS s.array_job_id"
        "   AND n.array_task_id IS s.array_task_id AND n.attempt > s.attempt) AS later"
        " FROM main.job_rows j JOIN main.sources s ON s.source_id = j.source_id WHERE j.status = ?",
        (RUNNING,),
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not rows:
        return
    cache: dict[str, dict[str, Any] | None] = {}
    found = resolve_rows(
        [(r["source_id"], r, run_record(r["source_path"], cache), r["hostname"]) for r in rows if not r["later"]],
        timeout=timeout,
    )
    for r in rows:
        if r["later"]:  # accounting speaks of the last attempt only
            found[r["source_id"]] = LATER_ATTEMPT
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    finals = []
    for r in rows:
        res = found.get(r["source_id"])
        if res is None or res.status == RUNNING:
            result.still_running += 1
        elif not res.final:
            result.status_unknown += 1
        elif not res.settled:
            result.status_pending += 1
        else:
            finals.append((r, res))
    if not finals:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _ensure_resolved_table(conn)
        for r, res in finals:
            sid = r["source_id"]
            conn.execute(
                f"INSERT OR REPLACE INTO main.{RESOLVED_TABLE}(source_id, recorded_status, recorded_exit_code,"
                " recorded_end_time, recorded_detail, resolved_from, resolved_at)"
                " SELECT source_id, status, exit_code, end_time, detail, ?, ? FROM main.job_rows WHERE source_id = ?",
                (res.how, now, sid),
            )
            conn.execute(
                "UPDATE main.job_rows SET status = ?, exit_code = coalesce(?, exit_code), end_time = coalesce(?, end_time),"
                " detail = ? WHERE source_id = ?",
                (res.status, res.exit_code, res.end_time, f"{res.detail} [merge, {stamp}]", sid),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    for r, res in finals:
        task = r["job_id"] if r["array_task_id"] is None else f"{r['array_job_id']}_{r['array_task_id']}"
        result.resolved.append(f"{task}/{r['node']}: running -> {res.status} ({res.detail})")


def _name_tasks_without_database(conn: sqlite3.Connection, result: MergeResult, timeout: float) -> None:
    """The tasks the runs of the output's sources submitted (their ``jobs.json``) that left no database."""
    from .final_status import run_record, task_name, tasks_without_database

    cache: dict[str, dict[str, Any] | None] = {}
    present, records = set(), {}
    for job, ajob, task, path in conn.execute(
        "SELECT job_id, array_job_id, array_task_id, source_path FROM main.sources"
    ):
        present.add(task_name(job, ajob, task))
        rec = run_record(path, cache)
        if rec is not None:
            records[id(rec)] = rec
    result.missing = [
        f"{m['task']}: {m['detail']}" for m in tasks_without_database(records.values(), present, None, timeout)
    ]


def _merge_one(
    conn: sqlite3.Connection,
    path: str,
    result: MergeResult,
    by_fp: dict[str, int],
    by_id: dict[tuple[Any, ...], tuple[int, _Facts]],
    alias: str,
) -> None:
    """Copy the sources of one checked input, attached as ``alias``, that the output lacks (inside the
    caller's transaction), and note them in ``by_fp`` / ``by_id`` for the inputs after it."""
    facts = _source_facts(conn, alias)
    take: list[int] = []
    replace: list[int] = []
    for sid, f in facts.items():
        if f.fingerprint in by_fp:
            result.sources_present += 1
            continue
        old = by_id.get(f.identity)
        if old is not None:
            if f.rank <= old[1].rank:
                result.sources_outdated += 1
                continue
            replace.append(old[0])
        take.append(sid)
    if not take:
        result.unchanged.append(path)
        return
    for old_sid in replace:
        _delete_source(conn, old_sid)
    _copy(conn, path, take, all_taken=len(take) == len(facts), src=alias)
    new_ids = dict(conn.execute("SELECT old, new FROM temp.srcmap"))
    for old_sid in replace:
        stale = [fp for fp, s in by_fp.items() if s == old_sid]
        for fp in stale:
            del by_fp[fp]
    for sid in take:
        f = facts[sid]
        by_fp[f.fingerprint] = new_ids[sid]
        by_id[f.identity] = (new_ids[sid], f)
    result.sources_added += len(take) - len(replace)
    result.sources_replaced += len(replace)
    result.merged.append(path)
    return None
