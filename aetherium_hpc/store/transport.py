"""The node socket: how processes that do not own the writer reach it.

The writer's process listens on an AF_UNIX socket in a private (0700) folder on
node-local storage. A client authenticates with the HMAC handshake of
:mod:`multiprocessing.connection` (key in ``AETHERIUM_METRICS_KEY`` or in
``<socket>.key``) and then sends batches of record tuples encoded with
:mod:`marshal` (plain data only, nothing is ever unpickled).

Fork children, spawn children, other ``srun`` tasks on the node and shell
commands all use this one path: a :class:`SocketSink` buffers records in the
process and sends them every ``interval`` seconds or every ``batch`` records.

The connection also carries a few control messages (marshalled tuples, never
lists): the server asks every client to send what it holds and waits for each
answer before the store closes (``("flush", n)`` -> batches, then ``("ack", n)``),
a client that reads the database asks the writer to commit what it sent
(``("commit", n)`` -> ``("committed", n, ok)``), and a client asks for the resource monitor's
window of the last seconds (``("recent", n, seconds)`` -> ``("recent_is", n, answer)``: a dict,
None when no monitor runs in the store's process, or the text of an error).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import marshal
import multiprocessing.util
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from .. import signals
from ..errors import StoreNotReachableError
from ..signals import block_job_signals, childless
from .address import StoreAddress
from .records import STATS

log = logging.getLogger(__name__)

#: Longest a process waits for the store to accept it (connect and handshake); the store drops a
#: client that has not completed its handshake by then.
HANDSHAKE_TIMEOUT_S = 10.0
#: Clients in their handshake at once; a connection beyond is closed at once (legitimate ones take ms).
MAX_HANDSHAKING = 256
#: Longest message either end accepts (a batch is split below it); a longer length prefix ends the connection.
MAX_MESSAGE_BYTES = 64 * 2**20
#: How long the closing store waits for the answers of connected clients it asked to send
#: what they hold (all asked at once; a client whose process is frozen costs this once).
CLIENT_FLUSH_TIMEOUT_S = 5.0
#: How long the closing store waits, for all its reader threads together, once it has woken them.
READERS_JOIN_S = 1.0
#: While the store does not answer, a client tries again at most this often (seconds), holding
#: up to :data:`MAX_HELD` records meanwhile (beyond: the oldest are dropped and counted).
RETRY_S = 0.2
MAX_HELD = 200_000

# Control messages (tuples; batches of records are lists).
FLUSH, ACK, COMMIT, COMMITTED, RECENT, RECENT_IS = "flush", "ack", "commit", "committed", "recent", "recent_is"


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
        self.batches = 0
        self.bad_batches = 0
        self.refused = 0
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
            if self._handshaking >= MAX_HANDSHAKING:  # (read without the lock: a bound, not a count)
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
        _io_timeout(raw, HANDSHAKE_TIMEOUT_S)  # a peer that never answers is dropped (EAGAIN)
        conn = Connection(raw.detach())
        try:
            deliver_challenge(conn, self.address.key)
            answer_challenge(conn, self.address.key)
            _io_timeout(socket.socket(fileno=os.dup(fd)), 0.0, close=True)  # then reads wait as long as it takes
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
                    data = conn.recv_bytes(MAX_MESSAGE_BYTES)
                except (EOFError, OSError) as exc:
                    self._add_busy(-1)
                    if "bad message length" in str(exc):  # a length prefix beyond the bound: nothing read
                        self.bad_batches += 1
                        log.warning("aetherium-hpc: a client of %s announced a message over %d bytes; disconnected",
                                    self.address.path, MAX_MESSAGE_BYTES)  # fmt: skip
                    return
                try:
                    batch = marshal.loads(data)
                    if type(batch) is tuple:
                        self._control(conn, batch)
                        continue
                    if type(batch) is not list:
                        raise TypeError("batch is not a list")
                except (ValueError, EOFError, TypeError, IndexError):
                    self.bad_batches += 1
                else:
                    self.batches += 1
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

    def _control(self, conn: Connection, msg: tuple[Any, ...]) -> None:
        kind, token = msg[0], msg[1]
        if kind == ACK:  # every batch this client sent before it is queued by now
            with self._answered:
                waiting = self._waiting.get(token)
                if waiting is not None:
                    waiting.discard(conn)
                    self._answered.notify_all()
        elif kind == COMMIT:
            ok = self._commit() if self._commit is not None else False
            self._send(conn, (COMMITTED, token, bool(ok)))
        elif kind == RECENT:
            try:
                answer = self._recent(float(msg[2])) if self._recent is not None else None
            except Exception as exc:  # (the client gets the error's text, the reader goes on)
                answer = f"{type(exc).__name__}: {exc}"
            self._send(conn, (RECENT_IS, token, answer))
        else:
            raise TypeError(f"unknown control message {kind!r:.40}")

    def _send(self, conn: Connection, msg: tuple[Any, ...]) -> bool:
        lock = self._send_locks.get(conn)
        if lock is None:
            return False
        with lock:
            return _send_message(conn, msg)

    def collect(self, timeout: float = CLIENT_FLUSH_TIMEOUT_S) -> tuple[int, int]:
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
            if not self._send(conn, (FLUSH, token)):
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

    def close(self, timeout: float = 5.0, collect_timeout: float = CLIENT_FLUSH_TIMEOUT_S) -> None:
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
        deadline = time.monotonic() + READERS_JOIN_S
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


def _io_timeout(sock: socket.socket, seconds: float, close: bool = False) -> None:
    """Make blocking reads and writes on ``sock``'s descriptor fail (EAGAIN) after ``seconds`` (0: never)."""
    try:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        if close:
            sock.close()


