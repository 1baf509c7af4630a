"""backend: auto picks Slurm only when a controller answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aetherium_hpc import launch


def _commands(folder: Path, sinfo_exit: int) -> None:
    for name in ("srun", "sbatch"):
        (folder / name).write_text("#!/bin/sh\nexit 0\n")
        (folder / name).chmod(0o755)
    (folder / "sinfo").write_text(f"#!/bin/sh\necho 'sinfo: error: cannot reach slurmctld' >&2\nexit {sinfo_exit}\n")
    (folder / "sinfo").chmod(0o755)


@pytest.mark.parametrize("sinfo_exit, expected", [(1, "local"), (0, "slurm")])
def test_auto_needs_an_answering_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sinfo_exit: int, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    _commands(tmp_path, sinfo_exit)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.resolve_cluster("auto") == expected
    if expected == "local":
        assert "no cluster answers (sinfo: sinfo: error: cannot reach slurmctld)" in caplog.text


def test_explicit_backend_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _commands(tmp_path, 1)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.resolve_cluster("slurm") == "slurm"
    assert launch.resolve_cluster("local") == "local"
