"""A job that ended without writing its status is shown as what Slurm says, or `lost` -- never
`running`: `aetherium-hpc status`, `merge` and `report`.

Fake `sacct` / `squeue` on PATH play the cluster's answers (each call is logged, so the tests
also check that Slurm is asked once per command and never about a local process id); a real
local-backend job is SIGKILLed; the `slurm`-marked test kills the step of a real job on the
test cluster (slurm/cluster.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import testenv
from rel_helpers import ROOT, cli, read

import aetherium_hpc as ah
from aetherium_hpc.store import SourceInfo

HOST = socket.gethostname()
NO_SLURM = "/nonexistent-slurm-bin"


# -- helpers ------------------------------------------------------------------------------------------
def write_node_db(
    run: Path,
    job_id: str,
    *,
    array: tuple[str, int] | None = None,
    status: str = "running",
    config: dict[str, Any] | None = None,
    start: float | None = None,
    host: str = HOST,
    node: str = "n1",
    attempt: int = 0,
) -> Path:
    """A copied-back node database whose jobs row says ``status`` (a job killed after a checkpoint)."""
    task = array[1] if array else 0
    base = array[0] if array else job_id
    path = run / "db" / f"{base}_{task}" / f"{node}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    src = SourceInfo(job_id=job_id, array_job_id=array[0] if array else None,
                     array_task_id=array[1] if array else None, node=node, hostname=host, attempt=attempt)  # fmt: skip
    ah.init_db(path, source=src, listen=False)
    t0 = time.time() - 600 if start is None else start
    for k in range(20):
        ah.log_resource_samples([("ram", "process_tree_rss", 100.0 + k, "MB", "")], timestamp=t0 + k)
    ah.log_training_epoch_metric("loss", 0.5, round_number=0, epoch_number=0)
    ah.log_job(job_id=job_id, array_job_id=array[0] if array else None, array_task_id=array[1] if array else None,
               node=node, status=status, start_time=t0, config=config or {"command": ["python", "train.py"]})  # fmt: skip
    ah.shutdown_db()
    return path


def _slurm_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def sacct_line(
    job: str, state: str, exit_code: str = "0:0", start: float | None = None, end: float | None = None
) -> str:
    """One line of `sacct --parsable2` with accounting.py's fields."""
    s = _slurm_time(start) if start else "Unknown"
    e = _slurm_time(end) if end else "Unknown"
    return f"{job}|{state}|{exit_code}|00:01:00|00:00.1|1G|1|00:10:00||n1|{s}|{e}"


