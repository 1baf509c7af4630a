"""`merge RUN_DIR` and `report RUN_DIR`: the run's own merged.db, never taken as an input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from task_dbs import TASKS, write_task
from testenv import ROOT

from aetherium_hpc.analysis.merge import collect_inputs


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "demo-array-20240501-093000-1a2b"
    for task in range(len(TASKS)):
        write_task(run / "db" / f"77_{task}" / "n1.db", task)
    (run / "config.yaml").write_text("name: sweep\n")
    return run


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetherium_hpc", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


def test_merge_run_dir_writes_its_merged_db(run_dir: Path) -> None:
    first = cli("merge", str(run_dir))
    assert first.returncode == 0, first.stderr
    assert (run_dir / "merged.db").is_file()
    assert not (run_dir / "merged.db.lock").exists()  # the merge's lock file goes with it
    assert f"into {run_dir / 'merged.db'}" in first.stdout and "5 sources added" in first.stdout
    again = cli("merge", str(run_dir))  # merged.db is not an input of its own run
    assert "merged 5 of 5 inputs" in again.stdout and "0 sources added, 5 already present" in again.stdout
    # Into another output, the run's merged.db is not an input either (it would double every row).
    assert str(run_dir / "merged.db") not in collect_inputs([run_dir], run_dir.parent / "other.db")
    several = cli("merge", str(run_dir), str(run_dir / "db"))
    assert several.returncode == 2 and "-o MERGED.db" in several.stderr and several.stderr.count("\n") == 1


def test_report_run_dir_merges_first(run_dir: Path) -> None:
    proc = cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"aetherium-hpc report: {run_dir / 'merged.db'}")
    assert "winner: task 77_1" in proc.stdout and "5 sources added" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "db", "merged.db"]  # no lock file left
    plain = run_dir.parent / "plain"
    plain.mkdir()
    refused = cli("report", str(plain))
    assert refused.returncode == 2 and "not a run directory" in refused.stderr
