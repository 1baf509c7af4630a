"""Where the tests' support code lives, and the PYTHONPATH their child processes get.

tests/support/ is on pytest's path (pyproject.toml: ``pythonpath``); a job, a spawned worker or
a child script started by a test imports the same modules through :data:`PYTHONPATH`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

#: tests/support/: the helpers, the workloads jobs import, the child scripts, the fake NVML.
SUPPORT = Path(__file__).resolve().parent
#: The repository root (the aetherium_hpc package).
ROOT = SUPPORT.parent.parent
#: PYTHONPATH for a child process: the support modules and the package under test.
PYTHONPATH = os.pathsep.join([str(SUPPORT), str(ROOT)])


def unavailable(reason: str, require: str) -> NoReturn:
    """Skip a test whose server is not there -- or fail it when the environment variable ``require``
    is 1 (CI, where a missing server is a broken setup, not an absent feature)."""
    import pytest

    if os.environ.get(require) == "1":
        pytest.fail(f"{require}=1 but {reason}")
    pytest.skip(reason)
