"""Real PyTorch (CPU) DataLoader workers in a callable job on the real cluster, ended by Slurm.

``scancel`` signals every process of the step: the DataLoader workers die too, and PyTorch's
SIGCHLD handler raises RuntimeError in the job's main thread, at any moment of its end. The status
must still say what Slurm did, and the database must reach the run directory with every row
committed before the signal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

if os.environ.get("CI"):
    import torch  # noqa: F401  (CI installs the test extra: a missing torch fails here)
else:
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[test]'")

from launch_helpers import aetherium_cli, counts, job_rows  # noqa: E402
from procs import read as q  # noqa: E402
from slurm_helpers import start_requeued_now  # noqa: E402


def start(tmp_path: Path, timeout_min: int = 5, requeued_epochs: str = "") -> tuple[Path, str, int]:
    """Submit the DataLoader loop; (run dir, job id, rows committed) once its first epoch is in."""
    marker = tmp_path / "ready"
    config = tmp_path / "torch.yaml"
    more = f", epochs_when_requeued: {requeued_epochs}" if requeued_epochs else ""
    config.write_text(
        "name: torch-loader\nworkload:\n  callable: runtime_workloads:torch_dataloader_train\n"
        f"  kwargs: {{marker: {json.dumps(str(marker))}{more}}}\n"
        f"resources: {{timeout_min: {timeout_min}, cpus_per_task: 2}}\n"
        "monitoring: {interval_s: 0.5, flush_interval_s: 30}\n"
    )
    args = ["submit", str(config), "--set", f"run_dir={tmp_path / 'runs'}", "--set", "backend=slurm",
            "--set", "resources.mem_gb=1"]  # fmt: skip
    proc = aetherium_cli(args, tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = next((tmp_path / "runs").iterdir())
    job_id = json.loads((run / "jobs.json").read_text())["job_ids"][0]
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert time.monotonic() < deadline, "the job's first epoch did not end within 180 s"
        time.sleep(0.2)
    return run, job_id, int(marker.read_text().split()[1])


def final(run: Path, timeout: float = 120.0) -> tuple[Path, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(run.glob("db/*/*.db"))
        if found:
            row = job_rows(found[0])[0]
            if row["status"] != "running":
                return found[0], row
        time.sleep(0.5)
    raise AssertionError(f"no database with a final status reached {run / 'db'} within {timeout:.0f} s")


@pytest.mark.parametrize(("signal_args", "status"), [([], "cancelled"), (["--signal=USR2"], "timeout")])
def test_a_dataloader_job_ended_by_slurm_keeps_its_rows_and_says_what_slurm_did(
    tmp_path: Path, signal_args: list[str], status: str
) -> None:
    run, job_id, committed = start(tmp_path)
    subprocess.run(["scancel", *signal_args, job_id], check=True, timeout=30)
    db, row = final(run)
    assert row["status"] == status, row
    assert counts(db)["training_metrics"] >= committed > 32


def test_a_dataloader_job_preempted_records_preempted_and_its_requeued_attempt_completes(tmp_path: Path) -> None:
    # 30 minutes asked, seconds used: submitit calls USR2 a preemption, and requeues the job.
    run, job_id, committed = start(tmp_path, timeout_min=30, requeued_epochs="2")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    start_requeued_now(job_id)  # submitit requeued it
    deadline = time.monotonic() + 240
    while True:
        rows = sorted((r["attempt"], r["status"]) for db in run.glob("db/*/*.db") for r in job_rows(db))
        if (1, "completed") in rows:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    assert rows == [(0, "preempted"), (1, "completed")]
    dbs = sorted(run.glob("db/*/*.db"))
    first = [r for db in dbs for r in q(db, "SELECT count(*) FROM training_rows t JOIN sources s USING (source_id)"
                                            " WHERE s.attempt = 0")]  # fmt: skip
    assert sum(r[0] for r in first) >= committed > 32


def test_a_dataloader_script_at_the_time_limit_records_timeout_and_keeps_its_rows(tmp_path: Path) -> None:
    """`--time=1` with a torch DataLoader script under the sbatch template's `aetherium-hpc run`:
    SIGTERM at the limit reaches the script, its DataLoader workers and the runner together."""
    run_dir = tmp_path / "run"
    script = tmp_path / "limited.sbatch"
    train = Path(__file__).parent.parent / "support" / "torch_train.py"
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=1\n#SBATCH --mem=1G\n#SBATCH --cpus-per-task=2\n"
        f'srun aetherium-hpc run -- "{sys.executable}" "{train}" - 100000 0.05\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["AETHERIUM_RUN_DIR"] = str(run_dir)
    out = tmp_path / "out.txt"
    proc = subprocess.run(["sbatch", "--wait", f"--output={out}", str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr  # --wait exits 1 for a job that timed out
    (db,) = sorted(run_dir.glob("db/*/*.db"))
    printed = out.read_text().count(" done")  # "epoch N done", printed after the epoch's row was logged
    assert q(db, "SELECT status FROM jobs") == [("timeout",)], out.read_text()[-2000:]
    (loss,) = q(db, "SELECT count(*) FROM training_metrics WHERE metric_name = 'loss'")
    assert loss[0] >= printed >= 1
    items = q(db, "SELECT count(*) FROM training_metrics WHERE metric_name = 'item'")[0][0]
    assert items >= 64 * printed
