"""Merge many aetherium-hpc databases (one per task and node) into one of the same schema.

Rules (also in docs/REPORT.md):

* **Inputs** are database files or folders (searched recursively for ``*.db``). They are
  opened read-only (``file:...?mode=ro``) and never changed. The output itself is never
  read as an input, so ``merge runs/x -o runs/x/merged.db`` can be run again.
* **Same schema**: the output is created with :func:`..metrics.schema.create`, so it answers
  the same views and can itself be merged again.
* **Provenance**: every ``sources`` row of an input gets a new ``source_id`` in the output,
  ``source_path`` set to the input file; series, chunks and rows follow with new ids.
  Chunks of an ``open_chunks`` table (earlier writers) are stored in ``sample_chunks``.
* **Idempotent**: a source is identified by ``(job_id, array_job_id, array_task_id, node,
  hostname, attempt, first timestamp)`` and fingerprinted by a hash of that identity, its job
  status row and the counts and last timestamps of its series, chunks and rows. A source
  whose fingerprint is already in the output adds nothing. A source with the same identity but
  a different fingerprint is a newer or older copy of the same database (a checkpoint copy,
  or a merge taken while the job was running): the copy with the later last timestamp (then
  more rows) is kept, the other dropped, so merging again after a job finished updates it.
* **Requeue**: the writer increments ``attempt`` each time a database is reopened. The same
  ``(job_id, array_task_id, node)`` with another ``attempt`` is another identity, so every
  attempt is kept, each tagged by its ``attempt`` in ``sources``.
* **Broken inputs** (not SQLite, truncated or corrupt -- ``PRAGMA quick_check`` --, foreign
  ``application_id``, another schema version, missing tables) are skipped with a one-line
  reason; the rest is merged and :attr:`MergeResult.exit_code` is 3.
* **Fast**: each input is ATTACHed to the output connection and copied with
  ``INSERT ... SELECT`` and id offsets, one transaction per input.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from ..errors import AetheriumError, SchemaError, StoreError
from ..metrics import schema

#: Exit code of ``aetherium-hpc merge`` when one or more inputs were skipped.
SKIPPED_EXIT_CODE = 3
#: Tables every input must have.
REQUIRED_TABLES = (
    "sources", "series", "sample_chunks", "generation_rows", "training_rows", "jobs", "store_stats",
)  # fmt: skip
#: Tables of earlier writers of schema version 1 that are read when present: the chunk a
#: writer was still filling. They are copied into ``sample_chunks``.
OPTIONAL_CHUNK_TABLES = ("open_chunks",)
#: More inputs than this, and stderr a terminal: a progress line.
PROGRESS_MIN_INPUTS = 10

PathLike = str | os.PathLike[str]


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
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (exit code {SKIPPED_EXIT_CODE})"
        return line


@dataclass
class _Facts:
    """Identity and fingerprint of one source of one database."""

    identity: tuple[Any, ...]
    fingerprint: str
    rank: tuple[float, int]  # (last timestamp, rows): the larger is the newer copy


# -- inputs -----------------------------------------------------------------------------------
def collect_inputs(inputs: Iterable[PathLike], output: PathLike | None = None) -> list[str]:
    """Files named, and ``*.db`` files under folders named, in order, without the output or repeats."""
    out_real = os.path.realpath(output) if output is not None else None
    seen: set[str] = set()
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
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


def _ro_uri(path: str) -> str:
    return "file:" + quote(os.path.abspath(path), safe="/") + "?mode=ro"


def check_input(path: str) -> str | None:
    """None if ``path`` is a readable, intact aetherium-hpc database of this schema, else why not."""
    try:
        conn = sqlite3.connect(_ro_uri(path), uri=True)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        if not schema.check_version(conn, path):
            return f"empty ({os.path.getsize(path)} bytes), not an aetherium-hpc database"
        status = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if status != ["ok"]:
            return "corrupt or truncated: PRAGMA quick_check says " + "; ".join(str(s) for s in status)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in REQUIRED_TABLES if t not in names]
        if missing:
            return f"tables {', '.join(missing)} missing; not a complete aetherium-hpc database"
    except SchemaError as exc:
        text = str(exc)
        return text[len(path) + 2 :] if text.startswith(path + ": ") else text
    except sqlite3.DatabaseError as exc:
        return f"unreadable ({exc})"
    finally:
        conn.close()
    return None


# -- output -----------------------------------------------------------------------------------
def open_output(output: PathLike) -> sqlite3.Connection:
    """Open (creating if new) the output database, read-write, URI filenames enabled for ATTACH."""
    out = os.path.abspath(os.fspath(output))
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise StoreError(f"{out}: folder {folder} does not exist; create it or choose another -o path")
    uri = "file:" + quote(out, safe="/") + "?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        exists = schema.check_version(conn, out)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        if not exists:
            schema.create(conn)
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
    for chunks in _chunk_tables(conn, db):
        # Index-only: chunks per source and their first / last start.
        add(
            f"SELECT s.source_id, count(*), min(c.t0), max(c.t0) FROM {db}.series s"
            f" JOIN {db}.{chunks} c ON c.series_id = s.series_id GROUP BY s.source_id",
            "chunks",
        )
        # The last chunk of a series grows in place while a job runs: its n and t1, one lookup per series.
        add(
            f"SELECT s.source_id, sum(c.n), NULL, max(c.t1) FROM {db}.series s JOIN {db}.{chunks} c ON c.rowid ="
            f" (SELECT l.rowid FROM {db}.{chunks} l WHERE l.series_id = s.series_id ORDER BY l.t0 DESC LIMIT 1)"
            " GROUP BY s.source_id",
            "last_chunk_samples",
        )
    for table in ("generation_rows", "training_rows"):
        add(f"SELECT source_id, count(*), min(timestamp), max(timestamp) FROM {db}.{table} GROUP BY source_id", table)
    jobs = {
        r[0]: list(r[1:])
        for r in conn.execute(f"SELECT source_id, status, exit_code, start_time, end_time FROM {db}.jobs")
    }
    out: dict[int, _Facts] = {}
    for sid, r in rows.items():
        first = min(r["first"]) if r["first"] else None
        last = max(r["last"]) if r["last"] else None
        identity = (*r["who"], first)
        content = [list(identity), sorted(r["n"].items()), last, jobs.get(sid)]
        digest = hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:32]
        out[sid] = _Facts(identity, digest, (last if last is not None else float("-inf"), sum(r["n"].values())))
    return out


def _chunk_tables(conn: sqlite3.Connection, db: str) -> list[str]:
    names = {r[0] for r in conn.execute(f"SELECT name FROM {db}.sqlite_master WHERE type = 'table'")}
    return ["sample_chunks", *(t for t in OPTIONAL_CHUNK_TABLES if t in names)]


# -- one input --------------------------------------------------------------------------------
_SOURCE_COLS = "job_id, array_job_id, array_task_id, node, hostname"
_SERIES_COLS = "metric_type, metric_name, unit, node, device"
_CHUNK_COLS = "t0, t1, n, dt_ms, jit, vals"
_GEN_COLS = "timestamp, operation, round_number, chunk_number, duration_seconds, samples_generated, memory_used_mb, pid"
_TRN_COLS = "timestamp, metric_name, metric_value, round_number, epoch_number, phase"
_JOB_COLS = (
    "job_id, array_job_id, array_task_id, node, start_time, end_time, status, exit_code, config, requested, detail"
)


def _delete_source(conn: sqlite3.Connection, sid: int) -> None:
    series = "(SELECT series_id FROM main.series WHERE source_id = ?)"
    for chunks in _chunk_tables(conn, "main"):
        conn.execute(f"DELETE FROM main.{chunks} WHERE series_id IN {series}", (sid,))
    for table in ("series", "generation_rows", "training_rows", "jobs", "store_stats", "sources"):
        conn.execute(f"DELETE FROM main.{table} WHERE source_id = ?", (sid,))


def _copy(conn: sqlite3.Connection, path: str, take: list[int], all_taken: bool) -> None:
    """Copy the sources ``take`` of the attached ``src`` into main (inside the caller's transaction)."""
    (src_off,) = conn.execute("SELECT coalesce(max(source_id), 0) FROM main.sources").fetchone()
    (ser_off,) = conn.execute("SELECT coalesce(max(series_id), 0) FROM main.series").fetchone()
    conn.execute("DELETE FROM temp.srcmap")
    conn.executemany("INSERT INTO temp.srcmap(old, new) VALUES (?, ?)", [(s, s + src_off) for s in take])
    conn.execute(
        f"INSERT INTO main.sources(source_id, {_SOURCE_COLS}, source_path, attempt)"
        f" SELECT m.new, {_cols('s', _SOURCE_COLS)}, ?, s.attempt FROM src.sources s JOIN temp.srcmap m ON m.old = s.source_id",
        (path,),
    )
    conn.execute(
        f"INSERT INTO main.series(series_id, source_id, {_SERIES_COLS})"
        f" SELECT s.series_id + ?, m.new, {_cols('s', _SERIES_COLS)} FROM src.series s"
        " JOIN temp.srcmap m ON m.old = s.source_id",
        (ser_off,),
    )
    where = "" if all_taken else (
        " WHERE c.series_id IN (SELECT series_id FROM src.series WHERE source_id IN (SELECT old FROM temp.srcmap))"
    )  # fmt: skip
    for chunks in _chunk_tables(conn, "src"):
        conn.execute(
            f"INSERT INTO main.sample_chunks(series_id, {_CHUNK_COLS})"
            f" SELECT c.series_id + ?, {_cols('c', _CHUNK_COLS)} FROM src.{chunks} c{where}",
            (ser_off,),
        )
    for table, cols in (("generation_rows", _GEN_COLS), ("training_rows", _TRN_COLS), ("jobs", _JOB_COLS)):
        conn.execute(
            f"INSERT INTO main.{table}(source_id, {cols})"
            f" SELECT m.new, {_cols('g', cols)} FROM src.{table} g JOIN temp.srcmap m ON m.old = g.source_id"
        )
    conn.execute(
        "INSERT INTO main.store_stats(source_id, name, value)"
        " SELECT m.new, g.name, g.value FROM src.store_stats g JOIN temp.srcmap m ON m.old = g.source_id"
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


def _progress_stream(n_inputs: int, progress: bool | None) -> TextIO | None:
    if progress is None:
        progress = n_inputs > PROGRESS_MIN_INPUTS and sys.stderr.isatty()
    return sys.stderr if progress else None


# -- merge ------------------------------------------------------------------------------------
def merge(inputs: Sequence[PathLike], output: PathLike, *, progress: bool | None = None) -> MergeResult:
    """Merge the databases ``inputs`` (files or folders) into ``output``; see the module docstring.

    Raises :class:`MergeInputError` for a path that does not exist and :class:`SchemaError`
    when ``output`` exists and is not an aetherium-hpc database of this schema; a broken
    *input* is skipped and listed in :attr:`MergeResult.skipped`.
    """
    started = time.perf_counter()
    files = collect_inputs(inputs, output)
    if not files:
        raise MergeInputError("no input databases: pass database files or run directories (the output is not an input)")
    result = MergeResult(output=os.path.abspath(os.fspath(output)), inputs=files)
    conn = open_output(output)
    bar = _Progress(len(files), _progress_stream(len(files), progress))
    try:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS srcmap(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
        facts = _source_facts(conn, "main")
        by_fp = {f.fingerprint: sid for sid, f in facts.items()}
        by_id: dict[tuple[Any, ...], tuple[int, _Facts]] = {f.identity: (sid, f) for sid, f in facts.items()}
        for i, path in enumerate(files):
            reason = check_input(path)
            if reason is None:
                try:
                    reason = _merge_one(conn, path, result, by_fp, by_id)
                except sqlite3.DatabaseError as exc:
                    if "locked" in str(exc):  # the input was readable (check_input): the output is locked
                        raise StoreError(
                            f"{result.output}: locked by another process ({exc}); wait until it ends, "
                            "or merge into another -o file"
                        ) from exc
                    reason = f"unreadable while copying ({exc})"
            if reason is not None:
                result.skipped.append(Skipped(path, reason))
            bar.update(i + 1, path)
    finally:
        bar.close()
        conn.close()
    result.seconds = time.perf_counter() - started
    return result


def _merge_one(
    conn: sqlite3.Connection,
    path: str,
    result: MergeResult,
    by_fp: dict[str, int],
    by_id: dict[tuple[Any, ...], tuple[int, _Facts]],
) -> str | None:
    """Merge one checked input; returns a reason if it had to be skipped after all."""
    conn.execute("ATTACH DATABASE ? AS src", (_ro_uri(path),))
    try:
        facts = _source_facts(conn, "src")
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
            return None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for old_sid in replace:
                _delete_source(conn, old_sid)
            _copy(conn, path, take, all_taken=len(take) == len(facts))
            new_ids = dict(conn.execute("SELECT old, new FROM temp.srcmap"))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE src")
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
