"""Reading a store's database: the one read-only opener, and the queries every open store answers.

Nothing here creates or changes a file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

#: How far back :meth:`StoreReader.recent` reaches (the resource monitor's window), and how long
#: a process joined to the node store waits for its answer.
RECENT_WINDOW_S = 60.0
RECENT_TIMEOUT_S = 5.0

#: What :meth:`StoreReader.recent` returns: (metric_type, metric_name, device) -> figures.
Recent = dict[tuple[str, str, str], dict[str, Any]]


def uri(path: str | os.PathLike[str], mode: str = "ro") -> str:
    """SQLite URI of ``path`` opened in ``mode`` (``ro``: never creates or changes the file)."""
    return "file:" + quote(os.path.abspath(os.fspath(path)), safe="/") + "?mode=" + mode


def open_readonly(path: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to ``path`` (usable from any thread)."""
    return sqlite3.connect(uri(path), uri=True, timeout=timeout, check_same_thread=False)


def _rows(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def job_rows(path: str | os.PathLike[str], *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every ``jobs`` row of the database at ``path``, with the ``hostname`` and ``attempt`` of its
    writer, in the order they were written."""
    conn = open_readonly(path, timeout=timeout)
    try:
        return _rows(
            conn,
            "SELECT j.job_id, j.array_job_id, j.array_task_id, j.status, j.exit_code, j.start_time,"
            " j.end_time, j.node, j.config, s.hostname, s.attempt FROM jobs j LEFT JOIN sources s USING (source_id)"
            " ORDER BY j.source_id",
        )
    finally:
        conn.close()


def recent_seconds(seconds: float) -> float:
    """``seconds`` as :meth:`StoreReader.recent` takes it: 0 < seconds <= :data:`RECENT_WINDOW_S`."""
    if type(seconds) not in (int, float) or not 0 < seconds <= RECENT_WINDOW_S:
        raise ValueError(
            f"recent(seconds={seconds!r}): the window holds the last {RECENT_WINDOW_S:g} s; pass 0 < seconds <= 60"
        )
    return float(seconds)


class StoreReader:
    """Read queries on one metrics database, answered from the file (any process of the node).

    Query methods first make sure what this process logged is committed (:meth:`flush`).
    """

    path: str
    #: The process that opened it: only there does it log and close.
    owner_pid: int
    _closed: bool

    @property
    def closed(self) -> bool:
        """True once closed (a fork child's copy of the parent's store is closed too)."""
        return self._closed

    def flush(self, timeout: float | None = 60.0) -> bool:
        raise NotImplementedError

    def _dropped_here(self) -> int:
        return 0

    def recent(self, seconds: float = RECENT_WINDOW_S, timeout: float = RECENT_TIMEOUT_S) -> Recent:
        """The node's resource samples of the last ``seconds`` (at most 60), from memory: no disk.

        ``{(metric_type, metric_name, device): {"avg", "max", "last", "n", "unit"}}``, one entry
        per series the node's resource monitor sampled in that span (``n`` samples; ``last`` is
        the newest). The monitor keeps 5-s buckets: the span read is ``seconds`` plus at most 5 s.
        ``{}`` when no monitor samples into this node's store (none started, or it stopped more
        than ``seconds`` ago). In a process joined to the node store the owner answers over the
        node socket; a :class:`StoreNotReachableError` if it does not within ``timeout`` seconds
        (log calls are never held up meanwhile).
        """
        return self._recent(recent_seconds(seconds), timeout)

    def _recent(self, seconds: float, timeout: float) -> Recent:
        raise NotImplementedError

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        if not self._closed:
            self.flush()
        conn = open_readonly(self.path)
        try:
            return _rows(conn, sql, params)
        finally:
            conn.close()

    def _select(self, view: str, conditions: list[tuple[str, Any]], limit: int | None) -> list[dict[str, Any]]:
        """The rows of ``view`` in time order that meet each condition whose value is not None."""
        clauses = [c for c, v in conditions if v is not None]
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return self._read(
            f"SELECT * FROM {view}{where} ORDER BY timestamp{tail}", [v for _, v in conditions if v is not None]
        )

    def query_resource_metrics(
        self,
        metric_type: str | None = None,
        metric_name: str | None = None,
        node: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Resource samples as dicts (timestamp, metric_type, metric_name, value, unit, node, device, ...)."""
        return self._select(
            "resource_metrics",
            [("metric_type = ?", metric_type), ("metric_name = ?", metric_name), ("node = ?", node),
             ("timestamp >= ?", since), ("timestamp <= ?", until)],
            limit,
        )  # fmt: skip

    def query_generation_metrics(
        self, operation: str | None = None, round_number: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Data-generation rows (operation, round/chunk, duration_seconds, samples, memory)."""
        return self._select(
            "generation_metrics", [("operation = ?", operation), ("round_number = ?", round_number)], limit
        )

    def query_training_metrics(
        self,
        metric_name: str | None = None,
        round_number: int | None = None,
        phase: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Training rows (metric_name, metric_value, round, epoch, phase)."""
        return self._select(
            "training_metrics",
            [("metric_name = ?", metric_name), ("round_number = ?", round_number), ("phase = ?", phase)],
            limit,
        )

    def get_summary_stats(self) -> dict[str, Any]:
        """Counts, time span, size and the store's own counters (drops, bad records, write errors)."""
        row = self._read(
            """SELECT
                (SELECT coalesce(sum(n), 0) FROM sample_chunks) AS resource_metrics_count,
                (SELECT count(*) FROM generation_rows) AS generation_metrics_count,
                (SELECT count(*) FROM training_rows) AS training_metrics_count,
                (SELECT count(*) FROM series) AS series_count,
                (SELECT min(t) FROM (SELECT min(t0) t FROM sample_chunks
                    UNION ALL SELECT min(timestamp) FROM generation_rows UNION ALL SELECT min(timestamp) FROM training_rows))
                    AS first_timestamp,
                (SELECT max(t) FROM (SELECT max(t1) t FROM sample_chunks
                    UNION ALL SELECT max(timestamp) FROM generation_rows UNION ALL SELECT max(timestamp) FROM training_rows))
                    AS last_timestamp"""
        )[0]
        first, last = row.pop("first_timestamp"), row.pop("last_timestamp")
        row["duration_minutes"] = 0.0 if first is None else (last - first) / 60.0
        size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        row["db_size_mb"] = size / 2**20
        row["db_path"] = self.path
        for name, value in (
            (r["name"], r["value"])
            for r in self._read("SELECT name, sum(value) AS value FROM store_stats GROUP BY name")
        ):
            row[name] = int(value)
        row["dropped"] = row.get("dropped_queue_full", 0) + row.get("dropped_client", 0) + self._dropped_here()
        return row
