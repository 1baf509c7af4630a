"""Who wrote a database: the job, array task and node a writer records in ``sources``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..jobenv import JobIdentity


@dataclass
class SourceInfo:
    """Provenance of the records of one writer: who wrote this database."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str = ""
    hostname: str = ""
    #: Which run of the job: 0 the first, n after n requeues (each attempt is its own source).
    attempt: int = 0


def source_of(job: JobIdentity | None) -> SourceInfo:
    """Provenance of a store: the job, array task and node it records (None: no job, this host)."""
    if job is None:
        node, host = JobIdentity.node_and_host()
        return SourceInfo(node=node, hostname=host)
    return SourceInfo(job_id=job.job_id, array_job_id=job.array_job_id, array_task_id=job.array_task_id,
                      node=job.node, hostname=job.hostname, attempt=job.attempt)  # fmt: skip


def source_from_environ() -> SourceInfo:
    """Provenance of a store opened outside the runtime: the Slurm job, array task and node, if any.
    Its job id is Slurm's own id of the task (SLURM_JOB_ID), not the runtime's ``<array>_<task>``."""
    job = JobIdentity.from_slurm_environ()
    return source_of(job) if job is None else dataclasses.replace(source_of(job), job_id=job.slurm_job_id)
