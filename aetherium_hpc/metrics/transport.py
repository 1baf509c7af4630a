"""The node socket: how processes that do not own the writer reach it.

The writer's process listens on an AF_UNIX socket in a private (0700) folder on
node-local storage. A client authenticates with the HMAC handshake of
:mod:`multiprocessing.connection` (key in ``AETHERIUM_METRICS_KEY`` or in
``<socket>.key``) and then sends batches of record tuples encoded with
:mod:`marshal` (plain data only, nothing is ever unpickled).

Fork children, spawn children, other ``srun`` tasks on the node and shell
commands all use this one path: a :class:`SocketSink` buffers records in the
process and sends them every ``interval`` seconds or every ``batch`` records.
"""

from __future__ import annotations

import atexit
import logging
import marshal
import multiprocessing.util
import os
import secrets
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from typing import Any

from ..background import block_job_signals
from ..env import StoreAddress
from .records import STATS

log = logging.getLogger(__name__)

#: Longest path an AF_UNIX socket may have on Linux (108 bytes with the NUL).
MAX_SOCKET_PATH = 107


def new_address(folder: str) -> StoreAddress:
    """A fresh socket path in ``folder`` and a random key; the key is also written to ``<socket>.key`` (0600)."""
    path = os.path.join(folder, "metrics.sock")
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise OSError(
            f"socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes; set AETHERIUM_LOCAL_DIR to a short folder"
        )
    key = secrets.token_bytes(32)
    fd = os.open(path + ".key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex())
    return StoreAddress(path, key)


class SocketServer:
    """Accepts clients on the node socket and hands each decoded batch to ``deliver``.

    The acceptor only accepts; the HMAC handshake and the reads happen in one
    thread per client, so a slow or hostile client never blocks the others.
    """

    def __init__(self, address: StoreAddress, deliver: Callable[[list[Any]], object]) -> None:
        self.address = address
        self._deliver = deliver
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(address.path)
        os.chmod(address.path, 0o600)
        self._sock.listen(128)
        self._closing = False
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._busy = 0  # clients in their handshake, or batches being decoded and queued
        self.batches = 0
        self.bad_batches = 0
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="aetherium-store-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        block_job_signals()
        while not self._closing:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                if self._closing:
                    return
                continue
            if self._closing:
                raw.close()
                return
            self._add_busy(1)
            reader = threading.Thread(target=self._read_loop, args=(raw,), name="aetherium-store-reader", daemon=True)
            self._readers.append(reader)
            reader.start()

    def _add_busy(self, n: int) -> None:
        with self._lock:
            self._busy += n

    def _read_loop(self, raw: socket.socket) -> None:
        block_job_signals()
        conn = Connection(raw.detach())
        try:
            deliver_challenge(conn, self.address.key)
            answer_challenge(conn, self.address.key)
        except (AuthenticationError, OSError, EOFError) as exc:
            self.refused += 1
            log.warning("aetherium-hpc: refused a client on %s: %s", self.address.path, exc)
            conn.close()
            self._add_busy(-1)
            return
        with self._lock:
            self._conns.add(conn)
            self._busy -= 1
        try:
            while True:
                # Busy from the moment bytes are waiting until the batch is queued: a reader
                # between a message's header and its body leaves the socket momentarily empty,
                # and settle() must not take that for "everything read".
                try:
                    conn.poll(None)
                except (EOFError, OSError):
                    return
                self._add_busy(1)
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    self._add_busy(-1)
                    return
                try:
                    batch = marshal.loads(data)
                    if type(batch) is not list:
                        raise TypeError("batch is not a list")
                except (ValueError, EOFError, TypeError):
                    self.bad_batches += 1
                else:
                    self.batches += 1
                    self._deliver(batch)
                finally:
                    self._add_busy(-1)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every byte clients have sent so far has been read and queued."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                conns = list(self._conns)
                pending = self._busy > 0
            if not pending:
                pending = bool(select.select([self._sock], [], [], 0)[0])
            for conn in conns:
                if pending:
                    break
                try:
                    pending = conn.poll(0)
                except (OSError, EOFError, ValueError):
                    continue
            if not pending:
                return True
            time.sleep(0.001)
        return False

    def wait_for_disconnect(self, timeout: float) -> bool:
        """Wait until no client is connected (other tasks of the node have sent all and left)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._conns and self._busy == 0
            if idle:
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, read what clients already sent (until they close or ``timeout``), remove the socket."""
        if self._closing:
            return
        self.settle(timeout)
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._acceptor.join(timeout)
        with self._lock:
            for conn in list(self._conns):
                conn.close()
        for reader in list(self._readers):
            reader.join(0.5)
        for path in (self.address.path, self.address.path + ".key"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class SocketSink:
    """The client end, one per process: buffers records and sends them in batches.

    ``put`` appends to a deque (no I/O). A background thread sends the buffer every
    ``interval`` seconds; a full buffer (``batch`` records) is sent by the caller.
    The buffer is sent at interpreter exit, at multiprocessing's worker exit, and
    on SIGTERM when the process had the default SIGTERM action (then the default
    action follows), so ``Pool.terminate()`` loses nothing that was logged.
    """

    def __init__(self, address: StoreAddress, *, interval: float = 0.2, batch: int = 2000) -> None:
        self.address = address
        self.interval = interval
        self.batch = batch
        self.dropped = 0
        self._dq: deque[Any] = deque()
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._failed = False
        self._closed = False
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name="aetherium-store-client", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        # Pool workers leave through os._exit: multiprocessing's own finalizers still run.
        multiprocessing.util.Finalize(None, self.close, exitpriority=100)
        _flush_on_sigterm(self)

    def put(self, rec: Any) -> bool:
        dq = self._dq
        dq.append(rec)
        if len(dq) >= self.batch:
            self.flush()
        return True

    def put_many(self, recs: list[Any]) -> bool:
        self._dq.extend(recs)
        if len(self._dq) >= self.batch:
            self.flush()
        return True

    def __len__(self) -> int:
        return len(self._dq)

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything buffered; False if the store cannot be reached (records then dropped, counted)."""
        if not self._send_lock.acquire(timeout=timeout):
            return False
        try:
            dq = self._dq
            while dq:
                n = min(len(dq), 50_000)
                batch = [dq.popleft() for _ in range(n)]
                if not self._send(batch):
                    return False
            return True
        finally:
            self._send_lock.release()

    def _send(self, batch: list[Any]) -> bool:
        if self.dropped and not self._failed and batch:
            batch.append((STATS, time.time(), {"dropped_client": self.dropped}))
            self.dropped = 0
        try:
            if self._conn is None:
                if self._failed:
                    raise OSError("store not reachable")
                self._conn = Client(self.address.path, family="AF_UNIX", authkey=self.address.key)
            if batch:
                self._conn.send_bytes(marshal.dumps(batch))
            return True
        except (OSError, EOFError, ValueError, AuthenticationError) as exc:
            lost = sum(1 for r in batch if r[0] != STATS)
            self.dropped += lost
            if not self._failed:
                self._failed = True
                log.warning(
                    "aetherium-hpc: metrics store at %s not reachable from pid %d (%s); "
                    "records logged by this process are dropped and counted",
                    self.address.path, os.getpid(), exc,
                )  # fmt: skip
            return False

    def _connect(self) -> None:
        with self._send_lock:
            if self._conn is None and not self._failed:
                self._send([])

    def _flush_loop(self) -> None:
        block_job_signals()
        # Connect at once, so that the flush at exit is one send, not a handshake.
        self._connect()
        while not self._closed:
            self._wake.wait(self.interval)
            if self._dq:
                self.flush()

    def close(self) -> None:
        """Send what is buffered and close the connection. Safe to call twice."""
        global _exit_flush_depth
        if self._closed or os.getpid() != self._pid:
            return
        # Count this flush *before* marking the sink closed: a SIGTERM arriving from here on
        # waits for the flush (see _on_sigterm); one arriving before it finds the sink open and
        # flushes it itself.
        _exit_flush_depth += 1
        try:
            self._closed = True
            self._wake.set()
            self.flush()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
        finally:
            _exit_flush_depth -= 1
        if _term_pending and _exit_flush_depth == 0:
            _die_of_sigterm()


_sigterm_sinks: list[SocketSink] = []
_exit_flush_depth = 0  # > 0 while a sink sends its last records
_term_pending = False  # SIGTERM arrived during that send: die once it is done


def _flush_on_sigterm(sink: SocketSink) -> None:
    """Flush ``sink`` on SIGTERM, then die of SIGTERM as before; only if SIGTERM had its default action."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return
    _sigterm_sinks.append(sink)
    if current is _on_sigterm or current not in (signal.SIG_DFL, None):
        return
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    global _term_pending
    if _exit_flush_depth:
        # The interrupted code is sending the last records (e.g. a Pool worker leaving while
        # Pool.terminate() kills it): let it finish, then die.
        _term_pending = True
        return
    for sink in _sigterm_sinks:
        if sink._pid == os.getpid():
            sink.close()
    _die_of_sigterm()


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
