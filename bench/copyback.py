"""Copy-back cost of a long job: bytes written to the run directory and CPU per checkpoint.

Simulates a job of ``--hours`` (default 24) with 42 metrics at 1 Hz (the series and value shapes
of bench/storage.py), a data-generation row every 20 s and 4 training metrics every 60 s,
written through the real store with synthetic timestamps (a 24-hour job takes minutes, not a
day): the writer commits every 5 simulated seconds (the default ``flush_interval_s``), and every
``--interval`` simulated seconds (default: the default ``checkpoint_interval_s``) the runtime's
copy-back (:class:`aetherium_hpc.store.backup.CopyBack`) brings the run-directory copy up to
date, as ``NodeSession.checkpoint`` does; the final copy follows ``shutdown_db``.

Measured, with a baseline from the same run:

* bytes the process passed to ``write()`` while copying (``wchar`` of ``/proc/self/io``: the copy
  and its rollback journal; the node writer is idle meanwhile) ÷ the node database's final size
  -- its own growth over the job. Target <= 2x. Beside it: what a full copy at every checkpoint
  (the previous design) would have written, the sum of the database's sizes at those moments.
* thread CPU of one checkpoint during the last simulated hour (median) ÷ the thread CPU of a
  full copy of the final database with SQLite's backup API (median of ``--repeat``). Target <= 0.1x.

    python bench/copyback.py [--hours 24] [--interval 30] [--repeat 3]
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
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aetherium_hpc as ah  # noqa: E402
from aetherium_hpc.config import Monitoring  # noqa: E402
from aetherium_hpc.store.backup import CopyBack  # noqa: E402
from aetherium_hpc.store.client import log_resource_samples  # noqa: E402
from bench.storage import metric_specs, value  # noqa: E402

T0 = 1_790_000_000.0
FLUSH_EVERY_S = 5
GENERATION_EVERY_S = 20
TRAINING_EVERY_S = 60


def wchar() -> int:
    """Bytes this process has passed to write()/pwrite() so far."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def measure(hours: float = 24.0, interval: float | None = None, repeat: int = 3, log: Any = None) -> dict[str, Any]:
    """Run the simulated job once (its figures do not vary much), then the backup-API baseline ``repeat`` times."""
    interval = interval or Monitoring().checkpoint_interval_s
    seconds = int(hours * 3600)
    step = int(interval)
    specs = metric_specs()
    rnd = random.Random(7)
    out: dict[str, Any] = {"hours": hours, "interval": interval, "metrics": len(specs)}
    with tempfile.TemporaryDirectory() as d:
        node, dest = os.path.join(d, "node", "metrics.db"), os.path.join(d, "run", "db", "n1.db")
        os.makedirs(os.path.dirname(node))
        store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, socket_dir=d)
        copier = CopyBack(node, dest)
        written: list[int] = []  # bytes per checkpoint
        cpu: list[tuple[float, float]] = []  # (simulated hour, thread CPU seconds)
        full_equiv = 0  # sum of the node database's sizes at each checkpoint
        kinds: dict[str, int] = {}
        started = time.perf_counter()
        for k in range(seconds):
            ts = T0 + k + rnd.random() * 0.003
            log_resource_samples([(t, n, value((t, n, u, dv), k, rnd), u, dv) for (t, n, u, dv) in specs], timestamp=ts)
            if k % GENERATION_EVERY_S == 0:
                ah.log_data_generation_complete(ts - 12.5, "signal_injection", 5000, k // 3600, k // GENERATION_EVERY_S,
                                                memory_used_mb=812.5)  # fmt: skip
            if k % TRAINING_EVERY_S == 0:
                for name in ("loss", "val_loss", "accuracy", "lr"):
                    ah.log_training_epoch_metric(name, rnd.random(), k // 3600, k // TRAINING_EVERY_S, "train")
            if k % FLUSH_EVERY_S == FLUSH_EVERY_S - 1:
                store.flush()
            if k % step == step - 1:
                store.flush()
                full_equiv += os.path.getsize(node)  # what a full copy would write (the WAL is checkpointed in)
                w0, c0 = wchar(), time.thread_time()
                res = copier.copy()
                cpu.append((k / 3600, time.thread_time() - c0))
                written.append(wchar() - w0)
                kinds[res.kind] = kinds.get(res.kind, 0) + 1
            if log is not None and k % 21600 == 21599:
                log(f"  simulated {k / 3600:.0f} h in {time.perf_counter() - started:.0f} s")
        ah.shutdown_db()
        node_size = os.path.getsize(node)
        w0, c0 = wchar(), time.thread_time()
        res = copier.copy(final=True)
        final_cpu = time.thread_time() - c0
        written.append(wchar() - w0)
        kinds[res.kind] = kinds.get(res.kind, 0) + 1
        dest_size = os.path.getsize(dest)
        out["agree"] = _same_content(node, dest)
        # Baseline: full backup-API copies of the final database (the previous copy-back).
        base_cpu, base_bytes = [], []
        for r in range(repeat):
            target = os.path.join(d, f"full{r}.db")
            w0, c0 = wchar(), time.thread_time()
            src = sqlite3.connect(f"file:{node}?mode=ro", uri=True)
            dst = sqlite3.connect(target)
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.close()
            src.close()
            base_cpu.append(time.thread_time() - c0)
            base_bytes.append(wchar() - w0)
            os.unlink(target)
    last_hour = [c for h, c in cpu if h >= hours - 1] or [c for _, c in cpu]
    out.update(
        samples=seconds * len(specs), node_size=node_size, dest_size=dest_size, written=sum(written),
        checkpoints=len(written) - 1, kinds=kinds, full_equiv=full_equiv + node_size,
        cpu_last_hour=statistics.median(last_hour), cpu_max=max(c for _, c in cpu), final_cpu=final_cpu,
        base_cpu=base_cpu, base_bytes=base_bytes, seconds=time.perf_counter() - started,
        per_checkpoint=statistics.median(written[:-1]),
    )  # fmt: skip
    return out


def _same_content(a: str, b: str) -> bool:
    """Both databases answer the four views alike: per series the count, and exact integer sums
    of the values (x 1000) and of the timestamps in ms; the other views row by row."""
    queries = (
        "SELECT metric_type, metric_name, device, count(*), sum(CAST(round(value * 1000) AS INTEGER)),"
        " sum(CAST(round(timestamp * 1000) AS INTEGER)), min(timestamp) FROM resource_metrics"
        " GROUP BY metric_type, metric_name, device ORDER BY 1, 2, 3",
        "SELECT * FROM generation_metrics ORDER BY timestamp, chunk_number",
        "SELECT * FROM training_metrics ORDER BY timestamp, metric_name",
        "SELECT * FROM jobs",
    )
    results = []
    for path in (a, b):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        results.append([conn.execute(q).fetchall() for q in queries])
        conn.close()
    return results[0] == results[1]


def report(m: dict[str, Any]) -> list[str]:
    mib = 2**20
    base = statistics.median(m["base_cpu"])
    return [
        f"simulated job: {m['hours']:g} h x {m['metrics']} metrics x 1 Hz ({m['samples'] / 1e6:.2f}M samples), "
        f"checkpoint every {m['interval']:g} s: {m['checkpoints']} checkpoints + the final copy "
        f"({', '.join(f'{v} {k}' for k, v in m['kinds'].items())}), simulated in {m['seconds']:.0f} s; SQLite {sqlite3.sqlite_version}",
        f"node database: {m['node_size'] / mib:.1f} MiB; run-directory copy: {m['dest_size'] / mib:.1f} MiB; "
        f"content of the four views agrees: {m['agree']}",
        f"bytes written to the run directory: {m['written'] / mib:.1f} MiB = {m['written'] / m['node_size']:.2f}x the "
        f"database's growth (target <= 2x; {m['written'] / m['dest_size']:.2f}x the copy's own size); "
        f"{m['per_checkpoint'] / 1024:.1f} KiB per checkpoint (median)",
        f"  a full copy at every checkpoint would write {m['full_equiv'] / mib:,.0f} MiB = "
        f"{m['full_equiv'] / m['node_size']:.0f}x the growth",
        f"CPU per checkpoint in the last simulated hour: {m['cpu_last_hour'] * 1000:.2f} ms (median; max over the job "
        f"{m['cpu_max'] * 1000:.1f} ms) vs a backup-API copy of the final database {base * 1000:.1f} ms "
        f"(median of {len(m['base_cpu'])}): {m['cpu_last_hour'] / base:.3f}x (target <= 0.1x)",
        f"final copy (after shutdown_db): {m['final_cpu'] * 1000:.1f} ms CPU = {m['final_cpu'] / base:.2f}x the backup-API copy",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--interval", type=float, default=None, help="checkpoint interval, s [the config default]")
    ap.add_argument("--repeat", type=int, default=3, help="backup-API baseline copies [3]")
    a = ap.parse_args()
    m = measure(a.hours, a.interval, a.repeat, log=print)
    for line in report(m):
        print(line)


if __name__ == "__main__":
    main()
