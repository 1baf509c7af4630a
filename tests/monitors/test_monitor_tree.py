"""The monitor follows the job's process tree: workers that start, end, turn zombie or leave.

Real store, real /proc, real child processes, the monitor's own thread.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import psutil
import pytest
from monitor_helpers import parent_with_grandchild, python, wait_for, wait_ticks

from aetherium_hpc.monitors import ResourceMonitor
from aetherium_hpc.store import catalogue
from aetherium_hpc.store.client import MetricsStore


def devices_since(store: MetricsStore, ts: float) -> set[str]:
    store.flush()
    return {r["device"] for r in store.query_resource_metrics(metric_type="process", since=ts)}


def has(pid: int, devices: set[str]) -> bool:
    return any(d.startswith(f"{pid}:") for d in devices)


def start(**kwargs: Any) -> ResourceMonitor:
    monitor = ResourceMonitor(0.05, gpu=False, **kwargs).start()
    assert monitor.samples_taken >= 1  # start() returns once the first tick is in
    return monitor


def test_the_tree_follows_workers_that_start_and_end(
    store: MetricsStore, children: list[subprocess.Popen[bytes]]
) -> None:
    monitor = start()
    try:
        busy = subprocess.Popen(python("while True: pass"))
        sleeper = subprocess.Popen(python("import time; time.sleep(60)"))
        short = subprocess.Popen(python("import time; time.sleep(0.3)"))  # a zombie: never reaped here
        children.extend([busy, sleeper, short])
        started = time.time()

        def found() -> bool:
            wait_ticks(monitor, 1)
            return all(has(p.pid, devices_since(store, started)) for p in (busy, sleeper))

        wait_for(found, what="the workers in the tree")
        wait_for(lambda: psutil.Process(short.pid).status() == psutil.STATUS_ZOMBIE, what="the short one to end")
        sleeper.kill()
        sleeper.wait()
        wait_ticks(monitor, 2)  # the tick under way may have read them alive
        after = time.time()
        wait_ticks(monitor, 3)
        later = devices_since(store, after)
        assert has(busy.pid, later)
        assert not has(sleeper.pid, later), "an ended worker is still sampled"
        assert not has(short.pid, later), "a zombie worker is still sampled"
        assert f"{os.getpid()}:{psutil.Process().name()}" in later
        tree = monitor.collectors[1]
        assert busy.pid in tree.pids() and sleeper.pid not in tree.pids()  # type: ignore[attr-defined]
        # the busy worker's CPU, tick by tick, and the tree's covers it
        rows = store.query_resource_metrics(metric_type="process", metric_name="cpu_percent", since=started)
        busy_cpu = {r["timestamp"]: r["value"] for r in rows if r["device"].startswith(f"{busy.pid}:")}
        assert max(busy_cpu.values()) > 30.0, busy_cpu
        cpu_tree = {
            r["timestamp"]: r["value"]
            for r in store.query_resource_metrics(metric_type="cpu", metric_name="process_tree", since=started)
        }
        assert all(cpu_tree[ts] >= v - 1e-6 for ts, v in busy_cpu.items() if ts in cpu_tree)
    finally:
        monitor.stop()


def test_a_process_that_leaves_the_tree_alive_is_dropped_with_its_descendants(
    store: MetricsStore, children: list[subprocess.Popen[bytes]]
) -> None:
    parent, grandchild = parent_with_grandchild(children)
    assert parent.stdin is not None
    monitor = start()
    try:
        tree = monitor.collectors[1]
        wait_for(lambda: (wait_ticks(monitor, 1), grandchild in tree.pids())[1], what="the grandchild in the tree")  # type: ignore[attr-defined]
        parent.stdin.close()
        parent.wait()
        wait_for(lambda: psutil.Process(grandchild).ppid() != parent.pid, what="the grandchild to be re-parented")
        wait_ticks(monitor, 2)
        after = time.time()
        wait_ticks(monitor, 3)
        assert grandchild not in tree.pids() and parent.pid not in tree.pids()  # type: ignore[attr-defined]
        assert not has(grandchild, devices_since(store, after))
        assert os.getpid() in tree.pids()  # type: ignore[attr-defined]
    finally:
        monitor.stop()
        os.kill(grandchild, 9)


def test_a_root_that_ends_leaves_a_monitor_that_goes_on(
    store: MetricsStore, children: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    root = subprocess.Popen(python("import time; time.sleep(0.4)"))
    children.append(root)
    caplog.set_level("INFO", logger="aetherium_hpc")
    monitor = start(root_pid=root.pid)
    try:
        wait_for(lambda: root.poll() is not None, what="the root to end")
        wait_ticks(monitor, 3)
        assert any(f"monitored process {root.pid} has ended" in r.getMessage() for r in caplog.records)
        ticks = monitor.samples_taken
        wait_ticks(monitor, 2)
        assert monitor.samples_taken >= ticks + 2  # still ticking
    finally:
        summary = monitor.stop()
    store.flush()
    rows = store.query_resource_metrics(metric_type="ram", metric_name="system_used")
    assert len(rows) == summary["samples"] == monitor.samples_taken
    # a CPU share needs two readings: every tick but the first has one
    assert len(store.query_resource_metrics(metric_type="cpu", metric_name="system_total")) == len(rows) - 1


def test_a_forked_childs_copy_of_the_monitor_samples_and_the_parents_goes_on(store: MetricsStore) -> None:
    monitor = start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the monitor samples; the loop thread is the parent's
            code = 1
            try:
                out = monitor.sample_once()
                # The node's memory is in every sample; its CPU share is not when no clock tick of
                # the kernel's passed since the parent's last reading (a fork right after a tick).
                used = catalogue.RAM_SYSTEM_USED
                code = 0 if any(s[:2] == (used.metric_type, used.metric_name) for s in out) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_ticks(monitor, 2)  # the parent's loop goes on
    finally:
        monitor.stop()
