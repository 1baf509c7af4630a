"""Per-node resource monitors: CPU/RAM and the process tree (psutil), GPUs (NVML).

``log_system_resources()`` starts one :class:`ResourceMonitor` that samples into the
metrics store once per second; see docs/METRICS.md for every metric it writes.
"""

from __future__ import annotations

import logging
import os
import threading

from .base import Collector, MonitorTelemetry, ResourceMonitor, Sample, SampleSummary, default_collectors

log = logging.getLogger(__name__)

_lock = threading.Lock()
_active: ResourceMonitor | None = None


def log_system_resources(
    output_path: str | os.PathLike[str] | None = None,
    interval: float = 1.0,
    gpu: bool = True,
    root_pid: int | None = None,
) -> ResourceMonitor:
    """Start sampling this node into the store (the one of :func:`init_db`, or the node socket).

    ``output_path``: where a JSON summary (samples, per-metric mean/max, duration) is
    written when the monitor stops. ``root_pid``: the process whose tree is followed
    (default: this one). Returns the running monitor; call ``.stop()`` to end it (it
    also stops at interpreter exit). One monitor per process: while one is running,
    a second call returns it.
    """
    global _active
    with _lock:
        if _active is not None and _active.running:
            log.info("aetherium-hpc: a resource monitor is already running in this process; returning it")
            return _active
        _active = ResourceMonitor(interval, gpu=gpu, root_pid=root_pid, output_path=output_path).start()
        return _active


__all__ = [
    "Collector",
    "MonitorTelemetry",
    "ResourceMonitor",
    "Sample",
    "SampleSummary",
    "default_collectors",
    "log_system_resources",
]
