"""Fixtures of the monitor tests: a real store to sample into."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aetherium_hpc import init_db, shutdown_db
from aetherium_hpc.store.client import MetricsStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    """A store that flushes every 0.2 s, shut down after the test."""
    db = init_db(tmp_path / "m.db", flush_interval=0.2)
    yield db
    shutdown_db()
