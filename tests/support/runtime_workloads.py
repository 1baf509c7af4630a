"""Workloads for launcher/runtime tests, imported inside jobs (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import aetherium_hpc as ah


def _chunk(c: int) -> int:
    t = ah.log_data_generation_start(operation="signal_injection", round_number=0, chunk_number=c)
    ah.log_data_generation_complete(start_time=t, operation="signal_injection", samples_generated=1,
                                    round_number=0, chunk_number=c, memory_used_mb=1.0)  # fmt: skip
    return c


def log_then_wait(marker: str, n: int = 50, chunks: int = 4, sleep_s: float = 120.0) -> int:
    """Log ``n`` training rows and ``chunks`` generation rows (from Pool workers), announce the
    pid in ``marker``, then sleep in a Pool wait so that a signal finds work in progress."""
    for i in range(n):
        ah.log_training_epoch_metric("loss", float(i), round_number=0, epoch_number=i)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        assert sorted(pool.map(_chunk, range(chunks))) == list(range(chunks))
        tmp = Path(marker + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)
        pool.apply(time.sleep, (sleep_s,))  # the main process waits on the pool: a signal lands here
    return n


def log_rows(n: int = 5, label: str = "x", learning_rate: float = 0.0, seed: int = 0) -> dict[str, object]:
    """Log ``n`` training rows; returns its arguments (for array tests)."""
    for i in range(n):
        ah.log_training_epoch_metric(label, float(i), round_number=seed, epoch_number=i)
    return {"label": label, "learning_rate": learning_rate, "seed": seed, "pid": os.getpid()}


def log_slowly(seconds: float = 12.0, learning_rate: float = 0.0, seed: int = 0) -> int:
    """Log a training row and a generation chunk every 0.1 s for ``seconds`` (a job long enough
    for the central sender's periodic pushes)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        t = ah.log_data_generation_start(operation="gen", round_number=seed, chunk_number=n)
        ah.log_data_generation_complete(t, operation="gen", samples_generated=10, round_number=seed,
                                        chunk_number=n)  # fmt: skip
        ah.log_training_epoch_metric("loss", learning_rate + 1.0 / (n + 1), epoch_number=n)
        n += 1
        time.sleep(0.1)
    return 0
