"""Who and where this process is, as the job runtime detects it.

Inside a submitit job the values come from :class:`submitit.JobEnvironment` (never re-read
by hand); in a hand-written sbatch script from the SLURM_* variables
(:meth:`aetherium_hpc.jobenv.JobIdentity.from_slurm_environ`, the one reader of them);
otherwise the process is a local run of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..jobenv import JobIdentity, int_or_none

__all__ = ["JobContext"]


class JobContext(JobIdentity):
    """The identity of one task of one job (:class:`~aetherium_hpc.jobenv.JobIdentity`), detected."""

    @classmethod
    def detect(cls, environ: Mapping[str, str] | None = None) -> JobContext:
        """From submitit's JobEnvironment, else SLURM_* variables, else a local process."""
        env = os.environ if environ is None else environ
        if environ is None and env.get("SUBMITIT_EXECUTOR"):
            ctx = cls._from_submitit(*cls.node_and_host(env))
            if ctx is not None:
                return ctx
        return cls.from_slurm_environ(env) or cls.local_process(env)

    @classmethod
    def _from_submitit(cls, node: str, hostname: str) -> JobContext | None:
        import submitit

        try:
            job_env = submitit.JobEnvironment()
        except RuntimeError:
            return None
        return cls(
            job_id=str(job_env.job_id),
            array_job_id=job_env.array_job_id,
            array_task_id=int_or_none(job_env.array_task_id),
            node=node,
            hostname=hostname,
            global_rank=job_env.global_rank,
            local_rank=job_env.local_rank,
            num_tasks=job_env.num_tasks,
            num_nodes=job_env.num_nodes,
            cluster=job_env.cluster,
            attempt=cls.restart_count(),  # submitit does not say; Slurm's variable does
        )
