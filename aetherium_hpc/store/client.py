"""The store API the pipeline calls: init_db, log_*, get_db, shutdown_db.

In the process that called :func:`init_db`, a log call appends a tuple to the
writer's in-memory queue and returns (no disk, no lock). In any other process --
a fork or spawn child, another ``srun`` task, a command started by the runtime --
the same call appends to a per-process buffer that a :class:`SocketSink` sends to
the node socket, found through ``AETHERIUM_METRICS_ADDR`` / ``AETHERIUM_METRICS_KEY``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import env, signals
from ..credentials import mask
from ..errors import StoreError
from . import reader, records
from .address import StoreAddress, new_address, new_socket_folder, publish, unpublish, write_key
from .options import StoreOptions, central_url
from .ownership import Holder, WriterLock, check_path
from .provenance import SourceInfo, source_from_environ
from .records import GENERATION, JOB, MAX_NAME, RESOURCE, STATS, TRAINING
from .transport import SocketServer, SocketSink
from .writer import RecordQueue, StoreWriter

log = logging.getLogger(__name__)

_lock = threading.RLock()
_store: MetricsStore | JoinedStore | None = None
_sink: Any = None  # where this process's records go: a RecordQueue or a SocketSink
_warned_uninitialized = False
_recent_source: Callable[[float], dict[Any, Any]] | None = None  # the monitor's window, in its process
_before_close: list[Callable[[], object]] = []  # resource monitors logging into this process's store
_time = time.time
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

#: How far back :meth:`StoreReader.recent` reaches (the resource monitor's window), and how long
#: a process joined to the node store waits for its answer.
RECENT_WINDOW_S = 60.0
RECENT_TIMEOUT_S = 5.0

#: What :meth:`StoreReader.recent` returns: (metric_type, metric_name, device) -> figures.
Recent = dict[tuple[str, str, str], dict[str, Any]]

NOT_INITIALIZED = (
    "Metrics database not initialized: call aetherium_hpc.init_db(path) in the main process "
    "(or run under `aetherium-hpc run`); records logged until then are dropped"
)


class StoreReader:
    """Read queries on one metrics database, answered from the file (any process of the node).

    Query methods first make sure what this process logged is committed (:meth:`flush`).
    """

    path: str
    _closed: bool

    def flush(self, timeout: float | None = 60.0) -> bool:
        raise NotImplementedError

    def _dropped_here(self) -> int:
        return 0

    def recent(self, seconds: float = RECENT_WINDOW_S, timeout: float = RECENT_TIMEOUT_S) -> Recent:
        """The node's resource samples of the last ``seconds`` (at most 60), from memory: no disk.

        ``{(metric_type, metric_name, device): {"avg", "max", "last", "n", "unit"}}``, one entry
        per series the node's resource monitor sampled in that span (``n`` samples; ``last`` is
        the newest). The monitor keeps 5-s buckets: the span read is ``seconds`` plus at most 5 s.
        ``{}`` when no monitor samples into this node's store (none started, or it stopped more
        than ``seconds`` ago). In a process joined to the node store the owner answers over the
        node socket; a :class:`StoreNotReachableError` if it does not within ``timeout`` seconds
        (log calls are never held up meanwhile).
        """
        seconds = _recent_seconds(seconds)
        source = _recent_source
        if source is not None:  # the monitor runs in this process
            return source(seconds)
        return self._recent_elsewhere(seconds, timeout)

    def _recent_elsewhere(self, seconds: float, timeout: float) -> Recent:
        return {}

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        if not self._closed:
            self.flush()
        conn = reader.open_readonly(self.path)
        try:
            cur = conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur]
        finally:
            conn.close()

    def query_resource_metrics(
        self,
        metric_type: str | None = None,
        metric_name: str | None = None,
        node: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Resource samples as dicts (timestamp, metric_type, metric_name, value, unit, node, device, ...)."""
        where, params = _filters(
            [("metric_type = ?", metric_type), ("metric_name = ?", metric_name), ("node = ?", node),
             ("timestamp >= ?", since), ("timestamp <= ?", until)]
        )  # fmt: skip
        return self._read(f"SELECT * FROM resource_metrics{where} ORDER BY timestamp{_limit(limit)}", params)

    def query_generation_metrics(
        self, operation: str | None = None, round_number: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Data-generation rows (operation, round/chunk, duration_seconds, samples, memory)."""
        where, params = _filters([("operation = ?", operation), ("round_number = ?", round_number)])
        return self._read(f"SELECT * FROM generation_metrics{where} ORDER BY timestamp{_limit(limit)}", params)

    def query_training_metrics(
        self,
        metric_name: str | None = None,
        round_number: int | None = None,
        phase: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Training rows (metric_name, metric_value, round, epoch, phase)."""
        where, params = _filters(
            [("metric_name = ?", metric_name), ("round_number = ?", round_number), ("phase = ?", phase)]
        )
        return self._read(f"SELECT * FROM training_metrics{where} ORDER BY timestamp{_limit(limit)}", params)

    def get_summary_stats(self) -> dict[str, Any]:
        """Counts, time span, size and the store's own counters (drops, bad records, write errors)."""
        row = self._read(
            """SELECT
                (SELECT coalesce(sum(n), 0) FROM sample_chunks) AS resource_metrics_count,
                (SELECT count(*) FROM generation_rows) AS generation_metrics_count,
                (SELECT count(*) FROM training_rows) AS training_metrics_count,
                (SELECT count(*) FROM series) AS series_count,
                (SELECT min(t) FROM (SELECT min(t0) t FROM sample_chunks
                    UNION ALL SELECT min(timestamp) FROM generation_rows UNION ALL SELECT min(timestamp) FROM training_rows))
                    AS first_timestamp,
                (SELECT max(t) FROM (SELECT max(t1) t FROM sample_chunks
                    UNION ALL SELECT max(timestamp) FROM generation_rows UNION ALL SELECT max(timestamp) FROM training_rows))
                    AS last_timestamp"""
        )[0]
        first, last = row.pop("first_timestamp"), row.pop("last_timestamp")
        row["duration_minutes"] = 0.0 if first is None else (last - first) / 60.0
        size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        row["db_size_mb"] = size / 2**20
        row["db_path"] = self.path
        for name, value in (
            (r["name"], r["value"])
            for r in self._read("SELECT name, sum(value) AS value FROM store_stats GROUP BY name")
        ):
            row[name] = int(value)
        row["dropped"] = row.get("dropped_queue_full", 0) + row.get("dropped_client", 0) + self._dropped_here()
        return row


class MetricsStore(StoreReader):
    """One open metrics database: the writer thread, the node socket, and read queries.

    Returned by :func:`init_db` and :func:`get_db` in the process that owns the writer;
    query methods see every record logged (in any process) before the call.
    """

    def __init__(
        self,
        path: str,
        *,
        options: StoreOptions | None = None,
        source: SourceInfo | None = None,
        listen: bool = True,
        socket_dir: str | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.source = source if source is not None else source_from_environ()
        self.started = time.time()
        self._lock_file = lock
        self.writer = StoreWriter(self.path, options=options, source=self.source)
        self.writer.start_and_wait()
        self.queue = self.writer.queue
        #: The thread streaming to a central PostgreSQL store (monitoring.central / $AETHERIUM_CENTRAL), if any.
        self.sender: Any = _start_sender(self.path, central_url(options), self.queue)
        self.server: SocketServer | None = None
        self._socket_dir: str | None = None
        self._owner_pid = os.getpid()
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
            self.server = SocketServer(address, self.queue.put_many, commit=self.writer.flush, recent=_serve_recent)
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

    # -- writing ----------------------------------------------------------------------------
    def put(self, rec: Any) -> bool:
        return self.queue.put(rec)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything logged so far is committed: in this process, and what other
        processes have already sent to the node socket."""
        if self.server is not None:
            self.server.settle()
        return self.writer.flush(timeout)

    def close(self) -> None:
        """Collect what connected processes still hold, stop the socket, drain the queue,
        commit, close. Idempotent."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        if self.server is not None:
            self.server.close()
        if self.sender is not None:
            # commit what is queued, give the sender its last push (bounded), then commit its counters
            self.writer.flush(timeout=30.0)
            self.sender.stop()
        self.writer.stop()
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
        elif lost:  # said by the process that owns the store, whichever process lost them
            print(
                f"aetherium-hpc: {lost} record(s) logged for {self.path} could not be stored (a full queue "
                "with on_full='drop', or workers that could not reach the store); counted in its store_stats",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        if self._socket_dir is not None:
            try:
                os.rmdir(self._socket_dir)
            except OSError:
                pass
        if self._lock_file is not None:
            self._lock_file.release()

    def forget_in_fork_child(self) -> None:
        self._closed = True  # the writer thread is the parent's
        if self.server is not None:
            self.server.forget_in_fork_child()
        if self._lock_file is not None:
            self._lock_file.forget_in_fork_child()


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


class JoinedStore(StoreReader):
    """A process that logs into a store another process of the node owns (through its socket).

    What :func:`init_db` returns when the job's runtime (or another process) already writes
    the database, and what :func:`get_db` returns in worker processes: log calls go to the
    node socket, :meth:`flush` waits until the owner has committed them, reads come from the
    database file.
    """

    def __init__(self, path: str, sink: SocketSink) -> None:
        self.path = path
        self.sink = sink
        self.queue = sink  # len() and .dropped, as the monitor's self-telemetry reads them
        self.is_node_store = False
        self._owner_pid = os.getpid()
        self._closed = False

    @property
    def address(self) -> StoreAddress:
        return self.sink.address

    def _dropped_here(self) -> int:
        return self.sink.dropped

    def _recent_elsewhere(self, seconds: float, timeout: float) -> Recent:
        answer = self.sink.ask_recent(seconds, timeout)
        if isinstance(answer, str):
            raise StoreError(f"recent({seconds:g}): the node store could not answer: {answer}")
        return {} if answer is None else answer

    def put(self, rec: Any) -> bool:
        return self.sink.put(rec)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Send what this process holds and wait until the owner has committed it."""
        return self.sink.commit(60.0 if timeout is None else timeout)

    def close(self) -> None:
        """Send what this process holds; the owner's store stays open."""
        if not self._closed and os.getpid() == self._owner_pid:
            self._closed = True
            self.sink.close()


def _recent_seconds(seconds: float) -> float:
    if type(seconds) not in (int, float) or not 0 < seconds <= RECENT_WINDOW_S:
        raise ValueError(
            f"recent(seconds={seconds!r}): the window holds the last {RECENT_WINDOW_S:g} s; pass 0 < seconds <= 60"
        )
    return float(seconds)


def set_recent_source(source: Callable[[float], Recent] | None) -> None:
    """What the resource monitor calls when it starts: ``source(seconds)`` answers
    :meth:`StoreReader.recent` in this process and, when this process owns the node store,
    for every process joined to it. The store keeps only the callable (it never imports the
    monitors); the last one set wins; None clears it."""
    global _recent_source
    _recent_source = source


def _serve_recent(seconds: float) -> Recent | None:
    """The node socket's answer to a joined process's ``recent``: None when no monitor runs here."""
    source = _recent_source
    return None if source is None else source(_recent_seconds(seconds))


def _filters(pairs: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    clauses = [c for c, v in pairs if v is not None]
    params = [v for _, v in pairs if v is not None]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _limit(limit: int | None) -> str:
    return "" if limit is None else f" LIMIT {int(limit)}"


# -- life cycle of the process-wide store ----------------------------------------------------
def init_db(
    db_path: str | os.PathLike[str],
    buffer_size: int = StoreOptions.buffer_size,
    flush_interval: float = StoreOptions.flush_interval_s,
    *,
    max_queue: int = StoreOptions.max_queue,
    on_full: str = StoreOptions.on_full,
    options: StoreOptions | None = None,
    source: SourceInfo | None = None,
    listen: bool = True,
    socket_dir: str | None = None,
    join: bool = True,
) -> MetricsStore | JoinedStore:
    """Open (or create) the database at ``db_path`` and start its writer thread and node socket.

    ``buffer_size`` records or ``flush_interval`` seconds, whichever comes first, make
    one transaction. At most ``max_queue`` records wait in memory; beyond that,
    ``on_full='block'`` makes log calls wait (nothing accepted is lost) and
    ``on_full='drop'`` drops and counts. ``options`` carries the same four settings as one
    :class:`StoreOptions` (what the runtime passes); it replaces them. Calling it again with
    the same path returns the open store.

    One database, one writer: inside a job run by ``aetherium-hpc run`` (or the sbatch
    include), or in any process whose environment names a node store (a worker of a process
    that called init_db), this joins that store instead of opening ``db_path`` (one line says
    so, naming both paths). A database another, unrelated process is writing is refused
    with a :class:`StoreError` naming it (pid, host). ``join=False`` is for the runtime: it
    opens the job's node store, which pipeline code in the same process then shares.
    """
    global _store, _sink
    with _lock:
        path = os.path.abspath(os.fspath(db_path))
        if _store is not None and not _store._closed and _store._owner_pid == os.getpid():
            if _store.path == path or isinstance(_store, JoinedStore):
                return _store
            if _store.is_node_store:  # pipeline code run in the job's own process
                _say_joined(path, _store.path)
                return _store
            raise StoreError(
                f"init_db({db_path!s}): a store is already open at {_store.path}; call shutdown_db() first"
            )
        if join:
            joined = _join_node_store(path)
            if joined is not None:
                _store = joined
                return joined
        check_path(path)
        lock = WriterLock.acquire(path)
        if isinstance(lock, Holder):
            # Joining an unrelated process's store would lose what we log once it ends first.
            raise StoreError(
                f"init_db({db_path!s}): {path} is being written by {lock}; one database has one writer: "
                "give each task its own file (e.g. metrics_$SLURM_ARRAY_TASK_ID.db), or run the tasks under "
                "`aetherium-hpc run`, whose node store every process of the node shares"
            )
        try:
            if options is None:
                options = StoreOptions(buffer_size, flush_interval, max_queue, on_full)
            store = MetricsStore(
                path,
                options=options,
                source=source,
                listen=listen,
                socket_dir=socket_dir,
                lock=lock,
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store.is_node_store = not join
        _store = store
        _sink = store.queue
        if store.address is not None:
            publish(store.address, store.path)
        else:
            os.environ[env.METRICS_DB] = store.path
        signals.flush_on_sigterm(close_store)  # only where SIGTERM had its default action
        return store


def _join_node_store(path: str) -> JoinedStore | None:
    """In a process whose environment names a node store (the job's runtime set it): join it."""
    address = StoreAddress.from_environ()
    if address is None:
        return None
    node_db = os.environ.get(env.METRICS_DB) or path
    joined = _join(node_db, address)
    if joined is None:
        log.warning(
            "aetherium-hpc: the node store named by %s (%s) does not answer; opening %s instead",
            env.METRICS_ADDR, address.path, path,
        )  # fmt: skip
        unpublish()
        return None
    if node_db != path:
        _say_joined(path, node_db)
    return joined


def _say_joined(path: str, node_db: str) -> None:
    log.warning(
        "aetherium-hpc: init_db(%s): this process runs inside a job whose node store is %s; "
        "records go there (%s is not opened)",
        path, node_db, path,
    )  # fmt: skip


def _join(db_path: str, address: StoreAddress) -> JoinedStore | None:
    """A :class:`JoinedStore` on ``address``, or None when nobody answers there."""
    global _sink
    sink = _sink if isinstance(_sink, SocketSink) and _sink.address == address else SocketSink(address)
    if not sink.connected:
        if sink is not _sink:
            sink.abandon()  # never connected: nothing to send, nothing to close
        return None
    _sink = sink
    publish(address, db_path)
    return JoinedStore(db_path, sink)


def get_db(*, wait: bool = True) -> MetricsStore | JoinedStore | None:
    """The store this process logs into: the one :func:`init_db` opened or joined, or -- in a
    worker process of the node (fork or spawn child, another srun task) -- the node store its
    environment names. None when there is none.

    ``wait=False`` (the resource monitor's thread): None instead of waiting while another thread
    opens or closes the store, so that no thread of ours ever waits for this module's lock while
    the closing thread waits for it (see "Locks" in docs/ARCHITECTURE.md)."""
    global _store
    store = _store
    if store is not None and not store._closed and store._owner_pid == os.getpid():
        return store
    if not _lock.acquire(blocking=wait):
        return None
    try:
        if _store is None or _store._closed or _store._owner_pid != os.getpid():
            path = os.environ.get(env.METRICS_DB)
            sink = _resolve_sink(warn=False)
            if path and isinstance(sink, SocketSink) and sink.connected:
                _store = JoinedStore(path, sink)
            else:
                return None
        return _store
    finally:
        _lock.release()


def shutdown_db() -> None:
    """Stop the resource monitor logging into the store (its last sample stored), drain every
    queue, commit, close the store (or flush this process's buffer). Safe to call twice.

    The owner of the store first asks every process connected to its socket to send what it
    holds, and waits for their answers (at most ``transport.CLIENT_FLUSH_TIMEOUT_S``, 5 s): what
    live worker processes logged before this call is in the database when it returns."""
    store = _store
    if isinstance(store, MetricsStore) and store.is_node_store and not store._closed:
        store.flush()  # the job's runtime closes its node store (and stops its monitor) at the end of the job
        return
    close_store()


def add_close_hook(hook: Callable[[], object]) -> None:
    """Call ``hook`` (once) when this process's store closes, in the closing thread, before the
    store is touched: a resource monitor stops there and its last sample goes into the store.
    The store keeps only the callable (it never imports the monitors)."""
    if hook not in _before_close:
        _before_close.append(hook)


def remove_close_hook(hook: Callable[[], object]) -> None:
    try:
        _before_close.remove(hook)
    except ValueError:
        pass


def _run_close_hooks() -> None:
    while _before_close:
        hook = _before_close.pop()
        try:
            hook()
        except Exception as exc:  # the store still closes
            log.warning("aetherium-hpc: %r before closing the store failed: %s: %s", hook, type(exc).__name__, exc)


def close_store() -> None:
    """Close this process's store, the job's node store included (what the runtime calls at the end).

    The close hooks (the resource monitor) run first, with no lock held; then this module's lock
    is taken and the store's threads are stopped. No thread of the store waits for that lock."""
    global _store, _sink
    _run_close_hooks()
    with _lock:
        store, _store = _store, None
        sink, _sink = _sink, None
        if isinstance(store, MetricsStore) and store._owner_pid == os.getpid():
            store.close()
            if store.address is not None and os.environ.get(env.METRICS_ADDR) == store.address.path:
                unpublish()
        elif isinstance(sink, SocketSink):
            sink.close()


atexit.register(close_store)


def _after_fork_in_child() -> None:
    # The writer thread does not exist in a fork child: its records go through the socket.
    # The descriptors the child inherited (the parent's socket, connection and lock) are the
    # parent's: close them here without a word on them.
    global _store, _sink, _lock, _recent_source
    _lock = threading.RLock()
    _recent_source = None  # the monitor thread is the parent's: ask the node store
    _before_close.clear()
    store, sink = _store, _sink
    _store = None
    _sink = None
    if isinstance(store, MetricsStore):
        store.forget_in_fork_child()
    if isinstance(sink, SocketSink):
        sink.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve_sink(warn: bool = True) -> Any:
    """Find where this process's records go: the local store, or the node socket."""
    global _sink, _warned_uninitialized
    with _lock:
        if _sink is not None:
            return _sink
        address = StoreAddress.from_environ()
        if address is not None:
            _sink = SocketSink(address)
            return _sink
        if warn and not _warned_uninitialized:
            _warned_uninitialized = True
            warnings.warn(NOT_INITIALIZED, RuntimeWarning, stacklevel=3)
        return None


def worker_args() -> tuple[str, str, str]:
    """``initargs`` for :func:`worker_initializer`: the node socket's address and key, the database path."""
    store = get_db()
    address = store.address if store is not None else StoreAddress.from_environ()
    if address is None:
        raise StoreError("worker_args(): no metrics store is open in this process; call init_db(path) first")
    path = store.path if store is not None else os.environ.get(env.METRICS_DB, "")
    return address.path, address.key.hex(), path


def worker_initializer(path: str, key_hex: str, db_path: str | None = None) -> None:
    """Pool initializer for spawn/forkserver workers: connect this worker to the store.

    ``Pool(n, initializer=worker_initializer, initargs=worker_args())``
    """
    global _sink
    address = StoreAddress(path, bytes.fromhex(key_hex))
    os.environ.update(address.to_environ())
    if db_path:
        os.environ[env.METRICS_DB] = db_path
    with _lock:
        if isinstance(_sink, SocketSink):
            _sink.close()
        _sink = SocketSink(address)


# -- the log calls ---------------------------------------------------------------------------
def log_data_generation_start(
    operation: str = "data_generation", round_number: int | None = None, chunk_number: int | None = None
) -> float:
    """Mark the start of a data-generation chunk; returns the start time to pass to ``..._complete``."""
    records.name(operation, "operation")
    return _time()


def log_data_generation_complete(
    start_time: float,
    operation: str = "data_generation",
    samples_generated: int | None = None,
    round_number: int | None = None,
    chunk_number: int | None = None,
    memory_used_mb: float | None = None,
) -> float:
    """Record one finished chunk; duration_seconds = now - start_time. Returns the duration."""
    now = _time()
    start = records.number(start_time, "start_time")
    rec = (
        GENERATION,
        now,
        records.name(operation, "operation"),
        records.optional_int(round_number, "round_number"),
        records.optional_int(chunk_number, "chunk_number"),
        now - start,
        records.optional_int(samples_generated, "samples_generated"),
        None if memory_used_mb is None else records.number(memory_used_mb, "memory_used_mb"),
        os.getpid(),
    )
    sink = _sink or _resolve_sink()
    if sink is not None:
        sink.put(rec)
    return now - start


def log_training_epoch_metric(
    metric_name: str,
    metric_value: float,
    round_number: int | None = None,
    epoch_number: int | None = None,
    phase: str = "train",
) -> None:
    """Record one training metric (loss, accuracy, learning rate ...) of one epoch."""
    if type(metric_name) is not str or not 0 < len(metric_name) <= MAX_NAME:
        records.name(metric_name, "metric_name")
    if type(metric_value) is not float:
        metric_value = records.number(metric_value, "metric_value")
    if round_number is not None and (type(round_number) is not int or not _I64_MIN <= round_number <= _I64_MAX):
        round_number = records.optional_int(round_number, "round_number")
    if epoch_number is not None and (type(epoch_number) is not int or not _I64_MIN <= epoch_number <= _I64_MAX):
        epoch_number = records.optional_int(epoch_number, "epoch_number")
    if type(phase) is not str or len(phase) > MAX_NAME:
        records.name(phase, "phase")
    sink = _sink or _resolve_sink()
    if sink is not None:
        sink.put((TRAINING, _time(), metric_name, metric_value, round_number, epoch_number, phase))


def log_resource_metric(
    metric_type: str,
    metric_name: str,
    value: float,
    unit: str = "",
    device: str = "",
    timestamp: float | None = None,
) -> None:
    """Record one resource sample (the monitors use :func:`log_resource_samples`)."""
    if type(metric_type) is not str or not 0 < len(metric_type) <= MAX_NAME:
        records.name(metric_type, "metric_type")
    if type(metric_name) is not str or not 0 < len(metric_name) <= MAX_NAME:
        records.name(metric_name, "metric_name")
    if type(value) is not float:
        value = records.number(value, "value")
    if type(unit) is not str or len(unit) > MAX_NAME:
        unit = records.name(unit, "unit", optional=True)
    if type(device) is not str or len(device) > MAX_NAME:
        device = records.name(str(device) if isinstance(device, int) else device, "device", optional=True)
    sink = _sink or _resolve_sink()
    if sink is not None:
        sink.put((RESOURCE, _time() if timestamp is None else timestamp, metric_type, metric_name, value, unit, device))


def log_resource_samples(samples: Iterable[tuple[str, str, float, str, str]], timestamp: float | None = None) -> None:
    """Record many samples taken at one moment: (metric_type, metric_name, value, unit, device) each."""
    ts = _time() if timestamp is None else records.timestamp(timestamp, "timestamp")
    recs = []
    for t, n, v, u, d in samples:
        if type(t) is not str or not 0 < len(t) <= MAX_NAME:
            records.name(t, "metric_type")
        if type(n) is not str or not 0 < len(n) <= MAX_NAME:
            records.name(n, f"{t}: metric_name")
        if type(v) is not float:
            v = records.number(v, f"{t}/{n}")
        if type(u) is not str or len(u) > MAX_NAME:
            u = records.name(u, f"{t}/{n}: unit", optional=True)
        if type(d) is not str or len(d) > MAX_NAME:
            d = records.name(str(d) if isinstance(d, int) else d, f"{t}/{n}: device", optional=True)
        recs.append((RESOURCE, ts, t, n, v, u, d))
    sink = _sink or _resolve_sink()
    if sink is not None and recs:
        sink.put_many(recs)


def log_builtin_samples(samples: list[tuple[str, str, float, str, str]], timestamp: float) -> None:
    """Queue samples of the monitor's built-in collectors, without :func:`log_resource_samples`'s
    per-field checks: their names and units are the constants of ``store/catalogue.py``, their
    values numbers, their devices short text (the writer still refuses, alone, a record SQLite
    cannot store). A monitor with collectors of the user's goes through the checked call."""
    sink = _sink or _resolve_sink()
    if sink is not None and samples:
        sink.put_many([(RESOURCE, timestamp, t, n, v, u, d) for t, n, v, u, d in samples])


def send_one_record(address: StoreAddress, kind: str, fields: Mapping[str, Any]) -> bool:
    """The store's side of ``aetherium-hpc log``: send one ``kind`` record ("training",
    "resource" or "generation") built from the command's options to the node store at
    ``address``; True once it is sent. A bad value raises ValueError/TypeError naming the option."""
    now = _time()
    name = records.name
    if kind == "training":
        rec: tuple[object, ...] = (
            TRAINING, now, name(fields["name"], "metric name"), fields["value"],
            fields["round"], fields["epoch"], name(fields["phase"], "--phase"),
        )  # fmt: skip
    elif kind == "resource":
        rec = (
            RESOURCE, now, name(fields["type"], "metric type"), name(fields["name"], "metric name"), fields["value"],
            name(fields["unit"], "--unit", optional=True), name(fields["device"], "--device", optional=True),
        )  # fmt: skip
    else:
        rec = (
            GENERATION, now, name(fields["operation"], "operation"), fields["round"], fields["chunk"],
            fields["duration"], fields["samples"], fields["memory_mb"], None,
        )  # fmt: skip
    sink = SocketSink(address)
    sink.put(rec)
    sent = sink.flush()
    sink.close()
    return sent


def log_job(**fields: Any) -> None:
    """Write or update this database's row in ``jobs`` (status, exit_code, start/end, config ...).

    Only the columns of ``jobs`` are accepted, each checked at the call (a TypeError or
    ValueError naming it): ids str or int, times numbers, ``exit_code`` an int, ``node``,
    ``status``, ``detail`` and ``user_name`` str, ``config`` / ``requested`` JSON-serialisable
    dicts. ``user_name`` (who submitted the job) need not be given: the row is created with
    SLURM_JOB_USER, else the user the writing process runs as. ``job_id``, ``array_job_id``, ``array_task_id`` and ``node`` change the database's
    ``sources`` row: the job's identity is stored there only, and every view shows it.
    """
    rec = (JOB, _time(), records.job_fields(fields))
    sink = _sink or _resolve_sink()
    if sink is not None:
        sink.put(rec)
