"""Config -> submitit executor parameters: what a submission and the sbatch script both start from."""

from __future__ import annotations

from typing import Any

from ..config import Config


def executor_parameters(config: Config) -> dict[str, Any]:
    """AutoExecutor parameters (generic names, Slurm-only ones prefixed ``slurm_``)."""
    res, slurm = config.resources, config.slurm
    params: dict[str, Any] = {
        "name": config.name,
        "timeout_min": res.timeout_min,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(slurm, key)
        if value:
            params[f"slurm_{key}"] = value
    params["slurm_signal_delay_s"] = slurm.signal_delay_s
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    if slurm.array_parallelism:
        params["slurm_array_parallelism"] = slurm.array_parallelism
    if slurm.exclusive:
        params["slurm_exclusive"] = True
    if slurm.additional_parameters:
        params["slurm_additional_parameters"] = dict(slurm.additional_parameters)
    return params
