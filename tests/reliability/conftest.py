"""Fixtures of the reliability suite: the Slurm discovery of tests/slurm, job environments, helpers.

The ``slow`` variants run only with ``AETHERIUM_SLOW=1`` (or when ``-m slow`` selects them).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import testenv

TESTS = Path(__file__).parent.parent

# Re-export the `slurm_conf` fixture (and its discovery) of tests/slurm/conftest.py.
_spec = importlib.util.spec_from_file_location("_aeth_slurm_conftest", TESTS / "slurm" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_slurm)
slurm_conf = _slurm.slurm_conf
find_slurm_conf = _slurm.find_slurm_conf


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = str(Path(__file__).parent)
    wants_slow = os.environ.get("AETHERIUM_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    if wants_slow:
        return
    skip = pytest.mark.skip(reason="slow variant: set AETHERIUM_SLOW=1 (or -m slow) to run it")
    for item in items:
        if str(item.fspath).startswith(here) and item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Jobs started by the local backend import tests/ modules and keep node-local files in tmp_path."""
    monkeypatch.setenv("PYTHONPATH", testenv.PYTHONPATH)
    monkeypatch.setenv("AETHERIUM_LOCAL_DIR", str(tmp_path))
    yield tmp_path
