"""The two kinds of open store a process logs into.

* :class:`MetricsStore` -- this process owns the database: the writer thread, the node socket
  other processes of the node send to, and the central sender where one is configured;
* :class:`JoinedStore` -- another process of the node owns it: records go through its node socket.

Both answer the read queries of :class:`.reader.StoreReader` from the file, and ``recent()`` from
the resource monitor's window, which the monitor hands over with :func:`set_recent_source`.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..credentials import mask
from ..errors import StoreError
from .address import StoreAddress, new_address, new_socket_folder, write_key
from .ownership import WriterLock
from .reader import Recent, StoreReader, recent_seconds
from .record_queue import RecordQueue
from .records import STATS
from .server import SocketServer
from .transport import SocketSink
from .writer import StoreWriter

log = logging.getLogger(__name__)

_recent_source: Callable[[float], Recent] | None = None  # the monitor's window, in its process


def set_recent_source(source: Callable[[float], Recent] | None) -> None:
    """What the resource monitor calls when it starts: ``source(seconds)`` answers
    :meth:`StoreReader.recent` in this process and, when this process owns the node store,
    for every process joined to it. The store keeps only the callable (it never imports the
    monitors); the last one set wins; None clears it."""
    global _recent_source
    _recent_source = source


def _recent_here(seconds: float) -> Recent | None:
    """The monitor's window of the last ``seconds`` when the monitor runs in this process, else None
    (what the node socket answers a joined process, too)."""
    source = _recent_source
    return None if source is None else source(recent_seconds(seconds))


class MetricsStore(StoreReader):
    """One open metrics database: the writer thread, the node socket, and read queries.

    Returned by :func:`init_db` and :func:`get_db` in the process that owns the writer;
    query methods see every record logged (in any process) before the call.
    """

    def __init__(
        self,
        writer: StoreWriter,
        *,
        central: str | None = None,
        listen: bool = True,
        socket_dir: str | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        """Open the database ``writer`` writes (its thread started here); ``central``: the URL of a
        central store to stream it to; ``listen``: on the node socket (``socket_dir``: the job's
        node store, in the folder every task of the node looks in); ``lock``: released at close."""
        writer.start_and_wait()
        self.writer = writer
        self.path = writer.path
        self.source = writer.source
        self.started = time.time()
        self._lock_file = lock
        self.queue = writer.queue
        #: The thread streaming to a central PostgreSQL store (monitoring.central / $AETHERIUM_CENTRAL), if any.
        self.sender: Any = _start_sender(self.path, central, self.queue)
        self.server: SocketServer | None = None
        self._socket_dir: str | None = None
        self.owner_pid = os.getpid()
        self._closed = False
        #: The job's node store (opened by the runtime): pipeline code's shutdown_db() only flushes it.
        self.is_node_store = False
        if listen:
            self._listen(socket_dir)

    def _listen(self, socket_dir: str | None) -> None:
        try:
            if socket_dir is None:  # a store of the library's: this process's one address, kept
                address = _process_address()
            else:  # the job's node store: in the folder every task of the node looks in
                folder = new_socket_folder(socket_dir)
                self._socket_dir = folder
                address = new_address(folder)
            self.server = SocketServer(address, self.queue.put_many, commit=self.writer.flush, recent=_recent_here)
        except OSError as exc:
            log.warning(
                "aetherium-hpc: no node socket for %s (%s); only this process and its fork children "
                "... cannot log: set AETHERIUM_LOCAL_DIR to a short local folder",
                self.path, exc,
            )  # fmt: skip
            self.server = None

    @property
    def address(self) -> StoreAddress | None:
        """Socket address and key other processes use (see :func:`worker_initializer`)."""
        return None if self.server is None else self.server.address

    def _dropped_here(self) -> int:
        return self.queue.dropped

    def _recent(self, seconds: float, timeout: float) -> Recent:
        answer = _recent_here(seconds)
        return {} if answer is None else answer

    # -- writing ----------------------------------------------------------------------------
    def put(self, rec: Any) -> bool:
        return self.queue.put(rec)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything logged so far is committed: in this process, and what other
        processes have already sent to the node socket."""
        if self.server is not None:
            self.server.settle()
        return self.writer.flush(timeout)

    def write_soon(self, span_s: float) -> None:
        """See :meth:`.writer.StoreWriter.write_soon`."""
        self.writer.write_soon(span_s)

    def close(self) -> None:
        """Collect what connected processes still hold, stop the socket, drain the queue,
        commit, close. Idempotent."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        if self.server is not None:
            self.server.close()
        if self.sender is not None:
            # commit what is queued, give the sender its last push (bounded), then commit its counters
            self.writer.flush(timeout=30.0)
            self.sender.stop()
        self.writer.stop()
        self._say_lost()
        if self._socket_dir is not None:
            try:
                os.rmdir(self._socket_dir)
            except OSError:
                pass
        if self._lock_file is not None:
            self._lock_file.release()

    def _say_lost(self) -> None:
        """One line on stderr when records logged for this store could not be stored (said by the
        process that owns the store, whichever process lost them)."""
        stats = self.writer.stats
        lost = stats.lost + self.queue.dropped
        if stats.unwritten:  # the writes failed to the end (a disk that never freed): not even counted in the file
            print(
                f"aetherium-hpc: {lost + stats.unwritten} record(s) logged for {self.path} could not be stored: "
                f"{stats.unwritten} still unwritten when the store closed ({self.writer.last_error or 'writes failed'}), "
                f"{lost} dropped before (the queue full while writes failed, or workers that could not reach the "
                f"store); the {stats.written} written since it opened are in {self.path} (with {self.path}-wal if it is there: "
                "keep the files together)",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        elif lost:
            print(
                f"aetherium-hpc: {lost} record(s) logged for {self.path} could not be stored (a full queue "
                "with on_full='drop', or workers that could not reach the store); counted in its store_stats",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    def forget_in_fork_child(self) -> None:
        self._closed = True  # the writer thread is the parent's
        if self.server is not None:
            self.server.forget_in_fork_child()
        if self._lock_file is not None:
            self._lock_file.forget_in_fork_child()


class JoinedStore(StoreReader):
    """A process that logs into a store another process of the node owns (through its socket).

    What :func:`init_db` returns when the job's runtime (or another process) already writes
    the database, and what :func:`get_db` returns in worker processes: log calls go to the
    node socket, :meth:`flush` waits until the owner has committed them, reads come from the
    database file.
    """

    is_node_store = False

    def __init__(self, path: str, sink: SocketSink) -> None:
        self.path = path
        self.sink = sink
        self.queue = sink  # len() and .dropped, as the monitor's self-telemetry reads them
        self.owner_pid = os.getpid()
        self._closed = False

    @property
    def address(self) -> StoreAddress:
        return self.sink.address

    def _dropped_here(self) -> int:
        return self.sink.dropped

    def _recent(self, seconds: float, timeout: float) -> Recent:
        answer = _recent_here(seconds)  # the monitor runs in this process
        if answer is None:
            answer = self.sink.ask_recent(seconds, timeout)
            if isinstance(answer, str):
                raise StoreError(f"recent({seconds:g}): the node store could not answer: {answer}")
        return {} if answer is None else answer

    def put(self, rec: Any) -> bool:
        return self.sink.put(rec)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Send what this process holds and wait until the owner has committed it."""
        return self.sink.commit(60.0 if timeout is None else timeout)

    def write_soon(self, span_s: float) -> None:
        """Nothing: the owner's writer keeps its own clock (this process's records go by socket)."""

    def close(self) -> None:
        """Send what this process holds; the owner's store stays open."""
        if not self._closed and os.getpid() == self.owner_pid:
            self._closed = True
            self.sink.close()


