"""`aetherium-hpc watch` in a real terminal (tmux) on a job of the real Slurm cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from watch_helpers import watch_in_tmux

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_of_a_slurm_job_in_tmux(tmp_path: Path) -> None:
    watch_in_tmux(tmp_path, "slurm")
