"""What the launcher submits: a small picklable object that runs one task inside the job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import env
from ..config import Config, config_from_dict
from ..paths import RunLayout
from .context import JobContext
from .session import NodeSession, run_command, run_task

__all__ = ["TASK_PARAMS", "JobRunner", "requested_resources"]

#: JSON of this array task's parameters, for command workloads (callables get them as kwargs).
TASK_PARAMS = env.TASK_PARAMS


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
    """``JobRunner(config_dict, run_dir)(task_index)``: run the workload of one (array) task.

    Holds only plain data, so submitit pickles it by reference to this module.
    ``local_array_id`` names a local-backend array (submitit's local jobs have no array ids).
    """

    def __init__(self, config: dict[str, Any], run_dir: str, local_array_id: str | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.local_array_id = local_array_id

    def __repr__(self) -> str:
        return f"JobRunner(name={self.config.get('name')!r}, run_dir={self.run_dir!r})"

    def __call__(self, task: int | tuple[int, dict[str, Any]] | None = None) -> Any:
        """``task``: ``(index, params)`` of an array task (the launcher sends each task only its
        own parameters, so 1,000 tasks do not pickle the whole array 1,000 times), or an index
        into the config's array."""
        config = config_from_dict(self.config, source=str(RunLayout(Path(self.run_dir)).config_path))
        if isinstance(task, tuple):
            task_index: int | None = task[0]
            params: dict[str, Any] = dict(task[1])
        else:
            task_index = task
            params = config.array_params()[task] if config.is_array and task is not None else {}
        ctx = JobContext.detect()
        if ctx.array_task_id is None and task_index is not None:
            ctx = ctx.with_array(self.local_array_id, task_index)
        workload = config.workload
        os.environ.update(workload.env)
        os.environ[env.RUN_DIR] = self.run_dir
        if workload.workdir:
            os.chdir(workload.workdir)
        snapshot = dict(self.config)
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
