"""Pipeline code written against the store API, as a user writes it (run by test_one_writer.py).

python one_writer_child.py race GO_FILE DB N     # wait for GO_FILE, init_db(DB), log N rows
python one_writer_child.py pipeline OUT N        # init_db("metrics.db") + log_system_resources(OUT) + N rows
"""

from __future__ import annotations

import os
import sys
import time

import aetherium_hpc as ah
from aetherium_hpc.errors import StoreError


def race(go_file: str, db: str, n: int) -> int:
    while not os.path.exists(go_file):
        time.sleep(0.001)
    try:
        ah.init_db(db)
    except StoreError as exc:
        print(f"refused: {exc}", flush=True)
        return 3
    for i in range(n):
        ah.log_training_epoch_metric("race", float(i), os.getpid(), i, "train")
    time.sleep(0.5)  # both processes are alive at once
    ah.shutdown_db()
    print(f"wrote {n}", flush=True)
    return 0


def pipeline(out: str, n: int) -> int:
    ah.init_db("metrics.db")
    monitor = ah.log_system_resources(out)
    for i in range(n):
        ah.log_training_epoch_metric("loss", 1.0 / (i + 1), 0, i, "val")
    stats = ah.get_db().get_summary_stats()  # type: ignore[union-attr]
    print(f"training_metrics_count={stats['training_metrics_count']}", flush=True)
    monitor.stop()
    ah.shutdown_db()
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "race":
        sys.exit(race(args[0], args[1], int(args[2])))
    sys.exit(pipeline(args[0], int(args[1])))
