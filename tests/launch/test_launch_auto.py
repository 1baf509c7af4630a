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
    # What sinfo says on a machine with Slurm's packages but no slurm.conf (configless lookup fails).
    (folder / "sinfo").write_text(
        "#!/bin/sh\n"
        "echo 'sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' >&2\n"
        "echo 'sinfo: error: fetch_config: DNS SRV lookup failed' >&2\n"
        "echo 'sinfo: fatal: Could not establish a configuration source' >&2\n"
        f"exit {sinfo_exit}\n"
    )
    (folder / "sinfo").chmod(0o755)


@pytest.mark.parametrize("sinfo_exit, expected", [(1, "local"), (0, "slurm")])
def test_auto_needs_an_answering_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sinfo_exit: int, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    _commands(tmp_path, sinfo_exit)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.resolve_cluster("auto") == expected
    if expected == "local":
        # One clean line: the first reason without sinfo's "sinfo: error:" prefixes, and what to do.
        notice = [r.getMessage() for r in caplog.records if "Slurm is installed" in r.getMessage()]
        assert notice == [
            "aetherium-hpc: Slurm is installed but no controller answers (resolve_ctls_from_dns_srv: res_nsearch "
            "error: Unknown host); running locally (backend: local skips this check, backend: slurm submits anyway)"
        ]


def test_explicit_backend_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _commands(tmp_path, 1)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.resolve_cluster("slurm") == "slurm"
    assert launch.resolve_cluster("local") == "local"
