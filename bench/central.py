"""The central store's cost: to the job (log calls, monitor samples, with and without the sender)
and into PostgreSQL (rows per second of the push against a bare COPY of the same rows).

    eval "$(postgres/server.sh env)"; python bench/central.py [--rows 100000] [--seconds 6] [--repeat 3]

Needs a PostgreSQL (``AETHERIUM_TEST_PG``); every measurement runs in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import bisect
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aetherium_hpc as ah  # noqa: E402
from aetherium_hpc.store import reader  # noqa: E402
from aetherium_hpc.store.central import sender as sender_module  # noqa: E402
from aetherium_hpc.store.central.load import load  # noqa: E402

URL_VARIABLE = "AETHERIUM_TEST_PG"


def server_url() -> str | None:
    """The PostgreSQL to measure against, or None (the reason: :func:`unreachable`)."""
    return os.environ.get(URL_VARIABLE) or None


def unreachable(variable: str = URL_VARIABLE) -> str | None:
    url = os.environ.get(variable) or None
    if url is None:
        script = "pgbouncer.sh" if "BOUNCER" in variable else "server.sh"
        return f'no PostgreSQL: {variable} is not set (postgres/{script} up && eval "$(postgres/{script} env)")'
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=5).close()
    except Exception as exc:
        return f"PostgreSQL does not answer: {type(exc).__name__}"
    return None


@contextmanager
def schema(url: str) -> Iterator[str]:
    import psycopg

    name = "bench_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={name}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


# -- the job's side -----------------------------------------------------------------------------
def _per_tick_ms(conn: sqlite3.Connection) -> float:
    """The monitor's own ``monitor/sample_cpu_ms`` over the run, per tick: each row is the mean
    over its batch of ticks and comes at the batch's last tick, so a row counts for the ticks
    (``ram/system_used`` rows, one a tick) since the row before it."""
    rows = conn.execute(
        "SELECT timestamp, value FROM resource_metrics"
        " WHERE metric_type = 'monitor' AND metric_name = 'sample_cpu_ms' ORDER BY timestamp"
    ).fetchall()
    ticks = [t for (t,) in conn.execute(
        "SELECT timestamp FROM resource_metrics"
        " WHERE metric_type = 'ram' AND metric_name = 'system_used' ORDER BY timestamp"
    )]  # fmt: skip
    weighted = total = 0
    before = 0
    for ts, value in rows:
        upto = bisect.bisect_right(ticks, ts)
        weighted += value * (upto - before)
        total += upto - before
        before = upto
    return weighted / total if total else 0.0


def job_costs(url: str | None, seconds: float, folder: str) -> dict[str, float]:
    """A store with its monitor (10 Hz) and a training loop logging for ``seconds``: per-call p50 of
    the log call (µs) and the monitor's mean CPU per sample (ms), with the sender when ``url``."""
    if url is None:
        os.environ.pop("AETHERIUM_CENTRAL", None)
    else:
        os.environ["AETHERIUM_CENTRAL"] = url
    path = os.path.join(folder, f"job-{secrets.token_hex(3)}.db")
    ah.init_db(path, flush_interval=1.0, listen=False)
    monitor = ah.log_system_resources(interval=0.1)
    log = ah.log_training_epoch_metric
    clock = time.perf_counter_ns
    calls: list[int] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        for _ in range(200):
            a = clock()
            log("loss", 0.5, 1, i, "train")
            calls.append(clock() - a)
            i += 1
        time.sleep(0.002)  # a training step between bursts of metrics
    monitor.stop()
    ah.shutdown_db()
    os.environ.pop("AETHERIUM_CENTRAL", None)
    conn = sqlite3.connect(path)
    try:
        sample_ms = _per_tick_ms(conn)
        sent = conn.execute("SELECT value FROM store_stats WHERE name = 'central/sent_rows'").fetchone()
    finally:
        conn.close()
    calls.sort()
    return {
        "call_us": calls[len(calls) // 2] / 1000,
        "sample_ms": float(sample_ms or 0.0),
        "sent": sent[0] if sent else 0,
        "rows_per_s": i / seconds,  # the loop's log calls: what the sender streams
    }


def measure_job(seconds: float, repeat: int) -> dict[str, list[float]]:
    """``repeat`` pairs of runs without / with the sender (pushing every second), interleaved. The
    loop logs ~80,000 rows/s: more than one push of :data:`.push.BATCH_ROWS` a second, so the sender
    does not sleep between pushes; it streams (``rows_per_s_on``)."""
    url = server_url()
    assert url is not None
    sender_module.INTERVAL_S = 1.0
    out: dict[str, list[float]] = {
        "call_off": [], "call_on": [], "sample_off": [], "sample_on": [], "sent": [], "rows_per_s_on": []
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="aeth-bench-central-") as folder, schema(url) as central:
        for _ in range(repeat):
            off = job_costs(None, seconds, folder)
            on = job_costs(central, seconds, folder)
            out["call_off"].append(off["call_us"])
            out["call_on"].append(on["call_us"])
            out["sample_off"].append(off["sample_ms"])
            out["sample_on"].append(on["sample_ms"])
            out["sent"].append(on["sent"])
            out["rows_per_s_on"].append(on["rows_per_s"])
    return out


# -- PostgreSQL's side ----------------------------------------------------------------------------
def training_db(path: str, rows: int) -> None:
    ah.init_db(path, buffer_size=10_000, flush_interval=1.0, listen=False)
    for i in range(rows):
        ah.log_training_epoch_metric("loss", 1.0 / (i + 1), i // 1000, i, "train")
    ah.shutdown_db()


def _rows(path: str, columns: str) -> list[tuple[object, ...]]:
    conn = reader.open_readonly(path)
    try:
        return conn.execute(f"SELECT {columns} FROM training_rows").fetchall()
    finally:
        conn.close()


_COLUMNS = "timestamp, metric_name, metric_value, round_number, epoch_number, phase"


def bare_copy(url: str, path: str) -> float:
    """Seconds to read the training rows from SQLite and COPY them into an unindexed table."""
    import psycopg

    started = time.perf_counter()
    rows = _rows(path, "1, " + _COLUMNS)
    with psycopg.connect(url) as pg, pg.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS bare (source_id bigint, timestamp double precision, metric_name text,"
            " metric_value double precision, round_number bigint, epoch_number bigint, phase text)"
        )
        with cur.copy("COPY bare FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "float8", "text", "float8", "int8", "int8", "text"])
            for row in rows:
                copy.write_row(row)
    return time.perf_counter() - started


def executemany_insert(url: str, path: str) -> float:
    """Seconds for the same rows through executemany (psycopg pipelines it) + ON CONFLICT DO NOTHING."""
    import psycopg

    from aetherium_hpc.store.central import schema as pg_schema

    started = time.perf_counter()
    rows = _rows(path, _COLUMNS)
    with psycopg.connect(url) as pg:
        pg_schema.ensure(pg, "bench")
        with pg.cursor() as cur:
            cur.execute("INSERT INTO sources(source_key) VALUES ('bench') RETURNING source_id")
            (sid,) = cur.fetchone()  # type: ignore[misc]
            cur.executemany(
                f"INSERT INTO training_rows(source_id, {_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(sid, *r) for r in rows],
            )
    return time.perf_counter() - started


def measure_rates(rows: int, repeat: int) -> dict[str, list[float]]:
    """Rows per second: push (``merge --into``), bare COPY, executemany; one fresh schema each."""
    url = server_url()
    assert url is not None
    out: dict[str, list[float]] = {"push": [], "copy": [], "executemany": []}
    with tempfile.TemporaryDirectory(prefix="aeth-bench-central-") as folder:
        path = os.path.join(folder, "rows.db")
        training_db(path, rows)
        for _ in range(repeat):
            with schema(url) as target:
                t = time.perf_counter()
                load([path], target)
                out["push"].append(rows / (time.perf_counter() - t))
            with schema(url) as target:
                out["copy"].append(rows / bare_copy(target, path))
            with schema(url) as target:
                out["executemany"].append(rows / executemany_insert(target, path))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    why = unreachable()
    if why is not None:
        print(f"skipped: {why}")
        return 0
    job = measure_job(args.seconds, args.repeat)
    rates = measure_rates(args.rows, args.repeat)
    med = statistics.median
    print(f"log call p50: {med(job['call_off']):.2f} µs without the sender, {med(job['call_on']):.2f} µs with it")
    print(f"monitor CPU per sample: {med(job['sample_off']):.3f} ms without, {med(job['sample_on']):.3f} ms with")
    for k, v in rates.items():
        print(f"{k}: {med(v):,.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
