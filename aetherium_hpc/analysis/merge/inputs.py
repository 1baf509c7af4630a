"""The inputs of a merge: which files a list of paths names, and whether each is a sound database.

:func:`collect_inputs` turns files, folders and run directories into database files;
:func:`check_input` (and :func:`check_attached` for an input attached to the output) says why one
cannot be merged, in one line, or None.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ...errors import AetheriumError, SchemaError
from ...paths import RunLayout
from ...store import reader, schema

#: Tables every input must have.
REQUIRED_TABLES = (
    "sources", "series", "sample_chunks", "generation_rows", "training_rows", "job_rows", "store_stats",
)  # fmt: skip
#: Tables that ``check_input`` leaves to the copy (it reads every page of them): see there.
COPY_CHECKED_TABLES = ("sample_chunks",)

PathLike = str | os.PathLike[str]


class MergeInputError(AetheriumError):
    """An input path of ``merge`` does not exist or holds no database."""


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
        return check_attached(conn, "main", path)
    finally:
        conn.close()


def attach(conn: sqlite3.Connection, path: str, alias: str) -> str | None:
    """ATTACH ``path`` read-only as ``alias`` (SQLite reads its schema); why not, if it cannot."""
    try:
        conn.execute(f"ATTACH DATABASE ? AS {alias}", (reader.uri(path),))
    except sqlite3.Error as exc:  # the words of schema.check_version
        if "locked" in str(exc):
            return f"locked by another process ({exc}); wait until it ends, or work on a copy"
        return f"not a readable SQLite database ({exc}); pass an aetherium-hpc .db file"
    return None


def check_attached(conn: sqlite3.Connection, db: str, path: str) -> str | None:
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
