"""Shared fixtures: every test gets a clean, closed store state afterwards."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/procs.py for spawn children

import aetherium_hpc  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leftover_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AETHERIUM_METRICS_ADDR", "AETHERIUM_METRICS_KEY", "AETHERIUM_METRICS_DB"):
        monkeypatch.delenv(name, raising=False)
    yield
    aetherium_hpc.shutdown_db()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.db"


def read(path: Path | str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run a query on a separate read-only connection, as a user in the sqlite3 shell would."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
