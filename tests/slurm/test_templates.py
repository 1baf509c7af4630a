"""The sbatch templates with plain `sbatch`, a real time limit, and `status` without slurmdbd."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import requeue_now

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

ROOT = Path(__file__).parent.parent.parent
TEMPLATES = ROOT / "slurm" / "templates"

LOGGER = (
    "import time, aetherium_hpc as ah\n"
    "for i in range({n}):\n"
    "    ah.log_training_epoch_metric('loss', 1.0 / (i + 1), 0, i)\n"
    "    time.sleep({pause})\n"
)


def job_env(run_dir: Path) -> dict[str, str]:
    """The submitting shell of a user: aetherium-hpc on PATH, nothing of another job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    env["AETHERIUM_RUN_DIR"] = str(run_dir)
    return env


def sbatch(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode in ok, proc.stderr
    return proc.stdout.strip().split(";")[0]


def only_db(run_dir: Path) -> Path:
    dbs = sorted((run_dir / "db").glob("*/*.db"))
    assert len(dbs) == 1, dbs
    return dbs[0]


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_job_template_with_plain_sbatch_leaves_a_database(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = sbatch(
        ["--wait", "--mem=500M", f"--output={tmp_path}/out-%j.txt", str(TEMPLATES / "job.sbatch"),
         sys.executable, "-c", LOGGER.format(n=20, pause=0.01)],
        job_env(run_dir), tmp_path,
    )  # fmt: skip
    db = only_db(run_dir)
    assert db.parent.name.startswith(job_id)
    assert rows(db, "SELECT count(*) FROM training_metrics") == [(20,)]
    assert rows(db, "SELECT status, exit_code FROM jobs") == [("completed", 0)]
    assert rows(db, "SELECT count(*) > 0 FROM resource_metrics WHERE metric_type = 'cpu'") == [(1,)]
    assert rows(db, "SELECT DISTINCT job_id FROM training_metrics") == [(job_id,)]
    # What the script asked for (#SBATCH lines and the command line) is recorded for the report's advice.
    requested = json.loads(str(rows(db, "SELECT requested FROM jobs")[0][0]))
    assert requested["mem_gb"] == pytest.approx(500 / 1024) and requested["timeout_min"] == pytest.approx(30)
    assert requested["cpus"] == 2 and requested["cpus_per_task"] == 2 and requested["nodes"] == 1


def test_time_limit_records_timeout_and_keeps_the_data(tmp_path: Path) -> None:
    """A job that runs into --time=1 (no USR2 before it): SIGTERM at the limit → 'timeout'."""
    run_dir = tmp_path / "run"
    script = tmp_path / "limited.sbatch"
    script.write_text(
        f'#!/bin/bash\n#SBATCH --time=1\n#SBATCH --mem=500M\nsrun aetherium-hpc run -- "{sys.executable}" -c "$1"\n'
    )
    sbatch(
        ["--wait", f"--output={tmp_path}/out-%j.txt", str(script), LOGGER.format(n=100_000, pause=0.05)],
        job_env(run_dir), tmp_path, timeout=300, ok=(0, 1),  # --wait exits 1 for a job that timed out
    )  # fmt: skip
    db = only_db(run_dir)
    status = rows(db, "SELECT status FROM jobs")
    logged = rows(db, "SELECT count(*), max(epoch_number) FROM training_metrics")[0]
    assert status == [("timeout",)], [p.read_text() for p in tmp_path.glob("out-*.txt")]
    # About 20 records a second for a minute; all that reached the store before SIGTERM is there, gap-free.
    assert logged[0] > 500 and logged[1] == logged[0] - 1


def test_a_requeued_sbatch_job_keeps_each_attempt_apart(tmp_path: Path) -> None:
    """The job template under `scontrol requeue`: one database, each attempt its own source and end."""
    run_dir, marker = tmp_path / "run", tmp_path / "ready"
    code = (LOGGER.format(n=20, pause=0.0) + "import os, pathlib\n"
            f"pathlib.Path({str(marker)!r}).write_text(os.environ.get('SLURM_RESTART_COUNT', '0'))\n"
            "if 'SLURM_RESTART_COUNT' not in os.environ: time.sleep(300)\n")  # fmt: skip
    job_id = sbatch(["--requeue", "--mem=500M", f"--output={tmp_path}/out-%j.txt", str(TEMPLATES / "job.sbatch"),
                     sys.executable, "-c", code], job_env(run_dir), tmp_path)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    requeue_now(job_id)
    deadline = time.monotonic() + 180
    while not rows_or_none(run_dir, "SELECT 1 FROM jobs WHERE status = 'completed'"):
        assert time.monotonic() < deadline, [p.read_text() for p in tmp_path.glob("out-*.txt")]
        time.sleep(0.5)
    dbs = sorted((run_dir / "db").glob("*/*.db"))  # one, or one per node: attempt 2 may run on the other
    ends = sorted(
        r for d in dbs for r in rows(d, "SELECT s.attempt, j.status FROM jobs j JOIN sources s USING (source_id)")
    )
    assert ends == [(0, "cancelled"), (1, "completed")]
    per_attempt = sorted(r for d in dbs for r in rows(d, "SELECT s.attempt, count(*) FROM training_rows t"
                                                          " JOIN sources s USING (source_id) GROUP BY 1"))  # fmt: skip
    assert per_attempt == [(0, 20), (1, 20)]


def rows_or_none(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    found = []
    for db in sorted((run_dir / "db").glob("*/*.db")):
        try:
            found += rows(db, sql)
        except sqlite3.Error:  # being copied
            pass
    return found


def _daemon_pid(name: str) -> int:
    folder = Path(os.environ["SLURM_CONF"]).parent.parent  # <cluster dir>/etc/slurm.conf (set by slurm_conf)
    return int((folder / "run" / f"{name}.pid").read_text().strip())


def test_status_answers_while_slurmdbd_is_down(tmp_path: Path) -> None:
    """sacct fails without slurmdbd: `status` still answers, from squeue and the databases."""
    env = job_env(tmp_path / "unused")
    base = [sys.executable, "-m", "aetherium_hpc"]
    submit = subprocess.run(
        [*base, "submit", str(ROOT / "configs" / "train.yaml"), "--wait", "--set", f"run_dir={tmp_path}",
         "--set", "backend=slurm", "--set", "resources.mem_gb=1", "--set", "workload.kwargs.rounds=1",
         "--set", "workload.kwargs.epochs=2"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    run_dir = Path(
        next(line.split(": ", 1)[1] for line in submit.stdout.splitlines() if line.startswith("run directory: "))
    )
    pid = _daemon_pid("slurmdbd")
    os.kill(pid, signal.SIGTERM)
    try:
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        sacct = subprocess.run(["sacct", "-X", "-n"], env=env, capture_output=True, text=True, timeout=60)
        assert sacct.returncode != 0  # accounting is really down
        proc = subprocess.run([*base, "status", str(run_dir)], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        header = proc.stdout.splitlines()[0]
        assert "sacct" not in header and ("squeue" in header or "databases" in header), proc.stdout
        assert "COMPLETED" in proc.stdout.upper(), proc.stdout
    finally:
        subprocess.run(["bash", str(ROOT / "slurm" / "cluster.sh"), "up"], capture_output=True, timeout=180, check=True)


def test_chain_merge_runs_the_merge_after_the_array(tmp_path: Path) -> None:
    """slurm/templates/chain-merge.sh: an array, then merge + report with --dependency=afterany."""
    run_dir = tmp_path / "chained run"  # a space, as in real home folders
    env = job_env(run_dir)
    proc = subprocess.run(
        ["bash", str(TEMPLATES / "chain-merge.sh"), str(run_dir), sys.executable, "-c", LOGGER.format(n=5, pause=0.01)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    array_id, merge_id = words[2].rstrip(","), words[5].rstrip(";")
    deps = subprocess.run(
        ["scontrol", "show", "job", merge_id], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    assert f"afterany:{array_id}" in deps or "Dependency=(null)" in deps  # (null) once the array has ended
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run_dir / "report.html").exists():
        time.sleep(1)
    assert (run_dir / "report.html").exists(), list(run_dir.rglob("*"))
    merged = run_dir / "merged.db"
    assert rows(merged, "SELECT count(DISTINCT array_task_id), count(*) FROM training_metrics") == [(4, 20)]
    assert len(sorted((run_dir / "db").glob("*/*.db"))) == 4


def test_submit_with_auto_report_chains_a_merge_job_after_the_array(tmp_path: Path) -> None:
    env = job_env(tmp_path / "unused")
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(ROOT / "configs" / "array.yaml"),
         "--set", "backend=slurm", "--set", f"run_dir={tmp_path}", "--set", "report.auto=true"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = Path(
        next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run directory: "))
    )
    report_id = next(line.split()[2].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("report job "))
    array_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("submitted "))
    show = subprocess.run(["scontrol", "show", "job", report_id], env=env, capture_output=True, text=True, timeout=30)
    assert f"afterany:{array_id}" in show.stdout or "Dependency=(null)" in show.stdout, show.stdout
    script = (run_dir / "logs" / "job.sbatch").read_text()  # the array's script, not the report job's
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --job-name=demo-array\n" in script, script
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run_dir / "report.html").exists():
        time.sleep(1)
    assert (run_dir / "report.html").exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert rows(run_dir / "merged.db", "SELECT count(DISTINCT array_task_id) FROM training_metrics") == [(4,)]
    # sacct figures are joined into the report when accounting answers.
    # slurmdbd records a task a moment after it ends, so the report job may see only some of them.
    expected = [f"{array_id}_{t}" for t in range(4)]
    sacct = json.loads((run_dir / "report.json").read_text())["sacct"]
    assert sacct["rows"] and all(r["job"] in expected and r["state"] == "COMPLETED" for r in sacct["rows"]), sacct
    # Once accounting has caught up, a report lists all four tasks.
    deadline = time.monotonic() + 60
    while True:
        again = subprocess.run(
            [sys.executable, "-m", "aetherium_hpc", "report", str(run_dir / "merged.db"), "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        jobs = sorted(r["job"] for r in json.loads(again.stdout)["sacct"]["rows"])
        if jobs == expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert jobs == expected


def test_the_include_templates_folder_is_a_run_directory_for_merge_and_report(tmp_path: Path) -> None:
    """A hand-written sbatch script that sources aetherium-include.sh leaves aetherium-runs/<job id>/:
    `merge DIR` and `report DIR` take it as the run directory (as configs/array.yaml's header says)."""
    script = tmp_path / "mine.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --mem=500M\n#SBATCH --array=0-1\n"
        f"source {TEMPLATES / 'aetherium-include.sh'}\n"
        f'aetherium_run {sys.executable} -c "{LOGGER.format(n=5, pause=0.01)}"\n'
    )
    env = job_env(tmp_path)
    del env["AETHERIUM_RUN_DIR"]  # the template's default: $SLURM_SUBMIT_DIR/aetherium-runs/<job id>
    job_id = sbatch(["--wait", f"--output={tmp_path}/out-%A_%a.txt", str(script)], env, tmp_path)
    run = tmp_path / "aetherium-runs" / job_id
    assert len(sorted(run.glob("db/*/*.db"))) == 2, sorted(tmp_path.rglob("*"))
    cli = [sys.executable, "-m", "aetherium_hpc"]
    merged = subprocess.run([*cli, "merge", str(run)], env=env, capture_output=True, text=True, timeout=240)
    assert merged.returncode == 0, merged.stderr
    assert rows(run / "merged.db", "SELECT count(*) FROM training_metrics") == [(10,)]
    report = subprocess.run([*cli, "report", str(run)], env=env, capture_output=True, text=True, timeout=240)
    assert report.returncode == 0, report.stderr
    assert "2 tasks" in report.stdout or "2 task(s)" in report.stdout, report.stdout
