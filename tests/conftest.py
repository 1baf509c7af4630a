"""Shared fixtures: every test gets a clean, closed store state afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import aetherium_hpc


@pytest.fixture(autouse=True)
def _no_leftover_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AETHERIUM_METRICS_ADDR", "AETHERIUM_METRICS_KEY", "AETHERIUM_METRICS_DB"):
        monkeypatch.delenv(name, raising=False)
    yield
    aetherium_hpc.shutdown_db()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.db"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fast tests first; the tests that need the Slurm cluster after them."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
