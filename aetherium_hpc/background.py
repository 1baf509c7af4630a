"""Background threads of aetherium-hpc keep the job's signals away from themselves.

A process-directed signal (SIGTERM from scancel or Pool.terminate, USR2 from Slurm) goes to
any one thread that does not block it. Python runs signal handlers in the main thread only,
and a main thread blocked in a C call (a lock, a pipe read) is woken by EINTR only when the
signal was delivered to it. So every thread we start blocks these signals first: the kernel
then delivers them to the main thread, which wakes up and runs the handler at once.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

JOB_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}

#: Native ids (as text, as /proc/<pid>/task lists them) of this process's own threads that never
#: start a process -- the store writer, the monitor, the socket threads -- while they run: the
#: process-tree walk of the monitor does not read their ``children`` files (one open each a tick).
CHILDLESS_THREADS: set[str] = set()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CHILDLESS_THREADS.clear)


def childless(target: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the target of a thread that never starts a process (see :data:`CHILDLESS_THREADS`)."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> Any:
        tid = str(threading.get_native_id())
        CHILDLESS_THREADS.add(tid)
        try:
            return target(*args, **kwargs)
        finally:
            CHILDLESS_THREADS.discard(tid)

    return run


def block_job_signals() -> None:
    """Call first thing in a background thread's target."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    except (AttributeError, OSError, ValueError):  # not POSIX: nothing to do
        pass
