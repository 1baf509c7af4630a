"""Helpers shared by the launcher tests: configs, database reads."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import testenv

from aetherium_hpc.config import Config, config_from_dict

TABLES = ("resource_metrics", "generation_metrics", "training_metrics", "jobs")
ROOT = testenv.ROOT


def aetherium_cli(
    args: list[str],
    cwd: Path | str,
    *,
    drop: tuple[str, ...] = ("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_METRICS"),
    timeout: float = 240,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m aetherium_hpc ARGS` as a user runs it: without the variables of a job or store of
    the test process (``drop``), with the project and the tests' support modules importable (their workloads)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    environ["PYTHONPATH"] = testenv.PYTHONPATH
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", *args], cwd=cwd, env=environ, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def make_config(run_dir: Path | str, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "name": "t",
        "backend": "local",
        "run_dir": str(run_dir),
        "workload": {"callable": "runtime_workloads:log_rows", "kwargs": {"n": 5}},
        "resources": {"timeout_min": 5, "cpus_per_task": 1},
        "monitoring": {"interval_s": 0.2, "flush_interval_s": 0.5},
    }
    for key, value in overrides.items():
        data[key] = value
    return config_from_dict(data)


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def job_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = [
            dict(r)
            for r in conn.execute(
                "SELECT j.*, s.attempt FROM jobs j JOIN sources s USING (source_id) ORDER BY source_id"
            )
        ]
    finally:
        conn.close()
    for r in rows:
        r["config"] = json.loads(r["config"]) if r["config"] else None
    return rows
