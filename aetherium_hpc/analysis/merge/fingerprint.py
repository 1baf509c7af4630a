"""Which sources a database holds: the identity, fingerprint and rank of each (the rule
"Idempotent" of :mod:`aetherium_hpc.analysis.merge`).

:func:`source_facts` reads them from a database attached to the output's connection;
:class:`Present` keeps those of the output up to date while inputs are copied into it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .unfinished import RESOLVED_TABLE, has_resolved

Identity = tuple[Any, ...]


@dataclass
class Facts:
    """Identity and fingerprint of one source of one database."""

    identity: Identity
    fingerprint: str
    rank: tuple[float, int, int]  # (last timestamp, rows, final status written): the larger is the newer copy


def source_facts(conn: sqlite3.Connection, db: str) -> dict[int, Facts]:
    """Identity, fingerprint and rank of every source of the database attached as ``db``."""
    rows: dict[int, dict[str, Any]] = {}
    for sid, job, ajob, task, node, host, attempt in conn.execute(
        f"SELECT source_id, job_id, array_job_id, array_task_id, node, hostname, attempt FROM {db}.sources"
    ):
        rows[sid] = {"who": [job, ajob, task, node, host, attempt], "first": [], "last": [], "n": {}}

    def add(sql: str, what: str) -> None:
        for sid, n, first, last in conn.execute(sql):
            r = rows.get(sid)
            if r is None:
                continue
            r["n"][what] = r["n"].get(what, 0) + n
            if first is not None:
                r["first"].append(first)
            if last is not None:
                r["last"].append(last)

    add(f"SELECT source_id, count(*), NULL, NULL FROM {db}.series GROUP BY source_id", "series")
    # Index-only: chunks per source and their first / last start.
    add(
        f"SELECT s.source_id, count(*), min(c.t0), max(c.t0) FROM {db}.series s"
        f" JOIN {db}.sample_chunks c ON c.series_id = s.series_id GROUP BY s.source_id",
        "chunks",
    )
    # The last chunk of a series grows in place while a job runs: its n and t1. Chunks are
    # appended, so a series' last one has its highest rowid (one pass; a run directory's copy
    # has no index on series_id).
    add(
        f"SELECT s.source_id, sum(c.n), NULL, max(c.t1) FROM {db}.series s JOIN"
        f" (SELECT series_id, max(rowid) AS last FROM {db}.sample_chunks GROUP BY series_id) l"
        f" ON l.series_id = s.series_id JOIN {db}.sample_chunks c ON c.rowid = l.last GROUP BY s.source_id",
        "last_chunk_samples",
    )
    for table in ("generation_rows", "training_rows"):
        add(f"SELECT source_id, count(*), min(timestamp), max(timestamp) FROM {db}.{table} GROUP BY source_id", table)
    # What the job itself wrote: a status resolved after the fact by an earlier merge is not part
    # of the fingerprint (its jobs_resolved row keeps what the database said).
    if has_resolved(conn, db):
        sql = (
            f"SELECT j.source_id, coalesce(r.recorded_status, j.status),"
            f" CASE WHEN r.source_id IS NULL THEN j.exit_code ELSE r.recorded_exit_code END, j.start_time,"
            f" CASE WHEN r.source_id IS NULL THEN j.end_time ELSE r.recorded_end_time END"
            f" FROM {db}.job_rows j LEFT JOIN {db}.{RESOLVED_TABLE} r ON r.source_id = j.source_id"
        )
    else:
        sql = f"SELECT source_id, status, exit_code, start_time, end_time FROM {db}.job_rows"
    jobs = {r[0]: list(r[1:]) for r in conn.execute(sql)}
    out: dict[int, Facts] = {}
    for sid, r in rows.items():
        first = min(r["first"]) if r["first"] else None
        last = max(r["last"]) if r["last"] else None
        identity = (*r["who"], first)
        content = [list(identity), sorted(r["n"].items()), last, jobs.get(sid)]
        digest = hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:32]
        job = jobs.get(sid)
        ended = int(job is not None and job[0] != "running")
        out[sid] = Facts(identity, digest, (last if last is not None else float("-inf"), sum(r["n"].values()), ended))
    return out


@dataclass
class Present:
    """The sources of the output: their ids by fingerprint, and by identity with their facts."""

    by_fp: dict[str, int] = field(default_factory=dict)
    by_id: dict[Identity, tuple[int, Facts]] = field(default_factory=dict)

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> Present:
        """The sources of the output open on ``conn``."""
        present = cls()
        for sid, f in source_facts(conn, "main").items():
            present.add(sid, f)
        return present

    def add(self, sid: int, f: Facts) -> None:
        self.by_fp[f.fingerprint] = sid
        self.by_id[f.identity] = (sid, f)

    def drop(self, sid: int) -> None:
        """Forget the fingerprints of source ``sid`` (its identity comes back with its newer copy)."""
        for fp in [fp for fp, s in self.by_fp.items() if s == sid]:
            del self.by_fp[fp]
