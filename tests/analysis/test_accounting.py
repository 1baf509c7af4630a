"""sacct figures in reports: parsing, and the reasons given when there are none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aetherium_hpc import scheduler as accounting
from aetherium_hpc.errors import SlurmError


def test_local_job_ids_are_not_sent_to_sacct() -> None:
    assert accounting.sacct_figures(["local123", None, "4711x"]) == {
        "rows": [],
        "why": "no Slurm job ids in this database (local runs)",
    }


def test_sizes_in_mb() -> None:
    assert accounting._mb("2048K") == 2.0
    assert accounting._mb("1.5G") == 1536.0
    assert accounting._mb("") is None


def test_failing_sacct_gives_its_first_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database: Connection refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    got = accounting.sacct_figures(["123_0", "123_1"])
    assert got["rows"] == []
    assert "Connection refused" in got["why"]


def test_sacct_output_is_grouped_per_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "sacct"
    fake.write_text(
        "#!/bin/sh\ncat <<'OUT'\n"
        "123_0|COMPLETED|0:0|00:00:05|00:01.5|1G|1|00:10:00||n1\n"
        "123_0.batch|COMPLETED|0:0|00:00:05|00:01.5||1||2048K|n1\n"
        "123_0.0|COMPLETED|0:0|00:00:04|00:01.2||1||51200K|n1\n"
        "123_1|TIMEOUT|0:15|00:10:00|00:09.0|1G|1|00:10:00||n2\n"
        "OUT\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    rows = accounting.sacct_figures(["123_0", "123_1"])["rows"]
    assert [(r["job"], r["state"], r["max_rss_mb"]) for r in rows] == [
        ("123_0", "COMPLETED", 50.0),
        ("123_1", "TIMEOUT", None),
    ]


def test_the_runtime_asks_slurm_through_the_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's end time (squeue -o %e) and its fields (scontrol show job -o), and their answers when
    the command fails, has no limit, or is missing."""
    import datetime

    for name, body in {
        "squeue": 'case "$3" in 7) echo 2030-01-02T03:04:05;; 8) echo N/A;; *) exit 1;; esac',
        "scontrol": '[ "$4" = 7 ] && echo "JobId=7 MinMemoryNode=4G NumCPUs=2 Comment=" || exit 1',
    }.items():
        fake = tmp_path / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert accounting.job_end_time("7") == datetime.datetime(2030, 1, 2, 3, 4, 5).timestamp()
    assert accounting.job_end_time("8") is None  # no time limit
    assert accounting.job_end_time("9") is None  # squeue refuses
    assert accounting.job_fields("7") == {"JobId": "7", "MinMemoryNode": "4G", "NumCPUs": "2", "Comment": ""}
    assert accounting.job_fields("9") == {}
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert accounting.job_end_time("7") is None and accounting.job_fields("7") == {}


def test_sacct_rows_raise_a_slurm_error_that_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SlurmError, match=r"^no Slurm job ids in this database \(local runs\)$"):
        accounting.sacct_rows(["local123", None])
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SlurmError, match="^sacct is not installed here$"):
        accounting.sacct_rows(["123"])
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database: Connection refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match=r"^accounting is off or unreachable \(sacct: .*Connection refused\)$"):
        accounting.sacct_rows(["123"])


def test_the_slurm_release_from_scontrol_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "slurm 23.02.7" || exit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert accounting.slurm_version() == (23, 2, 7)
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert accounting.slurm_version() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert accounting.slurm_version() is None
