"""Who wrote a database: the job, array task and node a writer records in ``sources``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass
class SourceInfo:
    """Provenance of the records of one writer: who wrote this database."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str = ""
    hostname: str = ""


def source_from_environ() -> SourceInfo:
    """Provenance of a store opened outside the runtime: the Slurm job, array task and node, if any."""
    host = socket.gethostname()
    environ = os.environ
    task = environ.get("SLURM_ARRAY_TASK_ID")
    return SourceInfo(
        job_id=environ.get("SLURM_JOB_ID") or None,
        array_job_id=environ.get("SLURM_ARRAY_JOB_ID") or None,
        array_task_id=int(task) if task and task.isdigit() else None,
        node=environ.get("SLURMD_NODENAME", host),
        hostname=host,
    )
