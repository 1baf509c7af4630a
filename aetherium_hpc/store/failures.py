"""The writer's failures: which failed writes it retries, and what it says about them.

A failed write is retried when a later try can pass (:func:`retry_cause`): the file or its disk
failed (:data:`.sqlite_errors.FILE_FAILURES`: full, I/O error, locked, read-only, cannot open) or
SQLite ran out of memory. Anything else is a record SQLite cannot store: it is refused alone,
counted in ``store_stats.bad_records``, never retried. :class:`Reports` says each cause once.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from typing import Any

from . import records, sqlite_errors

log = logging.getLogger(__name__)

#: What the writer retries, by SQLite primary result code: a failed file, and -- unlike the
#: run-directory copy, which then starts a new copy -- SQLite out of memory: the writer's batch
#: waits in memory and the next try may find room.
_RETRIED = {
    sqlite_errors.FULL: "full",
    sqlite_errors.IOERR: "io",
    sqlite_errors.BUSY: "locked",
    sqlite_errors.LOCKED: "locked",
    sqlite_errors.READONLY: "readonly",
    sqlite_errors.CANTOPEN: "cantopen",
    sqlite_errors.NOMEM: "memory",
}
assert set(_RETRIED) == sqlite_errors.FILE_FAILURES | {sqlite_errors.NOMEM}

#: Each cause of a retried write: (what failed, what to do about it).
_CAUSES = {
    "full": ("the disk is full", "free disk space on the file system of {folder}"),
    "io": (
        "an I/O error",
        "check the file system of {folder} (a failing or unmounted disk, a quota; "
        "keep the live database on node-local storage, not NFS/Lustre/GPFS)",
    ),
    "locked": (
        "the database is locked",
        "another process holds a write lock on {path} (a second writer, or a sqlite3 shell with a "
        "transaction open): end that transaction or process",
    ),
    "readonly": (
        "the database is read-only",
        "check the permissions of {path} and of its folder, and that the file system is mounted read-write",
    ),
    "cantopen": ("the file cannot be opened", "check that {folder} still exists and is writable"),
    "memory": ("SQLite is out of memory", "give the job more memory, or lower max_queue"),
}
#: Errors that mean "SQLite cannot bind or store this row" (not the file's fault).
RECORD_ERRORS = (
    sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.IntegrityError,
    OverflowError, TypeError, ValueError,
)  # fmt: skip
#: At most this many distinct bad-record causes are logged; later ones are only counted.
_MAX_BAD_MESSAGES = 20
_VALUE_IN_MESSAGE = re.compile(r"""['"{\[(<]|\d""")


def retry_cause(exc: BaseException) -> str | None:
    """The cause (a key of ``_CAUSES``) when a failed write can pass on a later try, else None."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, RECORD_ERRORS):
        return None
    return _RETRIED.get(sqlite_errors.primary_code(exc) or 0)


class Reports:
    """What the writer of ``path`` says about its failures: a failed write that is retried once per
    cause, with what to do about it; a refused record once per (kind, cause), for at most
    :data:`_MAX_BAD_MESSAGES` causes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._errors_seen: set[str] = set()  # causes of failed writes already logged
        self._bad_seen: set[tuple[str, str, str]] = set()  # causes of refused records already logged

    def write_failed(self, exc: BaseException) -> str:
        """Log a failed write that will be retried, the first time its cause fails; returns what
        it failed of (``the disk is full: ...``)."""
        cause = retry_cause(exc) or "other"
        what, advice = _CAUSES.get(cause, ("an error", "see the message"))
        if cause not in self._errors_seen:
            self._errors_seen.add(cause)
            folder = os.path.dirname(os.path.abspath(self.path))
            log.error(
                "aetherium-hpc: writing %s failed: %s (%s: %s) -- the records are kept in memory (up to max_queue) "
                "and retried; %s",
                self.path, what, type(exc).__name__, exc, advice.format(path=self.path, folder=folder),
            )  # fmt: skip
        return f"{what}: {exc}"

    def refused(self, rec: Any, exc: BaseException) -> None:
        """Log a refused record: once per (kind, cause), at most ``_MAX_BAD_MESSAGES`` causes."""
        try:
            kind = records.KIND_NAMES.get(rec[0], "unknown kind") if type(rec) is tuple and rec else "not a tuple"
        except TypeError:  # an unhashable kind
            kind = "unknown kind"
        text = str(exc)
        key = (kind, type(exc).__name__, _VALUE_IN_MESSAGE.split(text, 1)[0][:80])
        seen = self._bad_seen
        if key in seen or len(seen) > _MAX_BAD_MESSAGES:
            return
        seen.add(key)
        if len(seen) > _MAX_BAD_MESSAGES:
            log.warning(
                "aetherium-hpc: more than %d kinds of bad records for %s: further ones are only counted "
                "(store_stats.bad_records)",
                _MAX_BAD_MESSAGES, self.path,
            )  # fmt: skip
            return
        log.warning(
            "aetherium-hpc: skipped a bad record (%s) for %s: %s: %.300s -- it is not stored and not retried, "
            "only counted in store_stats.bad_records; the other records are stored (further %s records "
            "with this problem are only counted)",
            kind, self.path, type(exc).__name__, text, kind,
        )  # fmt: skip
