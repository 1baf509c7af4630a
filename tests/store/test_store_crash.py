"""SIGKILL of the process that owns the writer: the file stays sound and keeps every committed batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import assert_committed_kept, committed_per_producer

PRODUCER = r"""
import sys, threading, multiprocessing as mp
import aetherium_hpc as ah

def worker(tag):
    i = 0
    while True:  # logs until the parent is killed and the socket goes away
        ah.log_training_epoch_metric("seq", float(i), tag, i, "train")
        i += 1

if __name__ == "__main__":
    ah.init_db(sys.argv[1], buffer_size=200, flush_interval=0.05)
    ctx = mp.get_context("fork")
    for tag in (1, 2):
        ctx.Process(target=worker, args=(tag,), daemon=True).start()
    def main_thread_producer():
        i = 0
        while True:
            ah.log_training_epoch_metric("seq", float(i), 0, i, "train")
            ah.log_resource_metric("cpu", "system_total", float(i % 100), "%")
            i += 1
    threading.Thread(target=main_thread_producer, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
"""


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_sigkill_of_the_writer_keeps_every_committed_batch(tmp_path: Path, delay: float) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(db)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # Kill only once something is committed (a loaded machine may take a while to start producing).
        deadline = time.monotonic() + 60
        while not committed_per_producer(db) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        seen = committed_per_producer(db)  # what a reader saw committed just before the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.3)  # the orphaned fork workers find the socket dead and drop what they log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        proc.wait(30)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        after = assert_committed_kept(conn, seen)  # batches commit in order: a gap-free prefix per producer
        assert sum(after.values()) > 0
        # The resource view still unpacks every chunk that survived.
        conn.execute("SELECT count(*), avg(value) FROM resource_metrics").fetchone()
    finally:
        conn.close()
    # The file can be opened by a new writer (a requeued job), which keeps everything.
    import aetherium_hpc as ah

    store = ah.init_db(str(db))
    assert store.get_summary_stats()["training_metrics_count"] == sum(after.values())
    ah.shutdown_db()
