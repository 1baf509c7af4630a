"""Shared fixtures: every test gets a clean, closed store state afterwards; ``pg_url`` finds the
private PostgreSQL server of ``postgres/server.sh`` for the tests marked ``postgres``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testenv import unavailable

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


def _pg_unreachable_reason(url: str | None) -> str | None:
    if not url:
        return 'no PostgreSQL server: AETHERIUM_TEST_PG is not set; run `postgres/server.sh up && eval "$(postgres/server.sh env)"`'
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install -e '.[test]' (or '.[central]')"
    from aetherium_hpc.store.central.url import mask

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {mask(url)} does not answer: {' '.join(str(exc).split())}"
    return None


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The URL of the test server (AETHERIUM_TEST_PG, printed by ``postgres/server.sh env``), or a skip
    with the reason; ``AETHERIUM_REQUIRE_POSTGRES=1`` (CI) turns that skip into a failure."""
    url = os.environ.get("AETHERIUM_TEST_PG")
    reason = _pg_unreachable_reason(url)
    if reason is not None:
        unavailable(reason, "AETHERIUM_REQUIRE_POSTGRES")
    assert url is not None
    return url
