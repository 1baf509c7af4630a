"""`aetherium-hpc submit` against the real test cluster: jobs, arrays, scancel, hostile paths."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

TESTS = Path(__file__).parent.parent
ROOT = TESTS.parent

from launch_helpers import TABLES, aetherium_cli, counts, job_rows  # noqa: E402
from procs import read as q  # noqa: E402
from slurm_helpers import requeue_now, start_requeued_now  # noqa: E402


def cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return aetherium_cli(args, cwd, timeout=timeout)


def run_dir_of(stdout: str) -> Path:
    match = re.search(r"^run directory: (.+)$", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def submit(config: str, run_dir: Path, *sets: str, wait: bool = True) -> tuple[Path, subprocess.CompletedProcess[str]]:
    args = ["submit", config, "--set", f"run_dir={run_dir}", "--set", "backend=slurm", "--set", "resources.mem_gb=1"]
    for item in sets:
        args += ["--set", item]
    proc = cli(args + (["--wait"] if wait else []), run_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir_of(proc.stdout), proc


def test_single_job_completes_with_rows_in_every_table(tmp_path: Path) -> None:
    run, proc = submit(str(ROOT / "configs" / "train.yaml"), tmp_path / "runs")
    assert "to slurm" in proc.stdout
    (db,) = sorted(run.glob("db/*/*.db"))
    got = counts(db)
    assert all(got[t] > 0 for t in TABLES), got
    row = job_rows(db)[0]
    assert row["status"] == "completed" and row["exit_code"] == 0 and row["node"] in {"n1", "n2"}
    assert (run / "logs" / "job.sbatch").read_text().startswith("#!/bin/bash")
    status = cli(["status", str(run)], tmp_path)
    assert status.returncode == 0 and "COMPLETED" in status.stdout


def test_four_task_array_is_one_array_job_with_four_databases(tmp_path: Path) -> None:
    run, proc = submit(str(ROOT / "configs" / "array.yaml"), tmp_path / "runs")
    record = json.loads((run / "jobs.json").read_text())
    assert len(record["array_job_ids"]) == 1
    array_id = record["array_job_ids"][0]
    assert record["job_ids"] == [f"{array_id}_{i}" for i in range(4)]
    dbs = sorted(run.glob("db/*/*.db"))
    assert [db.parent.name for db in dbs] == [f"{array_id}_{i}" for i in range(4)]
    for i, db in enumerate(dbs):
        row = job_rows(db)[0]
        assert row["status"] == "completed" and row["array_job_id"] == array_id and row["array_task_id"] == i
        assert all(counts(db)[t] > 0 for t in TABLES)
    params = [job_rows(db)[0]["config"]["task_params"] for db in dbs]
    assert params == [{"learning_rate": lr, "seed": s} for lr in (0.01, 0.05) for s in (0, 1)]


def test_array_larger_than_max_array_size_is_split(tmp_path: Path) -> None:
    run, _ = submit(
        str(ROOT / "configs" / "array.yaml"), tmp_path / "runs", "slurm.max_array_size=3",
        "workload.kwargs={rounds: 1, epochs: 1, chunks: 1, samples_per_chunk: 8, workers: 1}",
    )  # fmt: skip
    record = json.loads((run / "jobs.json").read_text())
    assert len(record["array_job_ids"]) == 2 and len(record["job_ids"]) == 4
    assert len(sorted(run.glob("db/*/*.db"))) == 4


def test_an_array_task_cancelled_before_it_started_is_named_by_merge_and_report(tmp_path: Path) -> None:
    run, _ = submit(
        str(ROOT / "configs" / "array.yaml"), tmp_path / "runs", "slurm.array_parallelism=1",
        "array.sweep={seed: [0, 1, 2]}",
        "workload.kwargs={rounds: 1, epochs: 1, chunks: 1, samples_per_chunk: 8, workers: 1}", wait=False,
    )  # fmt: skip
    array = json.loads((run / "jobs.json").read_text())["array_job_ids"][0]
    subprocess.run(["scancel", f"{array}_2"], check=True, timeout=30)  # still pending: one task at a time
    deadline = time.monotonic() + 240
    while len([db for db in run.glob("db/*/*.db") if job_rows(db)[0]["status"] == "completed"]) < 2:
        assert time.monotonic() < deadline, sorted(run.glob("db/*/*.db"))
        time.sleep(0.5)
    merge = cli(["merge", str(run)], tmp_path)
    assert merge.returncode == 0, merge.stdout + merge.stderr
    # Slurm never writes a pending array task that was cancelled to accounting.
    assert f"task {array}_2: no database; it never started" in merge.stdout, merge.stdout
    report = cli(["report", str(run)], tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"no database: 1 of the 3 tasks submitted left none: {array}_2 (it never started" in report.stdout


def test_two_node_job_writes_one_database_per_node(tmp_path: Path) -> None:
    run, _ = submit(str(ROOT / "configs" / "multinode.yaml"), tmp_path / "runs", "resources.cpus_per_task=1")
    dbs = sorted(run.glob("db/*/*.db"))
    assert [db.name for db in dbs] == ["n1.db", "n2.db"]
    assert all(job_rows(db)[0]["status"] == "completed" for db in dbs)


def _start_waiting_job(
    tmp_path: Path, timeout_min: int, sleep_s: float = 120.0, first_attempt_only: bool = False
) -> tuple[Path, str, Path]:
    """Submit log_then_wait; return (run dir, job id, marker) once it has logged and waits."""
    marker = tmp_path / "ready"
    config = tmp_path / "wait.yaml"
    once = ", first_attempt_only: true" if first_attempt_only else ""
    config.write_text(
        "name: wait-me\nworkload:\n  callable: runtime_workloads:log_then_wait\n"
        f"  kwargs: {{marker: {json.dumps(str(marker))}, n: 50, sleep_s: {sleep_s}{once}}}\n"
        f"resources: {{timeout_min: {timeout_min}}}\nmonitoring: {{interval_s: 0.2, flush_interval_s: 30}}\n"
    )
    run, _ = submit(str(config), tmp_path / "runs", wait=False)
    job_id = json.loads((run / "jobs.json").read_text())["job_ids"][0]
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    marker.unlink()
    time.sleep(0.5)  # Pool workers' records reach the node socket within 0.2 s
    return run, job_id, marker


def _final_row(run: Path, statuses: set[str], timeout: float = 60.0) -> tuple[Path, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(run.glob("db/*/*.db"))
        if found:
            row = job_rows(found[0])[0]
            if row["status"] in statuses:
                return found[0], row
        time.sleep(0.5)
    raise AssertionError(f"no copied-back database with a status in {statuses}")


def _status_table(run: Path, tmp_path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """``aetherium-hpc status RUN``: its header, its rows cut at the header's column starts, its notes."""
    status = cli(["status", str(run)], tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    header = lines[1]
    starts = [header.index(name) for name in ("JOB", "STATE", "EXIT", "ELAPSED", "NODES")]
    table = [line for line in lines[2:] if not line.startswith("#")]
    rows = [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] for line in table]
    return lines, rows, [line for line in lines[2:] if line.startswith("#")]