_address: tuple[int, str, StoreAddress] | None = None  # (pid, folder, address) of this process's stores


def _process_address() -> StoreAddress:
    """The node-socket address every store this process opens with :func:`init_db` listens on: made
    once (a fresh private folder, a random key), kept until the process exits. Workers that outlive
    a store -- a Pool, a ``ProcessPoolExecutor`` or joblib's loky executor kept across
    ``shutdown_db()`` / ``init_db()`` -- hold that address, and find the next store there."""
    global _address
    pid = os.getpid()
    if _address is not None and _address[0] == pid and os.path.isdir(_address[1]):
        address = _address[2]
        write_key(address)  # (removed with the socket when the last store closed)
        return address
    folder = new_socket_folder(None)
    address = new_address(folder)
    _address = (pid, folder, address)
    atexit.register(_remove_process_folder, pid, folder)
    return address


def _remove_process_folder(pid: int, folder: str) -> None:
    if os.getpid() == pid:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _start_sender(path: str, url: str | None, queue: RecordQueue) -> Any:
    """Start the central sender for ``url`` (None: none). A missing psycopg is one line on stderr;
    the store works without it. Its counters reach store_stats through ``queue``."""
    if not url:
        return None
    try:
        from .central.sender import CentralSender
        from .central.url import psycopg_module

        psycopg_module()
    except StoreError as exc:
        print(f"aetherium-hpc: {exc}; the job goes on with its local store only", file=sys.stderr, flush=True)
        return None
    sender = CentralSender(path, url, counters=lambda delta: queue.put((STATS, time.time(), delta)))
    sender.start()
    log.info("aetherium-hpc: streaming %s to the central store %s", path, mask(url))
    return sender
