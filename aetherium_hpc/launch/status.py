"""``aetherium-hpc status``: the state of every task of a run, from sacct, squeue or its databases.

Slurm is read through :mod:`aetherium_hpc.scheduler`, the databases through the store's
read-only opener; a row that still says ``running`` is checked by :mod:`.analysis.final_status`.
Imports nothing of submitit: a status needs no executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import scheduler
from ..errors import LaunchError, SlurmError
from ..paths import RunLayout

STATUS_TIMEOUT_S = scheduler.SLURM_TIMEOUT_S
_FIELDS = ("job", "state", "exit", "elapsed", "nodes")


def status_commands(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sacct and squeue argument lists ``aetherium-hpc status`` runs (never a shell)."""
    return scheduler.sacct_argv(job_ids), scheduler.queue_argv(job_ids)


def run_status(run_dir: Path, timeout: float = STATUS_TIMEOUT_S) -> tuple[list[dict[str, str]], str]:
    """Rows (job, state, exit, elapsed, nodes; ``note`` when a state was found after the fact) of
    every task, and where they came from: ``sacct``, ``squeue`` or ``databases``. Every query is
    bounded by ``timeout``. A task whose database says ``running`` after its job ended shows
    Slurm's state, ``LOST`` or ``UNKNOWN``, never ``RUNNING``."""
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise LaunchError(f"{run_dir}: no such run directory; give a folder printed by `aetherium-hpc submit`")
    record = layout.record() or {}
    sacct_seen: dict[str, Any] | None = None
    squeue_seen: dict[str, Any] | None = None
    if record.get("cluster") == "slurm":
        ids = [*(record.get("array_job_ids") or record.get("job_ids") or []),
               *([record["report_job_id"]] if record.get("report_job_id") else [])]  # fmt: skip
        ids = [str(i) for i in ids]
        try:
            accounted: list[dict[str, Any]] | None = scheduler.sacct_rows(ids, timeout)
        except SlurmError:
            accounted = None
        if accounted:
            rows = [{"job": r["job"], "state": r.get("state", ""), "exit": r.get("exit_code", ""),
                     "elapsed": r.get("elapsed", ""), "nodes": r.get("nodes", "")} for r in accounted]  # fmt: skip
            for row, r in zip(rows, accounted, strict=True):
                if r.get("requeues"):
                    row["note"] = _requeued_note(r["requeues"])
            return rows, "sacct"
        # Asked once: the databases' open rows are checked against these answers, not by asking again.
        why = "sacct gave no answer" if accounted is None else "sacct knows none of these jobs"
        sacct_seen = {"rows": [], "why": why}
        queued = scheduler.queue_rows(ids, timeout)
        # None (ask again, as the final-status check does): squeue failed, e.g. on one unknown job id.
        squeue_seen = None if queued is None else {"jobs": {r["job"].strip(): r["state"] for r in queued}}
        if queued:
            rows = [{"job": r["job"], "state": r["state"], "exit": "", "elapsed": r["elapsed"], "nodes": r["nodes"]}
                    for r in queued]  # fmt: skip
            db_rows = _rows_from_databases(layout, record, sacct=sacct_seen, squeue=squeue_seen, timeout=timeout)
            return rows + db_rows, "squeue" + (" and databases" if db_rows else "")
    rows = _rows_from_databases(layout, record, sacct=sacct_seen, squeue=squeue_seen, timeout=timeout)
    if record.get("cluster") == "local":
        rows += _local_jobs_without_rows(record, rows)
        rows += _local_report_row(layout, record)
    return rows, "databases"


