"""`aetherium-hpc watch`: one frame of a run (`--once`), and the live view in a real terminal (tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from task_dbs import TASKS, write_task
from testenv import ROOT
from watch_helpers import watch_in_tmux

from aetherium_hpc.analysis.watch import read_task, sparkline


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetherium_hpc", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


def test_once_prints_every_task(tmp_path: Path) -> None:
    run = tmp_path / "sweep-20240501-093000-1a2b"
    for task in range(len(TASKS)):
        write_task(run / "db" / f"77_{task}" / "n1.db", task)
    (run / "config.yaml").write_text("name: sweep\n")
    proc = cli("watch", str(run), "--once")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip().startswith("77_")}
    assert sorted(lines) == [f"77_{t}" for t in range(len(TASKS))]
    assert "completed" in lines["77_1"] and "0.2 val/loss" in lines["77_1"] and "copy" in lines["77_1"]
    assert "cancelled" in lines["77_2"] and "failed" in lines["77_4"]
    assert "5/5 ended" in proc.stdout
    view = read_task(str(run / "db" / "77_0" / "n1.db"))
    assert view.job == "77_0" and view.node == "n1" and view.mem == [100.0] and view.ended


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0, 4.0]) == " ▃▅█" and sparkline([]) == ""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_in_tmux_until_the_job_ends(tmp_path: Path) -> None:
    """A local job watched in a real terminal: frames while it runs, then it ends by itself."""
    watch_in_tmux(tmp_path, "local")
