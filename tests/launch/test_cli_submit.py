"""`aetherium-hpc submit | status` as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from launch_helpers import TABLES, counts, job_rows
from testenv import ROOT

from aetherium_hpc import cli


def _cli(args: list[str], cwd: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_METRICS"))}
    env["PYTHONPATH"] = str(ROOT)
    env["AETHERIUM_LOCAL_DIR"] = str(cwd)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_submit_train_yaml_without_slurm_leaves_a_full_database(tmp_path: Path) -> None:
    # Only Python's own folder on PATH: no sbatch/srun, so backend auto picks the local executor.
    no_slurm = os.path.dirname(sys.executable)
    proc = _cli(["submit", str(ROOT / "configs" / "train.yaml"), "--wait", "--set", f"run_dir={tmp_path / 'runs'}"],
                tmp_path, path=no_slurm)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"^run directory: (.+)$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    run_dir = Path(match.group(1))
    assert "to local" in proc.stdout and "1/1 task(s) completed" in proc.stdout
    (db,) = sorted(run_dir.glob("db/*/*.db"))
    assert str(db) in proc.stdout
    got = counts(db)
    assert all(got[t] > 0 for t in TABLES), got
    assert (
        got["generation_metrics"] == 3 * 8 and got["training_metrics"] >= 3 * 20 * 3
    )  # rounds x chunks, rounds x epochs x 3
    row = job_rows(db)[0]
    assert row["status"] == "completed" and row["exit_code"] == 0
    assert row["config"]["workload"]["callable"] == "aetherium_hpc.demo.pipeline:run"
    assert row["config"]["backend"] == "local"  # the snapshot says what `backend: auto` became
    assert (run_dir / "config.yaml").is_file() and (run_dir / "jobs.json").is_file()

    status = _cli(["status", str(run_dir)], tmp_path, path=no_slurm)
    assert status.returncode == 0 and "COMPLETED" in status.stdout and "from databases" in status.stdout


def test_dry_run_prints_config_and_script_and_submits_nothing(tmp_path: Path) -> None:
    proc = _cli(["submit", str(ROOT / "configs" / "array.yaml"), "--dry-run", "--set", f"run_dir={tmp_path / 'r'}"],
                tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "name: demo-array" in proc.stdout and "#SBATCH --array=0-3%2" in proc.stdout
    assert "nothing was submitted" in proc.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "missing.yaml"],
        ["submit", str(ROOT / "configs" / "train.yaml"), "--set", "resources.nodez=2"],
        ["submit", str(ROOT / "configs" / "train.yaml"), "--set", "backend=lokal"],
        ["status", "no-such-run"],
        ["status", "."],  # a folder, but no run directory
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("aetherium-hpc: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_every_command_has_help_text() -> None:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    choices = actions[0].choices  # type: ignore[attr-defined]
    assert {"submit", "run", "status", "log"} <= set(choices)
    for name, sub in choices.items():
        assert sub.description, name


def test_status_of_a_running_local_job(tmp_path: Path) -> None:
    import json

    from aetherium_hpc.launch import run_status
    from aetherium_hpc.paths import RunLayout

    layout = RunLayout.new(tmp_path, "x")
    layout.jobs_path.write_text(json.dumps({"cluster": "local", "job_ids": [str(os.getpid()), "999999999"]}))
    rows, source = run_status(layout.root)
    assert source == "databases"
    assert [(r["job"], r["state"]) for r in rows] == [(str(os.getpid()), "RUNNING"), ("999999999", "LOST")]

    # ELAPSED since its process started, NODES this host (no database copied back yet)
    started = psutil.Process().create_time()
    assert rows[0]["nodes"] == socket.gethostname() and rows[0]["elapsed"].endswith("s")
    assert abs(int(rows[0]["elapsed"][:-1]) - (time.time() - started)) <= 2, rows[0]


def test_a_throttled_local_array_records_its_tasks_as_they_start(tmp_path: Path) -> None:
    """A local array with array_parallelism below its size: jobs.json is there from the first task
    on and grows as tasks start; each start is one progress line; submit ends once the last started."""
    go = tmp_path / "go"
    config = tmp_path / "a.yaml"
    config.write_text(
        "name: throttled\nbackend: local\n"
        f"run_dir: {tmp_path / 'runs'}\n"
        "workload:\n"
        f"  command: [sh, -c, 'while [ ! -e {go} ]; do sleep 0.05; done']\n"
        "array:\n  params: [{i: 0}, {i: 1}, {i: 2}]\n"
        "slurm:\n  array_parallelism: 1\n"
        "monitoring:\n  interval_s: 1.0\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_METRICS"))}
    env.update(PYTHONPATH=str(ROOT), AETHERIUM_LOCAL_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "aetherium_hpc", "submit", str(config)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        jobs: list[Path] = []
        while not jobs and proc.poll() is None and time.monotonic() < deadline:
            jobs = list((tmp_path / "runs").glob("*/jobs.json"))
            time.sleep(0.05)
        assert jobs, proc.communicate(timeout=10)
        first = json.loads(jobs[0].read_text())
        # The first task waits for `go`: submit is still launching, and jobs.json already names it.
        assert proc.poll() is None
        assert first["tasks"] == 3 and len(first["job_ids"]) == 1 and first["cluster"] == "local"
        go.touch()
        out, err = proc.communicate(timeout=240)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    final = json.loads(jobs[0].read_text())
    assert final["tasks"] == 3 and len(final["job_ids"]) == 3
    assert final["job_ids"][0] == first["job_ids"][0]
    started = [line for line in err.splitlines() if "task(s) started" in line]
    assert [line.split(": ")[1].split(" ")[0] for line in started] == ["1/3", "2/3", "3/3"], err
    assert "submitted 3 task(s) to local" in out
    assert not list(jobs[0].parent.glob(".jobs-*"))  # no half-written record left beside it


def test_dry_run_says_why_auto_runs_locally_in_its_header_not_as_a_warning(tmp_path: Path) -> None:
    """Slurm's commands installed but no controller answering: the dry run's header says so, stderr stays empty."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("sbatch", "srun", "squeue", "scontrol", "sinfo"):
        (fake / tool).write_text(
            "#!/bin/sh\necho 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2\nexit 1\n"
        )
        (fake / tool).chmod(0o755)
    proc = _cli(["submit", str(ROOT / "configs" / "train.yaml"), "--dry-run", "--set", f"run_dir={tmp_path / 'r'}"],
                tmp_path, path=f"{fake}:{os.path.dirname(sys.executable)}:/usr/bin:/bin")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0]
    assert "backend auto -> local (Slurm is installed but" in header, header
    assert "running locally" not in proc.stderr and proc.stderr.strip() == "", proc.stderr


