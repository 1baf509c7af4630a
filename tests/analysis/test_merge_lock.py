"""The file lock of a merge's output (and of a store's writer): removed when released, still exclusive.

A lock file is removed by its holder while it holds it; a process that was waiting on the removed
file locks the new one instead, so no two processes ever hold "the" lock. Without ``flock`` the
lock is a POSIX record lock; without either, a merge goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from task_dbs import write_task_db
from testenv import ROOT

from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.errors import LockUnsupportedError
from aetherium_hpc.store import FileLock, ownership

#: A second process that tries the lock once, on a file system without flock: prints held / busy.
NO_FLOCK_CHILD = """
import errno, fcntl, sys
def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = no_flock
from aetherium_hpc.store import FileLock, ownership
lock = FileLock.acquire(sys.argv[1])
print("busy" if lock is None else "held")
"""


def _no_flock(fd: int, op: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def _try_in_another_process(path: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", NO_FLOCK_CHILD, str(path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_merge_leaves_no_lock_file(tmp_path: Path) -> None:
    write_task_db(tmp_path / "in" / "t0.db", 0)
    out = tmp_path / "merged.db"
    assert merge([tmp_path / "in"], out).sources_added == 1
    assert out.is_file() and not Path(f"{out}.lock").exists()


def test_a_waiter_on_a_removed_lock_file_locks_the_new_one_and_excludes_the_others(tmp_path: Path) -> None:
    path = str(tmp_path / "out.db.lock")
    first = FileLock.acquire(path)
    assert first is not None and os.path.exists(path)
    assert FileLock.acquire(path) is None  # busy, no wait
    waited: list[FileLock | None] = []
    waiting = threading.Event()
    waiter = threading.Thread(target=lambda: waited.append(FileLock.acquire(path, wait_s=30, on_wait=waiting.set)))
    waiter.start()
    assert waiting.wait(30)  # it has opened (and failed to lock) the file the first holder removes
    first.release()
    waiter.join(30)
    (second,) = waited
    assert second is not None and second.fd is not None
    assert os.fstat(second.fd).st_ino == os.stat(path).st_ino  # the file now at the path
    assert FileLock.acquire(path) is None  # and it excludes a newcomer
    second.release()
    assert not os.path.exists(path)


def test_a_lock_taken_on_a_file_its_holder_just_removed_is_taken_again_on_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "out.db.lock")
    first = FileLock.acquire(path)
    assert first is not None
    opened: list[int] = []  # each descriptor the acquire opened
    real_open = ownership._open

    def open_then_the_holder_releases(p: str, shared: bool) -> int:
        fd = real_open(p, shared)
        opened.append(fd)
        if len(opened) == 1:
            first.release()  # between this open and its lock: the file just opened is removed
        return fd

    monkeypatch.setattr(ownership, "_open", open_then_the_holder_releases)
    second = FileLock.acquire(path)
    monkeypatch.undo()
    assert second is not None and second.fd is not None
    assert len(opened) == 2  # it locked the removed file, found it gone, and opened the path again
    assert os.fstat(second.fd).st_ino == os.stat(path).st_ino
    assert FileLock.acquire(path) is None
    second.release()
    assert not os.path.exists(path)


def test_without_flock_a_posix_record_lock_excludes_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    path = tmp_path / "out.db.lock"
    held = FileLock.acquire(str(path))
    assert held is not None
    assert _try_in_another_process(path) == "busy"
    held.release()
    assert not path.exists()
    assert _try_in_another_process(path) == "held"


def test_without_any_lock_a_merge_goes_on_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    monkeypatch.setattr(fcntl, "lockf", _no_flock)
    with pytest.raises(LockUnsupportedError, match="cannot be locked"):
        FileLock.acquire(str(tmp_path / "x.lock"))
    write_task_db(tmp_path / "in" / "t0.db", 0)
    caplog.set_level(logging.WARNING)
    assert merge([tmp_path / "in"], tmp_path / "merged.db").sources_added == 1
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be locked" in r.getMessage()]
    assert "do not run two merges" in warning
