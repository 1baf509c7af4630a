"""A submission the real sbatch refuses leaves no run folder behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

ROOT = Path(__file__).parent.parent.parent


def test_unknown_partition_is_refused_without_a_run_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(ROOT / "configs" / "train.yaml"), "--set",
         "backend=slurm", "--set", "slurm.partition=no-such-partition", "--set", f"run_dir={runs}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "aetherium-hpc: error: submission failed:" in proc.stderr and "partition" in proc.stderr
    assert not runs.exists() or list(runs.iterdir()) == []
