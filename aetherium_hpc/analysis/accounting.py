"""Slurm accounting (sacct) figures for the tasks of a report, when accounting answers."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

SACCT_TIMEOUT_S = 10.0
_FIELDS = (
    "JobID",
    "State",
    "ExitCode",
    "Elapsed",
    "TotalCPU",
    "ReqMem",
    "AllocCPUS",
    "Timelimit",
    "MaxRSS",
    "NodeList",
)
_SLURM_ID = re.compile(r"^\d+(_\d+)?$")


def sacct_figures(job_ids: Iterable[str | None], timeout: float = SACCT_TIMEOUT_S) -> dict[str, Any]:
    """``{"rows": [...]}`` with one row per Slurm job / array task, or ``{"rows": [], "why": reason}``.

    Jobs are queried by their base id (``123`` for array task ``123_4``); the allocation line
    gives state, elapsed and limits, the steps give the peak MaxRSS.
    """
    wanted = sorted({j for j in job_ids if j and _SLURM_ID.match(str(j))})
    if not wanted:
        return {"rows": [], "why": "no Slurm job ids in this database (local runs)"}
    if shutil.which("sacct") is None:
        return {"rows": [], "why": "sacct is not installed here"}
    bases = sorted({j.split("_")[0] for j in wanted})
    argv = ["sacct", "-j", ",".join(bases), "--parsable2", "--noheader", "-o", ",".join(_FIELDS)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"rows": [], "why": f"sacct did not answer within {timeout:.0f} s"}
    except OSError as exc:
        return {"rows": [], "why": f"sacct cannot run ({exc.strerror})"}
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        return {"rows": [], "why": f"accounting is off or unreachable (sacct: {first})"}
    jobs: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        values = dict(zip(_FIELDS, line.split("|"), strict=False))
        job, _, step = values.get("JobID", "").partition(".")
        if job not in wanted and job.split("_")[0] not in wanted:
            continue
        row = jobs.setdefault(job, {"job": job, "max_rss_mb": None})
        if not step:
            row.update(
                state=values.get("State", ""), exit_code=values.get("ExitCode", ""), elapsed=values.get("Elapsed", ""),
                total_cpu=values.get("TotalCPU", ""), req_mem=values.get("ReqMem", ""),
                alloc_cpus=values.get("AllocCPUS", ""), timelimit=values.get("Timelimit", ""),
                nodes=values.get("NodeList", ""),
            )  # fmt: skip
        rss = _mb(values.get("MaxRSS", ""))
        if rss is not None and (row["max_rss_mb"] is None or rss > row["max_rss_mb"]):
            row["max_rss_mb"] = rss
    if not jobs:
        return {"rows": [], "why": "sacct knows none of these jobs (purged, or another cluster)"}
    return {"rows": [jobs[k] for k in sorted(jobs, key=_order)]}


def _order(job: str) -> tuple[int, int]:
    base, _, task = job.partition("_")
    return int(base) if base.isdigit() else 0, int(task) if task.isdigit() else -1


def _mb(text: str) -> float | None:
    """sacct sizes (``1234K``, ``12M``, ``1.5G``) in MB."""
    text = text.strip()
    if not text:
        return None
    scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}.get(text[-1].upper())
    try:
        return float(text[:-1]) * scale if scale is not None else float(text) / 2**20
    except ValueError:
        return None
