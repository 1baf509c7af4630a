"""Lock files: one writer per database, one merge per output.

:class:`FileLock` is the one file lock of the package. The process that opens a store takes it on
``<db>-writer`` (:class:`WriterLock`) for as long as the store is open, and writes into it who it
is (pid, host, start time). A second :func:`~.client.init_db` of the same file by an unrelated
process finds the lock taken and is refused with an error that names the holder, instead of
a second writer losing its rows to "database is locked". (Processes that belong together --
workers, commands of a job -- find the store in their environment and join it.) A merge holds it
on ``<output>.lock``. The lock dies with its process, so a crashed holder never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LockUnsupportedError, StoreError

__all__ = ["FileLock", "Holder", "WriterLock", "check_path", "lock_path"]

#: How long a second opener waits for the holder to write who it is (right after it took the lock).
HOLDER_WAIT_S = 2.0
#: Poll interval of :meth:`FileLock.acquire` while another process holds the lock.
LOCK_POLL_S = 0.1


def check_path(db_path: str) -> None:
    """Refuse a database path that is not a regular file or a new path (``/dev/null``, a folder, a
    FIFO), or that is a symbolic link another user made (a link planted in a shared folder); and a
    lock file beside it that is a link (written through, it would change the file it points at)."""
    if os.path.islink(lock_path(db_path)):
        raise StoreError(f"{lock_path(db_path)}: a symbolic link; refused (it would be written through): remove it")
    try:
        st = os.lstat(db_path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid != os.getuid():
        raise StoreError(f"{db_path}: a symbolic link that uid {st.st_uid} made; refused: choose a path of yours")
    try:
        st = os.stat(db_path)
    except FileNotFoundError:  # a dangling link of ours: SQLite creates its target
        return
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise StoreError(f"{db_path}: {what}; pass the path of a database file, or a new one")


def lock_path(db_path: str) -> str:
    return db_path + "-writer"


class FileLock:
    """An exclusive lock on a file of its own, which its holder removes when it releases it.

    Locking: ``flock``; on a file system without it (some Lustre / NFS mounts) POSIX record locks
    (``lockf``) instead. Where neither works, or the lock file cannot be created (a read-only
    folder), :meth:`acquire` raises :class:`~..errors.LockUnsupportedError` and the caller decides
    whether to go on unguarded. A lock file that is a symbolic link is refused
    (:class:`~..errors.StoreError`), and so is one of another user unless ``shared`` (a folder a
    group shares: then a lock file we may only read is locked through a read-only descriptor,
    with ``flock`` alone).

    :meth:`release` removes the file while it still holds the lock; an opener that then gets the
    lock finds its file gone from the path and starts again, so two processes never hold locks on
    two files of one name. The lock dies with its process (a crash leaves the file, not the lock).
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd
        self._pid = os.getpid()

    @classmethod
    def acquire(
        cls, path: str, *, shared: bool = False, wait_s: float = 0.0, on_wait: Callable[[], None] | None = None
    ) -> FileLock | None:
        """The lock on ``path`` (created if missing), or None when another process still holds it
        after ``wait_s`` seconds; ``on_wait`` is called once when the wait begins."""
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            fd = _open(path, shared)
            try:
                locked = _lock(fd, path)
                if locked and _still_at(fd, path):
                    return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if locked:  # the holder removed the file we locked: open the path again
                continue
            if time.monotonic() >= deadline:
                return None
            if not waiting and on_wait is not None:
                on_wait()
            waiting = True
            time.sleep(LOCK_POLL_S)

    def release(self) -> None:
        """Remove the lock file, then unlock (only in the process that took the lock)."""
        fd, self.fd = self.fd, None
        if fd is None or os.getpid() != self._pid:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:  # (a fork child may still share the descriptor: unlock, do not just close)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # a lockf lock: closing releases it
        os.close(fd)

    def forget_in_fork_child(self) -> None:
        """In a fork child: close the inherited descriptor; the parent keeps the lock."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _open(path: str, shared: bool) -> int:
    """Open (create) the lock file ``path``; see :class:`FileLock` for what is refused."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_RDWR | os.O_CREAT, 0o644 if shared else 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path}: a symbolic link; refused (it would be written through)") from exc
        if not (shared and exc.errno in (errno.EACCES, errno.EPERM) and os.path.exists(path)):
            raise LockUnsupportedError(f"{path}: cannot be created ({exc.strerror})") from None
        try:  # another user's lock file: flock needs only reading
            fd = os.open(path, flags | os.O_RDONLY)
        except OSError as again:
            raise StoreError(f"{path}: cannot open this lock file ({again.strerror}); remove it") from None
    if not shared and os.fstat(fd).st_uid != os.getuid():
        os.close(fd)
        raise StoreError(f"{path}: a file of another user; refused: remove it, or choose another path")
    return fd


def _lock(fd: int, path: str) -> bool:
    """Lock ``fd`` (the file ``path``) without waiting: True, or False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        why = exc.strerror or str(exc)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise LockUnsupportedError(f"{path}: cannot be locked (flock: {why}; lockf: {exc.strerror or exc})") from None


def _still_at(fd: int, path: str) -> bool:
    """Whether the file open as ``fd`` is still the one at ``path`` (its holder had not removed it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class Holder:
    """The process that writes a database, as its ``<db>-writer`` file tells."""

    pid: int
    host: str
    started: float

    def __str__(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        return f"pid {self.pid} on {self.host} (since {since})"


class WriterLock:
    """The exclusive right to write one database file: a :class:`FileLock` on ``<db>-writer``."""

    def __init__(self, db_path: str, lock: FileLock) -> None:
        self.db_path = db_path
        self.path = lock.path
        self._lock = lock

    @classmethod
    def acquire(cls, db_path: str) -> WriterLock | Holder | None:
        """The lock, or who holds it; None where the lock cannot be taken (then unguarded)."""
        path = lock_path(db_path)
        try:
            lock = FileLock.acquire(path)
        except LockUnsupportedError:
            return None  # e.g. a read-only folder: the writer itself will say what is wrong
        if lock is None:
            return _read_holder(path)
        writer = cls(db_path, lock)
        writer.publish()  # who holds it, at once: what a refused second opener names
        return writer

    def publish(self) -> None:
        """Say who holds the database."""
        fd = self._lock.fd
        if fd is None:
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        self._lock.release()

    def forget_in_fork_child(self) -> None:
        """In a fork child: close the inherited descriptor; the parent keeps the lock."""
        self._lock.forget_in_fork_child()


def _read_holder(path: str, wait_s: float = HOLDER_WAIT_S) -> Holder:
    """Who holds ``path``; waits (bounded) until the holder has written who it is."""
    deadline = time.monotonic() + wait_s
    info: dict[str, object] = {}
    while True:
        try:
            with open(path, encoding="utf-8") as fh:
                info = json.loads(fh.read() or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pid, started = info.get("pid"), info.get("started")
    return Holder(
        pid=pid if isinstance(pid, int) else 0,
        host=str(info.get("host", "?")),
        started=float(started) if isinstance(started, (int, float)) else 0.0,
    )
