"""Copy a live node-local database to the run directory with SQLite's online backup API.

The copy is written to ``<dest>.tmp`` and renamed over ``<dest>``, so a reader of the run
directory sees either the previous complete copy or the new one, never half a file. The copy
is switched out of WAL mode: run directories are often on NFS/Lustre/GPFS, where WAL fails.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

__all__ = ["copy_database"]


def copy_database(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, timeout: float = 30.0) -> Path:
    """Consistent snapshot of ``src`` at ``dest`` (folders created); returns ``dest``."""
    dest_path = Path(dest)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_path.with_name(dest_path.name + ".tmp")
    for leftover in (tmp, Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    uri = "file:" + quote(os.path.abspath(os.fspath(src)), safe="/") + "?mode=ro"
    source = sqlite3.connect(uri, uri=True, timeout=timeout)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o640))  # as private as the node database
        target = sqlite3.connect(tmp, timeout=timeout)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()
    finally:
        source.close()
    os.replace(tmp, dest_path)
    return dest_path
