"""End-to-end ingest: 1 main + 4 worker processes logging through the store, beside raw sqlite3.

Prints metrics/s for both, the ratio (target >= 40 % of raw SQLite), and the latency of one
log call in the logging process (p50 <= 2 us, p99 <= 20 us). Both sides write the same rows
into a WAL database in the same run, so the ratio holds on a busy machine where the absolute
figures do not.

    python bench/ingest.py [--records 200000] [--workers 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import aetherium_hpc as ah  # noqa: E402


def rows(producer: int, n: int) -> list[tuple[object, ...]]:
    now = time.time()
    return [(now, "loss", float(i), producer, i, "train") for i in range(n)]


def raw_sqlite(path: str, n_total: int, producers: int) -> float:
    """Baseline: executemany of the same rows, 1,000 per transaction, WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE training_rows (id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL DEFAULT 1, timestamp REAL,"
        " metric_name TEXT, metric_value REAL, round_number INTEGER, epoch_number INTEGER, phase TEXT)"
    )
    per = n_total // producers
    data = [r for p in range(producers) for r in rows(p, per)]
    t0 = time.perf_counter()
    for i in range(0, len(data), 1000):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO training_rows(timestamp, metric_name, metric_value, round_number, epoch_number, phase)"
            " VALUES (?,?,?,?,?,?)",
            data[i : i + 1000],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(data) / elapsed


def _worker(args: tuple[int, int]) -> None:
    producer, n = args
    log = ah.log_training_epoch_metric
    for i in range(n):
        log("loss", float(i), producer, i, "train")


def store_ingest(path: str, n_total: int, workers: int) -> float:
    """Ours: main + workers log the same number of records; time until all are committed."""
    per = n_total // (workers + 1)
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    ah.init_db(path, buffer_size=1000, flush_interval=1.0)
    procs = [ctx.Process(target=_worker, args=((p + 1, per),)) for p in range(workers)]
    for p in procs:
        p.start()
    _worker((0, per))
    for p in procs:
        p.join()
    ah.shutdown_db()
    elapsed = time.perf_counter() - t0
    conn = sqlite3.connect(path)
    count = conn.execute("SELECT count(*) FROM training_rows").fetchone()[0]
    conn.close()
    if count != per * (workers + 1):
        raise SystemExit(f"lost records: {count} != {per * (workers + 1)}")
    return count / elapsed


def call_latency(path: str, n: int = 200_000) -> tuple[float, float, float]:
    """Per-call latency of log_training_epoch_metric with the writer running (timer overhead subtracted)."""
    ah.init_db(path, buffer_size=1000, flush_interval=1.0)
    log = ah.log_training_epoch_metric
    clock = time.perf_counter_ns
    empty = []
    for _ in range(20_000):
        a = clock()
        empty.append(clock() - a)
    overhead = statistics.median(empty)
    samples = []
    for i in range(n):
        a = clock()
        log("loss", 0.5, 1, i, "train")
        samples.append(clock() - a - overhead)
    ah.shutdown_db()
    samples.sort()
    return samples[n // 2] / 1000, samples[int(n * 0.99)] / 1000, overhead / 1000


def measure(
    records: int = 200_000, workers: int = 4, repeat: int = 3, latency_calls: int = 200_000
) -> dict[str, list[float]]:
    """Run the benchmark; per-repeat lists (same index = same repeat) of rows/s and latencies (us)."""
    raw: list[float] = []
    ours: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(repeat):
            raw.append(raw_sqlite(os.path.join(d, f"raw{r}.db"), records, workers + 1))
            ours.append(store_ingest(os.path.join(d, f"ours{r}.db"), records, workers))
            p50, p99, overhead = call_latency(os.path.join(d, f"lat{r}.db"), latency_calls)
            p50s.append(p50)
            p99s.append(p99)
            overheads.append(overhead)
    return {"raw": raw, "ours": ours, "p50": p50s, "p99": p99s, "timer_overhead": overheads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records per run, all producers together")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    m = measure(a.records, a.workers, a.repeat)
    raw, ours, p50s, p99s = m["raw"], m["ours"], m["p50"], m["p99"]
    overhead = statistics.median(m["timer_overhead"])
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    print(
        f"raw sqlite3 executemany : {statistics.median(raw):12,.0f} rows/s  (runs: {', '.join(f'{x:,.0f}' for x in raw)})"
    )
    print(
        f"aetherium 1 main + {a.workers} workers: {statistics.median(ours):12,.0f} rows/s  (runs: {', '.join(f'{x:,.0f}' for x in ours)})"
    )
    print(
        f"ratio ours/raw          : {statistics.median(ratios):.0%}  (pairwise: {', '.join(f'{x:.0%}' for x in ratios)}; target >= 40%)"
    )
    print(f"log call p50            : {statistics.median(p50s):.2f} us  (target <= 2 us)")
    print(
        f"log call p99            : {statistics.median(p99s):.2f} us  (target <= 20 us; timer overhead {overhead:.2f} us subtracted)"
    )


if __name__ == "__main__":
    main()
