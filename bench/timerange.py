"""A time-range question on the 24 h x 42 metrics x 1 Hz store: one metric of one job over the last
5 minutes, in SQLite and in PostgreSQL (the same store loaded with ``merge --into``).

    SELECT timestamp, value FROM resource_metrics
    WHERE metric_type = 'cpu' AND metric_name = 'system_total' AND job_id = :job
      AND chunk_t1 >= :from - 0.001 AND chunk_t0 <= :to      -- only the chunks that overlap
      AND timestamp BETWEEN :from AND :to

against the naive query (the same without the chunk bounds: every chunk of the series unpacked), the
two timed pair by pair on one connection. Target: <= 20 ms in both.

    python bench/timerange.py [--hours 24] [--repeat 7]      (PostgreSQL: set AETHERIUM_TEST_PG)

PostgreSQL runs in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc.store import SourceInfo, chunks  # noqa: E402
from aetherium_hpc.store.central.load import load  # noqa: E402
from bench import central, storage  # noqa: E402

JOB = "4242"
WINDOW_S = 300.0
TARGET_MS = 20.0
SELECT = (
    "SELECT timestamp, value FROM resource_metrics"
    " WHERE metric_type = 'cpu' AND metric_name = 'system_total' AND job_id = {job}"
)
RANGE = SELECT + " AND chunk_t1 >= {f} - {slack} AND chunk_t0 <= {t} AND timestamp BETWEEN {f} AND {t}"
NAIVE = SELECT + " AND timestamp BETWEEN {f} AND {t}"
LITE_NAMES = {"f": ":f", "t": ":t", "job": ":job", "slack": ":slack"}
PG_NAMES = {"f": "%(f)s", "t": "%(t)s", "job": "%(job)s", "slack": "%(slack)s"}


def _pairs(run: Callable[[str], list[tuple[Any, ...]]], repeat: int) -> dict[str, Any]:
    """``repeat`` timings (ms) of the range query and the naive one, one after the other, and their rows."""
    out: dict[str, Any] = {"range": [], "naive": []}
    for _ in range(repeat):
        for key in ("range", "naive"):
            t = time.perf_counter()
            out[key + "_rows"] = run(key)
            out[key].append((time.perf_counter() - t) * 1000)
    out["agree"] = out["range_rows"] == out["naive_rows"]
    out["rows"] = len(out["range_rows"])
    del out["range_rows"], out["naive_rows"]
    return out


def measure_sqlite(path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sql = {"range": RANGE.format(**LITE_NAMES), "naive": NAIVE.format(**LITE_NAMES)}
        out = _pairs(lambda key: conn.execute(sql[key], params).fetchall(), repeat)
        out["plan"] = "; ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql["range"], params))
        out["chunks"] = conn.execute(
            "SELECT count(*) FROM sample_chunks c JOIN series s USING (series_id)"
            " WHERE s.metric_type = 'cpu' AND s.metric_name = 'system_total'"
        ).fetchone()[0]
    finally:
        conn.close()
    out["index_used"] = "sample_chunks_by_end (series_id=? AND t1>?)" in out["plan"]
    return out


def measure_postgres(url: str, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    import psycopg

    with central.schema(url) as target:
        t = time.perf_counter()
        load([path], target)
        loaded = time.perf_counter() - t
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("ANALYZE")
            sql = {"range": RANGE.format(**PG_NAMES), "naive": NAIVE.format(**PG_NAMES)}
            out = _pairs(lambda key: conn.execute(sql[key], params).fetchall(), repeat)
            plan = [r[0] for r in conn.execute("EXPLAIN " + sql["range"], params)]
            conn.execute("VACUUM sample_chunks")
            size, samples = conn.execute(
                "SELECT pg_total_relation_size('sample_chunks'), sum(n) FROM sample_chunks"
            ).fetchone()  # type: ignore[misc]
        out.update(pulls(target, repeat))
    out["bytes_per_sample"] = size / max(int(samples), 1)  # full chunks, indexes included: the disk a day takes
    out["plan"] = "\n".join(plan)
    out["load_s"] = loaded
    out["index_used"] = any("Index Cond" in p and "t1 >=" in p for p in plan) and "sample_chunks_by_end" in out["plan"]
    return out


def pulls(url: str, repeat: int) -> dict[str, Any]:
    """What ``watch`` pulls of the job: the whole selection (once) against the window it draws (its
    first pull, then a refresh with nothing new), seconds."""
    from aetherium_hpc.analysis.watch import WINDOW_S as WATCH_S
    from aetherium_hpc.store.central.pull import Puller, Selection

    out: dict[str, Any] = {"watch_window_s": WATCH_S, "pull_window": [], "pull_refresh": []}
    with tempfile.TemporaryDirectory(prefix="aeth-bench-pull-") as d:
        t = time.perf_counter()
        with Puller(url, Selection(jobs=(JOB,)), os.path.join(d, "whole.db")) as whole:
            out["whole_samples"] = whole.pull().samples
        out["pull_whole"] = time.perf_counter() - t
        for k in range(repeat):
            t = time.perf_counter()
            with Puller(url, Selection(jobs=(JOB,)), os.path.join(d, f"w{k}.db"), recent_s=WATCH_S) as puller:
                out["window_samples"] = puller.pull().samples
                out["pull_window"].append(time.perf_counter() - t)
                t = time.perf_counter()
                puller.pull()
                out["pull_refresh"].append(time.perf_counter() - t)
    return out


def measure(hours: float = 24.0, repeat: int = 7) -> dict[str, Any]:
    """Build the store once, ask it in SQLite, then (AETHERIUM_TEST_PG set and answering) in PostgreSQL."""
    seconds = int(hours * 3600)
    specs = storage.metric_specs()
    out: dict[str, Any] = {"samples": seconds * len(specs), "hours": hours}
    with tempfile.TemporaryDirectory(prefix="aeth-bench-range-") as d:
        path = os.path.join(d, "n1.db")
        storage.write_ours(path, seconds, specs, SourceInfo(job_id=JOB, node="node001", hostname="node001"))
        import sqlite3

        conn = sqlite3.connect(path)
        (end,) = conn.execute(
            "SELECT max(t1) FROM sample_chunks JOIN series USING (series_id)"
            " WHERE metric_type = 'cpu' AND metric_name = 'system_total'"
        ).fetchone()
        conn.close()
        params = {"f": end - WINDOW_S, "t": end, "job": JOB, "slack": chunks.T1_SLACK_S}
        out["sqlite"] = measure_sqlite(path, params, repeat)
        why = central.unreachable()
        out["postgres_skipped"] = why
        if why is None:
            url = central.server_url()
            assert url is not None
            out["postgres"] = measure_postgres(url, path, params, repeat)
    return out


def describe(name: str, m: dict[str, Any]) -> str:
    r, n = statistics.median(m["range"]), statistics.median(m["naive"])
    return (
        f"{name:10}: {r:6.2f} ms with the chunk bounds ({min(m['range']):.2f}-{max(m['range']):.2f}), naive {n:6.1f} ms"
        f" ({min(m['naive']):.1f}-{max(m['naive']):.1f}): {r / n:.3f}x; {m['rows']} rows, same rows: {m['agree']},"
        f" index on the chunk ends: {m['index_used']}; target <= {TARGET_MS:g} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    m = measure(a.hours, a.repeat)
    print(f"samples: {m['samples']:,} ({a.hours:g} h x 42 metrics x 1 Hz); one metric of one job, last {WINDOW_S:g} s")
    print(describe("SQLite", m["sqlite"]))
    print("  plan:", m["sqlite"]["plan"])
    if m["postgres_skipped"]:
        print(f"PostgreSQL: skipped: set {central.URL_VARIABLE} ({m['postgres_skipped']})")
    else:
        pg = m["postgres"]
        print(describe("PostgreSQL", pg) + f"; loaded in {pg['load_s']:.1f} s;"
              f" {pg['bytes_per_sample']:.1f} B/sample on disk (table, TOAST and indexes, full chunks)")  # fmt: skip
        print(
            f"watch's pull of the job: its window (last {pg['watch_window_s']:g} s of each series,"
            f" {pg['window_samples']:,} samples) {statistics.median(pg['pull_window']) * 1000:.0f} ms, a refresh with"
            f" nothing new {statistics.median(pg['pull_refresh']) * 1000:.1f} ms; the whole job"
            f" ({pg['whole_samples']:,} samples) {pg['pull_whole']:.2f} s"
        )
        print("  plan:\n    " + m["postgres"]["plan"].replace("\n", "\n    "))


if __name__ == "__main__":
    main()
