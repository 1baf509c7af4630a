"""Bytes per resource sample on disk, and the documented aggregate query, for 24 h x 42 metrics x 1 Hz.

Writes 3.6M synthetic samples (values shaped like what psutil and NVML return: CPU % with one
decimal, memory in MB, integer GPU utilisation and temperature, power in W with mW resolution;
timestamps on a 1 s grid with 0-3 ms of jitter) through the real store (init_db +
log_resource_samples, one commit per simulated minute), then prints the file size per sample
beside a plain one-row-per-sample table of the same data (the obvious schema) written in the
same run, and times

    SELECT AVG(value), MAX(value), MIN(value) FROM resource_metrics
    WHERE metric_type='cpu' AND metric_name='system_total'

Targets: <= 16 B per sample, query < 50 ms.   python bench/storage.py [--hours 24]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import aetherium_hpc as ah  # noqa: E402
from aetherium_hpc.store import SourceInfo  # noqa: E402
from aetherium_hpc.store.client import log_resource_samples  # noqa: E402

QUERY = (
    "SELECT AVG(value), MAX(value), MIN(value) FROM resource_metrics"
    " WHERE metric_type='cpu' AND metric_name='system_total'"
)


def metric_specs() -> list[tuple[str, str, str, str]]:
    """42 series: host CPU/RAM, a 6-process tree, 4 GPUs x 6 fields."""
    specs = [("cpu", "system_total", "%", ""), ("cpu", "process_tree", "%", ""),
             ("ram", "system_used", "MB", ""), ("ram", "system_percent", "%", ""),
             ("ram", "process_tree_rss", "MB", ""), ("monitor", "sample_cpu_ms", "ms", "")]  # fmt: skip
    for p in range(6):
        specs += [
            ("process", "cpu_percent", "%", f"{1000 + p}:worker"),
            ("process", "rss_mb", "MB", f"{1000 + p}:worker"),
        ]
    for g in range(4):
        dev = f"GPU-{g:08x}-0000-0000-0000-000000000000"
        specs += [("gpu", n, u, dev) for n, u in (("utilization", "%"), ("memory_used", "MB"), ("memory_total", "MB"),
                                                   ("power", "W"), ("temperature", "C"), ("memory_utilization", "%"))]  # fmt: skip
    assert len(specs) == 42, len(specs)
    return specs


def value(spec: tuple[str, str, str, str], k: int, rnd: random.Random) -> float:
    mtype, name, unit, _ = spec
    if unit == "%" and mtype in ("cpu", "process"):
        return round(rnd.uniform(0, 100), 1)
    if unit == "%":
        return float(rnd.randint(0, 100))
    if unit == "MB":
        return rnd.randint(10**8, 6 * 10**10) / 2**20
    if unit == "W":
        return rnd.randint(60_000, 400_000) / 1000
    if unit == "C":
        return float(rnd.randint(30, 85))
    return round(rnd.uniform(0.1, 0.6), 3)


def write_ours(
    path: str, seconds: int, specs: list[tuple[str, str, str, str]], source: SourceInfo | None = None
) -> None:
    rnd = random.Random(1)
    t0 = 1_790_000_000.0
    ah.init_db(path, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, source=source)
    store = ah.get_db()
    assert store is not None
    for k in range(seconds):
        ts = t0 + k + rnd.random() * 0.003
        log_resource_samples([(t, n, value((t, n, u, d), k, rnd), u, d) for (t, n, u, d) in specs], timestamp=ts)
        if k % 60 == 59:
            store.flush()
    ah.shutdown_db()


def write_plain(path: str, seconds: int, specs: list[tuple[str, str, str, str]]) -> None:
    """The obvious schema: one row per sample, names inline, an index for the query."""
    rnd = random.Random(1)
    t0 = 1_790_000_000.0
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE resource_metrics (timestamp REAL, metric_type TEXT, metric_name TEXT, value REAL,"
        " unit TEXT, node TEXT, device TEXT)"
    )
    conn.execute("CREATE INDEX rm_by_name ON resource_metrics(metric_type, metric_name, timestamp)")
    for start in range(0, seconds, 60):
        batch = []
        for k in range(start, min(seconds, start + 60)):
            ts = t0 + k + rnd.random() * 0.003
            batch += [(ts, t, n, value((t, n, u, d), k, rnd), u, "node001", d) for (t, n, u, d) in specs]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO resource_metrics VALUES (?,?,?,?,?,?,?)", batch)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def time_query(path: str, repeat: int = 7) -> tuple[float, tuple[object, ...]]:
    times, row = query_times(path, repeat)
    return statistics.median(times), row


def query_times(path: str, repeat: int = 7) -> tuple[list[float], tuple[object, ...]]:
    """``repeat`` timings (ms) of the aggregate on one read-only connection, and its result."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    times, row = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        row = conn.execute(QUERY).fetchone()
        times.append((time.perf_counter() - t) * 1000)
    conn.close()
    assert row is not None
    return times, row


def measure(hours: float = 24.0, query_repeat: int = 7) -> dict[str, object]:
    """Write both stores once (sizes are deterministic), time the aggregate ``query_repeat`` times on each."""
    seconds = int(hours * 3600)
    specs = metric_specs()
    n = seconds * len(specs)
    with tempfile.TemporaryDirectory() as d:
        ours, plain = os.path.join(d, "ours.db"), os.path.join(d, "plain.db")
        t = time.perf_counter()
        write_ours(ours, seconds, specs)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        write_plain(plain, seconds, specs)
        t_plain = time.perf_counter() - t
        size_ours, size_plain = os.path.getsize(ours), os.path.getsize(plain)
        q_ours, row_ours = query_times(ours, query_repeat)
        q_plain, row_plain = query_times(plain, query_repeat)
    return {"samples": n, "hours": hours, "metrics": len(specs), "size_ours": size_ours, "size_plain": size_plain,
            "t_ours": t_ours, "t_plain": t_plain, "q_ours": q_ours, "q_plain": q_plain,
            "row_ours": row_ours, "row_plain": row_plain}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0)
    a = ap.parse_args()
    m = measure(a.hours)
    n, size_ours, size_plain, t_ours, t_plain = m["samples"], m["size_ours"], m["size_plain"], m["t_ours"], m["t_plain"]
    q_ours, q_plain = statistics.median(m["q_ours"]), statistics.median(m["q_plain"])  # type: ignore[arg-type]
    row_ours, row_plain = m["row_ours"], m["row_plain"]
    specs = metric_specs()
    print(f"samples: {n:,} ({a.hours:g} h x {len(specs)} metrics x 1 Hz); SQLite {sqlite3.sqlite_version}")
    print(
        f"aetherium store : {size_ours / n:6.2f} B/sample ({size_ours / 2**20:7.1f} MiB), written in {t_ours:5.1f} s; target <= 16 B"
    )
    print(
        f"plain row table : {size_plain / n:6.2f} B/sample ({size_plain / 2**20:7.1f} MiB), written in {t_plain:5.1f} s"
    )
    print(f"size ratio      : {size_ours / size_plain:.2f} of the plain table")
    print(f"aggregate query : {q_ours:6.1f} ms on the store (plain table with index: {q_plain:.1f} ms); target < 50 ms")
    print(
        f"  results agree : {row_ours[1] == row_plain[1] and row_ours[2] == row_plain[2]} (max/min), avg {row_ours[0]:.4f} vs {row_plain[0]:.4f}"
    )  # type: ignore[index]


if __name__ == "__main__":
    main()
