"""`aetherium-hpc submit | status` as a user runs them, in a subprocess."""

from __future__ import annotations

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


def test_status_of_a_folder_that_is_no_run_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("x\n")
    proc = _cli(["status", "results"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr == (
        "aetherium-hpc: error: results: a folder but not a run directory (no db/ or jobs.json in it); "
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
