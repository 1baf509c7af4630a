"""Helpers of the central-store tests: a private PostgreSQL schema per test, counts, view rows."""

from __future__ import annotations

import math
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

import aetherium_hpc
from aetherium_hpc.store import SourceInfo, client

TABLES = ("sources", "series", "generation_rows", "training_rows", "job_rows")
VIEWS = {
    "resource_metrics": "timestamp, metric_type, metric_name, value, unit, node, device, job_id, array_job_id, array_task_id",
    "generation_metrics": "timestamp, operation, round_number, chunk_number, duration_seconds, samples_generated,"
    " memory_used_mb, pid, job_id, array_job_id, array_task_id, node",
    "training_metrics": "timestamp, metric_name, metric_value, round_number, epoch_number, phase, job_id,"
    " array_job_id, array_task_id, node",
    "jobs": "job_id, array_job_id, array_task_id, node, start_time, end_time, status, exit_code, requested, detail",
}


@contextmanager
def private_schema(url: str) -> Iterator[str]:
    """``url`` pointed at a fresh PostgreSQL schema (search_path), dropped afterwards."""
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options={quote(f'-c search_path={name}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def pg_counts(url: str) -> dict[str, int]:
    out = {t: pg_rows(url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    out["samples"] = pg_rows(url, "SELECT count(*) FROM resource_metrics")[0][0]
    return out


def sqlite_counts(path: str | Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        out["samples"] = conn.execute("SELECT count(*) FROM resource_metrics").fetchone()[0]
        return out
    finally:
        conn.close()


def norm(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows comparable across SQLite and PostgreSQL: ints as floats, NaN/None as None, sorted."""

    def cell(x: Any) -> Any:
        if isinstance(x, bool) or x is None:
            return x
        if isinstance(x, (int, float)):
            return None if x != x else float(x)
        return x

    return sorted((tuple(cell(x) for x in r) for r in rows), key=lambda r: tuple((v is None, str(v)) for v in r))


def write_node_db(
    path: Path, *, job: str, task: int | None, node: str, t0: float, samples: int = 400, attempt: int = 0
) -> None:
    """A node database like a job's: resource series (with NaN and inf), generation, training and job rows."""
    src = SourceInfo(job_id=job if task is None else f"{job}_{task}", array_job_id=None if task is None else job,
                     array_task_id=task, node=node, hostname="host-" + node, attempt=attempt)  # fmt: skip
    aetherium_hpc.init_db(str(path), buffer_size=50, flush_interval=0.05, source=src, listen=False)
    client.log_job(status="running", start_time=t0, config={"monitoring": {"central": "postgresql://u:pw@h/db"}})
    for k in range(samples):
        ts = t0 + k * 1.0 + (0.003 if k % 7 == 0 else 0.0)
        value = math.nan if k == 5 else (math.inf if k == 6 else 0.5 + k % 13 * 1.25)
        client.log_resource_samples(
            [("cpu", "system_total", value, "%", ""), ("ram", "system_used", 1000.0 + k, "MB", "")], ts
        )
        if k % 40 == 0:
            client.log_resource_samples([("gpu", "utilization", float(k % 100), "%", "GPU-abc")], ts)
    for r in range(2):
        for c in range(3):
            client.log_data_generation_complete(start_time=t0 + r * 10 + c, operation="signal_injection",
                                                samples_generated=100, round_number=r, chunk_number=c)  # fmt: skip
        for e in range(5):
            aetherium_hpc.log_training_epoch_metric("loss", 1.0 / (e + 1), round_number=r, epoch_number=e)
            aetherium_hpc.log_training_epoch_metric("loss", 1.5 / (e + 1), round_number=r, epoch_number=e, phase="val")
    client.log_job(status="completed", end_time=t0 + samples, exit_code=0)
    aetherium_hpc.shutdown_db()
