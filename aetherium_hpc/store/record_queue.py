"""The queue between the log calls and the writer thread: bounded, thread-safe, cheap to put to.

Producers -- log calls in this process, the node socket's readers for other processes, the
central sender's counters -- append record tuples; the :class:`~.writer.StoreWriter` thread
drains them in batches. A :class:`FlushBarrier` put among them is set once every record queued
before it is committed.
"""

from __future__ import annotations

import threading
from collections import deque
from itertools import repeat, starmap
from typing import Any

from .records import count


class FlushBarrier:
    """A marker put in the queue; set once every record queued before it is committed."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class RecordQueue:
    """A bounded, thread-safe FIFO of records, cheap on the producer side.

    ``put`` is a ``deque.append`` plus a length check (atomic under the GIL); the
    writer is woken once ``wake_at`` records are waiting. When ``maxsize`` records
    are waiting, ``on_full='block'`` makes the producer wait for room (nothing it
    was told was accepted is ever lost); ``on_full='drop'`` drops the new record
    and counts it in :attr:`dropped` (and in the database's ``store_stats``): a monitor's
    batch (a SERIES record) counts its samples.
    """

    def __init__(self, maxsize: int, wake_at: int, on_full: str) -> None:
        self.maxsize = maxsize
        self.wake_at = wake_at
        self.on_full = on_full
        self.wake = threading.Event()
        self._dq: deque[Any] = deque()
        self._room = threading.Condition(threading.Lock())
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._closed = False
        self.writer_ident: int | None = None  # the thread that drains: it never waits for room

    def __len__(self) -> int:
        return len(self._dq)

    @property
    def dropped(self) -> int:
        """Records dropped and not yet counted in the database (:meth:`count_dropped`)."""
        return self._dropped

    def count_dropped(self, n: int) -> None:
        """Add ``n`` to :attr:`dropped` (a negative ``n``: that many are now counted in the database).
        Producers and the writer thread call it at once: the change is made under a lock."""
        with self._dropped_lock:
            self._dropped += n

    def put(self, rec: Any) -> bool:
        dq = self._dq
        if len(dq) >= self.maxsize:
            return self._put_when_full([rec])
        dq.append(rec)
        if len(dq) >= self.wake_at and not self.wake.is_set():
            self.wake.set()
        return True

    def put_many(self, recs: list[Any]) -> bool:
        dq = self._dq
        if len(dq) + len(recs) > self.maxsize:
            return self._put_when_full(recs)
        dq.extend(recs)
        if len(dq) >= self.wake_at and not self.wake.is_set():
            self.wake.set()
        return True

    def _put_when_full(self, recs: list[Any]) -> bool:
        if threading.get_ident() == self.writer_ident:  # (a flush hook): drained right after
            self._dq.extend(recs)
            return True
        if self.on_full == "drop" or self._closed:
            self.count_dropped(count(recs))
            return False
        self.wake.set()
        with self._room:
            while len(self._dq) + len(recs) > self.maxsize and not self._closed:
                self._room.wait(0.5)
        if self._closed:
            self.count_dropped(count(recs))
            return False
        self._dq.extend(recs)
        return True

    def drain(self) -> list[Any]:
        dq = self._dq
        n = len(dq)
        out = list(starmap(dq.popleft, repeat((), n)))  # n records, taken in C (producers append meanwhile)
        if n:
            with self._room:
                self._room.notify_all()
        return out

    def close(self) -> None:
        self._closed = True
        with self._room:
            self._room.notify_all()
