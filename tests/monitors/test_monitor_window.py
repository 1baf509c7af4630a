"""The last 60 s in memory: the monitor's window, and ``get_db().recent()`` in every process of the node."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import window_child
from procs import read
from testenv import ROOT

import aetherium_hpc as ah
from aetherium_hpc.errors import StoreNotReachableError
from aetherium_hpc.monitors import ResourceMonitor, log_system_resources
from aetherium_hpc.monitors.base import Collector, Sample
from aetherium_hpc.monitors.window import BUCKET_S, RecentWindow
from aetherium_hpc.store import catalogue, client


@pytest.fixture(autouse=True)
def _no_window_of_an_earlier_test() -> Iterator[None]:
    client.set_recent_source(None)  # a monitor of an earlier test leaves its window served
    yield
    client.set_recent_source(None)


def wait_ticks(monitor: ResourceMonitor, n: int) -> None:
    target = monitor.samples_taken + n
    deadline = time.monotonic() + 30
    while monitor.samples_taken < target:
        assert time.monotonic() < deadline, f"no {n} more ticks in 30 s"
        time.sleep(0.02)
    monitor.process_pending()  # the monitor batches ticks: their samples are out when this returns


def wait_stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (SIGSTOP reaches each thread on its own time)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [(Path(f"/proc/{pid}/task") / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for tid in os.listdir(f"/proc/{pid}/task")]  # fmt: skip
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} not stopped after 10 s")


def as_list(recent: dict[tuple[str, str, str], dict[str, Any]]) -> list[list[Any]]:
    return sorted([list(key), value] for key, value in recent.items())


class Ramp(Collector):
    """Two node series (value = tick number, 2 x tick number) and one per "process" while it lives."""

    name = "ramp"

    def __init__(self) -> None:
        self.tick = 0
        self.processes: list[str] = []

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.tick += 1
        out.append(("cpu", "system_total", float(self.tick), "%", ""))
        out.append(("custom", "double", 2.0 * self.tick, "things", ""))
        out.append(("custom", "gap", math.nan, "things", ""))  # NaN: never a measurement
        for device in self.processes:
            out.append(("process", "rss_mb", 100.0, "MB", device))


def synthetic_monitor() -> tuple[ResourceMonitor, Ramp]:
    ramp = Ramp()
    return ResourceMonitor(1.0, collectors=[ramp], sink=lambda s, ts: None, store_getter=None), ramp


def test_the_window_rolls_over_60_s_its_figures_are_exact_and_its_memory_stays_bounded() -> None:
    monitor, ramp = synthetic_monitor()
    t0 = 1_700_000_000.0  # a multiple of the bucket width: bucket k holds ticks 5k+1 .. 5k+5
    ramp.processes = ["11:worker", "12:worker"]
    sizes = []
    for k in range(600):  # ten minutes at 1 Hz
        if k == 100:
            ramp.processes = ["12:worker"]  # process 11 ended
        monitor.sample_once(t0 + k)
        sizes.append(monitor.window.nbytes)
    now = t0 + 599
    recent = monitor.window.summary(60, now=now)
    # The 13 buckets that overlap [now - 60, now]: ticks 536 .. 600 (tick k+1 is at t0 + k).
    ticks = range(536, 601)
    assert recent[("cpu", "system_total", "")] == {
        "avg": sum(ticks) / len(ticks), "max": 600.0, "last": 600.0, "n": 65, "unit": "%"
    }  # fmt: skip
    assert recent[("custom", "double", "")]["avg"] == 2 * sum(ticks) / len(ticks)
    assert recent[("custom", "double", "")]["unit"] == "things"  # a unit the catalogue does not know is kept
    assert ("custom", "gap", "") not in recent
    ours = {key for key in recent if key[0] != "monitor"}  # (the monitor's self-telemetry is in it too)
    assert ours == {("cpu", "system_total", ""), ("custom", "double", ""), ("process", "rss_mb", "12:worker")}
    # A shorter span: the buckets overlapping the last 10 s (tick 600 is at now; buckets of 5 s).
    short = monitor.window.summary(10, now=now)[("cpu", "system_total", "")]
    assert short["n"] == 15 and short["max"] == 600.0 and short["avg"] == sum(range(586, 601)) / 15
    # Bounded: the series of the ended process left after 60 s; nothing grows with the ticks.
    assert len(monitor.window) == 3 + 2
    assert sizes[-1] == sizes[300] and max(sizes[200:]) == sizes[-1]
    assert max(sizes[200:]) < max(sizes[:100])
    # Nothing in the last 60 s once the monitor has been quiet for longer.
    assert monitor.window.summary(60, now=now + 60 + BUCKET_S) == {}


def test_the_run_summary_is_exact_over_buckets_that_left_the_window_and_those_still_in_it() -> None:
    """The end-of-run summary is fed by the window's buckets as they leave it: ten minutes of
    ticks, a process that ended after 100 s (its series pruned from the window), NaN never counted."""
    monitor, ramp = synthetic_monitor()
    t0 = 1_700_000_000.3  # (off the bucket grid)
    ramp.processes = ["11:worker", "12:worker"]
    for k in range(600):
        if k == 100:
            ramp.processes = ["12:worker"]
        monitor.sample_once(t0 + k)
    metrics = monitor.stop()["metrics"]
    ticks = range(1, 601)
    assert metrics["cpu/system_total"] == {"unit": "%", "n": 600, "mean": sum(ticks) / 600, "max": 600.0}
    assert metrics["custom/double"] == {"unit": "things", "n": 600, "mean": sum(ticks) / 300, "max": 1200.0}
    assert "custom/gap" not in metrics  # NaN only
    # per-process rows pooled: 100 ticks of process 11 (pruned from the window long ago), 600 of 12
    assert metrics["process/rss_mb"] == {"unit": "MB", "n": 700, "mean": 100.0, "max": 100.0}
    assert len(monitor.window) < 10  # (the ended process's series is gone from the window)
    # asked again: the same figures (the buckets still in the window are not folded in by asking)
    assert monitor.summary.as_dict(monitor.window.buckets()) == metrics


def test_a_minute_at_a_short_interval_holds_no_more_than_a_minute_at_one_hertz() -> None:
    """The buckets hold sums: memory depends on the series, not on the interval or the run's length."""
    sizes = {}
    for interval in (1.0, 0.05):
        monitor, ramp = synthetic_monitor()
        ramp.processes = [f"{pid}:worker" for pid in range(20)]
        for k in range(int(5 * 60 / interval)):
            monitor.sample_once(1_700_000_000.0 + k * interval)
        sizes[interval] = monitor.window.nbytes
        # now on a bucket boundary: the 60 s before it exactly
        assert monitor.window.summary(60, now=1_700_000_300.0)[("cpu", "system_total", "")]["n"] == round(60 / interval)
    assert sizes[1.0] == sizes[0.05]


