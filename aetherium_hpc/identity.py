"""Who and where this process is: the job, array task, node and ranks -- as one value.

The one reader of the SLURM_* identity variables. A leaf module (standard library only), so
that the store (the provenance of a plain ``init_db`` in an sbatch script), the monitors (the
labels of the node_exporter textfile) and the job runtime (:func:`aetherium_hpc.runtime.detect_job`,
which asks submitit's JobEnvironment first) take the identity from here instead of each
reading the environment.

- :class:`SourceInfo`: who wrote a database (what a writer records in ``sources``);
- :class:`JobIdentity`: a :class:`SourceInfo` that is a job's task, with its ranks and cluster;
- :func:`source_of` / :func:`source_from_environ`: the source a store records.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

__all__ = ["JobIdentity", "SourceInfo", "int_or_none", "source_from_environ", "source_of", "submitting_user"]

_J = TypeVar("_J", bound="JobIdentity")


def int_or_none(value: Any) -> int | None:
    """``int(value)``, or None where it is not a number (an unset or odd variable)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def submitting_user(environ: Mapping[str, str] | None = None) -> str | None:
    """Who submitted the job: Slurm's SLURM_JOB_USER, else the user this process runs as (its
    password entry, else what :func:`getpass.getuser` finds); None where neither is known."""
    env = os.environ if environ is None else environ
    user = env.get("SLURM_JOB_USER")
    if user:
        return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no password database (Windows), or a uid without an entry (a container)
        pass
    try:
        import getpass

        return getpass.getuser() or None
    except (ImportError, KeyError, OSError):
        return None


@dataclass(frozen=True)
class SourceInfo:
    """Who wrote a database: what a writer records in ``sources`` (no job: this host alone)."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str = ""
    hostname: str = ""
    #: Which run of the job: 0 the first, n after n requeues (Slurm's SLURM_RESTART_COUNT; each
    #: attempt is a source of its own).
    attempt: int = 0


@dataclass(frozen=True)
class JobIdentity(SourceInfo):
    """The identity of one task of one job: its source, with the ranks and the cluster it runs on."""

    job_id: str  # (a job always has one)
    global_rank: int = 0
    local_rank: int = 0
    num_tasks: int = 1
    num_nodes: int = 1
    cluster: str = "none"  # slurm | local | debug | none
    #: Slurm's own id of this job or array task (SLURM_JOB_ID: 1207 for the task named 1200_7);
    #: None where the identity did not come from the SLURM_* variables.
    slurm_job_id: str | None = None

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
            f"{type(self).__name__}(job_id={self.job_id}, node={self.node}, array_task={self.array_task_id}, "
            f"local_rank={self.local_rank}, global_rank={self.global_rank}({self.num_tasks}), cluster={self.cluster}"
            + (f", attempt={self.attempt})" if self.attempt else ")")
        )

    @staticmethod
    def node_and_host(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
        """(Slurm's name of this node, else the host name; the host name)."""
        env = os.environ if environ is None else environ
        hostname = socket.gethostname()
        return env.get("SLURMD_NODENAME") or hostname, hostname

    @classmethod
    def from_slurm_environ(cls: type[_J], environ: Mapping[str, str] | None = None) -> _J | None:
        """From the SLURM_* variables; None outside a Slurm job. An array task's ``job_id`` is
        ``<array job>_<task>``, as Slurm's tools name it."""
        env = os.environ if environ is None else environ
        if not env.get("SLURM_JOB_ID"):
            return None
        node, hostname = cls.node_and_host(env)
        array_job = env.get("SLURM_ARRAY_JOB_ID") or None
        array_task = int_or_none(env.get("SLURM_ARRAY_TASK_ID"))
        job_id = f"{array_job}_{array_task}" if array_job and array_task is not None else env["SLURM_JOB_ID"]
        return cls(
            job_id=job_id,
            array_job_id=array_job,
            array_task_id=array_task,
            node=node,
            hostname=hostname,
            global_rank=int_or_none(env.get("SLURM_PROCID")) or 0,
            local_rank=int_or_none(env.get("SLURM_LOCALID")) or 0,
            num_tasks=int_or_none(env.get("SLURM_NTASKS")) or 1,
            num_nodes=int_or_none(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")) or 1,
            cluster="slurm",
            slurm_job_id=env["SLURM_JOB_ID"],
            attempt=cls.restart_count(env),
        )

    @classmethod
    def from_environ(cls: type[_J], environ: Mapping[str, str] | None = None) -> _J:
        """From the SLURM_* variables, else a process that is a local run of its own."""
        return cls.from_slurm_environ(environ) or cls.local_process(environ)

    @staticmethod
    def restart_count(environ: Mapping[str, str] | None = None) -> int:
        """How many times Slurm requeued this job (SLURM_RESTART_COUNT; 0 when unset)."""
        env = os.environ if environ is None else environ
        return max(0, int_or_none(env.get("SLURM_RESTART_COUNT")) or 0)

    @classmethod
    def local_process(cls: type[_J], environ: Mapping[str, str] | None = None) -> _J:
        """A process that is a local run of its own (``local<pid>``)."""
        node, hostname = cls.node_and_host(environ)
        return cls(job_id=f"local{os.getpid()}", node=node, hostname=hostname)

    def with_array(self: _J, array_job_id: str | None, array_task_id: int | None) -> _J:
        """The same identity with array ids set (local arrays: submitit gives none)."""
        if array_task_id is None:
            return self
        job = array_job_id or self.job_id
        return replace(self, array_job_id=job, array_task_id=array_task_id, job_id=f"{job}_{array_task_id}")


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
    return source_of(job) if job is None else replace(source_of(job), job_id=job.slurm_job_id)
