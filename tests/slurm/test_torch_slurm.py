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
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

if os.environ.get("CI"):
    import torch  # noqa: F401  (CI installs the test extra: a missing torch fails here)
else:
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[test]'")

from launch_helpers import aetherium_cli, counts, job_rows  # noqa: E402


def start(tmp_path: Path) -> tuple[Path, str, int]:
    """Submit the DataLoader loop; (run dir, job id, rows committed) once its first epoch is in."""
    marker = tmp_path / "ready"
    config = tmp_path / "torch.yaml"
    config.write_text(
        "name: torch-loader\nworkload:\n  callable: runtime_workloads:torch_dataloader_train\n"
        f"  kwargs: {{marker: {json.dumps(str(marker))}}}\n"
        "resources: {timeout_min: 5, cpus_per_task: 2}\nmonitoring: {interval_s: 0.5, flush_interval_s: 30}\n"
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
