"""What a job started by hand asked Slurm for, read at start for the ``jobs.requested`` column.

A job submitted from YAML records its configuration's resources; a job started from a
hand-written sbatch script (``srun aetherium-hpc run -- ...``) has only its environment:
``SLURM_CPUS_ON_NODE``, ``SLURM_CPUS_PER_TASK``, ``SLURM_MEM_PER_NODE`` / ``SLURM_MEM_PER_CPU``
(MB), ``SLURM_GPUS_ON_NODE``, ``SLURM_JOB_NUM_NODES``, and the time limit as
``SLURM_JOB_END_TIME - SLURM_JOB_START_TIME`` (Slurm >= 23.02). What the environment lacks
is asked once of ``scontrol show job -o`` (bounded, 5 s). The keys are those of
:func:`~aetherium_hpc.runtime.entrypoint.requested_resources`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .. import scheduler
from ..identity import JobIdentity

__all__ = ["parse_time_limit", "requested_from_slurm"]

SCONTROL_TIMEOUT_S = 5.0


def _int(text: str | None) -> int | None:
    """``2``, and the first number of Slurm's ``2(x3)`` / ``2,4`` forms; None for anything else."""
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def parse_time_limit(text: str) -> float | None:
    """Minutes of a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None for UNLIMITED."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "PARTITION_LIMIT"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        h, m, s = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[0], parts[1], parts[2]
    return days * 1440 + h * 60 + m + s / 60.0


def _mem_gb(text: str) -> float | None:
    """GB of a Slurm memory size (``1024`` MB, ``2G``, ``512M``, ``1T``)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        return None
    scale = {"K": 1 / 1024**2, "": 1 / 1024, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[m.group(2)]
    return float(m.group(1)) * scale


def requested_from_slurm(environ: Mapping[str, str] | None = None, *, ask_scontrol: bool = True) -> dict[str, Any]:
    """What this Slurm job asked for, per node; {} outside Slurm."""
    e = os.environ if environ is None else environ
    job_id = e.get("SLURM_JOB_ID")
    if not job_id:
        return {}
    out: dict[str, Any] = {"from": "slurm environment"}
    cpus = _int(e.get("SLURM_CPUS_ON_NODE"))
    per_task = _int(e.get("SLURM_CPUS_PER_TASK"))
    if cpus:
        out["cpus"] = cpus
    if per_task:
        out["cpus_per_task"] = per_task
    if e.get("SLURM_MEM_PER_NODE"):
        out["mem_gb"] = _mem_gb(e["SLURM_MEM_PER_NODE"])
    elif e.get("SLURM_MEM_PER_CPU") and cpus:
        per_cpu = _mem_gb(e["SLURM_MEM_PER_CPU"])
        out["mem_gb"] = None if per_cpu is None else per_cpu * cpus
    start, end = _int(e.get("SLURM_JOB_START_TIME")), _int(e.get("SLURM_JOB_END_TIME"))
    if start and end and end > start:
        out["timeout_min"] = (end - start) / 60.0
    gpus = _int(e.get("SLURM_GPUS_ON_NODE"))
    if gpus is not None:
        out["gpus"] = gpus
    nodes = _int(e.get("SLURM_JOB_NUM_NODES") or e.get("SLURM_NNODES"))
    if nodes:
        out["nodes"] = nodes
    missing = [k for k in ("cpus", "mem_gb", "timeout_min") if out.get(k) is None]
    if missing and ask_scontrol:
        fields = scheduler.job_fields(
            JobIdentity.from_environ(dict(e)).job_id, SCONTROL_TIMEOUT_S
        )  # an array task as scontrol names it
        if fields:
            out["from"] = "slurm environment and scontrol"
            if out.get("timeout_min") is None and fields.get("TimeLimit"):
                out["timeout_min"] = parse_time_limit(fields["TimeLimit"])
            if out.get("mem_gb") is None:
                tres = dict(re.findall(r"([\w/]+)=([^,]+)", fields.get("TRES", "")))
                mem = fields.get("MinMemoryNode") or tres.get("mem")
                if mem:
                    node_count = _int(fields.get("NumNodes")) or 1
                    total = _mem_gb(mem)
                    out["mem_gb"] = total if fields.get("MinMemoryNode") or total is None else total / node_count
            if out.get("cpus") is None and fields.get("NumCPUs"):
                out["cpus"] = _int(fields["NumCPUs"])
    return {k: v for k, v in out.items() if v is not None}
