"""Workloads run inside jobs (local backend) and in child processes by the reliability tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from procs import log_range  # noqa: F401 -- the tests reach it as rel_workloads.log_range

import aetherium_hpc as ah
from aetherium_hpc.store import process

VICTIM_ROUND = 99


def _victim(count_file: str, n: int) -> None:
    """Log n rows, flush them explicitly through this process's sink, say how many, then hang."""
    for i in range(n):
        ah.log_training_epoch_metric("victim", float(i), VICTIM_ROUND, i, "train")
    sink = process.sink
    assert sink is not None and sink.flush(), "the worker's socket sink did not flush"
    tmp = count_file + ".tmp"
    Path(tmp).write_text(f"{os.getpid()} {n}")
    os.replace(tmp, count_file)
    for i in range(n, n + 1000):  # more records, not flushed: may or may not arrive
        ah.log_training_epoch_metric("victim", float(i), VICTIM_ROUND, i, "train")
    time.sleep(600)


def pool_worker_killed(count_file: str, n_victim: int = 1234, n_others: int = 20_000) -> dict[str, int]:
    """A fork Pool: one worker is SIGKILLed while three other tasks log; the job goes on."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.apply_async(_victim, (count_file, n_victim))
        others = [pool.apply_async(log_range, ((p, n_others),)) for p in range(3)]
        deadline = time.monotonic() + 60
        while not os.path.exists(count_file):
            assert time.monotonic() < deadline, "the victim never flushed"
            time.sleep(0.01)
        pid, flushed = (int(x) for x in Path(count_file).read_text().split())
        os.kill(pid, signal.SIGKILL)
        done = [r.get(120) for r in others]
        # The Pool replaced the dead worker: it still takes work.
        assert pool.apply(log_range, ((3, 10),)) == 10
        time.sleep(1.0)  # 5 flush intervals of the replacement worker's SocketSink
    return {"victim_pid": pid, "flushed": flushed, "others": sum(done)}


def tiny(n: int = 1, seed: int = 0) -> int:
    ah.log_training_epoch_metric("loss", 0.5, seed, 0)
    return seed
