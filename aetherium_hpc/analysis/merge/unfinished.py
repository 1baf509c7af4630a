"""Jobs of a merged database that ended without writing their status, and tasks that left no database.

After the inputs are in, a ``jobs`` row still saying ``running`` is checked (:mod:`...final_status`);
an answer that is final goes into the row, and what the row said before into
:data:`RESOLVED_TABLE`, which the fingerprint reads (:mod:`.fingerprint`).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .result import MergeResult

#: Table of a merged database: what a ``jobs`` row said before merge resolved its status after
#: the fact (the job ended without writing one), and from what (sacct, squeue, process).
RESOLVED_TABLE = "jobs_resolved"
#: Its columns besides ``source_id``.
RESOLVED_COLUMNS = (
    "recorded_status", "recorded_exit_code", "recorded_end_time", "recorded_detail", "resolved_from", "resolved_at",
)  # fmt: skip


def has_resolved(conn: sqlite3.Connection, db: str) -> bool:
    """Whether the database attached as ``db`` has :data:`RESOLVED_TABLE` (a merged one)."""
    sql = f"SELECT 1 FROM {db}.sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, (RESOLVED_TABLE,)).fetchone() is not None


def ensure_resolved_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS main.{RESOLVED_TABLE} (source_id INTEGER PRIMARY KEY REFERENCES sources(source_id),"
        " recorded_status TEXT, recorded_exit_code INTEGER, recorded_end_time REAL, recorded_detail TEXT,"
        " resolved_from TEXT NOT NULL, resolved_at REAL NOT NULL)"
    )


def resolve_unfinished(conn: sqlite3.Connection, result: MergeResult, timeout: float) -> None:
    """Jobs rows of the output that still say ``running``: ask what became of the job
    (:mod:`...final_status`); store a final answer in the row, what it said before in
    :data:`RESOLVED_TABLE`."""
    from ..final_status import LATER_ATTEMPT, RUNNING, resolve_rows, run_record

    cur = conn.execute(
        "SELECT j.source_id, s.job_id, s.array_job_id, s.array_task_id, s.node, j.start_time, j.status, j.config,"
        " s.hostname, s.source_path, s.attempt,"
        " EXISTS (SELECT 1 FROM main.sources n WHERE n.job_id IS s.job_id AND n.array_job_id IS s.array_job_id"
        "   AND n.array_task_id IS s.array_task_id AND n.attempt > s.attempt) AS later"
        " FROM main.job_rows j JOIN main.sources s ON s.source_id = j.source_id WHERE j.status = ?",
        (RUNNING,),
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not rows:
        return
    cache: dict[str, dict[str, Any] | None] = {}
    found = resolve_rows(
        [(r["source_id"], r, run_record(r["source_path"], cache), r["hostname"]) for r in rows if not r["later"]],
        timeout=timeout,
    )
    for r in rows:
        if r["later"]:  # accounting speaks of the last attempt only
            found[r["source_id"]] = LATER_ATTEMPT
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    finals = []
    for r in rows:
        res = found.get(r["source_id"])
        if res is None or res.status == RUNNING:
            result.still_running += 1
        elif not res.final:
            result.status_unknown += 1
        elif not res.settled:
            result.status_pending += 1
        else:
            finals.append((r, res))
    if not finals:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        ensure_resolved_table(conn)
        for r, res in finals:
            sid = r["source_id"]
            conn.execute(
                f"INSERT OR REPLACE INTO main.{RESOLVED_TABLE}(source_id, {', '.join(RESOLVED_COLUMNS)})"
                " SELECT source_id, status, exit_code, end_time, detail, ?, ? FROM main.job_rows WHERE source_id = ?",
                (res.how, now, sid),
            )
            conn.execute(
                "UPDATE main.job_rows SET status = ?, exit_code = coalesce(?, exit_code), end_time = coalesce(?, end_time),"
                " detail = ? WHERE source_id = ?",
                (res.status, res.exit_code, res.end_time, f"{res.detail} [merge, {stamp}]", sid),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    for r, res in finals:
        task = r["job_id"] if r["array_task_id"] is None else f"{r['array_job_id']}_{r['array_task_id']}"
        result.resolved.append(f"{task}/{r['node']}: running -> {res.status} ({res.detail})")


def name_tasks_without_database(conn: sqlite3.Connection, result: MergeResult, timeout: float) -> None:
    """The tasks the runs of the output's sources submitted (their ``jobs.json``) that left no database."""
    from ..final_status import run_record, task_name, tasks_without_database

    cache: dict[str, dict[str, Any] | None] = {}
    present, records = set(), {}
    for job, ajob, task, path in conn.execute(
        "SELECT job_id, array_job_id, array_task_id, source_path FROM main.sources"
    ):
        present.add(task_name(job, ajob, task))
        rec = run_record(path, cache)
        if rec is not None:
            records[id(rec)] = rec
    result.missing = [
        f"{m['task']}: {m['detail']}" for m in tasks_without_database(records.values(), present, None, timeout)
    ]
