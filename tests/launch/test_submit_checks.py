"""`submit --dry-run` makes every check `submit` makes; a refused submit leaves no run folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from testenv import ROOT

from aetherium_hpc import cli, launch
from aetherium_hpc.config import load_config
from aetherium_hpc.errors import LaunchError

TRAIN = str(ROOT / "configs" / "train.yaml")


def test_dry_run_refuses_what_submit_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    two_nodes = ["--set", "backend=local", "--set", "resources.nodes=2", "--set", f"run_dir={runs}"]
    assert cli.main(["submit", TRAIN, *two_nodes, "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert "resources.nodes=2: the local backend runs on this machine only" in dry.err
    assert "dry run: nothing was submitted" not in dry.out
    assert cli.main(["submit", TRAIN, *two_nodes]) == 2
    assert "resources.nodes=2" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())  # refused: no run folder
    # What both accept:
    assert cli.main(["submit", TRAIN, "--set", "backend=local", "--set", f"run_dir={runs}", "--dry-run"]) == 0
    assert "dry run: nothing was submitted" in capsys.readouterr().out


def test_a_submission_refused_after_the_folder_was_made_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch refusing the job (an unknown partition, a QOS limit) comes after the run folder exists."""

    def refused(*_args: object) -> launch.Submission:
        raise LaunchError("submission failed: sbatch: error: Batch job submission failed: Invalid partition")

    monkeypatch.setattr("aetherium_hpc.launch.submission._submit_into", refused)
    config = load_config(TRAIN, [f"run_dir={tmp_path / 'runs'}", "backend=local"])
    with pytest.raises(LaunchError, match="Invalid partition"):
        launch.submit(config)
    assert list((tmp_path / "runs").iterdir()) == []


def test_status_shows_the_local_report_job(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from aetherium_hpc.paths import RunLayout

    layout = RunLayout(tmp_path / "run")
    layout.create()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        layout.jobs_path.write_text(json.dumps({"cluster": "local", "job_ids": [], "array_job_ids": [],
                                                "report_job_id": str(proc.pid)}))  # fmt: skip
        rows, _ = launch.run_status(layout.root)
        elapsed = rows[-1]["elapsed"]  # the time since its process started
        assert elapsed.endswith("s") and 0 <= int(elapsed[:-1]) < 300, elapsed
        assert rows[-1] == {"job": str(proc.pid), "state": "RUNNING", "exit": "", "elapsed": elapsed,
                            "nodes": "(merge + report)"}  # fmt: skip
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert launch.run_status(layout.root)[0][-1]["state"] == "FAILED"  # ended without writing the report
    (layout.root / "report.html").write_text("<html></html>")
    assert launch.run_status(layout.root)[0][-1]["state"] == "COMPLETED"
