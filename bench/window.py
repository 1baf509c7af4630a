"""The monitor's window of the last 60 s (``get_db().recent()``): its memory and its cost per tick.

Real ticks of a 9-process tree (this process + 8 children, as bench/monitor_overhead.py) are
taken once; a fresh :class:`RecentWindow` is then fed them at simulated 1-Hz timestamps
(``--ticks`` of them, so the buckets roll over and series age out as in a job) and
``time.thread_time`` measures the CPU of ``RecentWindow.add`` per tick. Memory is what the
window says it holds (``nbytes``: array, index, key tuples; the ``monitor/window_bytes``
metric) and what tracemalloc saw it allocate, after more than 60 s of ticks.

    python bench/window.py [--ticks 3000] [--children 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc.monitors import ResourceMonitor  # noqa: E402
from aetherium_hpc.monitors.base import Sample  # noqa: E402
from aetherium_hpc.monitors.host import HostCollector, ProcessTreeCollector  # noqa: E402
from aetherium_hpc.monitors.window import RecentWindow  # noqa: E402

T0 = 1_700_000_000.0


def real_ticks(n: int = 20, spacing: float = 0.02) -> tuple[list[list[Sample]], float]:
    """``n`` ticks of the monitor over this process's tree, and the median CPU ms of a tick."""
    monitor = ResourceMonitor(
        collectors=[HostCollector(), ProcessTreeCollector(os.getpid())], sink=lambda s, ts: None, store_getter=None
    )
    for collector in monitor.collectors:
        collector.start()
    monitor.sample_once()
    ticks: list[list[Sample]] = []
    costs: list[float] = []
    for _ in range(n):
        time.sleep(spacing)
        start = time.thread_time()
        ticks.append(monitor.sample_once())
        costs.append((time.thread_time() - start) * 1000.0)
    for collector in monitor.collectors:
        collector.close()
    return ticks, statistics.median(costs)


def measure(ticks: list[list[Sample]], n: int) -> dict[str, Any]:
    """CPU µs per ``add`` over ``n`` ticks at 1 Hz, and the window's memory at the end."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    window = RecentWindow()
    for i in range(120):  # two minutes: every bucket in use, then rolled over
        window.add(ticks[i % len(ticks)], T0 + i)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    add = window.add
    start = time.thread_time()
    for i in range(120, 120 + n):
        add(ticks[i % len(ticks)], T0 + i)
    per_tick_us = (time.thread_time() - start) / n * 1e6
    return {"us": per_tick_us, "bytes": window.nbytes, "traced": traced, "series": len(window)}


def main() -> int:
    from bench.monitor_overhead import process_tree

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=3000, help="simulated 1-Hz ticks per run (default 3000)")
    parser.add_argument("--children", type=int, default=8, help="child processes (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    args = parser.parse_args()
    with process_tree(args.children):
        ticks, tick_ms = real_ticks()
    runs = [measure(ticks, args.ticks) for _ in range(args.repeat)]
    us = [r["us"] for r in runs]
    print(f"{len(ticks[0])} samples a tick, {runs[0]['series']} series in the window")
    print(f"RecentWindow.add per tick: median {statistics.median(us):.2f} µs ({min(us):.2f}-{max(us):.2f}); "
          f"the tick itself (sample_once): {tick_ms:.3f} ms")  # fmt: skip
    print(f"memory: {runs[0]['bytes']:,} B (nbytes), {runs[0]['traced']:,} B allocated (tracemalloc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
