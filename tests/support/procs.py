"""Functions run in child processes by the tests (importable under spawn)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aetherium_hpc


def log_range(args: tuple[int, int]) -> int:
    """Log ``count`` training records tagged (round=producer, epoch=i); return the count."""
    producer, count = args
    log = aetherium_hpc.log_training_epoch_metric
    for i in range(count):
        log("seq", float(i), producer, i, "train")
    return count


def log_all_kinds(tag: int) -> int:
    t = aetherium_hpc.log_data_generation_start("signal_injection", tag, 0)
    aetherium_hpc.log_data_generation_complete(t, "signal_injection", 10, tag, 0, memory_used_mb=1.5)
    aetherium_hpc.log_training_epoch_metric("loss", 0.5, tag, 0, "val")
    aetherium_hpc.log_resource_metric("custom", "child_metric", float(tag), "u", str(os.getpid()))
    return os.getpid()


def read(path: Path | str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run a query on a separate read-only connection, as a user in the sqlite3 shell would."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def committed_per_producer(path: Path | str) -> dict[int, int]:
    """round_number (the producer) -> rows a reader sees committed now; {} while there is no table yet."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return {}
    try:
        return dict(conn.execute("SELECT round_number, count(*) FROM training_rows GROUP BY round_number").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def assert_committed_kept(conn: sqlite3.Connection, seen: dict[int, int]) -> dict[int, int]:
    """After a crash: every row a reader saw committed (``seen``, from :func:`committed_per_producer`)
    is still there, and each producer's rows are a gap-free prefix 0..n-1 of its epochs (its
    batches commit in order). Returns round_number -> rows left."""
    after = dict(conn.execute("SELECT round_number, count(*) FROM training_rows GROUP BY round_number").fetchall())
    for producer, count in seen.items():
        assert after.get(producer, 0) >= count, f"producer {producer}: {count} committed, {after.get(producer)} left"
    for producer, count in after.items():
        lo, hi, distinct = conn.execute(
            "SELECT min(epoch_number), max(epoch_number), count(DISTINCT epoch_number) FROM training_rows"
            " WHERE round_number = ?",
            (producer,),
        ).fetchone()
        assert (lo, hi, distinct) == (0, count - 1, count)
    return after
