"""The seed's own sequence, as a pipeline writes it, in a fresh interpreter (tests/reliability/test_seed_sequence.py).

``python seed_sequence.py DB SLEEP_S``: init_db, log_system_resources, a fork ``Pool(4)`` kept open
whose workers log, ``SLEEP_S`` seconds of sleep (the pool still open), then ``shutdown_db()``.
Prints one JSON line: when ``shutdown_db()`` was called and how long it took.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time

import aetherium_hpc as ah


def work(i: int) -> int:
    ah.log_training_epoch_metric("loss", 1.0 / (i + 1), round_number=0, epoch_number=i)
    t = ah.log_data_generation_start(operation="signal_injection", round_number=0, chunk_number=i)
    ah.log_data_generation_complete(
        t, operation="signal_injection", samples_generated=10, round_number=0, chunk_number=i
    )
    return i


def main(db: str, sleep_s: float) -> None:
    ah.init_db(db)
    ah.log_system_resources()
    pool = multiprocessing.get_context("fork").Pool(4)  # kept open past shutdown_db, as pipelines do
    assert pool.map(work, range(40)) == list(range(40))
    time.sleep(sleep_s)
    called = time.time()
    t0 = time.monotonic()
    ah.shutdown_db()
    took = time.monotonic() - t0
    print(json.dumps({"called": called, "took": took}), flush=True)
    pool.close()
    pool.join()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
