"""``aetherium-hpc status``: the state of every task of a run, from sacct, squeue or its databases.

Slurm is read through :mod:`aetherium_hpc.scheduler`, the databases through the store's
read-only opener; a row that still says ``running`` is checked by :mod:`.analysis.final_status`.
A running job's ELAPSED and NODES come from Slurm, else from its database (its start time and
node), else, for a local job whose database is not copied back yet, from its process (its start
time; this host). :func:`status_table` writes the rows as aligned columns, each as wide as its
longest cell; who cancelled a job (sacct's ``CANCELLED by 1001``) is a note below the table.
Imports nothing of submitit: a status needs no executor.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import scheduler
from ..errors import LaunchError, SlurmError
from ..paths import RunLayout

STATUS_TIMEOUT_S = scheduler.SLURM_TIMEOUT_S
_FIELDS = ("job", "state", "exit", "elapsed", "nodes")
#: The header of :func:`status_table`, one per field of a row.
HEADER = ("JOB", "STATE", "EXIT", "ELAPSED", "NODES")


def status_commands(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sacct and squeue argument lists ``aetherium-hpc status`` runs (never a shell)."""
    return scheduler.sacct_argv(job_ids), scheduler.queue_argv(job_ids)


def run_status(run_dir: Path, timeout: float = STATUS_TIMEOUT_S) -> tuple[list[dict[str, str]], str]:
    """Rows (job, state, exit, elapsed, nodes; ``note`` when a state was found after the fact, a
    task was requeued or a job cancelled by someone) of every task, and where they came from:
    ``sacct``, ``squeue`` or ``databases``. Every query is bounded by ``timeout``. A task whose
    database says ``running`` after its job ended shows Slurm's state, ``LOST`` or ``UNKNOWN``,
    never ``RUNNING``. :class:`LaunchError` for a folder that is not a run directory
    (:meth:`RunLayout.is_run_dir`)."""
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise LaunchError(f"{run_dir}: no such run directory; give a folder printed by `aetherium-hpc submit`")
    if not RunLayout.is_run_dir(layout.root):
        raise LaunchError(
            f"{run_dir}: a folder but not a run directory (no jobs.json, nor databases under db/); "
            "give a folder printed by `aetherium-hpc submit`"
        )
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
                row["state"], by = _who_ended(row["state"])
                notes = [_requeued_note(r["requeues"])] if r.get("requeues") else []
                if notes or by:
                    row["note"] = "; ".join(notes + ([by] if by else []))
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
    now = time.time()
    for i, res in resolved.items():
        if not isinstance(i, int):
            continue
        if res.status == RUNNING:  # still running: the time since it started
            start = jobs[i].get("start_time")
            rows[i]["elapsed"] = "" if start is None else _seconds(now - start)
            continue
        row, start = rows[i], jobs[i].get("start_time")
        row["state"] = res.status.upper()
        if res.exit_code is not None:
            row["exit"] = str(res.exit_code)
        if res.end_time is not None and start is not None:
            row["elapsed"] = f"{res.end_time - start:.0f}s"
        row["note"] = res.detail
    return rows


def _seconds(elapsed: float) -> str:
    return f"{max(0.0, elapsed):.0f}s"


def _who_ended(state: str) -> tuple[str, str | None]:
    """sacct's ``CANCELLED by 1001``: the state, and a note saying who (``cancelled by uid 1001 (alice)``)."""
    state, by, uid = state.partition(" by ")
    if not by:
        return state, None
    try:
        import pwd

        name = f" ({pwd.getpwuid(int(uid)).pw_name})"
    except (ImportError, KeyError, ValueError):
        name = ""
    return state, f"{state.lower()} by uid {uid}{name}"


def _process_started(pid: int) -> float | None:
    """When process ``pid`` of this host started (None when gone or unknown)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _running_local(pid: int) -> dict[str, str]:
    """ELAPSED and NODES of a local job still running as process ``pid`` (this host)."""
    started = _process_started(pid)
    return {"elapsed": "" if started is None else _seconds(time.time() - started), "nodes": socket.gethostname()}


def status_table(rows: list[dict[str, str]]) -> list[str]:
    """The lines ``aetherium-hpc status`` prints for ``rows``: :data:`HEADER` and one line per row,
    each column as wide as its longest cell; then a ``# JOB on NODES: STATE: NOTE`` line per note
    (how a state was found after the fact, requeues, who cancelled)."""
    cells = [list(HEADER)] + [[str(row.get(f, "")) for f in _FIELDS] for row in rows]
    widths = [max(len(line[c]) for line in cells) for c in range(len(HEADER) - 1)]
    out = ["  ".join([*(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)), line[-1]]).rstrip()
           for line in cells]  # fmt: skip
    out += [f"# {row['job']} on {row['nodes']}: {row['state']}: {row['note']}" for row in rows if row.get("note")]
    return out


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
    row = {"job": pid, "state": "RUNNING", "exit": "", "elapsed": "", "nodes": "(merge + report)"}
    if process_alive(int(pid)):
        started = _process_started(int(pid))
        row["elapsed"] = "" if started is None else _seconds(time.time() - started)
    else:
        row["state"] = "COMPLETED" if (layout.root / REPORT_HTML).is_file() else "FAILED"
    return [row]


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
        row = {"job": name, "state": "LOST", "exit": "", "elapsed": "", "nodes": ""}
        if process_alive(int(pid)):
            row.update(state="RUNNING", **_running_local(int(pid)))
        elif is_array:
            continue
        out.append(row)
    return out
