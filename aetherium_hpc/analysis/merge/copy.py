"""Copying inputs into the output: a group of inputs attached and checked, then copied in one
transaction, each input in a savepoint of its own, only the sources the output lacks.

Columns are named from :data:`...store.schema.COLUMNS`; ids are renumbered by offsets
(``temp.srcmap`` maps an input's source ids to the output's).
"""

from __future__ import annotations

import sqlite3
from contextlib import ExitStack

from ...errors import StoreError
from ...store import schema
from ...store.backup import readable
from .fingerprint import Present, source_facts
from .inputs import attach, check_attached
from .result import MergeResult, Skipped
from .unfinished import RESOLVED_COLUMNS, RESOLVED_TABLE, ensure_resolved_table, has_resolved

#: Inputs attached together and copied in one transaction, each in its own savepoint: one commit
#: (two fsyncs) per input was most of a merge's time. SQLite attaches at most 10 databases.
INPUTS_PER_COMMIT = 8
#: The tables of rows that belong to a source (copied with their ``source_id`` renumbered).
ROW_TABLES = ("generation_rows", "training_rows", "job_rows", "store_stats")


def merge_group(conn: sqlite3.Connection, group: list[str], result: MergeResult, present: Present) -> None:
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
                reason = attach(conn, read_from, alias)
                if reason is None:
                    attached.append(alias)
                    reason = check_attached(conn, alias, read_from)
                if reason is not None:
                    result.skipped.append(Skipped(path, reason))
                    continue
                ready.append((path, alias))
            if ready:
                _copy_group(conn, ready, result, present)
        finally:
            for alias in attached:
                conn.execute(f"DETACH DATABASE {alias}")


def _copy_group(conn: sqlite3.Connection, ready: list[tuple[str, str]], result: MergeResult, present: Present) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        for path, alias in ready:
            conn.execute("SAVEPOINT input")
            try:
                _merge_one(conn, path, alias, result, present)
            except Exception as exc:  # this input's data or file: it alone is rolled back and skipped
                if not conn.in_transaction:  # SQLite rolled the whole group back (disk full, I/O error)
                    raise
                conn.execute("ROLLBACK TO input")
                conn.execute("RELEASE input")
                if _locked(exc):
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
        if _locked(exc):
            raise _output_locked(result, exc) from exc
        raise


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and "locked" in str(exc)


def _output_locked(result: MergeResult, exc: BaseException) -> StoreError:
    return StoreError(
        f"{result.output}: locked by another process ({exc}); wait until it ends, or merge into another -o file"
    )


def _merge_one(conn: sqlite3.Connection, path: str, alias: str, result: MergeResult, present: Present) -> None:
    """Copy the sources of one checked input, attached as ``alias``, that the output lacks (inside the
    caller's transaction), and note them in ``present`` for the inputs after it."""
    facts = source_facts(conn, alias)
    take: list[int] = []
    replace: list[int] = []
    for sid, f in facts.items():
        if f.fingerprint in present.by_fp:
            result.sources_present += 1
            continue
        old = present.by_id.get(f.identity)
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
        present.drop(old_sid)
    for sid in take:
        present.add(new_ids[sid], facts[sid])
    result.sources_added += len(take) - len(replace)
    result.sources_replaced += len(replace)
    result.merged.append(path)


def _delete_source(conn: sqlite3.Connection, sid: int) -> None:
    series = "(SELECT series_id FROM main.series WHERE source_id = ?)"
    conn.execute(f"DELETE FROM main.sample_chunks WHERE series_id IN {series}", (sid,))
    resolved = (RESOLVED_TABLE,) if has_resolved(conn, "main") else ()
    for table in ("series", *ROW_TABLES, *resolved, "sources"):
        conn.execute(f"DELETE FROM main.{table} WHERE source_id = ?", (sid,))


def _copy(conn: sqlite3.Connection, path: str, take: list[int], all_taken: bool, src: str) -> None:
    """Copy the sources ``take`` of the database attached as ``src`` into main (inside the caller's transaction).

    Each ``SELECT`` reads one table of ``src`` joined to ``temp.srcmap`` (columns ``old``, ``new``),
    so the table's own column names need no alias."""
    (src_off,) = conn.execute("SELECT coalesce(max(source_id), 0) FROM main.sources").fetchone()
    (ser_off,) = conn.execute("SELECT coalesce(max(series_id), 0) FROM main.series").fetchone()
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS srcmap(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    conn.execute("DELETE FROM temp.srcmap")
    conn.executemany("INSERT INTO temp.srcmap(old, new) VALUES (?, ?)", [(s, s + src_off) for s in take])
    cols = schema.columns("sources", without=("source_id", "source_path"))
    conn.execute(
        f"INSERT INTO main.sources(source_id, source_path, {cols})"
        f" SELECT m.new, ?, {cols} FROM {src}.sources s JOIN temp.srcmap m ON m.old = s.source_id",
        (path,),
    )
    cols = schema.columns("series", without=("series_id", "source_id"))
    conn.execute(
        f"INSERT INTO main.series(series_id, source_id, {cols})"
        f" SELECT s.series_id + ?, m.new, {cols} FROM {src}.series s JOIN temp.srcmap m ON m.old = s.source_id",
        (ser_off,),
    )
    where = "" if all_taken else (
        f" WHERE c.series_id IN (SELECT series_id FROM {src}.series WHERE source_id IN (SELECT old FROM temp.srcmap))"
    )  # fmt: skip
    cols = schema.columns("sample_chunks", without=("series_id",))
    conn.execute(
        f"INSERT INTO main.sample_chunks(series_id, {cols}) SELECT c.series_id + ?, {cols} FROM {src}.sample_chunks c{where}",
        (ser_off,),
    )
    tables = [(table, schema.columns(table, without=("id", "source_id"))) for table in ROW_TABLES]
    if has_resolved(conn, src):  # a merged input: keep what its jobs said before resolution
        ensure_resolved_table(conn)
        tables.append((RESOLVED_TABLE, ", ".join(RESOLVED_COLUMNS)))
    for table, cols in tables:
        conn.execute(
            f"INSERT INTO main.{table}(source_id, {cols})"
            f" SELECT m.new, {cols} FROM {src}.{table} g JOIN temp.srcmap m ON m.old = g.source_id"
        )
