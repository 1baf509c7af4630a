"""Array tasks all starting at once in one run directory (local backend, no parallelism cap):
no lock errors, one database per task, every task completed. 100 tasks: ~23 s on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path

from launch_helpers import job_rows, make_config  # noqa: E402
from rel_helpers import integrity, read  # noqa: E402

from aetherium_hpc import launch  # noqa: E402


def test_100_array_tasks_start_at_once_in_one_run_directory(tmp_path: Path, job_env: Path) -> None:
    n_tasks = 100
    config = make_config(
        tmp_path / "runs",
        workload={"callable": "rel_workloads:tiny", "kwargs": {"n": 1}},
        array={"params": [{"seed": k} for k in range(n_tasks)]},
        monitoring={"interval_s": 60.0, "flush_interval_s": 0.5},  # no slurm.array_parallelism: no cap
    )
    started = time.monotonic()
    sub = launch.submit(config)
    assert len(sub.jobs) == n_tasks
    outcome = launch.wait(sub)
    elapsed = time.monotonic() - started
    assert set(outcome.values()) == {"ok"}, {k: v for k, v in outcome.items() if v != "ok"}
    dbs = sub.layout.databases()
    assert len(dbs) == n_tasks, f"{len(dbs)} databases for {n_tasks} tasks"
    seen = []
    for db in dbs:
        assert integrity(db) == "ok"
        row = job_rows(db)[0]
        assert row["status"] == "completed" and row["exit_code"] == 0, row
        seen.append(row["array_task_id"])
        assert read(db, "SELECT count(*) FROM training_metrics") == [(1,)]
    assert sorted(seen) == list(range(n_tasks))
    logs = "".join(p.read_text(errors="replace") for p in sub.layout.root.rglob("*.err"))
    assert "locked" not in logs.lower(), "a task hit an SQLite lock"
    print(f"{n_tasks} tasks in {elapsed:.1f} s")
