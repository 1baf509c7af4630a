"""Inside the job: JobIdentity, copy-back, the node session, signals, `aetherium-hpc run`."""

from __future__ import annotations

import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testenv
from launch_helpers import aetherium_cli, counts, job_rows, make_config
from testenv import ROOT

import aetherium_hpc as ah
from aetherium_hpc import launch
from aetherium_hpc.config import Monitoring
from aetherium_hpc.identity import JobIdentity
from aetherium_hpc.runtime import run_task
from aetherium_hpc.store.backup import copy_database


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Jobs import tests/support/runtime_workloads.py; their live databases go to a private scratch."""
    monkeypatch.setenv("PYTHONPATH", testenv.PYTHONPATH)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("AETHERIUM_LOCAL_DIR", str(scratch))
    return scratch


# -- JobIdentity -------------------------------------------------------------------------------
def test_context_from_slurm_variables() -> None:
    ctx = JobIdentity.from_environ({
        "SLURM_JOB_ID": "42", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2", "SLURMD_NODENAME": "n2",
        "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
    })  # fmt: skip
    assert (ctx.job_id, ctx.array_job_id, ctx.array_task_id, ctx.node) == ("40_2", "40", 2, "n2")
    assert (ctx.global_rank, ctx.local_rank, ctx.num_tasks, ctx.num_nodes) == (3, 1, 4, 2)
    assert not ctx.is_node_leader and ctx.base_job_id == "40" and ctx.task == 2
    assert "local_rank=1" in repr(ctx)


def test_context_outside_any_job() -> None:
    ctx = JobIdentity.from_environ({})
    assert ctx.cluster == "none" and ctx.is_node_leader and ctx.task == 0 and ctx.node


# -- copy-back ----------------------------------------------------------------------------------
def test_copy_database_of_a_live_store(tmp_path: Path) -> None:
    store = ah.init_db(tmp_path / "live.db", flush_interval=60)
    ah.log_training_epoch_metric("loss", 1.0, round_number=0, epoch_number=0)
    store.flush()
    dest = copy_database(store.path, tmp_path / "out" / "n1.db")
    assert counts(dest)["training_metrics"] == 1
    assert sqlite3.connect(dest).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not Path(f"{dest}.tmp").exists()
    ah.shutdown_db()


# -- NodeSession through run_task ------------------------------------------------------------
def test_run_task_writes_status_and_copies_back(tmp_path: Path, job_env: Path) -> None:
    ctx = JobIdentity(job_id="7", node="n1", hostname="h")
    dest = tmp_path / "db" / "7_0" / "n1.db"

    def workload(session: object) -> int:
        ah.log_training_epoch_metric("loss", 0.5, round_number=0, epoch_number=0)
        return 0

    run_task(ctx, workload, dest, Monitoring(interval_s=0.05), config={"a": 1}, requested={"cpus": 1})
    rows = job_rows(dest)
    assert rows[0]["status"] == "completed" and rows[0]["exit_code"] == 0 and rows[0]["config"] == {"a": 1}
    assert counts(dest)["training_metrics"] == 1
    # The node-local files are gone; this user's folder stays (other jobs of the user may use it).
    assert [p.name for p in job_env.rglob("*")] == [f"aetherium-{os.getuid()}"]


def test_run_task_failure_is_recorded_and_raised(tmp_path: Path, job_env: Path) -> None:
    dest = tmp_path / "f.db"

    def workload(session: object) -> int:
        ah.log_training_epoch_metric("loss", 0.5)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_task(JobIdentity(job_id="8", node="n1"), workload, dest, Monitoring(enabled=False))
    row = job_rows(dest)[0]
    assert row["status"] == "failed" and row["exit_code"] == 1 and "boom" in row["detail"]
    assert counts(dest)["training_metrics"] == 1


def test_checkpoint_copies_while_running(tmp_path: Path, job_env: Path) -> None:
    dest = tmp_path / "c.db"
    seen: list[int] = []

    def workload(session: object) -> int:
        ah.log_training_epoch_metric("loss", 0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not dest.exists():
            time.sleep(0.05)
        seen.append(counts(dest)["training_metrics"])
        return 0

    run_task(JobIdentity(job_id="9", node="n1"), workload, dest, Monitoring(enabled=False, checkpoint_interval_s=0.2))
    assert seen == [1]
    assert job_rows(dest)[0]["status"] == "completed"


# -- signals on the local backend -------------------------------------------------------------
def _wait_for(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return path.read_text()


def _submit_and_wait_for_marker(tmp_path: Path, func: str, **kwargs: object) -> tuple[launch.Submission, str]:
    """Submit ``func(marker=..., **kwargs)`` locally, the store committing only at the end (flush
    every 30 s), and wait until the workload writes its marker: (the submission, what it wrote)."""
    marker = tmp_path / "ready"
    config = make_config(
        tmp_path / "runs",
        workload={"callable": func, "kwargs": {"marker": str(marker), **kwargs}},
        monitoring={"interval_s": 0.2, "flush_interval_s": 30.0, "buffer_size": 100000},
    )
    sub = launch.submit(config)
    return sub, _wait_for(marker)


def _wait_done(job: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.done():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGTERM, {"cancelled"}), (signal.SIGINT, {"cancelled"}), (signal.SIGUSR2, {"preempted", "timeout"})],
)
def test_signal_during_run_saves_everything_logged_before(
    tmp_path: Path, job_env: Path, signum: int, expected: set[str]
) -> None:
    sub, announced = _submit_and_wait_for_marker(tmp_path, "runtime_workloads:log_then_wait", n=50)
    # At once: the Pool workers' generation rows may still sit in their SocketSink buffers (sent
    # every 0.2 s); the store asks each connected process for what it holds when it closes.
    os.kill(int(announced), signum)
    _wait_done(sub.jobs[0])
    (db,) = sub.layout.databases()
    row = job_rows(db)[0]
    assert row["status"] in expected, row
    assert row["end_time"] is not None and row["detail"].startswith("signal")
    got = counts(db)
    assert got["training_metrics"] == 50 and got["generation_metrics"] == 4, got
    if signum == signal.SIGTERM:
        assert row["exit_code"] == 128 + signal.SIGTERM


# -- aetherium-hpc run -------------------------------------------------------------------------
LOGGING_CHILD = (
    "import aetherium_hpc as a, sys;"
    "[a.log_training_epoch_metric('loss', float(i), epoch_number=i) for i in range(7)];"
    "a.shutdown_db(); sys.exit(int(sys.argv[1]))"
)


def _run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return aetherium_cli(args, cwd, drop=("SLURM_", "AETHERIUM_METRICS"), timeout=120, **env)


@pytest.mark.parametrize("code", [0, 3])
def test_run_command_logs_through_the_socket_and_keeps_exit_code(tmp_path: Path, job_env: Path, code: int) -> None:
    out = tmp_path / "dbs"
    proc = _run_cli(["run", "--db-dir", str(out), "--", sys.executable, "-c", LOGGING_CHILD, str(code)], tmp_path)
    assert proc.returncode == code, proc.stderr
    (db,) = out.glob("*.db")
    assert counts(db)["training_metrics"] == 7
    row = job_rows(db)[0]
    assert row["status"] == ("completed" if code == 0 else "failed") and row["exit_code"] == code


def test_run_default_db_dir_is_under_the_job_id(tmp_path: Path, job_env: Path) -> None:
    proc = _run_cli(["run", "--", sys.executable, "-c", LOGGING_CHILD, "0"], tmp_path, SLURM_JOB_ID="55")
    assert proc.returncode == 0, proc.stderr
    (db,) = (tmp_path / "aetherium-runs" / "55").glob("*.db")
    assert job_rows(db)[0]["job_id"] == "55"


@pytest.mark.parametrize("slurm_user", ["alice", None])
def test_run_records_the_submitting_user(tmp_path: Path, job_env: Path, slurm_user: str | None) -> None:
    """SLURM_JOB_USER when Slurm sets it (the submitter, whoever the process runs as), else the OS user."""
    out = tmp_path / "dbs"
    env = {"SLURM_JOB_USER": slurm_user} if slurm_user else {}
    proc = _run_cli(["run", "--db-dir", str(out), "--", sys.executable, "-c", LOGGING_CHILD, "0"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    (db,) = out.glob("*.db")
    assert job_rows(db)[0]["user_name"] == (slurm_user or pwd.getpwuid(os.getuid()).pw_name)


def test_user_name_is_set_once_and_can_be_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_USER", "bob")
    ah.init_db(tmp_path / "a.db", listen=False)
    ah.log_job(status="running", start_time=1.0e9)
    ah.log_job(status="completed", end_time=1.0e9 + 5)  # an update keeps the user
    ah.shutdown_db()
    assert job_rows(tmp_path / "a.db")[0]["user_name"] == "bob"
    ah.init_db(tmp_path / "b.db", listen=False)
    ah.log_job(status="completed", user_name="carol")
    ah.shutdown_db()
    assert job_rows(tmp_path / "b.db")[0]["user_name"] == "carol"
    with pytest.raises(TypeError, match="user_name must be a str"):
        ah.log_job(user_name=7)


def test_run_sigterm_forwards_to_the_command_and_records_cancelled(tmp_path: Path, job_env: Path) -> None:
    out = tmp_path / "dbs"
    marker = tmp_path / "ready"
    child = (
        "import aetherium_hpc as a, pathlib, time, sys;"
        "[a.log_training_epoch_metric('loss', float(i), epoch_number=i) for i in range(9)];"
        f"pathlib.Path({str(marker)!r}).write_text('x'); time.sleep(60)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", str(out), "--", sys.executable, "-c", child],
        cwd=tmp_path, env=environ,
    )  # fmt: skip
    try:
        _wait_for(marker)
        time.sleep(0.5)  # the child's sink sends every 0.2 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    (db,) = out.glob("*.db")
    row = job_rows(db)[0]
    assert row["status"] == "cancelled"
    assert counts(db)["training_metrics"] == 9


def test_run_without_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run_cli(["run"], tmp_path)
    assert proc.returncode == 2 and "aetherium-hpc: error:" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_requeued_task_goes_on_from_the_previous_copy(tmp_path: Path, job_env: Path) -> None:
    dest = tmp_path / "db" / "3_0" / "n1.db"

    def workload(session: object) -> int:
        ah.log_training_epoch_metric("loss", 0.5)
        return 0

    for attempt in range(2):  # SLURM_RESTART_COUNT 0, then 1
        run_task(JobIdentity(job_id="3", node="n1", attempt=attempt), workload, dest, Monitoring(enabled=False))
    assert counts(dest)["training_metrics"] == 2
    assert [(r["attempt"], r["status"]) for r in job_rows(dest)] == [(0, "completed"), (1, "completed")]


@pytest.mark.parametrize("weird", ["it's", "$(touch pwned)", "a b;touch pwned", "`touch pwned`"])
def test_run_passes_hostile_arguments_and_paths_untouched(tmp_path: Path, job_env: Path, weird: str) -> None:
    out = tmp_path / f"db {weird}"
    check = "import sys; assert sys.argv[1:] == [sys.argv[1]] and sys.argv[1] == " + repr(weird)
    proc = _run_cli(["run", "--db-dir", str(out), "--", sys.executable, "-c", check, weird], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*.db"))) == 1
    assert not list(tmp_path.rglob("pwned"))


def test_leader_waits_for_a_sibling_task_that_is_still_sending(tmp_path: Path, job_env: Path) -> None:
    """Two tasks on one node: the leader's workload ends first; the sibling's records still land."""
    ctx = JobIdentity(job_id="9", node="n1", hostname="h", num_tasks=2, num_nodes=1)
    dest = tmp_path / "db" / "9_0" / "n1.db"
    sibling_code = (
        "import time, aetherium_hpc as ah\n"
        "ah.log_training_epoch_metric('sibling', 0.0, 1, 0)\n"  # connects
        "time.sleep(1.5)\n"  # still working when the leader's workload is done
        "for i in range(1, 100): ah.log_training_epoch_metric('sibling', float(i), 1, i)\n"
    )
    procs: list[subprocess.Popen[bytes]] = []

    def workload(session: object) -> int:
        procs.append(subprocess.Popen([sys.executable, "-c", sibling_code], env=dict(os.environ)))
        time.sleep(0.5)
        return 0

    run_task(ctx, workload, dest, Monitoring(interval_s=0.2))
    procs[0].wait(30)
    conn = sqlite3.connect(dest)
    assert conn.execute("SELECT count(*) FROM training_metrics WHERE metric_name='sibling'").fetchone() == (100,)
    conn.close()


@pytest.mark.parametrize("order", ["workers-first", "together", "sigchld-storm"])
def test_workers_killed_by_the_same_scancel_neither_abort_the_copy_back_nor_change_the_status(
    tmp_path: Path, job_env: Path, order: str
) -> None:
    """scancel signals every process of the step; workers that die first make a handler like
    PyTorch's SIGCHLD one raise RuntimeError in the main thread: before the job's own SIGTERM is
    handled ("workers-first"), or while it saves the metrics ("together"), or at every bytecode
    from the workers' death to the job's end ("sigchld-storm": SIGCHLD sent without pause, as
    many dying workers of a big DataLoader can). Either way the status is what was done to the
    job (cancelled, 128+15), and every committed row is copied back."""
    sub, announced = _submit_and_wait_for_marker(tmp_path, "runtime_workloads:torch_like_workers", n=20)
    main, *workers = (int(p) for p in announced.split())
    storm: subprocess.Popen[bytes] | None = None
    if order == "sigchld-storm":
        storm_code = f"import os, signal\nwhile True: os.kill({main}, signal.SIGCHLD)"
        storm = subprocess.Popen([sys.executable, "-c", storm_code])
    try:
        if order == "together":
            for pid in [*workers, main]:
                os.kill(pid, signal.SIGTERM)
        else:
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
            # The RuntimeError is raised in the main thread and the workload fails; its end waits
            # SIGNAL_GRACE_S for the job's own signal. (A fixed sleep here raced that wait on a busy
            # machine: the job recorded ``failed`` and was gone before the test's SIGTERM.)
            _wait_for(tmp_path / "ready.raised")
            try:
                os.kill(main, signal.SIGTERM)
            except ProcessLookupError:
                _wait_done(sub.jobs[0])
                rows = [job_rows(db) for db in sub.layout.databases()]
                pytest.fail(f"the job ended before its SIGTERM, within SIGNAL_GRACE_S of its failure: {rows}")
        _wait_done(sub.jobs[0])
    finally:
        if storm is not None:
            storm.kill()
            storm.wait()
    (db,) = sub.layout.databases()
    row = job_rows(db)[0]
    assert (row["status"], row["exit_code"]) == ("cancelled", 128 + signal.SIGTERM), row
    got = counts(db)
    assert got["training_metrics"] == 22, got
    left = [p.name for p in job_env.rglob("*")]
    assert left == [f"aetherium-{os.getuid()}"], f"the node-local folder was left behind (copy-back aborted): {left}"


@pytest.mark.parametrize(
    ("code", "status", "exit_code"),
    [(3, "failed", 3), (0, "completed", 0), (None, "completed", 0), ("bye", "failed", 1)],
)
def test_system_exit_in_a_callable_is_recorded_with_its_code(
    tmp_path: Path, job_env: Path, code: object, status: str, exit_code: int
) -> None:
    config = make_config(
        tmp_path / "runs", workload={"callable": "runtime_workloads:exit_with", "kwargs": {"code": code}}
    )
    sub = launch.submit(config)
    _wait_done(sub.jobs[0])
    (db,) = sub.layout.databases()
    row = job_rows(db)[0]
    assert (row["status"], row["exit_code"]) == (status, exit_code), row
