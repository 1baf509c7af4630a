"""Many `with Pool(...)` teardowns whose workers log: run as a script, one start method per run.

    python pool_teardown.py METHOD N_TEARDOWNS DB [--initializer]

Each round opens a Pool of 2 workers, maps 4 tasks that log 50 rows each, and leaves the
``with`` block, which calls ``Pool.terminate()`` (SIGTERM to every worker). A worker that
never dies hangs ``__exit__``: faulthandler then dumps every thread's stack and ends the
process with exit code 1, so the calling test fails with the stack instead of hanging.
Prints ``teardowns=N rows_expected=M`` on success.
"""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import sys
import time

import aetherium_hpc as ah

ROWS_PER_TASK = 50
TASKS = 4
#: One teardown takes well under a second even on a loaded machine; a stuck one is a hang.
ROUND_LIMIT_S = 60.0


def log_task(args: tuple[int, int]) -> int:
    round_no, task = args
    for i in range(ROWS_PER_TASK):
        ah.log_training_epoch_metric("teardown", float(i), round_no, task * 1000 + i, "train")
    return ROWS_PER_TASK


def main(argv: list[str]) -> int:
    method, n, db = argv[0], int(argv[1]), argv[2]
    with_init = "--initializer" in argv
    ah.init_db(db, buffer_size=1000, flush_interval=0.5)
    ctx = mp.get_context(method)
    kwargs = {}
    if with_init or method == "forkserver":  # forkserver children do not see our environment
        kwargs = {"initializer": ah.worker_initializer, "initargs": ah.worker_args()}
    for r in range(n):
        faulthandler.dump_traceback_later(ROUND_LIMIT_S, exit=True)
        with ctx.Pool(2, **kwargs) as pool:  # type: ignore[arg-type]
            assert sum(pool.map(log_task, [(r, t) for t in range(TASKS)])) == TASKS * ROWS_PER_TASK
        faulthandler.cancel_dump_traceback_later()
    started = time.monotonic()
    ah.shutdown_db()
    print(f"teardowns={n} rows_expected={n * TASKS * ROWS_PER_TASK} shutdown_s={time.monotonic() - started:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