def test_the_callable_module_is_found_beside_the_config_or_refused_in_one_line(tmp_path: Path) -> None:
    """workload.callable's module beside the config works from another folder; one that is nowhere
    is refused at submit (also --dry-run) in one line, exit 2, and no run folder is made."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "mypipeline.py").write_text(
        "from aetherium_hpc import log_training_epoch_metric\n\n"
        "def run(lr):\n    log_training_epoch_metric('loss', lr, round_number=0, epoch_number=0)\n"
    )
    config = project / "c.yaml"
    config.write_text(
        f"name: beside\nbackend: local\nrun_dir: {tmp_path / 'runs'}\n"
        "workload:\n  callable: 'mypipeline:run'\n  kwargs: {lr: 0.25}\nmonitoring:\n  interval_s: 1.0\n"
    )
    done = _cli(["submit", str(config), "--wait"], elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 task(s) completed" in done.stdout
    (db,) = (tmp_path / "runs").glob("beside-*/db/*/*.db")
    assert counts(db)["training_metrics"] == 1

    config.write_text(config.read_text().replace("mypipeline:run", "not_there.sub:run"))
    for extra in (["--dry-run"], []):
        refused = _cli(["submit", str(config), *extra], elsewhere)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert "c.yaml: workload.callable: module 'not_there' is not in" in line and str(project) in line
    assert len(list((tmp_path / "runs").glob("beside-*"))) == 1  # only the first submit's


def test_a_command_workload_gets_its_task_params_as_json(tmp_path: Path) -> None:
    """docs/CONFIG.md: each task of a command workload finds its mapping in AETHERIUM_TASK_PARAMS."""
    config = tmp_path / "c.yaml"
    write = "import json, os; p = os.environ['AETHERIUM_TASK_PARAMS']; open(f\"{os.environ['AETHERIUM_RUN_DIR']}/p{json.loads(p)['seed']}\", 'w').write(p)"
    config.write_text(
        f"name: cmd\nbackend: local\nrun_dir: {tmp_path / 'runs'}\n"
        f"workload:\n  command: [{sys.executable}, -c, {json.dumps(write)}]\n"
        "array:\n  params: [{seed: 0, lr: 0.5}, {seed: 1, lr: 0.25}]\nmonitoring:\n  interval_s: 1.0\n"
    )
    done = _cli(["submit", str(config), "--wait"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = (tmp_path / "runs").glob("cmd-*")
    assert json.loads((run / "p0").read_text()) == {"seed": 0, "lr": 0.5}
    assert json.loads((run / "p1").read_text()) == {"seed": 1, "lr": 0.25}


def test_status_of_a_folder_that_is_no_run_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("x\n")
    proc = _cli(["status", "results"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr == (
        "aetherium-hpc: error: results: a folder but not a run directory (no jobs.json, nor databases under db/); "
        "give a folder printed by `aetherium-hpc submit`\n"
    )


def test_status_of_a_running_job_from_its_database_shows_elapsed_and_node(tmp_path: Path) -> None:
    """A local job whose database (copied back) still says running, its process alive: RUNNING,
    ELAPSED since its start time, NODES its node."""
    import json

    import aetherium_hpc
    from aetherium_hpc.launch.status import run_status, status_table
    from aetherium_hpc.paths import RunLayout
    from aetherium_hpc.store import SourceInfo

    layout = RunLayout.new(tmp_path, "x")
    pid, host = str(os.getpid()), socket.gethostname()
    layout.jobs_path.write_text(json.dumps({"cluster": "local", "job_ids": [pid]}))
    db = layout.db_dir / f"{pid}_0" / f"{host}.db"
    db.parent.mkdir(parents=True)
    aetherium_hpc.init_db(db, source=SourceInfo(job_id=pid, node=host, hostname=host), listen=False)
    # started 3 s ago (its process, this test's, started before: the process is the job)
    aetherium_hpc.log_job(status="running", start_time=time.time() - 3, config={"backend": "local"})
    aetherium_hpc.shutdown_db()
    rows, source = run_status(layout.root)
    assert source == "databases" and len(rows) == 1, rows
    assert (rows[0]["state"], rows[0]["nodes"]) == ("RUNNING", host)
    assert 3 <= int(rows[0]["elapsed"][:-1]) <= 60, rows[0]
    header, line = status_table(rows)
    assert line.split() == [pid, "RUNNING", rows[0]["elapsed"], host]
    assert header.index("ELAPSED") == line.index(rows[0]["elapsed"]) and header.index("NODES") == line.index(host)
