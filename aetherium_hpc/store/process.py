"""This process's store: where its log calls go, and opening, joining and closing it.

A process has at most one store -- :func:`init_db` opens or joins it, :func:`get_db` returns it,
:func:`shutdown_db` and :func:`close_store` close it -- and one :data:`sink`, where the log calls
of :mod:`.client` put their records: the owned store's :class:`RecordQueue`, or a
:class:`SocketSink` to the node store another process owns (found through
``AETHERIUM_METRICS_ADDR`` / ``AETHERIUM_METRICS_KEY``). A fork child starts with neither
(the writer thread is the parent's): what it logs goes through the node socket.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

from .. import envvars, signal_policy
from ..errors import StoreError
from ..identity import SourceInfo, source_from_environ
from .address import StoreAddress, publish, unpublish
from .options import StoreOptions, central_url
from .ownership import Holder, WriterLock, check_path
from .records import STATS
from .stores import JoinedStore, MetricsStore, set_recent_source
from .transport import SocketSink
from .writer import StoreWriter

log = logging.getLogger(__name__)

_lock = threading.RLock()
_store: MetricsStore | JoinedStore | None = None
#: Where this process's log calls put their records: the owned store's RecordQueue, a SocketSink,
#: or None (not known yet: :func:`resolve_sink`).
sink: Any = None
_warned_uninitialized = False
_before_close: list[Callable[[], object]] = []  # resource monitors logging into this process's store

NOT_INITIALIZED = (
    "Metrics database not initialized: call aetherium_hpc.init_db(path) in the main process "
    "(or run under `aetherium-hpc run`); records logged until then are dropped"
)


def _open_here(store: MetricsStore | JoinedStore) -> bool:
    return not store.closed and store.owner_pid == os.getpid()


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

    Where the node store the environment names does not answer, ``db_path`` is opened instead,
    and what this process logged before for the node store goes there too (one line says so).
    """
    global _store, sink
    with _lock:
        path = os.path.abspath(os.fspath(db_path))
        if _store is not None and _open_here(_store):
            if _store.path == path or isinstance(_store, JoinedStore):
                return _store
            if _store.is_node_store:  # pipeline code run in the job's own process
                _say_joined(path, _store.path)
                return _store
            raise StoreError(
                f"init_db({db_path!s}): a store is already open at {_store.path}; call shutdown_db() first"
            )
        node_store = StoreAddress.from_environ() if join else None
        if node_store is not None:
            joined = _join_node_store(path, node_store)
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
            writer = StoreWriter(path, options=options, source=source if source is not None else source_from_environ())
            store = MetricsStore(writer, central=central_url(options), listen=listen, socket_dir=socket_dir, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store.is_node_store = not join
        if node_store is not None:
            _replace_node_store(node_store, store)
        _store = store
        sink = store.queue
        if store.address is not None:
            publish(store.address, store.path)
        else:
            os.environ[envvars.METRICS_DB] = store.path
        signal_policy.flush_on_sigterm(close_store)  # only where SIGTERM had its default action
        return store


def _join_node_store(path: str, address: StoreAddress) -> JoinedStore | None:
    """Join the node store at ``address`` (the environment names it: the job's runtime set it);
    None when it does not answer (its address is then no longer published)."""
    node_db = os.environ.get(envvars.METRICS_DB) or path
    joined = _join(node_db, address)
    if joined is None:
        unpublish()
        return None
    if node_db != path:
        _say_joined(path, node_db)
    return joined


def _replace_node_store(address: StoreAddress, store: MetricsStore) -> None:
    """``store`` was opened because the node store at ``address`` did not answer: what this process
    logged for the node store meanwhile (its sink holds it) goes into ``store``; one line says so."""
    held = sink.hand_over() if isinstance(sink, SocketSink) and sink.address == address else []
    store.queue.put_many(held)
    logged = sum(1 for rec in held if rec[0] != STATS)
    log.warning(
        "aetherium-hpc: the node store named by %s (%s) does not answer; records go to %s instead%s",
        envvars.METRICS_ADDR, address.path, store.path,
        f" (the {logged} this process logged before too)" if logged else "",
    )  # fmt: skip


def _say_joined(path: str, node_db: str) -> None:
    log.warning(
        "aetherium-hpc: init_db(%s): this process runs inside a job whose node store is %s; "
        "records go there (%s is not opened)",
        path, node_db, path,
    )  # fmt: skip


def _join(db_path: str, address: StoreAddress) -> JoinedStore | None:
    """A :class:`JoinedStore` on ``address``, or None when nobody answers there."""
    global sink
    joining = sink if isinstance(sink, SocketSink) and sink.address == address else SocketSink(address)
    if not joining.connected:
        if joining is not sink:
            joining.abandon()  # never connected: nothing to send, nothing to close
        return None
    sink = joining
    publish(address, db_path)
    return JoinedStore(db_path, joining)


def get_db(*, wait: bool = True) -> MetricsStore | JoinedStore | None:
    """The store this process logs into: the one :func:`init_db` opened or joined, or -- in a
    worker process of the node (fork or spawn child, another srun task) -- the node store its
    environment names. None when there is none.

    ``wait=False`` (the resource monitor's thread): None instead of waiting while another thread
    opens or closes the store, so that no thread of ours ever waits for this module's lock while
    the closing thread waits for it (see "Locks" in docs/ARCHITECTURE.md)."""
    global _store
    store = _store
    if store is not None and _open_here(store):
        return store
    if not _lock.acquire(blocking=wait):
        return None
    try:
        if _store is None or not _open_here(_store):
            path = os.environ.get(envvars.METRICS_DB)
            found = resolve_sink(warn=False)
            if path and isinstance(found, SocketSink) and found.connected:
                _store = JoinedStore(path, found)
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
    if isinstance(store, MetricsStore) and store.is_node_store and not store.closed:
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
    global _store, sink
    _run_close_hooks()
    with _lock:
        store, _store = _store, None
        old_sink, sink = sink, None
        if isinstance(store, MetricsStore) and store.owner_pid == os.getpid():
            store.close()
            if store.address is not None and os.environ.get(envvars.METRICS_ADDR) == store.address.path:
                unpublish()
        elif isinstance(old_sink, SocketSink):
            old_sink.close()


atexit.register(close_store)


def _after_fork_in_child() -> None:
    # The writer thread does not exist in a fork child: its records go through the socket.
    # The descriptors the child inherited (the parent's socket, connection and lock) are the
    # parent's: close them here without a word on them.
    global _store, sink, _lock
    _lock = threading.RLock()
    set_recent_source(None)  # the monitor thread is the parent's: ask the node store
    _before_close.clear()
    store, old_sink = _store, sink
    _store = None
    sink = None
    if isinstance(store, MetricsStore):
        store.forget_in_fork_child()
    if isinstance(old_sink, SocketSink):
        old_sink.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)


def resolve_sink(warn: bool = True) -> Any:
    """Find where this process's records go (:data:`sink`, once found): the local store, or the
    node socket the environment names; None when there is neither (said once, with ``warn``)."""
    global sink, _warned_uninitialized
    with _lock:
        if sink is not None:
            return sink
        address = StoreAddress.from_environ()
        if address is not None:
            sink = SocketSink(address)
            return sink
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
    path = store.path if store is not None else os.environ.get(envvars.METRICS_DB, "")
    return address.path, address.key.hex(), path


def worker_initializer(path: str, key_hex: str, db_path: str | None = None) -> None:
    """Pool initializer for spawn/forkserver workers: connect this worker to the store.

    ``Pool(n, initializer=worker_initializer, initargs=worker_args())``
    """
    global sink
    address = StoreAddress(path, bytes.fromhex(key_hex))
    os.environ.update(address.to_environ())
    if db_path:
        os.environ[envvars.METRICS_DB] = db_path
    with _lock:
        if isinstance(sink, SocketSink):
            sink.close()
        sink = SocketSink(address)
