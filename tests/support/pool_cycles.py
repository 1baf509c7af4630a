"""Executors kept open across stores (tests/reliability/test_pool_cycles.py).

``python pool_cycles.py KIND FOLDER CYCLES``: CYCLES times ``init_db(FOLDER/cCYCLE.db)``, tasks
on one executor of KIND that log ``TASKS x ROWS`` training rows, ``shutdown_db()``. The executor
is made in the first cycle and kept to the end (``loky``: joblib's reusable executor through
``Parallel``; ``executor``: a fork ``ProcessPoolExecutor``; ``pool``: a fork ``Pool``). Prints one JSON line per cycle: its file and
the rows expected.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import sys

import aetherium_hpc as ah

TASKS = 8
ROWS = 125


def log_rows(cycle: int, task: int) -> int:
    for i in range(ROWS):
        ah.log_training_epoch_metric("loss", float(i), round_number=cycle * 100 + task, epoch_number=i)
    return os.getpid()


def main(kind: str, folder: str, cycles: int) -> None:
    executor: object = None
    for cycle in range(cycles):
        db = os.path.join(folder, f"c{cycle}.db")
        ah.init_db(db)
        if executor is None and kind == "executor":
            executor = cf.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork"))
        elif executor is None and kind == "pool":
            executor = multiprocessing.get_context("fork").Pool(4)
        if kind == "loky":
            from joblib import Parallel, delayed

            Parallel(n_jobs=4, backend="loky")(delayed(log_rows)(cycle, t) for t in range(TASKS))
        elif kind == "executor":
            assert isinstance(executor, cf.ProcessPoolExecutor)
            list(executor.map(log_rows, [cycle] * TASKS, range(TASKS)))
        else:
            executor.starmap(log_rows, [(cycle, t) for t in range(TASKS)])  # type: ignore[attr-defined]
        ah.shutdown_db()
        print(json.dumps({"db": db, "expected": TASKS * ROWS}), flush=True)
    if kind == "executor":
        executor.shutdown()  # type: ignore[attr-defined]
    elif kind == "pool":
        executor.close()  # type: ignore[attr-defined]
        executor.join()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
