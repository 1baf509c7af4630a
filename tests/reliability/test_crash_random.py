"""SIGKILL of the process that owns the writer at 20 seeded random moments under load.

Unlike tests/store/test_store_crash.py (3 fixed delays, plain fork Processes) the producer here runs a
fork Pool whose workers log through the node socket while the main process logs directly; the
kill lands at a seeded random moment in [0.05, 1.2] s after the store is open.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import assert_committed_kept, committed_per_producer
from rel_helpers import integrity

import aetherium_hpc as ah

PRODUCER = r"""
import sys, threading, multiprocessing as mp
import aetherium_hpc as ah

def worker(tag):
    i = 0
    while True:
        ah.log_training_epoch_metric("seq", float(i), tag, i, "train")
        i += 1

if __name__ == "__main__":
    ah.init_db(sys.argv[1], buffer_size=int(sys.argv[2]), flush_interval=0.05)
    pool = mp.get_context("fork").Pool(2)
    for tag in (1, 2):
        pool.apply_async(worker, (tag,))
    def main_thread_producer():
        i = 0
        while True:
            ah.log_training_epoch_metric("seq", float(i), 0, i, "train")
            ah.log_resource_metric("cpu", "system_total", float(i % 100), "%")
            t = ah.log_data_generation_start("signal_injection", 0, i)
            ah.log_data_generation_complete(t, "signal_injection", 1, 0, i)
            i += 1
    threading.Thread(target=main_thread_producer, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
"""

SEED = 20240508
MOMENTS = [(round(random.Random(SEED + k).uniform(0.05, 1.2), 3), random.Random(SEED - k).choice([50, 200, 1000]))
           for k in range(20)]  # fmt: skip


@pytest.mark.parametrize(("delay", "buffer_size"), MOMENTS, ids=[f"kill{k:02d}" for k in range(20)])
def test_sigkill_at_a_random_moment_keeps_every_committed_batch(tmp_path: Path, delay: float, buffer_size: int) -> None:
    db = tmp_path / "crash.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIUM_METRICS")}
    env["AETHERIUM_LOCAL_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(db), str(buffer_size)],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        seen = committed_per_producer(db)  # what a reader saw committed just before the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned Pool workers too
        except ProcessLookupError:
            pass
        proc.wait(30)
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    try:
        after = assert_committed_kept(conn, seen)  # batches commit in order: a gap-free prefix per producer
        conn.execute("SELECT count(*), avg(value) FROM resource_metrics").fetchone()
        conn.execute("SELECT count(*) FROM generation_metrics").fetchone()
    finally:
        conn.close()
    # A requeued job reopens the file and keeps everything.
    store = ah.init_db(str(db), listen=False)
    assert store.get_summary_stats()["training_metrics_count"] == sum(after.values())
    ah.shutdown_db()
