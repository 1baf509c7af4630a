"""Shared fixtures: every test gets a clean, closed store state afterwards; ``pg_url`` finds the
private PostgreSQL server of ``postgres/server.sh`` for the tests marked ``postgres``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testenv import server_url

import aetherium_hpc


@pytest.fixture(autouse=True)
def _no_leftover_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AETHERIUM_METRICS_ADDR", "AETHERIUM_METRICS_KEY", "AETHERIUM_METRICS_DB", "AETHERIUM_CENTRAL"):
        monkeypatch.delenv(name, raising=False)
    yield
    aetherium_hpc.shutdown_db()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.db"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts: killed (if still running) and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fast tests first; the tests that need the Slurm cluster after them."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The URL of the test server (AETHERIUM_TEST_PG), or a skip with the reason (a failure in CI)."""
    return server_url("AETHERIUM_TEST_PG")
