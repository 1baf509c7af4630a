"""The login-node side: a config becomes jobs, and a run directory tells their state.

=================  ==================================================================
``submission``     the backend, the executor, submitting one job or array, waiting
``parameters``     config -> submitit executor parameters
``sbatch``         the sbatch script of a config (the only user of submitit's private parts)
``status``         ``aetherium-hpc status``: sacct, squeue, the run's databases
=================  ==================================================================

Slurm's own commands are read by :mod:`aetherium_hpc.scheduler`. Names are loaded on first
use, so ``status`` (and whatever imports this package for it) does not import submitit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parameters import executor_parameters
    from .sbatch import check_script_path, render_sbatch
    from .status import run_status, status_commands
    from .submission import (
        Submission,
        check_submission,
        max_array_size,
        resolve_cluster,
        submit,
        wait,
    )

#: Each exported name -> the module of this package that defines it.
_HOMES = {
    "executor_parameters": "parameters",
    "check_script_path": "sbatch",
    "render_sbatch": "sbatch",
    "run_status": "status",
    "status_commands": "status",
    "Submission": "submission",
    "check_submission": "submission",
    "max_array_size": "submission",
    "resolve_cluster": "submission",
    "submit": "submission",
    "wait": "submission",
}
__all__ = [
    "Submission",
    "check_script_path",
    "check_submission",
    "executor_parameters",
    "max_array_size",
    "render_sbatch",
    "resolve_cluster",
    "run_status",
    "status_commands",
    "submit",
    "wait",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
