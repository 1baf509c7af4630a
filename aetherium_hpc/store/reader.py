"""Opening a store's database to read it: never creating, never changing the file."""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from urllib.parse import quote


def uri(path: str | os.PathLike[str], mode: str = "ro") -> str:
    """SQLite URI of ``path`` opened in ``mode`` (``ro``: never creates or changes the file)."""
    return "file:" + quote(os.path.abspath(os.fspath(path)), safe="/") + "?mode=" + mode


def open_readonly(path: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to ``path`` (usable from any thread)."""
    return sqlite3.connect(uri(path), uri=True, timeout=timeout, check_same_thread=False)


def job_rows(path: str | os.PathLike[str], *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every ``jobs`` row of the database at ``path``, with the ``hostname`` and ``attempt`` of its
    writer, in the order they were written."""
    conn = open_readonly(path, timeout=timeout)
    try:
        cur = conn.execute(
            "SELECT j.job_id, j.array_job_id, j.array_task_id, j.status, j.exit_code, j.start_time,"
            " j.end_time, j.node, j.config, s.hostname, s.attempt FROM jobs j LEFT JOIN sources s USING (source_id)"
            " ORDER BY j.source_id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()
