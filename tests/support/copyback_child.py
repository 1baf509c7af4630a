"""Child processes of tests/reliability/test_copyback.py (and a workload for its Slurm test).

    python copyback_child.py job ARGS_JSON          run_task around a workload that logs until killed
    python copyback_child.py increment ARGS_JSON    a full copy, then one large incremental copy
    python copyback_child.py finish_fail ARGS_JSON  run_task whose run directory fills up (or turns
                                                    read-only) before the final copy

Every mode ends by itself after ``limit_s`` seconds, so a test that fails to kill it cannot hang.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aetherium_hpc as ah
from aetherium_hpc.config import Monitoring
from aetherium_hpc.identity import JobIdentity
from aetherium_hpc.runtime import run_task
from aetherium_hpc.store.backup import CopyBack
from aetherium_hpc.store.client import log_resource_samples

SPECS = [("cpu", "system_total", "%", ""), ("ram", "system_used", "MB", "")] + [
    ("gpu", name, "u", f"GPU-{g}") for g in range(4) for name in ("utilization", "power", "memory_used")
]


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def log_until_killed(marker: str, limit_s: float = 120.0, every_s: float = 0.01) -> int:
    """Log training rows (round 0, epoch = 0, 1, 2, ...) and resource samples until ``limit_s``;
    writes the pid to ``marker`` once started. A workload for jobs that are killed."""
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + limit_s
    i = 0
    while time.monotonic() < deadline:
        ah.log_training_epoch_metric("seq", float(i), round_number=0, epoch_number=i)
        ah.log_resource_metric("custom", "counter", float(i), "n")
        i += 1
        time.sleep(every_s)
    return 0


def job(args: dict[str, Any]) -> int:
    ctx = JobIdentity(job_id=args.get("job_id", "77"), node="n1", hostname="h1")
    mon = Monitoring(
        enabled=True, interval_s=0.05, gpu=False, flush_interval_s=0.1, checkpoint_interval_s=args["interval"]
    )

    def workload(session: object) -> int:
        return log_until_killed(args["marker"], args.get("limit_s", 120.0))

    return int(run_task(ctx, workload, args["dest"], mon, exit_code_of=int))


def increment(args: dict[str, Any]) -> int:
    """Full copy of a small store, then a large delta (spills out of SQLite's page cache), and
    its incremental copy; ``expect`` says the counts before and after that copy."""
    node, dest = args["node"], args["dest"]
    store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, socket_dir=os.path.dirname(node))
    rnd = random.Random(args.get("seed", 1))
    t0 = 1_790_000_000.0
    k = 0

    def log_seconds(n: int) -> None:
        nonlocal k
        for _ in range(n):
            log_resource_samples([(t, m, round(rnd.uniform(0, 100), 1), u, d) for t, m, u, d in SPECS],
                                 timestamp=t0 + k + rnd.random() * 0.003)  # fmt: skip
            if k % 10 == 0:
                ah.log_training_epoch_metric("seq", float(k), 0, k)
            k += 1

    def counts() -> list[int]:
        assert store.flush()
        conn = sqlite3.connect(f"file:{node}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(n), 0) FROM sample_chunks), (SELECT count(*) FROM training_rows)"
            ).fetchone()
        finally:
            conn.close()
        return [int(row[0]), int(row[1])]

    copier = CopyBack(node, dest)
    log_seconds(100)
    before = counts()
    copier.copy()
    log_seconds(args.get("seconds", 20_000))
    after = counts()
    _write_json(args["expect"], {"before": before, "after": after, "pid": os.getpid()})
    copier.copy()
    _write_json(args["expect"] + ".done", {})
    time.sleep(args.get("limit_s", 60.0))
    return 0


def _fill(folder: str) -> None:
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        block = b"\0" * 4096
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def finish_fail(args: dict[str, Any]) -> int:
    """Log, checkpoint once (unless ``checkpoint`` is false), break the run directory (``how``:
    full / readonly / chmod), log more, end with ``code``: the final copy fails."""
    ctx = JobIdentity(job_id="88", node="n1", hostname="h1")
    mon = Monitoring(enabled=False, flush_interval_s=0.1, checkpoint_interval_s=3600)
    dest = Path(args["dest"])

    def workload(session: Any) -> int:
        for i in range(500):
            ah.log_training_epoch_metric("seq", float(i), 0, i)
        if args.get("checkpoint", True):
            session.checkpoint()
        if args["how"] == "full":
            _fill(args["mount"])
        elif args["how"] == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", args["mount"]], check=True, timeout=30)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(dest.parent, 0o500)
        for i in range(500, 5500):
            ah.log_training_epoch_metric("seq", float(i), 0, i)
        return int(args["code"])

    return int(run_task(ctx, workload, dest, mon, exit_code_of=int))


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    sys.exit({"job": job, "increment": increment, "finish_fail": finish_fail}[mode](json.loads(raw)))
