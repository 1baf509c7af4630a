"""The sampling loop reads at each tick and processes ticks in batches: nothing is late or lost.

Real store, real /proc, the real loop thread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aetherium_hpc.monitors import PrometheusTextfile, ResourceMonitor
from aetherium_hpc.store.client import MetricsStore


def wait_read(monitor: ResourceMonitor, n: int) -> None:
    deadline = time.monotonic() + 30
    while monitor.samples_taken < n:
        assert time.monotonic() < deadline, f"no {n} ticks in 30 s"
        time.sleep(0.02)


def stored(store: MetricsStore, mtype: str, mname: str) -> list[float]:
    store.flush()
    return [r["value"] for r in store.query_resource_metrics(metric_type=mtype, metric_name=mname)]


def test_ticks_wait_for_their_batch_and_stop_processes_what_is_read(store: MetricsStore) -> None:
    monitor = ResourceMonitor(0.02, gpu=False, batch_ticks=10_000).start()
    try:
        assert len(stored(store, "ram", "system_used")) == 1  # start() processed the first tick at once
        wait_read(monitor, 6)
        # read, not processed: only the first tick in the store, but a recent() query sees every tick read
        assert len(stored(store, "ram", "system_used")) == 1
        seen = monitor.recent(60)[("ram", "system_used", "")]["n"]
        assert seen >= 6
        assert len(stored(store, "ram", "system_used")) == seen  # processing sent them to the store too
    finally:
        summary = monitor.stop()
    # every tick read is in the store, once: the ones stop() processed included
    assert len(stored(store, "ram", "system_used")) == monitor.samples_taken == summary["samples"]
    values = stored(store, "cpu", "system_total")
    assert len(values) == monitor.samples_taken - 1  # the first tick is the CPU baseline
    assert all(0.0 <= v <= 100.0 for v in values)
    assert summary["metrics"]["cpu/system_total"]["n"] == monitor.samples_taken - 1


def test_a_batch_goes_out_every_batch_ticks(store: MetricsStore) -> None:
    monitor = ResourceMonitor(0.02, gpu=False, batch_ticks=4).start()
    try:
        wait_read(monitor, 13)
        n = len(stored(store, "ram", "system_used"))
        taken = monitor.samples_taken
        # the first tick at once, then whole batches only, the last one at most 3 behind
        assert (n - 1) % 4 == 0 and taken - 4 < n <= taken, (n, taken)
    finally:
        monitor.stop()


def test_monitor_rows_come_once_per_batch_at_its_last_tick(store: MetricsStore) -> None:
    monitor = ResourceMonitor(0.02, gpu=False, batch_ticks=5).start()
    try:
        wait_read(monitor, 20)
    finally:
        monitor.stop()
    store.flush()
    ticks = [r["timestamp"] for r in store.query_resource_metrics(metric_type="ram", metric_name="system_used")]
    n = monitor.samples_taken
    assert len(ticks) == n
    # the first tick is processed alone, then whole batches of 5, then what stop() finds (its own tick last)
    batch_ends = sorted({*range(0, n, 5), n - 1})
    for mtype, mname in (("monitor", "sample_cpu_ms"), ("monitor", "window_bytes"), ("store", "queue_depth"),
                         ("store", "dropped")):  # fmt: skip
        rows = store.query_resource_metrics(metric_type=mtype, metric_name=mname)
        assert [ticks.index(r["timestamp"]) for r in rows] == batch_ends, (mtype, mname)
    values = [r["value"] for r in store.query_resource_metrics(metric_type="monitor", metric_name="sample_cpu_ms")]
    assert all(v >= 0.0 for v in values)
    # each row is the thread's CPU per tick over its batch: times the batch's ticks, they add up to the
    # loop thread's CPU time (less its start-up and its last batch)
    sizes = [end - start for start, end in zip([-1, *batch_ends], batch_ends, strict=False)]
    assert 0.0 < sum(v * k for v, k in zip(values, sizes, strict=True)) <= monitor.thread_cpu_s * 1000.0 + 1e-6


def test_batch_size_follows_the_interval_and_is_checked(tmp_path: Path) -> None:
    assert ResourceMonitor(1.0, collectors=[]).batch_ticks == 5  # 5 s of ticks, the store's default flush
    assert ResourceMonitor(0.5, collectors=[]).batch_ticks == 10
    assert ResourceMonitor(30.0, collectors=[]).batch_ticks == 1
    textfile = PrometheusTextfile(str(tmp_path / "x.prom"), {})
    assert ResourceMonitor(0.5, collectors=[], textfile=textfile).batch_ticks == 1  # node_exporter reads each tick
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="batch_ticks"):
            ResourceMonitor(1.0, collectors=[], batch_ticks=bad)  # type: ignore[arg-type]
