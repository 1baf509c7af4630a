"""The catalogue: every metric the monitors and the store write, with its unit and meaning.

The one place metric names and units live (monitors and the writer's self-telemetry take theirs
from here); docs/METRICS.md is the same table for readers; a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

PERCENT = "%"
MB = "MB"  # mebibytes (2**20 bytes), like the store's db_size_mb
WATT = "W"
CELSIUS = "C"
MS = "ms"
COUNT = "count"
BYTES = "B"

BYTES_PER_MB = float(2**20)

# What the device column holds: a GPU's UUID; a GPU's or a MIG device's; a process of the tree.
GPU_UUID = "GPU UUID"
GPU_OR_MIG_UUID = "GPU / MIG UUID"
PID_NAME = "<pid>:<name>"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: the (metric_type, metric_name) pair stored in resource_metrics, and its unit."""

    metric_type: str
    metric_name: str
    unit: str
    device: str  # what the device column holds ("" when the metric is per node)
    meaning: str

    def sample(self, value: float, device: str = "") -> tuple[str, str, float, str, str]:
        """The tuple :func:`log_resource_samples` takes."""
        return (self.metric_type, self.metric_name, value, self.unit, device)


METRICS: list[MetricSpec] = []


def _metric(metric_type: str, metric_name: str, unit: str, device: str, meaning: str) -> MetricSpec:
    spec = MetricSpec(metric_type, metric_name, unit, device, meaning)
    METRICS.append(spec)
    return spec


# host.py -----------------------------------------------------------------------------------
CPU_SYSTEM_TOTAL = _metric(
    "cpu", "system_total", PERCENT, "", "System-wide CPU use over the last interval, 0-100 (psutil.cpu_percent)"
)
CPU_PROCESS_TREE = _metric(
    "cpu", "process_tree", PERCENT, "",
    "CPU use of the job's process tree (main process and every descendant), in % of one core: 0 to 100 x cores",
)  # fmt: skip
RAM_SYSTEM_USED = _metric("ram", "system_used", MB, "", "Memory in use on the node (psutil virtual_memory().used)")
RAM_SYSTEM_PERCENT = _metric("ram", "system_percent", PERCENT, "", "Memory in use on the node, % of total")
RAM_PROCESS_TREE_RSS = _metric(
    "ram", "process_tree_rss", MB, "",
    "Sum of the resident set sizes of the process tree (pages shared between forked workers count once per process)",
)  # fmt: skip
PROCESS_CPU = _metric("process", "cpu_percent", PERCENT, PID_NAME, "CPU use of one process of the tree, % of one core")
PROCESS_RSS = _metric("process", "rss_mb", MB, PID_NAME, "Resident set size of one process of the tree")

# gpu.py ------------------------------------------------------------------------------------
GPU_UTILIZATION = _metric(
    "gpu", "utilization", PERCENT, GPU_UUID,
    "Time a kernel was running over NVML's last sample period (1/6 s to 1 s by product); none per MIG device",
)  # fmt: skip
GPU_MEMORY_USED = _metric(
    "gpu", "memory_used", MB, GPU_OR_MIG_UUID, "Device memory in use, all processes, reserved memory included"
)
GPU_MEMORY_TOTAL = _metric("gpu", "memory_total", MB, GPU_OR_MIG_UUID, "Device memory size")
GPU_POWER = _metric(
    "gpu", "power", WATT, GPU_UUID, "Board power draw (a 1-s average on recent GPUs); MIG: on the parent's UUID"
)
GPU_TEMPERATURE = _metric("gpu", "temperature", CELSIUS, GPU_UUID, "GPU core temperature; MIG: on the parent's UUID")
GPU_PROCESS_TREE_MEMORY = _metric(
    "gpu", "process_tree_memory_used", MB, GPU_OR_MIG_UUID,
    "Device memory used by the job's processes (NVML compute, graphics and MPS processes, once per pid, "
    "whose pid is in the process tree or, inside Slurm, the job's cgroup); no row when NVML cannot tell",
)  # fmt: skip

# base.py: the monitor watching itself -------------------------------------------------------
MONITOR_SAMPLE_CPU = _metric(
    "monitor",
    "sample_cpu_ms",
    MS,
    "",
    "CPU time of the monitor's sampling per sample: from one batch of ticks to the next, divided by the ticks read (the sampling "
    "thread's CPU clock)",
)
MONITOR_NVML_ERRORS = _metric(
    "monitor", "nvml_errors", COUNT, "",
    "NVML errors on the job's GPUs so far (each retried with back-off; Not Supported not counted)",
)  # fmt: skip
MONITOR_WINDOW_BYTES = _metric(
    "monitor", "window_bytes", BYTES, "",
    "Memory the monitor's window of the last 60 s holds (what get_db().recent() answers): its array, index and keys",
)  # fmt: skip
STORE_QUEUE_DEPTH = _metric(
    "store",
    "queue_depth",
    COUNT,
    "",
    "Records waiting in the store's in-memory queue (main process store only)",
)
STORE_DROPPED = _metric(
    "store", "dropped", COUNT, "", "Records the store's queue dropped so far, as seen by the monitor (on_full='drop')"
)
# The store writer's own telemetry (store/writer.py).
STORE_BATCH_WRITE = _metric("store", "batch_write_ms", MS, "", "Wall time of the writer's last batch transaction")


def spec_of(metric_type: str, metric_name: str) -> MetricSpec:
    """The spec of a stored (metric_type, metric_name); KeyError names the known ones."""
    for spec in METRICS:
        if spec.metric_type == metric_type and spec.metric_name == metric_name:
            return spec
    known = ", ".join(f"{s.metric_type}/{s.metric_name}" for s in METRICS)
    raise KeyError(f"unknown metric {metric_type}/{metric_name}; known: {known}")


# The central sender's own telemetry (store/central/sender.py), in store_stats (name -> value).
CENTRAL_SENT_ROWS = "central/sent_rows"  # rows PostgreSQL inserted or updated so far
CENTRAL_PENDING = "central/pending"  # rows read for a push not yet acknowledged (0 once one succeeds)
CENTRAL_DROPPED = "central/dropped"  # rows given up on (PostgreSQL refused them: not the network)
CENTRAL_ERRORS = "central/errors"  # failed pushes and connection attempts so far
CENTRAL_LAST_OK = "central/last_ok"  # Unix time of the last push PostgreSQL acknowledged
CENTRAL_BUSY = "central/busy"  # pushes put off because the server had no connection to give (not errors)
