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


def _store_bounds(yaml_only: bool = False) -> list[tuple[str, str, float | str]]:
    """(option, relation, limit) of every bound of the store's options; ``yaml_only``: of the options
    the YAML's monitoring: section sets."""
    import dataclasses

    from aetherium_hpc.config import Monitoring
    from aetherium_hpc.store.options import BOUNDS

    keys = {f.name for f in dataclasses.fields(Monitoring)}
    return [
        (name, relation, limit)
        for name, limits in BOUNDS.items()
        for relation, limit in limits.items()
        if name in keys or not yaml_only
    ]


def _beyond(relation: str, bound: float) -> float:
    """A value just outside ``relation`` to ``bound``."""
    return {"gt": bound, "ge": bound - 1, "le": bound + 1}[relation]


@pytest.mark.parametrize(("name", "relation", "limit"), _store_bounds())
def test_every_store_bound_is_checked_by_the_store(name: str, relation: str, limit: float | str) -> None:
    import dataclasses

    from aetherium_hpc.store.options import RELATIONS, StoreOptions

    small = StoreOptions(buffer_size=1)  # every other option within its bounds, whatever the one tried
    bound = getattr(small, limit) if isinstance(limit, str) else limit
    bad = _beyond(relation, bound)
    shown = f"{limit}={bound}" if isinstance(limit, str) else bound
    with pytest.raises(ValueError, match=f"^{name}={bad}: must be {RELATIONS[relation][0]} {shown}$"):
        dataclasses.replace(small, **{name: bad})
    if relation != "gt":
        dataclasses.replace(small, **{name: bound})  # the bound itself is allowed


@pytest.mark.parametrize(("name", "relation", "limit"), _store_bounds(yaml_only=True))
def test_every_store_bound_of_the_yaml_is_one_line_naming_yaml_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, relation: str, limit: float | str
) -> None:
    """A store option the YAML sets (monitoring.KEY) out of its bounds: `submit --dry-run` says so in one
    line, in the YAML's words (a bound set by an option the YAML lacks, max_queue, is that option's default)."""
    from aetherium_hpc.store.options import RELATIONS, StoreOptions

    bound = getattr(StoreOptions(), limit) if isinstance(limit, str) else limit
    bad = _beyond(relation, bound)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nworkload:\n  command: [python, train.py]\nmonitoring:\n  {name}: {bad}\n")
    assert cli.main(["submit", str(config), "--set", f"run_dir={tmp_path / 'runs'}", "--dry-run"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1, out.err
    shown = int(bound) if float(bound).is_integer() else bound
    word = {"gt": "positive value" if bound == 0 else "above", "ge": "at least", "le": "at most"}[relation]
    assert out.err.startswith(f"aetherium-hpc: error: {config}:5: monitoring.{name}: must be "
                              f"{RELATIONS[relation][0]} {shown}, got {bad}; "), out.err  # fmt: skip
    assert word in out.err
    not_yaml = {option for option, _, _ in _store_bounds()} - {option for option, _, _ in _store_bounds(True)}
    assert not_yaml and not any(option in out.err for option in not_yaml), out.err


def test_the_yaml_buffer_size_is_bounded_by_the_queue() -> None:
    """buffer_size <= max_queue (1,000,000 records by default): the YAML's buffer_size has an upper bound."""
    assert ("buffer_size", "le", "max_queue") in _store_bounds(yaml_only=True)
