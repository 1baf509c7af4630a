"""The built-in collectors a :class:`~.monitor.ResourceMonitor` starts with."""

from __future__ import annotations

from .base import Collector
from .gpu import GpuCollector
from .host import HostCollector, ProcessTreeCollector


def default_collectors(*, gpu: bool = True, root_pid: int | None = None, per_process: bool = True) -> list[Collector]:
    """Host CPU/RAM, the process tree of ``root_pid``, and (if ``gpu``) the job's GPUs."""
    tree = ProcessTreeCollector(root_pid, per_process=per_process)
    collectors: list[Collector] = [HostCollector(), tree]
    if gpu:
        collectors.append(GpuCollector(tree_pids=tree.pids))
    return collectors
