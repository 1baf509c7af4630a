"""The output of a merge: opening (creating) it, and the index a large merge builds once at the end."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import StoreError
from ...store import check_path, reader, schema
from .inputs import PathLike

#: An index of the output that a merge of many inputs drops while it copies and builds once at
#: the end: each input's series would otherwise land all over it (one page per metric name
#: rewritten and journaled per input, more as the output grows). A merge killed before the end
#: leaves it missing; the next open of the output (merge, or :func:`open_output`) builds it.
DEFERRED_INDEX = "series_by_name"
#: From this many inputs on, the merge defers :data:`DEFERRED_INDEX`.
DEFER_INDEX_MIN_INPUTS = 20

log = logging.getLogger(__name__)


def check_folder(out: str) -> None:
    """Refuse an output whose folder does not exist or cannot be written."""
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise StoreError(f"{out}: folder {folder} does not exist; create it or choose another -o path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{out}: folder {folder} is not writable; choose another -o path")


def open_output(output: PathLike) -> sqlite3.Connection:
    """Open (creating if new) the output database, read-write, URI filenames enabled for ATTACH."""
    out = os.path.abspath(os.fspath(output))
    check_folder(out)
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


@contextmanager
def deferred_index(conn: sqlite3.Connection, n_inputs: int) -> Iterator[None]:
    """For :data:`DEFER_INDEX_MIN_INPUTS` inputs or more: without :data:`DEFERRED_INDEX` while the
    body copies, built again after it (also when it fails: a transaction it left open is rolled back)."""
    if n_inputs < DEFER_INDEX_MIN_INPUTS:
        yield
        return
    conn.execute(f"DROP INDEX IF EXISTS main.{DEFERRED_INDEX}")
    try:
        yield
    finally:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            schema.create_indexes(conn)
        except sqlite3.Error as exc:  # (the error that stopped the merge, if any, is the news)
            log.warning("aetherium-hpc merge: index %s not rebuilt (%s); the next merge builds it", DEFERRED_INDEX, exc)
