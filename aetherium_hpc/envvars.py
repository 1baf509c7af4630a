"""The names of every AETHERIUM_* environment variable, in one place (and the scratch folder they point to).

The runtime sets these inside a job so that any process on the node (worker
processes, other ``srun`` tasks, shell commands) reaches the node's metrics
store with the ordinary ``log_*`` calls (the socket's names: :mod:`.store.address`).
"""

from __future__ import annotations

import os

#: Address of the node's metrics socket (a filesystem path of an AF_UNIX socket).
METRICS_ADDR = "AETHERIUM_METRICS_ADDR"
#: Hex-encoded authentication key of that socket (HMAC handshake of multiprocessing.connection).
METRICS_KEY = "AETHERIUM_METRICS_KEY"
#: Path of the node's database, for information (tools, ``aetherium-hpc log``).
METRICS_DB = "AETHERIUM_METRICS_DB"
#: Run directory of the current submission (set by the launcher).
RUN_DIR = "AETHERIUM_RUN_DIR"
#: JSON of this array task's parameters, for command workloads (set by the runtime).
TASK_PARAMS = "AETHERIUM_TASK_PARAMS"
#: Process id of the node's resource monitor (set where it runs; a second one is not started).
NODE_MONITOR = "AETHERIUM_NODE_MONITOR"
#: Node-local scratch folder for the live database (default: $SLURM_TMPDIR, else $TMPDIR, else /tmp).
LOCAL_DIR = "AETHERIUM_LOCAL_DIR"
#: postgresql:// URL of a central store that the node store streams to (when the YAML names none).
CENTRAL = "AETHERIUM_CENTRAL"

#: node_exporter textfile folder (or *.prom file) for ``aetherium-hpc run`` (monitoring.prometheus_textfile).
PROMETHEUS_TEXTFILE = "AETHERIUM_PROMETHEUS_TEXTFILE"


def local_scratch_dir() -> str:
    """Node-local folder for live databases: WAL needs a local filesystem, not NFS/Lustre/GPFS."""
    for name in (LOCAL_DIR, "SLURM_TMPDIR", "TMPDIR"):
        value = os.environ.get(name)
        if value and os.path.isdir(value):
            return value
    return "/tmp"