def _status_once(run: Path, tmp_path: Path, state: str) -> tuple[list[str], list[list[str]], list[str]]:
    """:func:`_status_table` once its first row says ``state`` (accounting follows the job with a lag)."""
    deadline = time.monotonic() + 60
    while (found := _status_table(run, tmp_path))[1][0][1] != state:
        assert time.monotonic() < deadline, found[0]
        time.sleep(1)
    return found


def test_scancel_records_cancelled_and_keeps_the_data(tmp_path: Path) -> None:
    run, job_id, _ = _start_waiting_job(tmp_path, timeout_min=5)
    lines, rows, _ = _status_once(run, tmp_path, "RUNNING")  # how long so far, and where
    assert [r[:2] for r in rows] == [[job_id, "RUNNING"]], lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows[0][3]) and rows[0][4] in {"n1", "n2"}, lines
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    db, row = _final_row(run, {"cancelled"})
    assert row["detail"] == "signal SIGTERM"
    got = counts(db)
    assert got["training_metrics"] == 50 and got["generation_metrics"] == 4 and got["resource_metrics"] > 0
    lines, rows, notes = _status_once(run, tmp_path, "CANCELLED")  # sacct's "CANCELLED by 0", in its column
    assert rows[0][0] == job_id and rows[0][4] in {"n1", "n2"}, lines
    assert notes == [f"# {job_id} on {rows[0][4]}: CANCELLED: cancelled by uid 0 (root)"], lines