def test_a_clock_stepping_back_lands_in_the_current_bucket() -> None:
    window = RecentWindow()
    window.add([("cpu", "system_total", 1.0, "%", "")], 1000.0)
    window.add([("cpu", "system_total", 3.0, "%", "")], 990.0)  # NTP stepped the clock back
    assert window.summary(60, now=1000.0)[("cpu", "system_total", "")] == {
        "avg": 2.0, "max": 3.0, "last": 3.0, "n": 2, "unit": "%"
    }  # fmt: skip


def test_the_owner_reads_the_window_and_it_agrees_with_what_sqlite_holds(db_path: Path) -> None:
    store = ah.init_db(str(db_path), flush_interval=0.2)
    assert store.recent() == {}  # no monitor yet: an empty answer, at once
    monitor = log_system_resources(interval=0.05, gpu=False)
    try:
        wait_ticks(monitor, 8)
        live = store.recent()
        assert live[("cpu", "system_total", "")]["n"] >= 8
    finally:
        monitor.stop()
    recent = store.recent(60)  # the stopped monitor's samples stay until they are 60 s old
    assert set(recent) >= {("cpu", "system_total", ""), ("ram", "system_used", ""), ("monitor", "window_bytes", "")}
    assert ("process", "rss_mb", f"{os.getpid()}:{__import__('psutil').Process().name()}") in recent
    store.flush()
    rows = read(
        db_path,
        "SELECT metric_type, metric_name, device, avg(value), max(value), count(value), unit FROM resource_metrics "
        "WHERE value IS NOT NULL GROUP BY metric_type, metric_name, device",
    )
    # (the store writer's own telemetry is not the monitor's: not in the window)
    stored = {(t, n, d): (a, m, c, u) for t, n, d, a, m, c, u in rows if (t, n) != ("store", "batch_write_ms")}
    assert set(recent) == set(stored)
    for key, figures in recent.items():
        avg, peak, n, unit = stored[key]
        assert figures["n"] == n, key
        assert figures["unit"] == unit == catalogue.spec_of(key[0], key[1]).unit
        assert math.isclose(figures["avg"], float(avg), rel_tol=1e-5, abs_tol=1e-6), (key, figures, avg)  # type: ignore[arg-type]
        assert math.isclose(figures["max"], float(peak), rel_tol=1e-6, abs_tol=1e-6), (key, figures, peak)  # type: ignore[arg-type]
    (last,) = read(
        db_path,
        "SELECT value FROM resource_metrics WHERE metric_type = 'ram' AND metric_name = 'system_used' "
        "ORDER BY timestamp DESC LIMIT 1",
    )[0]
    assert math.isclose(recent[("ram", "system_used", "")]["last"], float(last), rel_tol=1e-6)  # type: ignore[arg-type]
    # The window's memory is in the self-telemetry, and is what the window says it holds.
    assert stored[("monitor", "window_bytes", "")][1] == recent[("monitor", "window_bytes", "")]["max"] > 0
    assert recent[("monitor", "window_bytes", "")]["last"] == monitor.window.nbytes
    with pytest.raises(ValueError, match="0 < seconds <= 60"):
        store.recent(61)


