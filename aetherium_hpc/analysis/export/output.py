"""What every export format shares: its error, the database it reads, the folder it writes."""

from __future__ import annotations

import os
import sqlite3

from ...errors import AetheriumError, ForeignDatabaseError, StoreError
from ...store import reader, schema


class ExportError(AetheriumError):
    """The export cannot be done as asked."""


def missing_extra(fmt: str, package: str, extra: str) -> ExportError:
    """The one line for an optional package that is not installed."""
    return ExportError(f"--format {fmt} needs {package}, which is not installed: pip install 'aetherium-hpc[{extra}]'")


def open_database(db: str) -> sqlite3.Connection:
    """A read-only connection to the aetherium-hpc database ``db``; :class:`AetheriumError` for
    a missing, foreign, empty or unreadable file."""
    if os.path.isdir(db):
        raise StoreError(
            f"{db}: a folder, not a database; for a run directory merge it first: aetherium-hpc merge {db}, "
            "then export RUN_DIR/merged.db"
        )
    if not os.path.isfile(db):
        raise StoreError(f"{db}: no such database file; check the path (a node database or the output of merge)")
    conn = reader.open_readonly(db)
    try:
        if not schema.check_version(conn, db):
            raise StoreError(f"{db}: empty file, nothing to export")
    except ForeignDatabaseError as exc:
        conn.close()
        raise StoreError(
            f"{db}: an SQLite database, but not one written by aetherium-hpc; "
            "pass a node database or the output of `aetherium-hpc merge`"
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def output_folder(path: str | None, fmt: str) -> str:
    """The folder ``-o`` names for a format that writes several files, created if missing."""
    if path is None:
        raise ExportError(f"--format {fmt} writes a folder: add -o OUT_DIR (created if missing)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExportError(f"-o {path}: a file, but --format {fmt} writes a folder; choose a folder path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"-o {path}: cannot create the folder ({exc.strerror}); choose another path") from exc
    return path


def quote(name: str) -> str:
    """``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
