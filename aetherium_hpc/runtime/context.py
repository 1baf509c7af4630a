"""Who and where this process is: job id, array task, node, ranks.

Inside a submitit job the values come from :class:`submitit.JobEnvironment` (never re-read
by hand); in a hand-written sbatch script from the SLURM_* variables; otherwise the process
is a local run of its own.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["JobContext"]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class JobContext:
    """The identity of one task of one job."""

    job_id: str
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str = ""
    hostname: str = ""
    global_rank: int = 0
    local_rank: int = 0
    num_tasks: int = 1
    num_nodes: int = 1
    cluster: str = "none"  # slurm | local | debug | none

    @property
    def task(self) -> int:
        """Array task id, 0 for a plain job (the ``<task>`` of ``db/<job>_<task>/``)."""
        return 0 if self.array_task_id is None else self.array_task_id

    @property
    def base_job_id(self) -> str:
        """The array job id for an array task, else the job id."""
        return self.array_job_id or self.job_id

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: this task runs the node's store and monitor."""
        return self.local_rank == 0

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id}, node={self.node}, array_task={self.array_task_id}, "
            f"local_rank={self.local_rank}, global_rank={self.global_rank}({self.num_tasks}), cluster={self.cluster})"
        )

    @classmethod
    def detect(cls, environ: dict[str, str] | None = None) -> JobContext:
        """From submitit's JobEnvironment, else SLURM_* variables, else a local process."""
        env = dict(os.environ if environ is None else environ)
        hostname = socket.gethostname()
        node = env.get("SLURMD_NODENAME") or hostname
        if environ is None and env.get("SUBMITIT_EXECUTOR"):
            ctx = cls._from_submitit(node, hostname)
            if ctx is not None:
                return ctx
        if env.get("SLURM_JOB_ID"):
            array_job = env.get("SLURM_ARRAY_JOB_ID") or None
            array_task = _int(env.get("SLURM_ARRAY_TASK_ID"))
            job_id = f"{array_job}_{array_task}" if array_job and array_task is not None else env["SLURM_JOB_ID"]
            return cls(
                job_id=job_id,
                array_job_id=array_job,
                array_task_id=array_task,
                node=node,
                hostname=hostname,
                global_rank=_int(env.get("SLURM_PROCID")) or 0,
                local_rank=_int(env.get("SLURM_LOCALID")) or 0,
                num_tasks=_int(env.get("SLURM_NTASKS")) or 1,
                num_nodes=_int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")) or 1,
                cluster="slurm",
            )
        return cls(job_id=f"local{os.getpid()}", node=node, hostname=hostname)

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
            array_task_id=_int(job_env.array_task_id),
            node=node,
            hostname=hostname,
            global_rank=job_env.global_rank,
            local_rank=job_env.local_rank,
            num_tasks=job_env.num_tasks,
            num_nodes=job_env.num_nodes,
            cluster=job_env.cluster,
        )

    def with_array(self, array_job_id: str | None, array_task_id: int | None) -> JobContext:
        """The same context with array ids set (local arrays: submitit gives none)."""
        from dataclasses import replace

        if array_task_id is None:
            return self
        job = array_job_id or self.job_id
        return replace(self, array_job_id=job, array_task_id=array_task_id, job_id=f"{job}_{array_task_id}")