@pytest.mark.parametrize("how", ["fork", "spawn", "fork-pool", "spawn-pool"])
def test_workers_joined_through_the_socket_get_the_owners_answer(db_path: Path, how: str) -> None:
    store = ah.init_db(str(db_path), flush_interval=0.2)
    monitor = log_system_resources(interval=0.05, gpu=False)
    wait_ticks(monitor, 5)
    monitor.stop()  # nothing changes from now on: every process must see the same figures
    owners = as_list(store.recent(30))
    assert owners
    method, _, pool = how.partition("-")
    ctx = mp.get_context(method)
    if pool:
        with ctx.Pool(1) as workers:
            theirs = workers.apply(window_child.recent_here, (30,))
    else:
        queue = ctx.Queue()
        worker = ctx.Process(target=window_child.recent_into, args=(queue, 30))
        worker.start()
        theirs = queue.get(timeout=60)
        worker.join(60)
        assert worker.exitcode == 0
    assert theirs == owners


def test_no_monitor_is_an_empty_answer_in_every_process(db_path: Path) -> None:
    store = ah.init_db(str(db_path))
    assert store.recent() == {}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    worker = ctx.Process(target=window_child.recent_into, args=(queue,))
    worker.start()
    assert queue.get(timeout=60) == []
    worker.join(60)


