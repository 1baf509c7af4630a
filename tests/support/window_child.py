"""Child processes of tests/monitors/test_monitor_window.py (importable under spawn, runnable as a script)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import aetherium_hpc


def recent_here(seconds: float = 60.0) -> list[list[Any]]:
    """This process's ``get_db().recent(seconds)``, as a list (picklable, comparable)."""
    store = aetherium_hpc.get_db()
    assert store is not None, "no node store in this worker"
    return sorted([list(key), value] for key, value in store.recent(seconds).items())


def recent_into(queue: Any, seconds: float = 60.0) -> None:
    queue.put(recent_here(seconds))


def serve(db: str) -> None:
    """Own a store with a monitor; print its environment as one JSON line; run until stdin closes."""
    from aetherium_hpc.monitors import log_system_resources

    store = aetherium_hpc.init_db(db, flush_interval=0.2)
    monitor = log_system_resources(interval=0.05, gpu=False)
    while monitor.samples_taken < 4:  # 3 CPU shares (the first tick is their baseline)
        time.sleep(0.02)
    assert store.address is not None
    print(json.dumps({**store.address.to_environ(), "AETHERIUM_METRICS_DB": store.path}), flush=True)
    sys.stdin.read()
    monitor.stop()
    aetherium_hpc.shutdown_db()


if __name__ == "__main__":
    serve(sys.argv[1])
