"""Child processes for the SIGTERM tests: each logs through the node socket, then gets stuck.

    python sigterm_children.py stuck-in-lock N      # main thread blocked in a lock, SIGTERM to another thread
    python sigterm_children.py exit-flush-off-main N  # the exit flush runs in a thread when SIGTERM comes

Each prints ``ready`` once it has logged N rows and is where the test wants it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import aetherium_hpc as ah
from aetherium_hpc.store import process


def _log(n: int) -> None:
    for i in range(n):
        ah.log_training_epoch_metric("sigterm", float(i), 0, i, "train")


def stuck_in_lock(n: int) -> None:
    """The race of a Pool worker, made certain: SIGTERM's C handler runs in a thread other than
    the main one, and the main thread sits in a lock that nobody will ever release."""
    _log(n)
    other = threading.Thread(target=threading.Event().wait, daemon=True)  # inherits an open mask
    other.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the kernel must pick `other`
    lock = threading.Lock()
    lock.acquire()
    print("ready", flush=True)
    lock.acquire()  # forever


def exit_flush_off_main(n: int) -> None:
    """SIGTERM arrives while a non-main thread runs the exit flush (shutdown_db)."""
    _log(n)
    sink = process.sink
    assert sink is not None
    real = sink._send_buffered

    def slow_send() -> bool:
        print("ready", flush=True)
        time.sleep(1.0)  # the test sends SIGTERM now
        return real()

    sink._send_buffered = slow_send  # type: ignore[method-assign]
    flusher = threading.Thread(target=ah.shutdown_db)
    flusher.start()
    flusher.join()
    time.sleep(30)  # a process that swallowed SIGTERM would end here, 30 s later, with 0


if __name__ == "__main__":
    {"stuck-in-lock": stuck_in_lock, "exit-flush-off-main": exit_flush_off_main}[sys.argv[1]](int(sys.argv[2]))