def test_a_command_under_aetherium_hpc_run_reads_the_node_window(tmp_path: Path) -> None:
    config = tmp_path / "fast.yaml"
    config.write_text('name: window\nworkload: {command: ["true"]}\nmonitoring: {interval_s: 0.05}\n', encoding="utf-8")
    code = (
        "import json, time, aetherium_hpc\n"
        "db = aetherium_hpc.get_db()\n"
        "deadline = time.monotonic() + 30\n"
        "while not db.recent().get(('cpu', 'system_total', ''), {}).get('n', 0) >= 3 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(json.dumps([list(k) + [v] for k, v in db.recent(10).items()]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "run", "--no-gpu", "--config", str(config),
         "--db-dir", str(tmp_path / "db"), "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recent = {tuple(row[:3]): row[3] for row in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert recent[("cpu", "system_total", "")]["n"] >= 3
    assert ("monitor", "window_bytes", "") in recent
    assert any(t == "process" for t, _, _ in recent)  # the runtime's monitor follows the command's tree


def test_a_node_store_that_stops_answering_costs_a_bounded_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "window_child.py"), str(tmp_path / "m.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        for name, value in json.loads(owner.stdout.readline()).items():
            monkeypatch.setenv(name, value)
        store = ah.get_db()
        assert isinstance(store, client.JoinedStore)
        assert store.recent()[("cpu", "system_total", "")]["n"] >= 3
        owner.send_signal(signal.SIGSTOP)
        try:
            wait_stopped(owner.pid)
            started = time.monotonic()
            with pytest.raises(StoreNotReachableError, match="did not answer within 0.5 s"):
                store.recent(timeout=0.5)
            assert time.monotonic() - started < 5.0
            started = time.monotonic()
            ah.log_training_epoch_metric("loss", 1.0, epoch_number=1)  # log calls are not held up
            assert time.monotonic() - started < 1.0
        finally:
            owner.send_signal(signal.SIGCONT)
        assert store.recent()[("cpu", "system_total", "")]["n"] >= 3  # the late answer was dropped
    finally:
        ah.shutdown_db()
        owner.communicate("", timeout=60)
    assert read(tmp_path / "m.db", "SELECT count(*) FROM training_rows") == [(1,)]


@pytest.mark.parametrize("seed", range(12))
def test_a_batch_folded_at_once_is_the_ticks_folded_one_by_one(seed: int) -> None:
    """add_many (the monitor's batch) gives the window, and the run summary fed by it, what add gives
    tick by tick: ticks across bucket boundaries, a clock that steps back, series that come and go
    within a run, a sample named twice in a tick, NaN (never counted), infinities, ints."""
    import random

    rng = random.Random(seed)
    names = [("cpu", "system_total", "%", ""), ("ram", "system_used", "MB", ""), ("custom", "odd", "things", "")]
    names += [("process", "rss_mb", "MB", f"{pid}:worker") for pid in range(3)]
    ticks: list[tuple[float, list[Sample]]] = []
    ts = 1_700_000_000.0 + rng.random() * 5
    for _ in range(rng.randint(1, 120)):
        ts += rng.choice([0.5, 0.5, 0.5, 1.0, 3.0, -7.0])  # (-7: NTP stepped the clock back)
        present = [n for n in names if rng.random() < 0.9] if rng.random() < 0.3 else names
        samples: list[Sample] = []
        for mtype, mname, unit, device in present:
            value = rng.choice([rng.uniform(-50, 100), rng.randint(0, 9), math.nan, math.inf, -math.inf, 1e30])
            samples.append((mtype, mname, value, unit, device))
        if samples and rng.random() < 0.1:
            samples.append(samples[0][:2] + (rng.uniform(0, 1),) + samples[0][3:])  # the same series twice
        ticks.append((ts, samples))
    one_by_one, batched = RecentWindow(), RecentWindow()
    for tick in ticks:
        one_by_one.add(tick[1], tick[0])
    cut = 0
    while cut < len(ticks):  # batches of random sizes, as the monitor hands them
        step = rng.randint(1, 12)
        batched.add_many(ticks[cut : cut + step])
        cut += step
    now = max(t for t, _ in ticks)

    def same(a: float, b: float) -> bool:
        return (a != a and b != b) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3)

    for seconds in (5, 30, 60):
        got, want = batched.summary(seconds, now=now), one_by_one.summary(seconds, now=now)
        assert got.keys() == want.keys()
        for key, figures in want.items():
            assert got[key]["n"] == figures["n"] and got[key]["unit"] == figures["unit"], key
            assert all(same(got[key][f], figures[f]) for f in ("avg", "max", "last")), (key, got[key], figures)
    assert len(batched) == len(one_by_one) and batched.nbytes == one_by_one.nbytes
