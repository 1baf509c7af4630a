"""The central server at the scale of a lab: what N node senders cost PostgreSQL.

    eval "$(postgres/server.sh env)"; python bench/central_scale.py [--nodes 300] [--series 20] [--seconds 40]

``--nodes`` node databases grow as live jobs do (``--series`` resource series sampled at 1 Hz and a
training row per second each; tests/support/fleet.py), each pushed by a real ``CentralSender``
(one connection per push, every 5 s ±20 %) into a schema of its own. Over the steady part of the
run it measures, on the server's side:

* pushes per second (rounds that committed);
* server CPU per push: the CPU time of the postmaster and every backend (those that ended are in
  the postmaster's children times; needs the server on this machine), divided by the pushes;
* WAL bytes per sample (``pg_current_wal_lsn``) and table bytes per sample stored;
* the most sender connections open at once.

Baseline in the same run: the server CPU of a bare connection (connect, ``SELECT 1``, close) with
the same URL, so the push's own work and the price of connecting are told apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

from fleet import Feeder, make_nodes, start_senders, stop_senders  # noqa: E402

from bench.central import URL_VARIABLE, schema, unreachable  # noqa: E402

SENDER_APP = "aetherium-hpc sender"
BOUNCER_VARIABLE = "AETHERIUM_TEST_PGBOUNCER"


def server_cpu_s(postmaster: int) -> float | None:
    """CPU seconds the server has used: the postmaster, its ended children, and the live ones."""
    import psutil

    try:
        proc = psutil.Process(postmaster)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:  # ended meanwhile: counted in the postmaster's children times
                pass
        return total
    except psutil.Error:
        return None


class Watcher(threading.Thread):
    """One connection that samples the sender connections the server holds, every 0.25 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, prepare_threshold=None) as conn:
            while not self.stopping.wait(0.25):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (SENDER_APP,)
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)


def _server_figures(conn: Any) -> tuple[int, int]:
    """(WAL position in bytes, samples stored)."""
    wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()[0]
    try:
        samples = conn.execute("SELECT coalesce(sum(n), 0) FROM sample_chunks").fetchone()[0]
    except Exception:
        conn.rollback()
        samples = 0
    conn.commit()
    return int(wal), int(samples)


@contextmanager
def _target(url: str, bouncer: bool) -> Iterator[str]:
    """A private place to push to: a schema of its own, or (PgBouncer passes no ``options``) the
    PgBouncer database emptied before and after."""
    if not bouncer:
        with schema(url) as central:
            yield central
        return
    import psycopg

    def empty() -> None:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")

    empty()
    try:
        yield url
    finally:
        empty()


