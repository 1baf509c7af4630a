"""Per-node resource monitors: CPU/RAM and the process tree (psutil), GPUs (NVML).

``log_system_resources()`` starts one :class:`ResourceMonitor` that samples into the
metrics store once per second; see docs/METRICS.md for every metric it writes.
"""

from __future__ import annotations

import logging
import os
import threading

from .. import envvars
from .base import Collector, Sample
from .monitor import ResourceMonitor, default_collectors
from .prometheus import PrometheusTextfile
from .summary import SampleSummary
from .telemetry import MonitorTelemetry

log = logging.getLogger(__name__)

_lock = threading.Lock()
_active: ResourceMonitor | None = None


def log_system_resources(
    output_path: str | os.PathLike[str] | None = None,
    interval: float = 1.0,
    gpu: bool = True,
    root_pid: int | None = None,
    *,
    textfile: PrometheusTextfile | None = None,
) -> ResourceMonitor:
    """Start sampling this node into the store (the one of :func:`init_db`, or the node socket).

    ``output_path``: where a JSON summary (samples, per-metric mean/max, duration) is
    written when the monitor stops: a file path, or a folder (one that exists, or a path
    ending in ``/``), which then gets ``aetherium_resource_summary.json`` inside it
    (the folder is created if missing). ``root_pid``: the process whose tree is followed
    (default: this one). ``textfile``: a :class:`~.prometheus.PrometheusTextfile` the monitor
    rewrites every tick for node_exporter and removes when it stops. Returns the running monitor; call ``.stop()`` to end it (it
    also stops at interpreter exit). One monitor per process: while one is running,
    a second call returns it.
    """
    global _active
    with _lock:
        if _active is not None and _active.running:
            log.info("aetherium-hpc: a resource monitor is already running in this process; returning it")
            return _active
        elsewhere = _node_monitor_elsewhere()
        if elsewhere is not None:
            # Under `aetherium-hpc run` (or the sbatch include) the job's runtime already samples
            # this node, its whole process tree included: a second monitor would count it twice.
            log.warning(
                "aetherium-hpc: log_system_resources(%s): the node's monitor (pid %d) already samples this "
                "node into %s; not starting a second one", output_path or "", elsewhere,
                os.environ.get(envvars.METRICS_DB, "the node store"),
            )  # fmt: skip
            return ResourceMonitor(interval, collectors=[], store_getter=None)  # never started: stop() is a no-op
        _active = ResourceMonitor(
            interval, gpu=gpu, root_pid=root_pid, output_path=output_path, textfile=textfile
        ).start()
        os.environ[envvars.NODE_MONITOR] = str(os.getpid())
        return _active


def _node_monitor_elsewhere() -> int | None:
    """Pid of a live resource monitor of this node's store in another process, if any."""
    value = os.environ.get(envvars.NODE_MONITOR, "")
    if not value.isdigit() or int(value) == os.getpid() or not os.environ.get(envvars.METRICS_ADDR):
        return None
    try:
        os.kill(int(value), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return int(value)


__all__ = [
    "Collector",
    "MonitorTelemetry",
    "PrometheusTextfile",
    "ResourceMonitor",
    "Sample",
    "SampleSummary",
    "default_collectors",
    "log_system_resources",
]
