"""The node socket's protocol, and its client end: how processes that do not own the writer reach it.

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

The server end, in the writer's process, is :class:`.server.SocketServer`.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import marshal
import multiprocessing.util
import os
import socket
import struct
import threading
import time
from collections import deque
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from .. import signal_policy
from ..errors import StoreNotReachableError
from ..signal_policy import block_job_signals
from .address import StoreAddress
from .records import STATS, count

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


def io_timeout(sock: socket.socket, seconds: float, close: bool = False) -> None:
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


class SocketSink:
    """The client end, one per process: buffers records and sends them in batches.

    ``put`` appends to a deque (no I/O). A background thread sends the buffer every
    ``interval`` seconds and answers the store's requests (send what you hold); a full
    buffer (``batch`` records) is sent by the caller. The buffer is also sent at
    interpreter exit, at multiprocessing's worker exit, and on SIGTERM (see
    :mod:`..signal_policy`: the process then dies of SIGTERM), so ``Pool.terminate()`` loses
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
        # The exit hooks hold one bound method, kept here too: close() takes them back while one of
        # them may be running it.
        self._on_exit = self.close
        atexit.register(self._on_exit)
        # Pool workers leave through os._exit: multiprocessing's own finalizers still run.
        self._finalizer = multiprocessing.util.Finalize(None, self._on_exit, exitpriority=100)
        signal_policy.flush_on_sigterm(self._on_exit)

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
            self.dropped += count((dq.popleft(),))
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
        return conn is not None and send_message(conn, msg)

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
        """Send what is buffered, close the connection, and take back the exit hooks (a closed sink
        has nothing left to send). Safe to call twice, from any thread."""
        if os.getpid() != self._pid:
            return
        self._closed = True
        if not self._send_lock.acquire(timeout=10.0):
            return
        try:
            if not self._send_buffered():
                lost = count(r for r in self._dq if r[0] != STATS) + self.dropped
                self._dq.clear()
                log.warning(
                    "aetherium-hpc: pid %d: %d records could not be delivered: the metrics store at %s is not "
                    "reachable (%s); they are lost", os.getpid(), lost, self.address.path, self._why,
                )  # fmt: skip
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            # Only now: a SIGTERM while this thread sends runs the hook, which waits for the send.
            self._unhook()
        finally:
            self._send_lock.release()

    def abandon(self) -> None:
        """Close the connection without sending (in a fork child: the parent owns it), and take back
        the exit hooks."""
        self._closed = True
        self._unhook()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def hand_over(self) -> list[Any]:
        """:meth:`abandon`, returning what this sink holds for another store to take (the one it was
        made for does not answer): its records, and the count of those it dropped as a STATS record."""
        with self._send_lock:
            held = list(self._dq)
            self._dq.clear()
            if self.dropped:
                held.append((STATS, time.time(), {"dropped_client": self.dropped}))
                self.dropped = 0
            self.abandon()
        return held

    def _unhook(self) -> None:
        atexit.unregister(self._on_exit)
        self._finalizer.cancel()
        signal_policy.forget_sigterm_hook(self._on_exit)


def send_message(conn: Connection, msg: tuple[Any, ...]) -> bool:
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
        io_timeout(sock, timeout)
        sock.connect(address.path)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        answer_challenge(conn, address.key)
        deliver_challenge(conn, address.key)
        # from now on sends wait for the store (back-pressure) and reads wait for its requests
        io_timeout(socket.socket(fileno=os.dup(conn.fileno())), 0.0, close=True)
    except BaseException:
        conn.close()
        raise
    return conn