class FakeSlurm:
    """sacct and squeue scripts in a bin folder: canned output and exit code, every call logged."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "fakebin"
        self.bin.mkdir()
        self.log = folder / "slurm-calls.log"
        self.log.touch()
        self.set("sacct", "", 0)
        self.set("squeue", "", 0)

    def set(self, tool: str, stdout: str, rc: int = 0, stderr: str = "") -> None:
        out = self.bin / f"{tool}.out"
        err = self.bin / f"{tool}.err"
        out.write_text(stdout + ("\n" if stdout else ""))
        err.write_text(stderr)
        script = self.bin / tool
        script.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> "{self.log}"\ncat "{out}"\ncat "{err}" >&2\nexit {rc}\n'
        )  # paths are pytest's tmp folders: no quotes in them
        script.chmod(0o755)

    def calls(self, tool: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [ln for ln in lines if tool is None or ln.startswith(tool + " ")]

    def reset(self) -> None:
        self.log.write_text("")

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def fake(tmp_path: Path) -> FakeSlurm:
    return FakeSlurm(tmp_path)


def run_cli(
    args: list[str], cwd: Path, fake: FakeSlurm | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = dict(extra)
    if fake is not None:
        env.update(fake.env())
    proc = cli(args, cwd, **env)
    return proc


def status_rows(proc: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return [ln.split() for ln in lines[2:] if ln.strip() and not ln.startswith("#")]


def notes(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stdout.splitlines()[1:] if ln.startswith("# ")]


def report_jobs(db: Path, cwd: Path, fake: FakeSlurm | None = None, **extra: str) -> list[dict[str, Any]]:
    proc = run_cli(["report", str(db), "--json"], cwd, fake, **extra)
    assert proc.returncode == 0, proc.stderr
    jobs: list[dict[str, Any]] = json.loads(proc.stdout)["jobs"]
    return jobs


def merged_jobs(db: Path) -> list[tuple[Any, ...]]:
    return read(db, "SELECT job_id, status, exit_code, detail FROM jobs ORDER BY array_task_id, job_id")


def dead_pid() -> int:
    """The id of a process that has just exited (reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    pid = int(proc.stdout)
    assert not psutil.pid_exists(pid)
    return pid


# -- Slurm jobs (fake sacct / squeue) -------------------------------------------------------------------
def test_oom_killed_array_task_shows_out_of_memory_in_status_merge_and_report(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    t0 = time.time() - 600
    db = write_node_db(run, "4242_3", array=("4242", 3), start=t0)  # `srun aetherium-hpc run` in an sbatch array
    write_node_db(run, "4242_4", array=("4242", 4), status="completed", start=t0)
    fake.set("sacct", "\n".join([
        sacct_line("4242_3", "OUT_OF_MEMORY", "0:125", t0 - 2, t0 + 300),
        sacct_line("4242_3.batch", "OUT_OF_MEMORY", "0:125", t0 - 2, t0 + 300),
        sacct_line("4242_4", "COMPLETED", "0:0", t0 - 2, t0 + 30),
    ]))  # fmt: skip

    status = run_cli(["status", str(run)], tmp_path, fake)
    rows = status_rows(status)
    assert [r[:2] for r in rows] == [["4242_3", "OUT_OF_MEMORY"], ["4242_4", "COMPLETED"]]
    assert "RUNNING" not in status.stdout
    (note,) = notes(status)
    assert "resolved after the fact" in note and "sacct" in note and "OUT_OF_MEMORY" in note
    assert len(fake.calls("sacct")) == 1 and "4242" in fake.calls("sacct")[0]

    fake.reset()
    out = tmp_path / "merged.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert merge.returncode == 0, merge.stderr
    assert "running -> out_of_memory" in merge.stdout and "1 ended without a status" in merge.stdout
    assert len(fake.calls("sacct")) == 1 and not fake.calls("squeue")
    (oom, done) = merged_jobs(out)
    assert oom[:3] == ("4242_3", "out_of_memory", None) and "resolved after the fact" in str(oom[3])
    assert "[merge," in str(oom[3]) and done[1] == "completed"
    assert read(out, "SELECT recorded_status, resolved_from FROM jobs_resolved") == [("running", "sacct")]

    # The merged database, moved away from its run directory and read where Slurm cannot be asked,
    # keeps what the merge found.
    away = tmp_path / "elsewhere" / "copy.db"
    away.parent.mkdir()
    shutil.copyfile(out, away)
    jobs = report_jobs(away, tmp_path, None, PATH=f"{NO_SLURM}{os.pathsep}{os.environ['PATH']}")
    assert [(j["source"], j["status"], j["resolved_from"]) for j in jobs] == [
        ("4242_3/n1", "out_of_memory", "sacct"),
        ("4242_4/n1", "completed", None),
    ]
    html = tmp_path / "r.html"
    text = run_cli(["report", str(away), "--html", str(html)], tmp_path).stdout
    assert "out_of_memory" in text and "4242_3/n1: out_of_memory: resolved after the fact" in text
    assert (
        "class='st-out_of_memory'>out_of_memory<" in html.read_text() and "resolved after the fact" in html.read_text()
    )

    # Merging the same inputs again adds nothing and changes nothing.
    before = merged_jobs(out)
    again = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert again.returncode == 0 and "0 sources added, 2 already present" in again.stdout, again.stdout
    assert "older copies" not in again.stdout and merged_jobs(out) == before

    # A later copy in which the job wrote its own final status replaces the resolved one.
    conn = __import__("sqlite3").connect(db)
    conn.execute("UPDATE job_rows SET status = 'failed', exit_code = 1, end_time = start_time + 60")
    conn.commit()
    conn.close()
    third = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert third.returncode == 0 and "1 replaced by a newer copy" in third.stdout, third.stdout
    assert merged_jobs(out)[0][:3] == ("4242_3", "failed", 1)
    assert read(out, "SELECT count(*) FROM jobs_resolved") == [(0,)]
    assert read(out, "SELECT count(*) FROM sources") == [(2,)]


def test_array_tasks_that_left_no_database_are_named_by_merge_and_report(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    t0 = time.time() - 600
    for task in (0, 1, 3):
        write_node_db(run, f"950_{task}", array=("950", task), status="completed", start=t0)
    (run / "jobs.json").write_text(json.dumps({"cluster": "slurm", "array_job_ids": ["950"],
                                               "job_ids": [f"950_{i}" for i in range(5)]}))  # fmt: skip
    fake.set(
        "sacct",
        "\n".join(
            [
                *(sacct_line(f"950_{i}", "COMPLETED", "0:0", t0 - 1, t0 + 30) for i in (0, 1, 3)),
                sacct_line("950_2", "CANCELLED by 0", "0:0", None, t0 + 5),  # cancelled while it waited
            ]
        ),
    )  # fmt: skip  (950_4: accounting has no record of it)
    out = tmp_path / "merged.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert merge.returncode == 0, merge.stderr
    assert "task 950_2: no database; sacct says CANCELLED by 0" in merge.stdout, merge.stdout
    assert "task 950_4: no database; it never started" in merge.stdout
    assert "2 submitted task(s) left no database" in merge.stdout
    html = tmp_path / "r.html"
    proc = run_cli(["report", str(out), "--html", str(html)], tmp_path, fake)
    assert "no database: 2 of the 5 tasks submitted left none: 950_2 (sacct says CANCELLED by 0); 950_4" in proc.stdout
    assert "950_2 (sacct says CANCELLED by 0)" in html.read_text()
    data = json.loads(run_cli(["report", str(out), "--json"], tmp_path, fake).stdout)
    assert [(m["task"], m["state"]) for m in data["missing"]] == [("950_2", "cancelled"), ("950_4", None)]


def test_job_that_completed_after_its_step_was_killed_shows_the_step(tmp_path: Path, fake: FakeSlurm) -> None:
    # `scancel --signal=KILL JOB.0`: srun returns 137, the script goes on and exits 0.
    run = tmp_path / "run"
    t0 = time.time() - 600
    write_node_db(run, "77", start=t0)
    fake.set("sacct", "\n".join([
        sacct_line("77", "COMPLETED", "0:0", t0 - 1, t0 + 5),
        sacct_line("77.batch", "COMPLETED", "0:0", t0 - 1, t0 + 5),
        sacct_line("77.0", "CANCELLED", "0:9", t0 - 1, t0 + 4),
    ]))  # fmt: skip
    rows = status_rows(run_cli(["status", str(run)], tmp_path, fake))
    assert [r[:3] for r in rows] == [["77", "CANCELLED", "137"]]
    (job,) = report_jobs(run / "db" / "77_0" / "n1.db", tmp_path, fake)
    assert job["status"] == "cancelled" and job["exit_code"] == 137 and "step 77.0 CANCELLED" in job["detail"]


def test_an_attempt_killed_with_its_node_then_requeued_is_requeued_not_the_last_attempts_end(
    tmp_path: Path, fake: FakeSlurm
) -> None:
    # Attempt 1 died with node n1 (its row says running); Slurm requeued the job onto n2, where it completed.
    run = tmp_path / "run"
    t0 = time.time() - 600
    write_node_db(run, "44", start=t0, node="n1")
    write_node_db(run, "44", start=t0 + 130, node="n2", attempt=1, status="completed")
    fake.set("sacct", "\n".join([  # sacct --duplicates: every attempt, in order
        sacct_line("44", "NODE_FAIL", "0:0", t0 - 1, t0 + 10),
        sacct_line("44.batch", "CANCELLED", "0:15", t0 - 1, t0 + 10),
        sacct_line("44", "COMPLETED", "0:0", t0 + 129, t0 + 200),
        sacct_line("44.batch", "COMPLETED", "0:0", t0 + 129, t0 + 200),
    ]))  # fmt: skip
    status = run_cli(["status", str(run)], tmp_path, fake)
    assert [r[:2] for r in status_rows(status)] == [["44", "REQUEUED"], ["44", "COMPLETED"]]
    assert any("--duplicates" in c for c in fake.calls("sacct"))
    assert "requeued once (attempt 2)" in status.stdout and "requeued after attempt 1" in status.stdout
    (job,) = report_jobs(run / "db" / "44_0" / "n1.db", tmp_path, fake)  # the killed attempt's file alone
    assert job["status"] == "requeued" and job["resolved_from"] == "sacct"
    out = tmp_path / "m.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert merge.returncode == 0 and "running -> requeued" in merge.stdout, merge.stdout
    assert sorted(j[1] for j in merged_jobs(out)) == ["completed", "requeued"]
    text = run_cli(["report", str(out)], tmp_path, fake).stdout
    assert "requeued once (attempt 2 completed)" in text and "1 completed (+ 1 earlier attempt, requeued)" in text


def test_controller_knows_the_end_before_accounting(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    t0 = time.time() - 600
    write_node_db(run, "88", start=t0)
    fake.set("sacct", sacct_line("88", "RUNNING", "0:0", t0 - 1, None))  # slurmdbd lags
    fake.set("squeue", "88|NODE_FAIL")  # squeue --states=all: the controller's final state
    rows = status_rows(run_cli(["status", str(run)], tmp_path, fake))
    assert [r[:2] for r in rows] == [["88", "NODE_FAIL"]]
    assert any("-t all" in c for c in fake.calls("squeue"))


def test_a_job_that_really_runs_stays_running(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    t0 = time.time() - 60
    write_node_db(run, "99", start=t0)
    fake.set("sacct", sacct_line("99", "RUNNING", "0:0", t0 - 1, None))
    fake.set("squeue", "99|RUNNING")
    rows = status_rows(run_cli(["status", str(run)], tmp_path, fake))
    assert [r[:2] for r in rows] == [["99", "RUNNING"]]
    out = tmp_path / "m.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert merge.returncode == 0 and "1 still running" in merge.stdout, merge.stdout
    assert merged_jobs(out)[0][1] == "running"
    assert read(out, "SELECT count(*) FROM sqlite_master WHERE name = 'jobs_resolved'") == [(0,)]
    # It ends (killed) later: the next merge of the same, unchanged copy resolves it.
    fake.set("sacct", sacct_line("99", "CANCELLED by 0", "0:15", t0 - 1, t0 + 100))
    again = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert "running -> cancelled" in again.stdout, again.stdout
    assert merged_jobs(out)[0][1:3] == ("cancelled", 143)


def test_gone_from_the_queue_without_accounting_is_lost(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    (run / "jobs.json").write_text(json.dumps({"cluster": "slurm", "job_ids": ["55"], "array_job_ids": []}))
    write_node_db(run, "55", config={"name": "t", "backend": "auto"})
    fake.set("sacct", "", 1, "sacct: error: Problem talking to the database: Connection refused")
    fake.set("squeue", "", 1, "slurm_load_jobs error: Invalid job id specified")
    status = run_cli(["status", str(run)], tmp_path, fake)
    assert [r[:2] for r in status_rows(status)] == [["55", "LOST"]]
    assert "left the queue" in notes(status)[0]
    assert len(fake.calls("sacct")) == 1, fake.calls()  # status's own sacct; the check reuses its answer
    (job,) = report_jobs(run / "db" / "55_0" / "n1.db", tmp_path, fake)
    assert job["status"] == "lost" and job["resolved_from"] == "squeue"


def test_when_slurm_cannot_be_asked_the_status_is_unknown_not_running(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    write_node_db(run, "66", config={"name": "t", "backend": "slurm"})
    fake.set("sacct", "", 1, "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection")
    fake.set("squeue", "", 1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    status = run_cli(["status", str(run)], tmp_path, fake)
    assert [r[:2] for r in status_rows(status)] == [["66", "UNKNOWN"]]
    assert "cannot be asked" in notes(status)[0]
    out = tmp_path / "m.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert "1 with a status that cannot be checked" in merge.stdout
    assert merged_jobs(out)[0][1] == "running"  # nothing final to store; a later report asks again
    (job,) = report_jobs(out, tmp_path, fake)
    assert job["status"] == "unknown"


def test_an_accounting_row_of_another_job_with_the_same_id_is_not_used(tmp_path: Path, fake: FakeSlurm) -> None:
    # Job ids restart on a new cluster: a job 12 that started a day after this row's start is not it.
    run = tmp_path / "run"
    t0 = time.time() - 2 * 86400
    write_node_db(run, "12", start=t0)
    fake.set("sacct", sacct_line("12", "COMPLETED", "0:0", t0 + 86400, t0 + 86400 + 60))
    fake.set("squeue", "")
    rows = status_rows(run_cli(["status", str(run)], tmp_path, fake))
    assert [r[:2] for r in rows] == [["12", "LOST"]]


# -- local jobs -------------------------------------------------------------------------------------------
def test_local_jobs_are_checked_by_process_and_never_sent_to_slurm(tmp_path: Path, fake: FakeSlurm) -> None:
    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    gone, alive = dead_pid(), os.getpid()
    # A local array: rows name the tasks <submitter>_<task>; jobs.json holds each task's process id.
    (run / "jobs.json").write_text(json.dumps({"cluster": "local", "job_ids": [str(gone), str(alive)],
                                               "array_job_ids": ["4711"]}))  # fmt: skip
    cfg = {"name": "t", "backend": "auto"}
    me = psutil.Process(alive).create_time()
    write_node_db(run, "4711_0", array=("4711", 0), config=cfg, start=me + 1)
    write_node_db(run, "4711_1", array=("4711", 1), config=cfg, start=me + 1)
    fake.set("sacct", sacct_line("4711_0", "COMPLETED"))  # must never be asked
    status = run_cli(["status", str(run)], tmp_path, fake)
    assert [r[:2] for r in status_rows(status)] == [["4711_0", "LOST"], ["4711_1", "RUNNING"]]
    assert f"process {gone} is gone" in notes(status)[0]
    (lost,) = report_jobs(run / "db" / "4711_0" / "n1.db", tmp_path, fake)
    assert lost["status"] == "lost" and lost["resolved_from"] == "process"
    out = tmp_path / "m.db"
    merge = run_cli(["merge", str(run), "-o", str(out)], tmp_path, fake)
    assert "1 ended without a status" in merge.stdout and "1 still running" in merge.stdout, merge.stdout
    assert [r[1] for r in merged_jobs(out)] == ["lost", "running"]
    assert fake.calls() == [], fake.calls()


def test_a_reused_process_id_is_not_the_job(tmp_path: Path) -> None:
    # `aetherium-hpc run` outside Slurm: job id local<pid>. This pid is alive, but younger than the row.
    run = tmp_path / "run"
    pid = os.getpid()
    write_node_db(run, f"local{pid}", start=psutil.Process(pid).create_time() - 3600)
    rows = status_rows(
        run_cli(["status", str(run)], tmp_path, None, PATH=f"{NO_SLURM}{os.pathsep}{os.environ['PATH']}")
    )
    assert [r[1] for r in rows] == ["LOST"]


def test_a_local_job_on_another_host_is_unknown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_node_db(run, f"local{os.getpid()}", host="some-other-host")
    rows = status_rows(run_cli(["status", str(run)], tmp_path))
    assert [r[1] for r in rows] == ["UNKNOWN"]


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_sigkilled_local_backend_job_shows_lost(tmp_path: Path) -> None:
    """A real local-backend job (submitit), its task process SIGKILLed after a checkpoint copy:
    running while it runs, then `lost` in status, merge and report."""
    marker = tmp_path / "ready"
    config = tmp_path / "kill.yaml"
    config.write_text(
        "name: kill-me\nbackend: local\nworkload:\n  callable: runtime_workloads:log_then_wait\n"
        f"  kwargs: {{marker: {json.dumps(str(marker))}, n: 20, sleep_s: 300}}\n"
        f"run_dir: {json.dumps(str(tmp_path / 'runs'))}\n"
        "monitoring: {interval_s: 0.2, flush_interval_s: 0.2, checkpoint_interval_s: 0.5}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_METRICS"))}
    env.update(PYTHONPATH=testenv.PYTHONPATH, AETHERIUM_LOCAL_DIR=str(tmp_path))
    log = tmp_path / "submit.log"
    with open(log, "w") as out:  # the job inherits these: no pipe that stays open while it runs
        sub = subprocess.run([sys.executable, "-m", "aetherium_hpc", "submit", str(config)], cwd=tmp_path, env=env,
                             stdout=out, stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    assert sub.returncode == 0, log.read_text()
    match = re.search(r"^run directory: (.+)$", log.read_text(), re.MULTILINE)
    assert match, log.read_text()
    run = Path(match.group(1))
    pid = int(json.loads((run / "jobs.json").read_text())["job_ids"][0])  # submitit's local job: its controller
    victims: list[psutil.Process] = []
    try:
        _wait(marker.exists, 120, "the job did not start")
        task = psutil.Process(int(marker.read_text()))  # the process running the workload, under the controller
        victims = [task, *task.children(recursive=True)]
        _wait(lambda: bool(list(run.glob("db/*/*.db"))), 60, "no checkpoint copy in the run directory")
        (db,) = run.glob("db/*/*.db")
        _wait(lambda: read(db, "SELECT count(*) FROM training_rows")[0][0] == 20, 60, "rows not copied back")
        status = cli(["status", str(run)], tmp_path)
        assert [r[1] for r in status_rows(status)] == ["RUNNING"]  # it really runs

        task.kill()  # SIGKILL, as the OOM killer would: no handler runs; the controller then exits
        _wait(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 60,
              "the job's controller did not end")  # fmt: skip
    finally:
        for p in victims:  # the task and its Pool workers, when something above failed
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    assert read(db, "SELECT status FROM jobs") == [("running",)]  # what the copy says for ever

    status = cli(["status", str(run)], tmp_path)
    assert [r[1] for r in status_rows(status)] == ["LOST"], status.stdout
    assert f"process {pid} is gone" in notes(status)[0]
    out = run / "merged.db"
    merge = cli(["merge", str(run), "-o", str(out)], tmp_path)
    assert merge.returncode == 0 and "running -> lost" in merge.stdout, merge.stdout + merge.stderr
    assert merged_jobs(out)[0][1] == "lost"
    (job_row,) = report_jobs(out, tmp_path)
    assert job_row["status"] == "lost" and job_row["recorded_status"] == "running"
    (node_row,) = report_jobs(db, tmp_path)
    assert node_row["status"] == "lost" and node_row["resolved_from"] == "process"


# -- the real cluster ---------------------------------------------------------------------------------------
@pytest.mark.slurm
def test_a_recent_job_this_cluster_never_knew_is_not_waited_for(
    slurm_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job id that 'ended' moments ago but that neither sacct nor the controller (squeue, which keeps
    a job for MinJobAge after its end) knows is another cluster's: accounting is asked once, not polled."""
    from aetherium_hpc import scheduler

    asked: list[list[str | None]] = []
    real = scheduler.sacct_figures

    def counting(ids: list[str | None], *args: object, **kwargs: object) -> dict[str, object]:
        asked.append(list(ids))
        return real(ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler, "sacct_figures", counting)
    figures = scheduler.sacct_figures_when_final(["999999_7"], ["999999_7"], wait_s=30.0, poll_s=0.2)
    assert "knows none" in str(figures.get("why")) and "not_final" not in figures, figures
    assert asked == [["999999_7"]]


@pytest.mark.slurm
def test_step_killed_on_the_real_cluster_shows_what_sacct_says(tmp_path: Path, slurm_conf: Path) -> None:
    """sbatch a script running `srun aetherium-hpc run -- sleep 300` (checkpoints every 0.5 s),
    `scancel --signal=KILL` its step, then status, merge and report show Slurm's state."""
    run = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(
        "name: probe\nworkload:\n  command: [sleep, '1']\n"
        "monitoring: {interval_s: 0.5, flush_interval_s: 0.2, checkpoint_interval_s: 0.5, gpu: false}\n"
    )
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH -o {tmp_path}/out.%j\n#SBATCH --mem=500M\n#SBATCH --time=5\n"
        f"export PYTHONPATH={ROOT}\nexport AETHERIUM_RUN_DIR={run}\nexport AETHERIUM_LOCAL_DIR={tmp_path}/local\n"
        f"srun {sys.executable} -m aetherium_hpc run --config {tmp_path}/cfg.yaml -- sleep 300\n"
        'echo "srun exit $?"\n'
    )
    env = {**os.environ, "SLURM_CONF": str(slurm_conf)}
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip().split(";")[0]  # fmt: skip
    try:
        _wait(lambda: bool(list(run.glob("db/*/*.db"))), 180, "no checkpoint copy from the job")
        (db,) = run.glob("db/*/*.db")
        _wait(lambda: read(db, "SELECT count(*) FROM jobs")[0][0] == 1, 60, "no jobs row copied back")
        status = cli(["status", str(run)], tmp_path, SLURM_CONF=str(slurm_conf))
        assert [r[1] for r in status_rows(status)] == ["RUNNING"], status.stdout
        subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], env=env, timeout=60, check=True)

        def ended() -> bool:
            q = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, timeout=60)
            return q.returncode == 0 and not q.stdout.strip() or "Invalid job id" in q.stderr

        _wait(ended, 120, "the job did not end")
    finally:
        subprocess.run(["scancel", job], env=env, timeout=60)
    assert read(db, "SELECT status FROM jobs") == [("running",)]

    def accounted() -> dict[str, str]:  # slurmdbd may lag the controller by a few seconds
        out = subprocess.run(["sacct", "-j", job, "--parsable2", "-n", "-o", "JobID,State"], env=env,
                             capture_output=True, text=True, timeout=60).stdout  # fmt: skip
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    _wait(lambda: accounted().get(job, "RUNNING").split()[0] not in ("RUNNING", "PENDING")
          and f"{job}.0" in accounted(), 120, "accounting did not record the end")  # fmt: skip
    sacct = accounted()
    expected = sacct[f"{job}.0"].split()[0]  # CANCELLED: the step; the script itself exits 0
    status = cli(["status", str(run)], tmp_path, SLURM_CONF=str(slurm_conf))
    assert [r[1] for r in status_rows(status)] == [expected], status.stdout + str(sacct)
    out = tmp_path / "merged.db"
    merge = cli(["merge", str(run), "-o", str(out)], tmp_path, SLURM_CONF=str(slurm_conf))
    assert merge.returncode == 0 and f"running -> {expected.lower()}" in merge.stdout, merge.stdout + merge.stderr
    (row,) = merged_jobs(out)
    assert row[1] == expected.lower() and row[2] == 137 and "sacct" in str(row[3])
    (rep,) = report_jobs(out, tmp_path, None, SLURM_CONF=str(slurm_conf))
    assert rep["status"] == expected.lower()
    (node,) = report_jobs(db, tmp_path, None, SLURM_CONF=str(slurm_conf))
    assert node["status"] == expected.lower() and node["resolved_from"] == "sacct"
