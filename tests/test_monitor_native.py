"""The monitor's tick in a native thread (monitors/_ticker.c, monitors/native.py).

Real store, real /proc, real child processes and the real native thread; every tree rule is
checked on both paths (native and Python) with the same assertions. In CI the extension must be
built (``pip install -e .`` compiles it): a missing one fails here instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from monitor_helpers import parent_with_grandchild, python, wait_for, wait_ticks

from aetherium_hpc import init_db, shutdown_db
from aetherium_hpc.env import NATIVE_TICK
from aetherium_hpc.monitors import ResourceMonitor, native
from aetherium_hpc.store.client import MetricsStore

if native.UNAVAILABLE is not None:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must build the native ticker: {native.UNAVAILABLE}")
    pytest.skip(native.UNAVAILABLE, allow_module_level=True)

from aetherium_hpc.monitors._ticker import Ticker  # noqa: E402

PATHS = pytest.mark.parametrize("use_native", [True, False], ids=["native", "python"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    db = init_db(tmp_path / "m.db", flush_interval=0.2)
    yield db
    shutdown_db()


def devices_since(store: MetricsStore, ts: float) -> set[str]:
    store.flush()
    return {r["device"] for r in store.query_resource_metrics(metric_type="process", since=ts)}


def has(pid: int, devices: set[str]) -> bool:
    return any(d.startswith(f"{pid}:") for d in devices)


def start(use_native: bool, **kwargs: Any) -> ResourceMonitor:
    monitor = ResourceMonitor(0.05, gpu=False, native=use_native, **kwargs).start()
    wait_for(lambda: monitor.samples_taken >= 1, what="the first tick")
    assert monitor.native is use_native, monitor.native_off
    return monitor


@PATHS
def test_the_tree_follows_workers_that_start_and_end(
    store: MetricsStore, children: list[subprocess.Popen[bytes]], use_native: bool
) -> None:
    monitor = start(use_native)
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


@PATHS
def test_a_process_that_leaves_the_tree_alive_is_dropped_with_its_descendants(
    store: MetricsStore, children: list[subprocess.Popen[bytes]], use_native: bool
) -> None:
    parent, grandchild = parent_with_grandchild(children)
    assert parent.stdin is not None
    monitor = start(use_native)
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


@PATHS
def test_a_root_that_ends_leaves_a_monitor_that_goes_on(
    store: MetricsStore, children: list[subprocess.Popen[bytes]], use_native: bool, caplog: pytest.LogCaptureFixture
) -> None:
    root = subprocess.Popen(python("import time; time.sleep(0.4)"))
    children.append(root)
    caplog.set_level("INFO", logger="aetherium_hpc")
    monitor = start(use_native, root_pid=root.pid)
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
    rows = store.query_resource_metrics(metric_type="cpu", metric_name="system_total")
    assert len(rows) == summary["samples"] == monitor.samples_taken


def test_the_store_writer_processes_the_ticks_at_its_flush(store: MetricsStore) -> None:
    monitor = start(True)  # default batch (100 ticks of 0.05 s) longer than the store's 0.2 s flush
    try:
        assert monitor._flush_store is store
        # no process_pending(), no recent(): only the writer's timed flushes move ticks to the database
        wait_for(lambda: monitor.samples_taken >= 20, what="20 ticks")
        wait_for(
            lambda: len(store.query_resource_metrics(metric_type="ram", metric_name="system_used")) >= 20,
            what="the writer's flushes to store the first 20 ticks",
        )
    finally:
        summary = monitor.stop()
    assert store.writer.before_flush == []  # stop() removes the hook
    assert summary["tick"] == "native"
    store.flush()
    rows = store.query_resource_metrics(metric_type="ram", metric_name="system_used")
    assert len(rows) == summary["samples"]  # every tick read, once
    cpu = store.query_resource_metrics(metric_type="monitor", metric_name="sample_cpu_ms")
    assert 0.0 < sum(r["value"] for r in cpu) <= monitor.thread_cpu_s * 1000.0 + 1e-6


def test_the_python_tick_is_chosen_with_the_reason(store: MetricsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NATIVE_TICK, "0")
    with ResourceMonitor(0.05, gpu=False) as monitor:
        wait_for(lambda: monitor.samples_taken >= 2, what="2 ticks")
        assert not monitor.native and monitor.native_off == f"{NATIVE_TICK}=0"
    assert monitor.stop()["tick"] == f"python ({NATIVE_TICK}=0)"
    monkeypatch.delenv(NATIVE_TICK)
    with ResourceMonitor(0.05, gpu=False, batch_ticks=1) as monitor:
        wait_for(lambda: monitor.samples_taken >= 2, what="2 ticks")
        assert not monitor.native and "batch_ticks=1" in (monitor.native_off or "")


def test_a_forked_child_never_touches_the_parents_ticker(store: MetricsStore) -> None:
    monitor = start(True)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the monitor samples in Python, the ticker is not its own
            code = 1
            try:
                out = monitor.sample_once()
                code = 0 if any(s[1] == "system_total" for s in out) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_ticks(monitor, 2)  # the parent's ticker goes on
    finally:
        monitor.stop()


def test_the_ticker_records_the_files_and_bounds_what_waits() -> None:
    me = os.getpid()
    ticker = Ticker(0.01, me, [me], [], [], 10, 256, 3)
    ticker.start(time.monotonic())
    wait_for(lambda: ticker.counters()["ticks"] >= 8, what="8 ticks")
    ticker.stop()
    ticker.stop()  # idempotent
    counters = ticker.counters()
    records = ticker.drain()
    assert len(records) == 3 and counters["dropped"] == counters["ticks"] - 3  # the oldest went
    assert ticker.drain() == []
    walls = [r[0] for r in records]
    monos = [r[1] for r in records]
    assert walls == sorted(walls) and monos == sorted(monos) and abs(walls[-1] - time.time()) < 60
    for _, _, stat, meminfo, procs in records:
        assert stat is not None and stat.startswith(b"cpu ")
        assert meminfo is not None and meminfo.startswith(b"MemTotal:")
        mine = dict(procs)  # this process, and the children earlier tests left in it (a forkserver, loky's tracker)
        assert mine[me] is not None and mine[me].startswith(f"{me} (".encode())
        alive = {pid for pid in mine if psutil.pid_exists(pid)}
        assert alive <= {me} | {p.pid for p in psutil.Process().children(recursive=True)}
    assert counters["cpu_s"] > 0.0
    ticker.tick_now()  # in the calling thread, also once stopped
    assert len(ticker.drain()) == 1
    with pytest.raises(ValueError):
        Ticker(0.0, me, [], [], [], 10, 256, 3)


def test_the_ticker_reports_an_ended_process_once_and_never_picks_its_zombie_up_again(
    children: list[subprocess.Popen[bytes]],
) -> None:
    me = os.getpid()
    short = subprocess.Popen(python("import time; time.sleep(60)"))
    children.append(short)
    ticker = Ticker(10.0, me, [me, short.pid], [], [], 0, 256, 64)  # walks at every tick; ticks by tick_now()
    ticker.tick_now()
    assert short.pid in [pid for pid, _ in ticker.drain()[-1][4]]
    os.kill(short.pid, 9)
    wait_for(lambda: psutil.Process(short.pid).status() == psutil.STATUS_ZOMBIE, what="a zombie")
    ticks = []
    for _ in range(4):
        ticker.tick_now()
        ticks.append(dict(ticker.drain()[-1][4]))
    assert ticks[0][short.pid] is None  # reported ended, once
    assert all(short.pid not in procs for procs in ticks[1:])  # walked at every tick, not listed again
    assert all(procs[me] is not None for procs in ticks)


def test_the_ticker_drops_a_process_that_left_the_tree_on_the_tick_it_is_read(
    children: list[subprocess.Popen[bytes]],
) -> None:
    parent, grandchild = parent_with_grandchild(children)
    assert parent.stdin is not None
    me = os.getpid()
    try:
        ticker = Ticker(10.0, me, [me, parent.pid, grandchild], [], [], 10**6, 256, 64)  # walks when a pid is taken
        ticker.tick_now()
        assert {parent.pid, grandchild} <= set(dict(ticker.drain()[-1][4]))
        parent.stdin.close()
        parent.wait()
        wait_for(lambda: psutil.Process(grandchild).ppid() != parent.pid, what="the grandchild to be re-parented")
        # The first tick that reads the grandchild with a parent outside the tree drops it (and its
        # parent, gone): proven on a tick that did not walk; with every tick walking (pids handed
        # out on the node all along) the walk drops it, and the check holds all the same.
        for _ in range(20):
            walks = ticker.counters()["walks"]
            ticker.tick_now()
            procs = dict(ticker.drain()[-1][4])
            assert grandchild not in procs
            if ticker.counters()["walks"] == walks:
                break
        assert me in procs
    finally:
        os.kill(grandchild, 9)
