"""Opening a store's database to read it: never creating, never changing the file."""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote


def uri(path: str | os.PathLike[str], mode: str = "ro") -> str:
    """SQLite URI of ``path`` opened in ``mode`` (``ro``: never creates or changes the file)."""
    return "file:" + quote(os.path.abspath(os.fspath(path)), safe="/") + "?mode=" + mode


def open_readonly(path: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to ``path`` (usable from any thread)."""
    return sqlite3.connect(uri(path), uri=True, timeout=timeout, check_same_thread=False)