def pgbouncer_cpu_s() -> float | None:
    """CPU seconds of the PgBouncer processes on this machine (None: none runs here)."""
    import psutil

    total, seen = 0.0, False
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "pgbouncer":
            try:
                t = proc.cpu_times()
                total += t.user + t.system
                seen = True
            except psutil.Error:
                pass
    return total if seen else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def measure(
    url: str, nodes: int = 300, series: int = 20, seconds: float = 40.0, interval: float = 5.0, *, bouncer: bool = False
) -> dict[str, Any]:
    """Run the fleet for ``seconds`` and measure its steady part (after the first 1.5 intervals);
    ``bouncer``: ``url`` is a PgBouncer's, whose own CPU is measured too."""
    import psutil
    import psycopg

    with tempfile.TemporaryDirectory(prefix="aeth-bench-fleet-") as folder, _target(url, bouncer) as central:
        paths = make_nodes(Path(folder), nodes, series=series)
        with psycopg.connect(central, prepare_threshold=None) as conn:
            postmaster = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0]).ppid()
            conn.commit()
            feeder = Feeder(paths, tick=1.0)
            watcher = Watcher(central)
            feeder.start()
            watcher.start()
            senders = start_senders(paths, central, interval=interval, final_timeout=30.0)
            try:
                time.sleep(1.5 * interval)
                cpu0, pgb0, (wal0, samples0) = server_cpu_s(postmaster), pgbouncer_cpu_s(), _server_figures(conn)
                pushes0, t0 = sum(s.pushes for s in senders), time.monotonic()
                time.sleep(max(seconds - 1.5 * interval, interval))
                cpu1, pgb1, (wal1, samples1) = server_cpu_s(postmaster), pgbouncer_cpu_s(), _server_figures(conn)
                pushes1, t1 = sum(s.pushes for s in senders), time.monotonic()
            finally:
                feeder.stop()
                stop_senders(senders)
                watcher.stopping.set()
                watcher.join(10)
            size = conn.execute(
                "SELECT pg_total_relation_size('sample_chunks'), coalesce(sum(n), 0) FROM sample_chunks"
            ).fetchone()
            conn.commit()
        connect_cpu, connect_pgb = bare_connection_cpu_s(central, postmaster)
        pushes, window = pushes1 - pushes0, t1 - t0
        cpu, pgb = _diff(cpu0, cpu1), _diff(pgb0, pgb1) if bouncer else None
        return {
            "nodes": nodes, "series": series, "interval": interval, "window_s": window, "bouncer": bouncer,
            "pushes": pushes, "pushes_per_s": pushes / window,
            "cpu_per_push_ms": None if cpu is None or not pushes else cpu / pushes * 1000,
            "server_cores": None if cpu is None else cpu / window,
            "pgbouncer_per_push_ms": None if pgb is None or not pushes else pgb / pushes * 1000,
            "samples": samples1 - samples0, "samples_per_s": (samples1 - samples0) / window,
            "wal_per_sample": (wal1 - wal0) / max(samples1 - samples0, 1),
            "table_per_sample": size[0] / max(int(size[1]), 1),
            "peak_connections": watcher.peak,
            "busy": sum(s.busy for s in senders), "errors": sum(s.errors for s in senders),
            "connect_cpu_ms": None if connect_cpu is None else connect_cpu * 1000,
            "connect_pgbouncer_ms": None if connect_pgb is None or not bouncer else connect_pgb * 1000,
        }  # fmt: skip


def bare_connection_cpu_s(url: str, postmaster: int, n: int = 200) -> tuple[float | None, float | None]:
    """CPU seconds of one bare connection (connect, SELECT 1, close; mean of ``n``): the server's,
    and PgBouncer's (None when none runs here)."""
    import psycopg

    before, pgb_before = server_cpu_s(postmaster), pgbouncer_cpu_s()
    for _ in range(n):
        with psycopg.connect(url, application_name="bench bare connection", prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
    cpu, pgb = _diff(before, server_cpu_s(postmaster)), _diff(pgb_before, pgbouncer_cpu_s())
    return (None if cpu is None else cpu / n), (None if pgb is None else pgb / n)


def _ms(x: float | None) -> str:
    return "n/a (not on this machine)" if x is None else f"{x:.2f} ms"


def summary(r: dict[str, Any]) -> str:
    via = " through PgBouncer" if r["bouncer"] else ""
    lines = [
        f"{r['nodes']} senders{via} x {r['series']} series at 1 Hz, push every {r['interval']:g} s,"
        f" {r['window_s']:.0f} s measured:",
        f"  pushes/s {r['pushes_per_s']:.1f}; server CPU per push {_ms(r['cpu_per_push_ms'])}"
        f" (a bare connection: {_ms(r['connect_cpu_ms'])}); server cores busy {r['server_cores'] or 0:.2f}",
    ]
    if r["bouncer"]:
        lines.append(f"  PgBouncer CPU per push {_ms(r['pgbouncer_per_push_ms'])}"
                     f" (a bare connection: {_ms(r['connect_pgbouncer_ms'])})")  # fmt: skip
    lines += [
        f"  samples/s stored {r['samples_per_s']:.0f}; WAL {r['wal_per_sample']:.1f} B/sample;"
        f" table {r['table_per_sample']:.1f} B/sample",
        f"  peak sender connections {r['peak_connections']}; put off busy {r['busy']}; errors {r['errors']}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--pgbouncer", action="store_true", help=f"push through the PgBouncer at ${BOUNCER_VARIABLE}")
    args = ap.parse_args()
    why = unreachable(BOUNCER_VARIABLE if args.pgbouncer else URL_VARIABLE)
    if why:
        sys.exit(f"central_scale.py: {why}")
    url = os.environ[BOUNCER_VARIABLE if args.pgbouncer else URL_VARIABLE]
    print(summary(measure(url, args.nodes, args.series, args.seconds, args.interval, bouncer=args.pgbouncer)))


if __name__ == "__main__":
    main()
