"""Benchmark: `merge` of many task databases against a bare ATTACH + INSERT ... SELECT copy.

Builds ``--tasks`` synthetic task databases (each ``--hours`` h x 42 metrics x 1 Hz, written
fast by inserting chunk rows made with ``chunks.encode``), then times, in the same run
and on the same files:

* ``merge``: :func:`aetherium_hpc.analysis.merge.merge` (checks, fingerprints, id remapping);
* ``bare``:  for each file ``ATTACH``, ``INSERT INTO t SELECT * FROM src.t`` for the same tables
  (no checks, no remapping) into plain tables, one transaction per file.

    python bench/merge.py               # 100 tasks x 1 h (about 160 MB)
    python bench/merge.py --tasks 10    # a quick run
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc.analysis.merge import merge  # noqa: E402
from aetherium_hpc.store import schema  # noqa: E402
from aetherium_hpc.store.chunks import CHUNK_SAMPLES  # noqa: E402
from aetherium_hpc.store.chunks import INSERT_SQL as CHUNK_INSERT_SQL  # noqa: E402
from aetherium_hpc.store.chunks import encode as encode_chunk  # noqa: E402

N_METRICS = 42
TABLES = ("sources", "series", "sample_chunks", "generation_rows", "training_rows", "job_rows", "store_stats")


def build_task_db(path: str, task: int, hours: float, rng: random.Random) -> None:
    conn = schema.connect(path)
    schema.create(conn)
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO sources(source_id, job_id, array_job_id, array_task_id, node, hostname, source_path, attempt)"
        " VALUES (1, ?, '4242', ?, ?, ?, ?, 0)",
        (f"4242_{task}", task, f"n{task % 8}", f"n{task % 8}", path),
    )
    t_start = 1_700_000_000.0 + task
    n_total = int(hours * 3600)
    chunks = []
    for m in range(N_METRICS):
        mtype = ("cpu", "ram", "gpu", "process")[m % 4]
        conn.execute(
            "INSERT INTO series(series_id, source_id, metric_type, metric_name, unit, node, device)"
            " VALUES (?, 1, ?, ?, '%', ?, ?)",
            (m + 1, mtype, f"metric_{m}", f"n{task % 8}", str(m % 2)),
        )
        base = rng.uniform(0, 100)
        for start in range(0, n_total, CHUNK_SAMPLES):
            n = min(CHUNK_SAMPLES, n_total - start)
            ts = [t_start + start + k + (0.001 if k % 17 == 0 else 0.0) for k in range(n)]
            vals: list[float | None] = [base + rng.random() for _ in range(n)]
            chunks.append((m + 1, *encode_chunk(ts, vals)))
    conn.executemany(CHUNK_INSERT_SQL, chunks)
    conn.executemany(
        "INSERT INTO generation_rows(source_id, timestamp, operation, round_number, chunk_number, duration_seconds,"
        " samples_generated, memory_used_mb, pid) VALUES (1, ?, 'signal_injection', ?, ?, ?, 1000, ?, 1)",
        [(t_start + 30 * c, c // 20, c, rng.uniform(5, 30), rng.uniform(100, 900)) for c in range(100)],
    )
    conn.executemany(
        "INSERT INTO training_rows(source_id, timestamp, metric_name, metric_value, round_number, epoch_number, phase)"
        " VALUES (1, ?, ?, ?, ?, ?, ?)",
        [(t_start + 60 * e, name, rng.random(), e // 10, e % 10, ph)
         for e in range(50) for name, ph in (("loss", "train"), ("loss", "val"), ("lr", "train"))],
    )  # fmt: skip
    conn.execute(
        "INSERT INTO job_rows(source_id, start_time, end_time, status, exit_code, requested)"
        " VALUES (1, ?, ?, 'completed', 0, '{\"mem_gb\": 16}')",
        (t_start, t_start + n_total),
    )
    conn.execute("COMMIT")
    conn.close()


def bare_copy(files: list[str], output: str) -> None:
    """The floor: ATTACH and INSERT ... SELECT * of the same tables, no checks, no remapping."""
    conn = sqlite3.connect(output, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    for i, path in enumerate(files):
        conn.execute("ATTACH DATABASE ? AS src", ("file:" + quote(path, safe="/") + "?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        for t in TABLES:
            if i == 0:
                conn.execute(f"CREATE TABLE main.{t} AS SELECT * FROM src.{t} WHERE 0")
            conn.execute(f"INSERT INTO main.{t} SELECT * FROM src.{t}")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
    conn.close()


def report_command(db: str, html: str) -> list[str]:
    """``aetherium-hpc report`` as a user runs it: a fresh interpreter, text report + HTML with plots."""
    return [sys.executable, "-m", "aetherium_hpc", "report", db, "--quiet", "--html", html]


def measure(tasks: int = 100, hours: float = 1.0, repeat: int = 3, report_repeat: int = 0,
            work_dir: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Build the task DBs once, then ``repeat`` x (bare copy, merge, re-merge), pairs by index.

    With ``report_repeat``, also time ``aetherium-hpc report`` that many times on the last merged DB.
    """
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        rng = random.Random(1)
        t = time.perf_counter()
        files = []
        for task in range(tasks):
            path = os.path.join(tmp, "db", f"4242_{task}", f"n{task % 8}.db")
            os.makedirs(os.path.dirname(path))
            build_task_db(path, task, hours, rng)
            files.append(path)
        size = sum(os.path.getsize(f) for f in files)
        log(f"built {tasks} task DBs ({hours:g} h x {N_METRICS} metrics x 1 Hz each, "
            f"{size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s")  # fmt: skip
        bare: list[float] = []
        merged: list[float] = []
        remerge: list[float] = []
        report: list[float] = []
        merged_size = 0
        for r in range(repeat):
            out = os.path.join(tmp, f"bare{r}.db")
            t = time.perf_counter()
            bare_copy(files, out)
            bare.append(time.perf_counter() - t)
            os.remove(out)
            out = os.path.join(tmp, f"merged{r}.db")
            t = time.perf_counter()
            result = merge(files, out, progress=False)
            merged.append(time.perf_counter() - t)
            assert result.sources_added == tasks and not result.skipped, result.summary()
            t = time.perf_counter()
            again = merge(files, out, progress=False)
            remerge.append(time.perf_counter() - t)
            assert again.sources_added == 0
            merged_size = os.path.getsize(out)
            if r == repeat - 1:
                for k in range(report_repeat):
                    html = os.path.join(tmp, f"report{k}.html")
                    t = time.perf_counter()
                    subprocess.run(report_command(out, html), check=True, capture_output=True)
                    report.append(time.perf_counter() - t)
            os.remove(out)
    return {"tasks": tasks, "hours": hours, "input_bytes": size, "merged_bytes": merged_size,
            "bare": bare, "merge": merged, "remerge": remerge, "report": report}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100, help="task databases to build [100]")
    ap.add_argument("--hours", type=float, default=1.0, help="hours of 1 Hz samples per task [1]")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each, best kept [3]")
    ap.add_argument("--dir", default=None, help="work folder [a temporary one]")
    args = ap.parse_args()
    m = measure(args.tasks, args.hours, args.repeat, work_dir=args.dir)
    best_bare, best_merge, remerge, size = min(m["bare"]), min(m["merge"]), m["remerge"][-1], m["input_bytes"]
    ratio = best_merge / best_bare
    print(f"bare ATTACH+INSERT..SELECT copy: {best_bare:.2f} s")
    print(f"merge (checks, fingerprints, remap): {best_merge:.2f} s  ({size / 2**20 / best_merge:.0f} MB/s)")
    print(f"ratio merge/bare: {ratio:.2f}x (target <= 1.5x)")
    print(f"re-merge of the same inputs (adds nothing): {remerge:.2f} s")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
