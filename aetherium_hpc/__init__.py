"""aetherium-hpc: an HPC job wrapper with Slurm integration and a metrics store.

Data flow::

    configs/*.yaml -> config (validate) -> launch (submitit: slurm | local) -> job
    inside each job, on each node (runtime):
        log_* calls (main process)     -> queue  -> StoreWriter thread -> node-local SQLite
        worker / srun / shell processes -> node socket -^
        ResourceMonitor (psutil, NVML) -> queue -^
    runs/<run>/db/<job>_<task>/<node>.db -> merge -> merged.db -> report (text, PNG, HTML)

The store API below is what pipeline code calls; its names are fixed.
"""

from __future__ import annotations

from .monitors import ResourceMonitor, log_system_resources
from .store.client import (
    MetricsStore,
    get_db,
    init_db,
    log_data_generation_complete,
    log_data_generation_start,
    log_job,
    log_resource_metric,
    log_resource_samples,
    log_training_epoch_metric,
    shutdown_db,
    worker_args,
    worker_initializer,
)

__version__ = "0.1.0"

# Aliases kept from the pipeline's original API.
init_metrics_db = init_db
get_metrics_db = get_db
shutdown_metrics_db = shutdown_db

__all__ = [
    "MetricsStore",
    "ResourceMonitor",
    "log_system_resources",
    "get_db",
    "get_metrics_db",
    "init_db",
    "init_metrics_db",
    "log_data_generation_complete",
    "log_data_generation_start",
    "log_job",
    "log_resource_metric",
    "log_resource_samples",
    "log_training_epoch_metric",
    "shutdown_db",
    "shutdown_metrics_db",
    "worker_args",
    "worker_initializer",
]
