"""Slurm's own view of jobs: accounting (sacct) figures and states, and the queue (squeue).

The one place that runs ``sacct`` for reports, merges and the final-status check
(:mod:`.final_status`); ``squeue`` is asked only when accounting has no answer. Every call
is one subprocess with an argument list (never a shell) and a bounded timeout.
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
import time
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
    "Start",
    "End",
)
_SLURM_ID = re.compile(r"^\d+(_\d+)?$")


def is_slurm_id(job_id: str | None) -> bool:
    """``123`` or ``123_4``: how sacct and squeue name a job or an array task."""
    return bool(job_id) and _SLURM_ID.match(str(job_id)) is not None


def sacct_figures(job_ids: Iterable[str | None], timeout: float = SACCT_TIMEOUT_S) -> dict[str, Any]:
    """``{"rows": [...]}`` with one row per Slurm job / array task, or ``{"rows": [], "why": reason}``.

    Jobs are queried by their base id (``123`` for array task ``123_4``); the allocation line
    gives state, exit code, elapsed, limits, start and end (Unix times), the steps give the peak
    MaxRSS and ``steps`` (step, state, exit code, end of each).
    """
    wanted = sorted({str(j) for j in job_ids if is_slurm_id(j)})
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
        row = jobs.setdefault(job, {"job": job, "max_rss_mb": None, "steps": []})
        if step:  # batch, extern, 0, 1 ...: what ended each step (a job may complete after its step was killed)
            row["steps"].append({
                "step": step, "state": values.get("State", ""), "exit_code": values.get("ExitCode", ""),
                "end": _epoch(values.get("End", "")),
            })  # fmt: skip
        else:
            row.update(
                state=values.get("State", ""), exit_code=values.get("ExitCode", ""), elapsed=values.get("Elapsed", ""),
                total_cpu=values.get("TotalCPU", ""), req_mem=values.get("ReqMem", ""),
                alloc_cpus=values.get("AllocCPUS", ""), timelimit=values.get("Timelimit", ""),
                nodes=values.get("NodeList", ""), start=_epoch(values.get("Start", "")),
                end=_epoch(values.get("End", "")),
            )  # fmt: skip
        rss = _mb(values.get("MaxRSS", ""))
        if rss is not None and (row["max_rss_mb"] is None or rss > row["max_rss_mb"]):
            row["max_rss_mb"] = rss
    if not jobs:
        return {"rows": [], "why": "sacct knows none of these jobs (purged, or another cluster)"}
    return {"rows": [jobs[k] for k in sorted(jobs, key=_order)]}


#: Slurm job states after which a job's accounting figures no longer change.
FINAL_STATES = (
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE",
)  # fmt: skip
#: A job that ended less than this long ago may not be in accounting yet (slurmdbd records it a
#: moment after the controller).
ACCOUNTING_LAG_S = 120.0
#: How long a report waits for accounting to catch up with such jobs.
ACCOUNTING_WAIT_S = 30.0


def sacct_figures_when_final(
    job_ids: Iterable[str | None],
    ended_recently: Iterable[str],
    wait_s: float = ACCOUNTING_WAIT_S,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """:func:`sacct_figures`, asked again (up to ``wait_s``) while a job of ``ended_recently``
    (ids that ended moments ago) is missing from accounting or not yet in a final state there.
    If accounting does not catch up, the answer carries ``not_final`` saying so."""
    ids = list(job_ids)
    waiting_for = {j for j in ended_recently if is_slurm_id(j)}
    deadline = time.monotonic() + wait_s
    while True:
        figures = sacct_figures(ids)
        if not waiting_for or "why" in figures and "knows none" not in figures["why"]:
            return figures  # nothing to wait for, or accounting cannot be asked at all
        final = {r["job"] for r in figures["rows"] if str(r.get("state", "")).split(" ")[0] in FINAL_STATES}
        missing = sorted(waiting_for - final)
        if not missing:
            return figures
        if time.monotonic() >= deadline:
            figures["not_final"] = (
                f"accounting had not recorded the end of {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''} after {wait_s:.0f} s; figures are not final: report again later"
            )
            return figures
        time.sleep(poll_s)


def squeue_states(job_ids: Iterable[str | None], timeout: float = SACCT_TIMEOUT_S) -> dict[str, Any]:
    """``{"jobs": {job: STATE}}`` for the jobs / array tasks the controller still knows
    (``--states=all``: pending, running ..., and for ``MinJobAge`` after the end its final state,
    before accounting may have it), or ``{"jobs": None, "why": reason}`` when squeue cannot be asked.

    A job missing from ``jobs`` while squeue answered has left the controller."""
    wanted = sorted({str(j) for j in job_ids if is_slurm_id(j)})
    if not wanted:
        return {"jobs": {}}
    if shutil.which("squeue") is None:
        return {"jobs": None, "why": "squeue is not installed here"}
    bases = sorted({j.split("_")[0] for j in wanted})
    argv = ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%T"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"jobs": None, "why": f"squeue did not answer within {timeout:.0f} s"}
    except OSError as exc:
        return {"jobs": None, "why": f"squeue cannot run ({exc.strerror})"}
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():  # the controller knows none of them any more
            return {"jobs": {}}
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        return {"jobs": None, "why": f"no controller answers (squeue: {first})"}
    jobs: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted or job.split("_")[0] in wanted:
            jobs[job] = state.strip()
    return {"jobs": jobs}


def _epoch(text: str) -> float | None:
    """sacct's ``2024-05-01T12:00:00`` (local time) as a Unix time; None for Unknown / None / empty."""
    try:
        return _dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


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
