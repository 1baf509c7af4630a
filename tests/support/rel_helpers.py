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


def chunk_stats(path: Path | str) -> dict[tuple[object, ...], tuple[int, float, object]]:
    """Per series (type, name, device, node): how many finite values, their sum and maximum, from the
    chunks' statistics columns -- checked against the values the ``resource_metrics`` view unpacks
    (the text holds 7 significant digits: sums agree to about 1e-7 of their terms)."""
    sql = ("SELECT s.metric_type, s.metric_name, s.device, s.node, sum(c.nfin), sum(c.vsum), max(c.vmax)"
           " FROM series s JOIN sample_chunks c USING (series_id) GROUP BY 1, 2, 3, 4")  # fmt: skip
    stats = {tuple(key): (int(nfin), float(vsum), vmax) for *key, nfin, vsum, vmax in read(path, sql)}
    text = {
        tuple(key): (int(nfin), float(vsum or 0.0), vmax)
        for *key, nfin, vsum, vmax in read(
            path,
            "SELECT metric_type, metric_name, device, node, count(value), sum(value), max(value) FROM resource_metrics"
            " WHERE value IS NOT NULL AND abs(value) < 1e308 GROUP BY 1, 2, 3, 4",
        )
    }
    for key, got in stats.items():
        assert same_stats(got, text.get(key, (0, 0.0, None))), (key, got, text.get(key))
    return stats


def same_stats(a: tuple[int, float, object], b: tuple[int, float, object]) -> bool:
    """Two (count, sum, max) of the same samples, one from values rounded to 7 significant digits."""
    if a[0] != b[0] or (a[2] is None) != (b[2] is None):
        return False
    scale = max(1.0, abs(float(a[2] or 0.0)))
    return abs(a[1] - b[1]) <= 1e-7 * a[0] * scale + 1e-9 and (
        a[2] is None or abs(float(a[2]) - float(b[2])) <= 1e-7 * scale
    )  # type: ignore[arg-type]