def _rows_from_databases(
    layout: RunLayout,
    record: dict[str, Any] | None = None,
    *,
    sacct: dict[str, Any] | None = None,
    squeue: dict[str, Any] | None = None,
    timeout: float = STATUS_TIMEOUT_S,
) -> list[dict[str, str]]:
    """One row per ``jobs`` row of the run's databases. A row that still says ``running`` is
    checked (:mod:`.analysis.final_status`): Slurm's state, ``LOST`` or ``UNKNOWN`` once the job
    has ended without writing its status, with a ``note`` saying how that was found."""
    from ..analysis.final_status import RUNNING, resolve_rows
    from ..store import reader

    rows: list[dict[str, str]] = []
    jobs: dict[int, dict[str, Any]] = {}  # index in rows -> its jobs row
    for db in layout.databases():
        try:
            found = reader.job_rows(db, timeout=2.0)
        except Exception as exc:  # a half-copied or foreign file: show it, go on
            rows.append({"job": db.parent.name, "state": "UNREADABLE", "exit": "", "elapsed": "", "nodes": str(exc)})
            continue
        for job in _last_attempts(found):
            jobs[len(rows)] = job
            rows.append(_db_row(job))
    open_rows = [(i, job, record, job.get("hostname")) for i, job in jobs.items() if job.get("status") == RUNNING]
    resolved = resolve_rows(open_rows, sacct=sacct, squeue=squeue, timeout=timeout) if open_rows else {}
    for i, res in resolved.items():
        if res.status == RUNNING or not isinstance(i, int):
            continue
        row, start = rows[i], jobs[i].get("start_time")
        row["state"] = res.status.upper()
        if res.exit_code is not None:
            row["exit"] = str(res.exit_code)
        if res.end_time is not None and start is not None:
            row["elapsed"] = f"{res.end_time - start:.0f}s"
        row["note"] = res.detail
    return rows


def _last_attempts(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The row of each job's last attempt (a requeued job has one per attempt), in order."""
    last: dict[tuple[Any, Any], dict[str, Any]] = {}
    for job in found:
        key = (job.get("job_id"), job.get("node"))
        if key not in last or (job.get("attempt") or 0) >= (last[key].get("attempt") or 0):
            last[key] = job
    return list(last.values())


def _db_row(job: dict[str, Any]) -> dict[str, str]:
    start, end, exit_code = job.get("start_time"), job.get("end_time"), job.get("exit_code")
    row = {
        "job": str(job.get("job_id")), "state": str(job.get("status")).upper(),
        "exit": "" if exit_code is None else str(exit_code),
        "elapsed": "" if start is None or end is None else f"{end - start:.0f}s", "nodes": str(job.get("node")),
    }  # fmt: skip
    if job.get("attempt"):
        row["note"] = _requeued_note(job["attempt"])
    return row


def _requeued_note(attempt: int) -> str:
    from ..analysis.formatting import requeued

    return requeued(attempt)


def _local_report_row(layout: RunLayout, record: dict[str, Any]) -> list[dict[str, str]]:
    """The local merge + report job of ``report: {auto: true}``: running while its process lives,
    then COMPLETED when it wrote the report, else FAILED."""
    from ..analysis.auto import REPORT_HTML, process_alive

    pid = str(record.get("report_job_id") or "")
    if not pid.isdigit():
        return []
    if process_alive(int(pid)):
        state = "RUNNING"
    else:
        state = "COMPLETED" if (layout.root / REPORT_HTML).is_file() else "FAILED"
    return [{"job": pid, "state": state, "exit": "", "elapsed": "", "nodes": "(merge + report)"}]


def _local_jobs_without_rows(record: dict[str, Any], rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Local jobs whose database is not copied back yet: alive (RUNNING) or gone (LOST).

    ``job_ids`` are the tasks' process ids in task order; rows name local array tasks
    ``<submitter>_<task>``, so an array task counts as seen by its index."""
    from ..analysis.auto import process_alive

    arrays = [str(a) for a in record.get("array_job_ids") or []]
    is_array = bool(arrays)
    seen = {r["job"] for r in rows}
    seen_bases = {r["job"].split("_")[0] for r in rows}
    out = []
    for index, job_id in enumerate(record.get("job_ids", [])):
        pid = str(job_id)
        name = f"{arrays[0]}_{index}" if is_array else pid
        if (name in seen if is_array else pid in seen_bases) or not pid.isdigit():
            continue
        if process_alive(int(pid)):
            state = "RUNNING"
        elif is_array:
            continue
        else:
            state = "LOST"
        out.append({"job": name, "state": state, "exit": "", "elapsed": "", "nodes": ""})
    return out
