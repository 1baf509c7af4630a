"""The node socket's server end: the store's owner accepts the other processes of the node there.

The protocol (handshake, batches, control messages) is :mod:`.transport`'s; :class:`SocketServer`
hands each batch it reads to the store's queue, and answers the requests of its clients.
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from ..signal_policy import block_job_signals, childless
from . import transport
from .address import StoreAddress
from .records import STATS

log = logging.getLogger(__name__)


class SocketServer:
    """Accepts clients on the node socket and hands each decoded batch to ``deliver``.

    The acceptor only accepts; the HMAC handshake and the reads happen in one
    thread per client, so a slow or hostile client never blocks the others.
    """

    def __init__(
        self,
        address: StoreAddress,
        deliver: Callable[[list[Any]], object],
        commit: Callable[[], bool] | None = None,
        recent: Callable[[float], Any] | None = None,
    ) -> None:
        self.address = address
        self._deliver = deliver
        self._commit = commit
        self._recent = recent
        self._tokens = itertools.count(1)
        self._waiting: dict[int, set[Connection]] = {}  # flush request -> clients yet to answer
        self._answered = threading.Condition()
        self._send_locks: dict[Connection, threading.Lock] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(address.path)
        os.chmod(address.path, 0o600)
        self._sock.listen(128)
        self._closing = False
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._open_fds: set[int] = set()  # the clients' sockets until their reader closes them
        self._busy = 0  # clients in their handshake, or batches being decoded and queued
        self._handshaking = 0
        self.refused = 0  # connections closed before or in their handshake
        self._acceptor = threading.Thread(
            target=childless(self._accept_loop), name="aetherium-store-accept", daemon=True
        )
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
            if self._handshaking >= transport.MAX_HANDSHAKING:  # (read without the lock: a bound, not a count)
                self.refused += 1
                raw.close()
                continue
            with self._lock:
                self._busy += 1
                self._handshaking += 1
                self._open_fds.add(raw.fileno())
            reader = threading.Thread(
                target=childless(self._read_loop), args=(raw,), name="aetherium-store-reader", daemon=True
            )
            self._readers.append(reader)
            reader.start()

    def _add_busy(self, n: int) -> None:
        with self._lock:
            self._busy += n

    def _read_loop(self, raw: socket.socket) -> None:
        block_job_signals()
        fd = raw.fileno()
        transport.io_timeout(raw, transport.HANDSHAKE_TIMEOUT_S)  # a peer that never answers is dropped (EAGAIN)
        conn = Connection(raw.detach())
        try:
            deliver_challenge(conn, self.address.key)
            answer_challenge(conn, self.address.key)
            transport.io_timeout(
                socket.socket(fileno=os.dup(fd)), 0.0, close=True
            )  # then reads wait as long as it takes
        except (AuthenticationError, OSError, EOFError) as exc:
            self.refused += 1
            if isinstance(exc, AuthenticationError):  # (a peer that died mid-handshake is no news)
                log.warning("aetherium-hpc: refused a client on %s: %s", self.address.path, exc)
            with self._lock:
                self._busy -= 1
                self._handshaking -= 1
                self._open_fds.discard(fd)
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
            self._send_locks[conn] = threading.Lock()
            self._busy -= 1
            self._handshaking -= 1
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
                    data = conn.recv_bytes(transport.MAX_MESSAGE_BYTES)
                except (EOFError, OSError) as exc:
                    self._add_busy(-1)
                    if "bad message length" in str(exc):  # a length prefix beyond the bound: nothing read
                        self._bad_batch()
                        log.warning("aetherium-hpc: a client of %s announced a message over %d bytes; disconnected",
                                    self.address.path, transport.MAX_MESSAGE_BYTES)  # fmt: skip
                    return
                try:
                    batch = marshal.loads(data)
                    if type(batch) is tuple:
                        self._control(conn, batch)
                        continue
                    if type(batch) is not list:
                        raise TypeError("batch is not a list")
                except (ValueError, EOFError, TypeError, IndexError):
                    self._bad_batch()
                else:
                    self._deliver(batch)
                finally:
                    self._add_busy(-1)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._send_locks.pop(conn, None)
                self._open_fds.discard(fd)  # (before the close: close() shuts down only open ones)
            with self._answered:
                for waiting in self._waiting.values():
                    waiting.discard(conn)
                self._answered.notify_all()
            conn.close()

    def _bad_batch(self) -> None:
        """A message that is not a batch nor a control message: the records it held are lost,
        uncounted; the message is counted in ``store_stats.bad_batches``."""
        self._deliver([(STATS, time.time(), {"bad_batches": 1})])

    def _control(self, conn: Connection, msg: tuple[Any, ...]) -> None:
        kind, token = msg[0], msg[1]
        if kind == transport.ACK:  # every batch this client sent before it is queued by now
            with self._answered:
                waiting = self._waiting.get(token)
                if waiting is not None:
                    waiting.discard(conn)
                    self._answered.notify_all()
        elif kind == transport.COMMIT:
            ok = self._commit() if self._commit is not None else False
            self._send(conn, (transport.COMMITTED, token, bool(ok)))
        elif kind == transport.RECENT:
            try:
                answer = self._recent(float(msg[2])) if self._recent is not None else None
            except Exception as exc:  # (the client gets the error's text, the reader goes on)
                answer = f"{type(exc).__name__}: {exc}"
            self._send(conn, (transport.RECENT_IS, token, answer))
        else:
            raise TypeError(f"unknown control message {kind!r:.40}")

    def _send(self, conn: Connection, msg: tuple[Any, ...]) -> bool:
        lock = self._send_locks.get(conn)
        if lock is None:
            return False
        with lock:
            return transport.send_message(conn, msg)

    def collect(self, timeout: float = transport.CLIENT_FLUSH_TIMEOUT_S) -> tuple[int, int]:
        """Ask every connected client to send what it holds; wait (up to ``timeout``) until each
        has answered or gone. Returns (clients answered, clients asked)."""
        token = next(self._tokens)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a client still in its handshake is asked too
            with self._lock:
                if not self._handshaking:
                    break
            time.sleep(0.005)
        with self._lock:
            conns = list(self._conns)
        waiting = set(conns)
        with self._answered:
            self._waiting[token] = waiting
        for conn in conns:
            if not self._send(conn, (transport.FLUSH, token)):
                with self._answered:
                    waiting.discard(conn)
        with self._answered:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._answered.wait(left)
            missing = len(waiting)
            del self._waiting[token]
        if missing:
            log.warning(
                "aetherium-hpc: %d of %d processes connected to %s did not answer within %.0f s; "
                "records they still hold are not in the database",
                missing, len(conns), self.address.path, timeout,
            )  # fmt: skip
        return len(conns) - missing, len(conns)

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

    def close(self, timeout: float = 5.0, collect_timeout: float = transport.CLIENT_FLUSH_TIMEOUT_S) -> None:
        """Collect what connected clients hold (see :meth:`collect`), read what they sent, stop
        accepting and remove the socket."""
        if self._closing:
            return
        if collect_timeout > 0:
            self.collect(collect_timeout)
        self.settle(timeout)
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._acceptor.join(timeout)
        # Wake every reader at once (a shutdown ends its poll() with EOF; closing the descriptor
        # under it would not), and let each close its own connection.
        with self._lock:
            for fd in self._open_fds:
                _shutdown_fd(fd)
        deadline = time.monotonic() + transport.READERS_JOIN_S
        for reader in list(self._readers):
            reader.join(max(0.0, deadline - time.monotonic()))
        for path in (self.address.path, self.address.key_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def forget_in_fork_child(self) -> None:
        """In a fork child: close the inherited descriptors (only the parent serves this socket)."""
        self._closing = True
        self._sock.close()
        conns, self._conns = list(self._conns), set()  # no lock: a parent thread may have held it
        for conn in conns:
            conn.close()


def _shutdown_fd(fd: int) -> None:
    """shutdown(2) the socket behind ``fd`` (through a duplicate: the descriptor stays its owner's)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
