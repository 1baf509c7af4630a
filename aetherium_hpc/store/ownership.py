"""One database file, one writer: who holds a database.

The process that opens a store takes an exclusive ``flock`` on ``<db>-writer`` for as long
as the store is open, and writes into it who it is (pid, host, start time). A second :func:`~.client.init_db` of the same file by an unrelated
process finds the lock taken and is refused with an error that names the holder, instead of
a second writer losing its rows to "database is locked". (Processes that belong together --
workers, commands of a job -- find the store in their environment and join it.) The lock
dies with its process, so a crashed writer never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass

from ..errors import StoreError

__all__ = ["Holder", "WriterLock", "check_path", "lock_path"]

#: How long a second opener waits for the holder to write who it is (right after it took the lock).
HOLDER_WAIT_S = 2.0


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
    """The exclusive right to write one database file (see the module docstring)."""

    def __init__(self, db_path: str, fd: int) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = fd
        self._pid = os.getpid()

    @classmethod
    def acquire(cls, db_path: str) -> WriterLock | Holder | None:
        """The lock, or who holds it; None when the file system has no flock (then unguarded)."""
        path = lock_path(db_path)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StoreError(f"{path}: a symbolic link; refused (it would be written through)") from exc
                return None  # a read-only folder: the writer itself will say what is wrong
            if os.fstat(fd).st_uid != os.getuid():
                os.close(fd)
                raise StoreError(f"{path}: a file of another user; refused: remove it, or choose another path")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return _read_holder(path)
            except OSError:  # e.g. Lustre mounted without flock
                os.close(fd)
                return None
            # The previous holder may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else will find. Start again.
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    lock = cls(db_path, fd)
                    lock.publish()  # who holds it, at once: what a refused second opener names
                    return lock
            except FileNotFoundError:
                pass
            os.close(fd)

    def publish(self) -> None:
        """Say who holds the database."""
        if self._fd is None:
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def forget_in_fork_child(self) -> None:
        """In a fork child: close the inherited descriptor; the parent keeps the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
