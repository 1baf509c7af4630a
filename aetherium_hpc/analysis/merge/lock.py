"""One merge at a time per output: ``<output>.lock``, a :class:`~...store.FileLock`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from ...errors import LockUnsupportedError, StoreError
from ...store import FileLock
from .inputs import PathLike

#: Seconds a merge waits for another merge into the same output before it gives up (exit 2).
LOCK_TIMEOUT_S = 600.0

log = logging.getLogger(__name__)


@contextmanager
def output_lock(output: PathLike, timeout: float | None = None, notify: TextIO | None = None) -> Iterator[str]:
    """Hold ``<output>.lock`` while the body runs, and remove it after; yields the lock's path.

    A second merge into the same output waits here, at most ``timeout`` seconds
    (:data:`LOCK_TIMEOUT_S`), writing one line to ``notify`` when it starts waiting; then it
    raises :class:`~...errors.StoreError`. Where the lock cannot be taken at all (a file system
    with neither ``flock`` nor ``lockf``) the merge goes on unguarded, with a warning. The lock
    file may be another user's (a run directory a group shares)."""
    out = os.path.abspath(os.fspath(output))
    path = out + ".lock"
    limit = LOCK_TIMEOUT_S if timeout is None else timeout

    def say_waiting() -> None:
        if notify is not None:
            notify.write(f"aetherium-hpc merge: waiting for another merge into {out} to finish\n")
            notify.flush()

    lock: FileLock | None = None
    try:
        lock = FileLock.acquire(path, shared=True, wait_s=limit, on_wait=say_waiting)
        if lock is None:
            raise StoreError(
                f"{out}: another merge into this file still runs after {limit:.0f} s of waiting (lock {path}); "
                "wait until it ends, or merge into another -o file"
            )
    except LockUnsupportedError as exc:
        log.warning("aetherium-hpc merge: %s; do not run two merges into %s at once", exc, out)
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()