def _encoded(batch: list[Any]) -> list[bytes]:
    """``batch`` marshalled, in messages of at most :data:`MAX_MESSAGE_BYTES` (halves until they fit)."""
    if not batch:
        return []
    data = marshal.dumps(batch)
    if len(data) <= MAX_MESSAGE_BYTES or len(batch) == 1:  # (one record that large: the store refuses it)
        return [data]
    mid = len(batch) // 2
    return _encoded(batch[:mid]) + _encoded(batch[mid:])


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


class SocketSink:
    """The client end, one per process: buffers records and sends them in batches.

    ``put`` appends to a deque (no I/O). A background thread sends the buffer every
    ``interval`` seconds and answers the store's requests (send what you hold); a full
    buffer (``batch`` records) is sent by the caller. The buffer is also sent at
    interpreter exit, at multiprocessing's worker exit, and on SIGTERM (see
    :mod:`..signals`: the process then dies of SIGTERM), so ``Pool.terminate()`` loses
    nothing that was logged.
    """

    def __init__(self, address: StoreAddress, *, interval: float = 0.2, batch: int = 2000) -> None:
        self.address = address
        self.interval = interval
        self.batch = batch
        self.dropped = 0
        self._dq: deque[Any] = deque()
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._down_since: float | None = None  # time.monotonic() the store stopped answering (None: it answers)
        self._last_try = 0.0  # time.monotonic() of the last connection attempt
        self._said_dropped = False
        self._why = ""  # why the last attempt to reach the store failed
        self._closed = False
        self._pid = os.getpid()
        self._tokens = itertools.count(1)
        self._answers: dict[int, list[Any]] = {}  # commit or recent request -> [event, answer]
        # Connect now, in the caller: the store then knows this process before its first record is
        # buffered, and asks it for what it holds when it closes (see SocketServer.collect).
        with self._send_lock:
            self._send([])
        self._thread = threading.Thread(target=self._flush_loop, name="aetherium-store-client", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        # Pool workers leave through os._exit: multiprocessing's own finalizers still run.
        multiprocessing.util.Finalize(None, self.close, exitpriority=100)
        signals.flush_on_sigterm(self.close)

    def put(self, rec: Any) -> bool:
        dq = self._dq
        dq.append(rec)
        if len(dq) >= self.batch or self._conn is None:
            self._flush_or_hold()
        return True

    def put_many(self, recs: list[Any]) -> bool:
        self._dq.extend(recs)
        if len(self._dq) >= self.batch or self._conn is None:
            self._flush_or_hold()
        return True

    def _flush_or_hold(self) -> None:
        """Send now; while the store is away (it closed; the next one its owner opens listens on the
        same address), try again at once when its socket is back, else at most every :data:`RETRY_S`,
        and hold what waits."""
        if (
            self._conn is None
            and time.monotonic() - self._last_try < RETRY_S
            and not os.path.exists(self.address.path)  # (a store listens there again: try at once)
        ):
            if len(self._dq) > MAX_HELD:
                self._drop_oldest()
            return
        self.flush()

    def _drop_oldest(self) -> None:
        dq = self._dq
        while len(dq) > MAX_HELD:
            dq.popleft()
            self.dropped += 1
        if not self._said_dropped:
            self._said_dropped = True
            log.warning(
                "aetherium-hpc: pid %d holds more than %d records for the metrics store at %s, which has not "
                "answered for %.0f s; the oldest are dropped and counted",
                os.getpid(), MAX_HELD, self.address.path, time.monotonic() - (self._down_since or time.monotonic()),
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self._dq)

    @property
    def connected(self) -> bool:
        """True while connected to the store (the connection is made, bounded, in ``__init__``)."""
        return self._conn is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything buffered; False if the store cannot be reached (records then dropped, counted)."""
        if not self._send_lock.acquire(timeout=timeout):
            return False
        try:
            return self._send_buffered()
        finally:
            self._send_lock.release()

    def commit(self, timeout: float = 60.0) -> bool:
        """Send everything buffered and wait until the store has committed it (for reads)."""
        if not self.connected and not self.flush(timeout):
            return False
        answered, ok = self._ask(COMMIT, (), timeout, send_buffered=True)
        return bool(answered and ok)

    def ask_recent(self, seconds: float, timeout: float) -> Any:
        """The store's answer to ``("recent", n, seconds)`` (see the module's docstring), within
        ``timeout`` seconds, else :class:`StoreNotReachableError`. Sends nothing buffered: a log
        call waits at most for this one short message to be written."""
        where = f"the node store at {self.address.path}"
        if not self.connected:
            raise StoreNotReachableError(f"{where} is not reachable from pid {os.getpid()}")
        answered, answer = self._ask(RECENT, (float(seconds),), timeout, send_buffered=False)
        if not answered:
            raise StoreNotReachableError(
                f"{where} did not answer within {timeout:g} s (a store that stopped, or is busy); try again"
            )
        return answer

    def _ask(self, kind: str, args: tuple[Any, ...], timeout: float, *, send_buffered: bool) -> tuple[bool, Any]:
        """Send ``(kind, n, *args)`` -- after everything buffered when ``send_buffered`` -- and wait
        up to ``timeout`` for the store's answer to request ``n``: (answered, the answer)."""
        token = next(self._tokens)
        answer: list[Any] = [threading.Event(), None]
        self._answers[token] = answer  # before sending: the answer may come back at once
        try:
            if not self._send_lock.acquire(timeout=timeout):
                return False, None
            try:
                if send_buffered and not self._send_buffered():
                    return False, None
                if not self._send_control((kind, token, *args)):
                    return False, None
            finally:
                self._send_lock.release()
            return answer[0].wait(timeout), answer[1]
        finally:
            self._answers.pop(token, None)

    def _send_buffered(self) -> bool:
        dq = self._dq
        while dq:
            n = min(len(dq), 50_000)
            batch = [dq.popleft() for _ in range(n)]
            if not self._send(batch):
                return False
        return True

    def _send_control(self, msg: tuple[Any, ...]) -> bool:
        conn = self._conn
        return conn is not None and _send_message(conn, msg)

    def _send(self, batch: list[Any]) -> bool:
        """Send ``batch`` (connecting first if need be), with the count of records this process
        dropped so far; when the store does not answer, the batch goes back to the front of the
        buffer, held for the next try (see :meth:`_flush_or_hold`), and the count stays to send."""
        counted = 0
        try:
            if self._conn is None:
                self._last_try = time.monotonic()
                self._conn = _connect(self.address)
                if self._down_since is not None:
                    log.info(
                        "aetherium-hpc: pid %d reaches the metrics store at %s again", os.getpid(), self.address.path
                    )
                    self._down_since = None
            if self.dropped and batch:
                counted, self.dropped = self.dropped, 0
                batch.append((STATS, time.time(), {"dropped_client": counted}))
            for data in _encoded(batch):
                self._conn.send_bytes(data)
            return True
        except (OSError, EOFError, ValueError, AuthenticationError) as exc:
            self._why = f"{type(exc).__name__}: {exc}" if isinstance(exc, AuthenticationError) else str(exc)
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            if self._down_since is None:
                self._down_since = time.monotonic()
            if counted:  # (the count went out with the batch: it comes back with it)
                batch.pop()
                self.dropped += counted
            self._dq.extendleft(reversed(batch))
            if len(self._dq) > MAX_HELD:
                self._drop_oldest()
            return False

    def _flush_loop(self) -> None:
        block_job_signals()
        next_send = time.monotonic() + self.interval
        while not self._closed:
            conn = self._conn
            wait = max(0.0, next_send - time.monotonic())
            try:
                if conn is None:
                    time.sleep(wait)
                elif conn.poll(wait):
                    self._answer(conn.recv_bytes())
                    continue
            except (OSError, EOFError, ValueError):
                if self._closed:
                    return
                with self._send_lock:  # the store closed: the next send connects again (or holds)
                    if self._conn is conn and conn is not None:
                        self._conn = None
                        conn.close()
                time.sleep(wait)
            next_send = time.monotonic() + self.interval
            if self._dq:
                self.flush()

    def _answer(self, data: bytes) -> None:
        """A control message from the store."""
        try:
            msg = marshal.loads(data)
            kind, token = msg[0], msg[1]
        except (ValueError, EOFError, TypeError, IndexError):
            return
        if kind == FLUSH:
            with self._send_lock:
                if self._send_buffered():
                    self._send_control((ACK, token))
        elif kind in (COMMITTED, RECENT_IS):
            answer = self._answers.get(token)
            if answer is not None:
                answer[1] = bool(msg[2]) if kind == COMMITTED else msg[2]
                answer[0].set()

    def close(self) -> None:
        """Send what is buffered and close the connection. Safe to call twice, from any thread."""
        if os.getpid() != self._pid:
            return
        self._closed = True
        if not self._send_lock.acquire(timeout=10.0):
            return
        try:
            if not self._send_buffered():
                lost = sum(1 for r in self._dq if r[0] != STATS) + self.dropped
                self._dq.clear()
                log.warning(
                    "aetherium-hpc: pid %d: %d records could not be delivered: the metrics store at %s is not "
                    "reachable (%s); they are lost", os.getpid(), lost, self.address.path, self._why,
                )  # fmt: skip
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
        finally:
            self._send_lock.release()

    def abandon(self) -> None:
        """Close the connection without sending (in a fork child: the parent owns it)."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _send_message(conn: Connection, msg: tuple[Any, ...]) -> bool:
    """Send one control message; False if the other end is gone."""
    try:
        conn.send_bytes(marshal.dumps(msg))
        return True
    except (OSError, ValueError):
        return False


def _connect(address: StoreAddress, timeout: float = HANDSHAKE_TIMEOUT_S) -> Connection:
    """Connect and authenticate (as ``multiprocessing.connection.Client`` does), bounded by
    ``timeout``: a log call never hangs on a store that stopped answering."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _io_timeout(sock, timeout)
        sock.connect(address.path)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        answer_challenge(conn, address.key)
        deliver_challenge(conn, address.key)
        # from now on sends wait for the store (back-pressure) and reads wait for its requests
        _io_timeout(socket.socket(fileno=os.dup(conn.fileno())), 0.0, close=True)
    except BaseException:
        conn.close()
        raise
    return conn