def test_usr2_near_the_time_limit_records_timeout(tmp_path: Path) -> None:
    # submitit counts a job of under 10 minutes as timed out on USR2, and does not requeue it.
    run, job_id, _ = _start_waiting_job(tmp_path, timeout_min=5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    db, row = _final_row(run, {"timeout"})
    assert counts(db)["training_metrics"] == 50
    # sacct says FAILED (the job ended before its limit, with submitit's error): the report says why.
    report = cli(["report", str(db)], tmp_path)
    assert "the database says timeout, sacct FAILED (exit 1:0): the job stopped at Slurm's warning" in report.stdout


def test_usr2_preemption_is_recorded_then_submitit_requeues(tmp_path: Path) -> None:
    # With 30 minutes asked and seconds used, submitit calls USR2 a preemption and requeues the
    # job; the second attempt goes on from the first attempt's copy and completes.
    run, job_id, marker = _start_waiting_job(tmp_path, timeout_min=30, sleep_s=3.0)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    start_requeued_now(job_id)
    dbs = wait_for_attempt(run, 1)  # the second attempt may land on the other node: a database of its own
    assert sorted((r["attempt"], r["status"]) for db in dbs for r in job_rows(db)) == [
        (0, "preempted"),
        (1, "completed"),
    ]
    per_attempt = sorted(r for db in dbs for r in q(db, "SELECT s.attempt, count(*) FROM training_rows t"
                                                        " JOIN sources s USING (source_id) GROUP BY 1"))  # fmt: skip
    assert per_attempt == [(0, 50), (1, 50)]


def wait_for_attempt(run: Path, attempt: int, timeout: float = 180.0) -> list[Path]:
    """The run's databases once some task's attempt ``attempt`` has written its end."""
    deadline = time.monotonic() + timeout
    while True:
        dbs = sorted(run.glob("db/*/*.db"))
        ends = [(r["attempt"], r["status"]) for db in dbs for r in job_rows(db)]
        if any(a == attempt and st != "running" for a, st in ends):
            return dbs
        assert time.monotonic() < deadline, f"attempt {attempt} did not end: {ends}"
        time.sleep(0.5)


def test_scontrol_requeue_keeps_each_attempt_apart(tmp_path: Path) -> None:
    run, job_id, _ = _start_waiting_job(tmp_path, timeout_min=30, first_attempt_only=True)
    requeue_now(job_id)
    dbs = wait_for_attempt(run, 1)
    merged = tmp_path / "merged.db"
    assert cli(["merge", str(run), "-o", str(merged)], tmp_path).returncode == 0
    rows = job_rows(merged)
    # Slurm's SIGTERM at the requeue ends attempt 1 as cancelled; attempt 2 runs on from its copy.
    assert sorted((r["attempt"], r["status"]) for r in rows) == [(0, "cancelled"), (1, "completed")], rows
    per_attempt = q(merged, "SELECT s.attempt, count(*) FROM training_rows t JOIN sources s USING (source_id)"
                            " GROUP BY 1 ORDER BY 1")  # fmt: skip
    assert per_attempt == [(0, 50), (1, 50)]
    report = cli(["report", str(merged)], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "requeued once (attempt 2 completed)" in report.stdout
    assert "1 completed (+ 1 earlier attempt, requeued)" in report.stdout
    status = cli(["status", str(run)], tmp_path)
    assert status.returncode == 0 and "requeued once (attempt 2)" in status.stdout, status.stdout
    assert len(dbs) in (1, 2)  # attempt 2 may run on the other node: a database of its own


def test_hostile_run_dir_on_slurm(tmp_path: Path) -> None:
    weird = tmp_path / "w it's $(touch pwned) `touch pwned` a"
    weird.mkdir()
    run, _ = submit(
        str(ROOT / "configs" / "train.yaml"), weird,
        "workload.kwargs={rounds: 1, epochs: 1, chunks: 1, samples_per_chunk: 8, workers: 1}",
    )  # fmt: skip
    assert str(run).startswith(str(weird))
    assert len(sorted(run.glob("db/*/*.db"))) == 1
    assert sorted(run.glob("submitit/*_log.out")), "Slurm wrote the logs where the quoted #SBATCH lines said"
    assert not list(tmp_path.rglob("pwned"))
