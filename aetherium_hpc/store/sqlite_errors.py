"""What a failed SQLite call failed of: the primary result code of an ``sqlite3.Error``.

Python 3.11 and later give it (``sqlite_errorcode``); before, the message tells, being SQLite's own
text for the code. The writer and the run-directory copy decide from these codes what to do with a
failure; each names the set it acts on (:data:`FILE_FAILURES`, :data:`BROKEN_FILE`).
"""

from __future__ import annotations

import sqlite3

BUSY = 5
LOCKED = 6
NOMEM = 7
READONLY = 8
IOERR = 10
CORRUPT = 11
FULL = 13
CANTOPEN = 14
NOTADB = 26

#: SQLite's message of each code, as Python < 3.11 shows it (lower case).
_MESSAGES = (
    ("database or disk is full", FULL),
    ("disk i/o error", IOERR),
    ("database is locked", BUSY),
    ("database table is locked", LOCKED),
    ("readonly database", READONLY),
    ("unable to open database", CANTOPEN),
    ("out of memory", NOMEM),
    ("not a database", NOTADB),
    ("malformed", CORRUPT),
)

#: The file or its disk failed, not what was written: the same write can pass later (space freed,
#: the lock released, the file system back).
FILE_FAILURES = frozenset({BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN})
#: The file is not a database, or a damaged one: only a new file helps.
BROKEN_FILE = frozenset({CORRUPT, NOTADB})


def primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc``; None when it is not an ``sqlite3.Error`` or the
    code cannot be told (Python < 3.11, a message not known here)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    for needle, known in _MESSAGES:
        if needle in text:
            return known
    return None
