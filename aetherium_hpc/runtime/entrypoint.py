"""What the launcher submits: a small picklable object that runs one task inside the job."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .. import envvars
from ..config import Config
from ..identity import JobIdentity, int_or_none
from ..paths import SNAPSHOT_RUN_KEY, RunLayout
from .session import NodeSession, run_command, run_task

__all__ = ["TASK_PARAMS", "JobRunner", "detect_job", "requested_resources"]

#: JSON of this array task's parameters, for command workloads (callables get them as kwargs).
TASK_PARAMS = envvars.TASK_PARAMS


def detect_job() -> JobIdentity:
    """This process's job: from submitit's JobEnvironment inside a submitit job (never re-read by
    hand), else the SLURM_* variables (a hand-written sbatch script), else a local run of its own."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        try:
            job_env = submitit.JobEnvironment()
        except RuntimeError:
            pass
        else:
            node, hostname = JobIdentity.node_and_host()
            return JobIdentity(
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
                attempt=JobIdentity.restart_count(),  # submitit does not say; Slurm's variable does
            )
    return JobIdentity.from_environ()


def requested_resources(config: Config) -> dict[str, Any]:
    """What was asked of the scheduler, for the ``jobs.requested`` column."""
    res = config.resources
    return {
        "mem_gb": res.mem_gb,
        "cpus": res.cpus_per_task * res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "timeout_min": res.timeout_min,
        "gpus": res.gpus_per_node,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
    }


class JobRunner:
    """``JobRunner(config, run_dir)(task)``: run the workload of one (array) task.

    Carries the validated :class:`Config` (the job does not validate it again) and plain
    data, so submitit pickles it by reference to this module. The array stays out of it:
    each task is sent its own ``(index, params)``, so 1,000 tasks do not pickle the whole
    array 1,000 times. ``local_array_id`` names a local-backend array (submitit's local jobs
    have no array ids).
    """

    def __init__(self, config: Config, run_dir: str, local_array_id: str | None = None) -> None:
        self.config = dataclasses.replace(config, array=None)
        self.run_dir = run_dir
        self.local_array_id = local_array_id

    def __repr__(self) -> str:
        return f"JobRunner(name={self.config.name!r}, run_dir={self.run_dir!r})"

    def __call__(self, task: int | tuple[int, dict[str, Any]] | None = None) -> Any:
        """``task``: ``(index, params)`` of an array task, or None for a single job."""
        config = self.config
        task_index: int | None = None
        params: dict[str, Any] = {}
        if isinstance(task, tuple):
            task_index, params = task[0], dict(task[1])
        elif task is not None:
            task_index = task  # an index without parameters (the runner holds no array)
        ctx = detect_job()
        if ctx.array_task_id is None and task_index is not None:
            ctx = ctx.with_array(self.local_array_id, task_index)
        workload = config.workload
        os.environ.update(workload.env)
        os.environ[envvars.RUN_DIR] = self.run_dir
        if workload.workdir:
            os.chdir(workload.workdir)
        # The jobs table's config snapshot: every key but the array (this task's part is task_params).
        snapshot = {k: v for k, v in config.to_dict().items() if k != "array"}
        snapshot[SNAPSHOT_RUN_KEY] = os.path.abspath(self.run_dir)  # `report --run NAME` finds it here
        if ctx.cluster in ("slurm", "local", "debug"):
            # what `auto` became: a report read without the run directory (a copy, a central store)
            # then knows not to ask Slurm's accounting about a local job's process id
            snapshot["backend"] = ctx.cluster
        if params:
            snapshot["task_params"] = params

        def run(session: NodeSession | None) -> Any:
            if workload.kind == "callable":
                func = workload.load_callable()
                return func(**{**workload.kwargs, **params})
            os.environ[TASK_PARAMS] = json.dumps(params)
            assert workload.command is not None
            return run_command(workload.command, session)

        def exit_code_of(result: Any) -> int:
            return result if workload.kind == "command" and isinstance(result, int) else 0

        layout = RunLayout(Path(self.run_dir))
        result = run_task(
            ctx,
            run,
            layout.db_path(ctx),
            config.monitoring,
            config=snapshot,
            requested=requested_resources(config),
            exit_code_of=exit_code_of,
        )
        if workload.kind == "command" and result != 0:
            raise RuntimeError(f"workload command exited with code {result}")
        return result
