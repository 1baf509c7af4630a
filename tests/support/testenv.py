"""Where the tests' support code lives, and the PYTHONPATH their child processes get.

tests/support/ is on pytest's path (pyproject.toml: ``pythonpath``); a job, a spawned worker or
a child script started by a test imports the same modules through :data:`PYTHONPATH`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: tests/support/: the helpers, the workloads jobs import, the child scripts, the fake NVML.
SUPPORT = Path(__file__).resolve().parent
#: The repository root (the aetherium_hpc package).
ROOT = SUPPORT.parent.parent
#: PYTHONPATH for a child process: the support modules and the package under test.
PYTHONPATH = os.pathsep.join([str(SUPPORT), str(ROOT)])
