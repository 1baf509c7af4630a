"""Helpers of the reliability suite (importable from tests and from job processes)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import testenv

ROOT = testenv.ROOT


def integrity(path: Path | str) -> str:
    """PRAGMA integrity_check of a database, on a read-only connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def read(path: Path | str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def child_env(tmp_path: Path | str, **extra: str) -> dict[str, str]:
    """The environment of a child process as a user starts it: no store or job of the test
    process, the project and tests/reliability importable, node-local files under ``tmp_path``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_"))}
    environ["PYTHONPATH"] = testenv.PYTHONPATH
    environ["AETHERIUM_LOCAL_DIR"] = str(tmp_path)
    environ.update(extra)
    return environ


def cli(args: list[str], cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m aetherium_hpc ARGS` as a user runs it: no store or job of the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_METRICS"))}
    env["PYTHONPATH"] = str(ROOT)
    env["AETHERIUM_LOCAL_DIR"] = str(cwd)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserts there is exactly one)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aetherium-hpc"), proc.stderr
    return lines[0]


def no_pwned(*folders: Path) -> None:
    for folder in folders:
        assert not list(Path(folder).rglob("pwned")), f"a hostile string ran a command under {folder}"
    assert not Path("pwned").exists()
