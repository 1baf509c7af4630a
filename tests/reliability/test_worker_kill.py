"""A Pool worker SIGKILLed mid-run while the others log: the job goes on, and every record the
killed worker had flushed (it says how many, after `SocketSink.flush()` returned) is in the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import job_rows, make_config  # noqa: E402
from rel_helpers import integrity, read  # noqa: E402
from rel_workloads import VICTIM_ROUND  # noqa: E402

from aetherium_hpc import launch  # noqa: E402


def test_killed_pool_worker_loses_nothing_it_flushed_and_the_job_completes(tmp_path: Path, job_env: Path) -> None:
    count_file = tmp_path / "victim-flushed"
    config = make_config(
        tmp_path / "runs",
        workload={"callable": "rel_workloads:pool_worker_killed",
                  "kwargs": {"count_file": str(count_file), "n_victim": 1234, "n_others": 20_000}},
        monitoring={"interval_s": 0.5, "flush_interval_s": 30.0, "buffer_size": 100_000},
    )  # fmt: skip
    sub = launch.submit(config)
    assert launch.wait(sub) == {sub.job_ids[0]: "ok"}
    result = sub.jobs[0].result()
    (db,) = sub.layout.databases()
    assert integrity(db) == "ok"
    assert job_rows(db)[0]["status"] == "completed"
    victim = read(db, "SELECT count(*), count(DISTINCT epoch_number), max(epoch_number) FROM training_metrics"
                      " WHERE round_number = ?", (VICTIM_ROUND,))[0]  # fmt: skip
    assert result["flushed"] == 1234
    assert victim[0] >= result["flushed"], f"the killed worker flushed {result['flushed']}, only {victim[0]} stored"
    assert victim[0] == victim[1], "duplicates from the killed worker"
    others = read(db, "SELECT round_number, count(*), count(DISTINCT epoch_number) FROM training_metrics"
                      " WHERE round_number <> ? GROUP BY round_number", (VICTIM_ROUND,))  # fmt: skip
    assert others[:3] == [(0, 20_000, 20_000), (1, 20_000, 20_000), (2, 20_000, 20_000)]
    # Open finding (docs/RELIABILITY.md): the worker the Pool forks to replace the dead one (forked
    # from the Pool's _handle_workers thread) logs 10 rows; they do not reach the store.
    if others[3:] != [(3, 10, 10)]:
        pytest.xfail(f"records of the replacement Pool worker were lost: {others[3:]}")
