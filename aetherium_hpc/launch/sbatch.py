"""The sbatch script submitit writes for a config, rendered without submitting (``submit --dry-run``).

submitit has no public call that renders a script without submitting it, so this module uses
its private parts -- the only module of aetherium_hpc that does (each use is marked PRIVATE
below). A submitit upgrade that changes them shows up in tests/launch/test_launch.py's golden files
(tests/golden/*.sbatch), which compare the script rendered here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from submitit import SlurmExecutor

from ..config import Config
from ..errors import LaunchError
from ..paths import RunLayout
from .parameters import executor_parameters

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_script_path(path: Path | str) -> None:
    """Refuse paths that no sbatch script can hold safely: control characters (a newline would
    end an ``#SBATCH`` line) and ``%`` (Slurm expands it in --output/--error)."""
    text = str(path)
    if _CONTROL.search(text):
        raise LaunchError(
            f"run directory {text!r} contains a control character (newline, tab ...); "
            "choose a run_dir without them, e.g. --set run_dir=runs"
        )
    if "%" in text:
        raise LaunchError(
            f"run directory {text!r} contains '%', which Slurm expands in log file names; choose a run_dir without '%'"
        )


def render_sbatch(config: Config, layout: RunLayout, *, python: str | None = None, n_tasks: int | None = None) -> str:
    """The sbatch script submitit would write for ``config`` (an array of ``n_tasks`` if > 1)."""
    check_script_path(layout.root)
    executor = _ScriptSlurmExecutor(layout.submitit_dir, python=python)
    executor.update_parameters(**_slurm_names(executor_parameters(config)))
    n = len(config.array_params()) if n_tasks is None and config.is_array else n_tasks
    if n is not None and n > 1:
        # PRIVATE: the "map_count" parameter is how submitit's map_array makes the script an
        # array (#SBATCH --array=0-N%parallelism); set here because nothing is submitted.
        executor.parameters["map_count"] = n
    # PRIVATE: _make_submission_file_text and _submitit_command_str are what SlurmExecutor's
    # submit writes into the script; "dry-run" stands for the job's uid, which the text does not use.
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


class _ScriptSlurmExecutor(SlurmExecutor):
    """A SlurmExecutor that only renders scripts: usable where srun is absent (dry runs, tests)."""

    @classmethod
    def affinity(cls) -> int:
        # PRIVATE: SlurmExecutor.__init__ refuses to start unless affinity() (which looks for
        # srun) is positive; a script can be rendered on a machine without Slurm.
        return 2


def _slurm_names(params: dict[str, Any]) -> dict[str, Any]:
    """AutoExecutor names -> SlurmExecutor names (what AutoExecutor does for cluster='slurm')."""
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    # PRIVATE: _convert_parameters maps the generic names (mem_gb, gpus_per_node ...) to Slurm's;
    # it uses no instance state, so an instance that was never initialised is enough.
    out = SlurmExecutor._convert_parameters(_ScriptSlurmExecutor.__new__(_ScriptSlurmExecutor), generic)
    out.update({k[len("slurm_") :]: v for k, v in params.items() if k.startswith("slurm_")})
    return out
