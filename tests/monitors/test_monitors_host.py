"""Host and process-tree monitors on real psutil, real processes and a real store."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from monitor_helpers import parent_with_grandchild, python, wait_for, wait_ticks
from testenv import ROOT

from aetherium_hpc import shutdown_db
from aetherium_hpc.monitors import Collector, ResourceMonitor, host, log_system_resources, procfs
from aetherium_hpc.monitors.base import Sample
from aetherium_hpc.monitors.gpu import NvmlUnavailable, _load_nvml
from aetherium_hpc.monitors.host import HostCollector, ProcessTreeCollector
from aetherium_hpc.store import catalogue as units
from aetherium_hpc.store import process
from aetherium_hpc.store.client import MetricsStore

NCPU = psutil.cpu_count() or 1
DOCS = ROOT / "docs" / "METRICS.md"


def test_host_metrics_names_units_and_ranges(store: MetricsStore, tmp_path: Path) -> None:
    monitor = log_system_resources(tmp_path / "summary.json", interval=0.05, gpu=False)
    try:
        wait_ticks(monitor, 5)
    finally:
        monitor.stop()
    rows = store.query_resource_metrics()
    by_metric: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_metric.setdefault((row["metric_type"], row["metric_name"]), []).append(row)
    expected = {
        ("cpu", "system_total"), ("cpu", "process_tree"), ("ram", "system_used"), ("ram", "system_percent"),
        ("ram", "process_tree_rss"), ("process", "cpu_percent"), ("process", "rss_mb"),
        ("monitor", "sample_cpu_ms"), ("store", "queue_depth"), ("store", "dropped"),
    }  # fmt: skip
    assert expected <= set(by_metric)
    for (mtype, mname), metric_rows in by_metric.items():
        spec = units.spec_of(mtype, mname)
        assert {r["unit"] for r in metric_rows} == {spec.unit}, (mtype, mname)
        assert all(r["value"] is not None and math.isfinite(r["value"]) for r in metric_rows)
    values = {k: [r["value"] for r in v] for k, v in by_metric.items()}
    assert all(0.0 <= v <= 100.0 for v in values["cpu", "system_total"])
    assert all(0.0 <= v <= 100.0 for v in values["ram", "system_percent"])
    assert all(0.0 <= v <= 100.0 * NCPU * 1.05 for v in values["cpu", "process_tree"])
    assert all(0.0 <= v <= 100.0 * NCPU * 1.05 for v in values["process", "cpu_percent"])
    total_mb = psutil.virtual_memory().total / 2**20
    assert all(0.0 < v <= total_mb for v in values["ram", "system_used"])
    assert all(0.0 < v <= total_mb for v in values["ram", "process_tree_rss"])
    assert all(v > 0.0 for v in values["process", "rss_mb"])
    assert all(v >= 0.0 for v in values["monitor", "sample_cpu_ms"])
    assert all(v >= 0.0 for v in values["store", "queue_depth"] + values["store", "dropped"])
    # This process, plus whatever children earlier tests left running in it (e.g. a forkserver):
    # every row names a process of this tree, as "<pid>:<name>".
    devices = {r["device"] for r in by_metric["process", "rss_mb"]}
    assert f"{os.getpid()}:{psutil.Process().name()}" in devices
    tree = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
    assert all(int(d.split(":", 1)[0]) in tree for d in devices), (devices, tree)
    assert {r["device"] for r in by_metric["cpu", "system_total"]} == {""}


@pytest.mark.parametrize("read_proc", [True, False], ids=["proc-stat", "psutil-oneshot"])
def test_tree_follows_workers_that_start_and_end(
    store: MetricsStore, children: list[subprocess.Popen[bytes]], read_proc: bool
) -> None:
    monitor = ResourceMonitor(0.05, collectors=[ProcessTreeCollector(read_proc=read_proc)]).start()
    try:
        wait_ticks(monitor, 2)
        busy = subprocess.Popen(python("while True: pass"))
        sleeper = subprocess.Popen(python("import time; time.sleep(60)"))
        short = subprocess.Popen(python("import time; time.sleep(0.5)"))  # becomes a zombie: never reaped here
        children.extend([busy, sleeper, short])

        def devices_since(ts: float) -> set[str]:
            return {r["device"] for r in store.query_resource_metrics(metric_type="process", since=ts)}

        def has(proc: subprocess.Popen[bytes], devices: set[str]) -> bool:
            return any(d.startswith(f"{proc.pid}:") for d in devices)

        started = time.time()
        wait_for(lambda: all(has(p, devices_since(started)) for p in (busy, sleeper)), what="workers in the tree")
        wait_for(lambda: psutil.Process(short.pid).status() == psutil.STATUS_ZOMBIE, what="the short worker to end")
        sleeper.kill()
        sleeper.wait()
        wait_ticks(monitor, 1)  # the tick under way may have read them still alive
        after = time.time()
        wait_ticks(monitor, 3)
        later = devices_since(after)
        assert has(busy, later)
        assert not has(sleeper, later), "an ended worker is still sampled"
        assert not has(short, later), "a zombie worker is still sampled"
        assert f"{os.getpid()}:{psutil.Process().name()}" in later
        # The tree's CPU covers the busy worker's, tick by tick.
        rows = store.query_resource_metrics(metric_type="process", metric_name="cpu_percent", since=started)
        busy_cpu = {r["timestamp"]: r["value"] for r in rows if r["device"].startswith(f"{busy.pid}:")}
        assert any(v > 0.0 for v in busy_cpu.values())
        tree = {r["timestamp"]: r["value"] for r in store.query_resource_metrics(metric_name="process_tree", since=started)
                if r["metric_type"] == "cpu"}  # fmt: skip
        assert all(tree[ts] >= v - 1e-6 for ts, v in busy_cpu.items() if ts in tree)
    finally:
        monitor.stop()


class _SlowCollector(Collector):
    """Takes ``seconds`` per sample: a loop that sleeps a fixed interval after its work would drift."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.monitor: ResourceMonitor | None = None
        self.seen: list[tuple[float, int]] = []  # (tick timestamp, ticks skipped so far)
        self.stall_at: dict[int, float] = {}  # tick number -> seconds it takes instead

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.seen.append((timestamp, self.monitor.missed_ticks if self.monitor else 0))
        time.sleep(self.stall_at.get(len(self.seen) - 1, self.seconds))


def test_loop_does_not_drift(store: MetricsStore) -> None:
    interval = 0.05
    slow = _SlowCollector(0.012)
    monitor = ResourceMonitor(interval, collectors=[HostCollector(), slow])
    slow.monitor = monitor
    with monitor:
        wait_for(lambda: len(slow.seen) >= 20, what="20 ticks")
    stamps = [r["timestamp"] for r in store.query_resource_metrics("ram", "system_used")][:20]
    assert stamps == pytest.approx([t for t, _ in slow.seen[:20]], abs=0.002)  # the store keeps ms
    skipped = slow.seen[19][1] - slow.seen[0][1]  # ticks the loop skipped because one ran late
    slots = [(t - stamps[0]) / interval for t in stamps]
    # Ticks stay on the grid start + k x interval: with 12 ms of work each, 20 ticks span
    # 19 intervals (plus any skipped), where a sleep-after-work loop would span 19 x 62 ms.
    assert round(slots[-1]) == 19 + skipped, slots
    assert sorted(abs(s - round(s)) for s in slots)[10] < 0.2, slots  # median lateness, loosely
    assert all(b > a for a, b in zip(slots, slots[1:], strict=False))


def test_a_late_tick_skips_missed_ticks_instead_of_bunching(store: MetricsStore) -> None:
    interval = 0.05
    slow = _SlowCollector(0.0)
    monitor = ResourceMonitor(interval, collectors=[slow])
    slow.monitor = monitor
    slow.stall_at = {3: 0.13}  # tick 3 takes 2.6 intervals
    with monitor:
        wait_for(lambda: len(slow.seen) >= 8, what="8 ticks")
    stamps = [t for t, _ in slow.seen[:8]]
    gaps = [(b - a) / interval for a, b in zip(stamps, stamps[1:], strict=False)]
    assert monitor.missed_ticks >= 2
    assert min(gaps) > 0.5, gaps  # no catch-up burst after the stall
    assert round(gaps[3]) == 1 + slow.seen[4][1] - slow.seen[3][1], gaps  # resumes on the grid


def test_stop_returns_promptly_is_idempotent_and_writes_the_summary(store: MetricsStore, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    monitor = ResourceMonitor(30.0, gpu=False, output_path=out).start()
    time.sleep(0.2)  # the thread is in its 30 s wait
    began = time.monotonic()
    summary = monitor.stop()
    assert time.monotonic() - began < 5.0  # far less than one interval
    assert not monitor.running
    assert monitor.stop() == summary
    on_disk = json.loads(out.read_text())
    # Stopped before its second tick: the first (taken by start()) and the closing one, no more.
    assert on_disk["samples"] == 2 and on_disk["interval_s"] == 30.0
    assert on_disk["duration_s"] > 0


def test_context_manager_and_summary_contents(store: MetricsStore, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    with ResourceMonitor(0.05, gpu=False, output_path=out) as monitor:
        wait_ticks(monitor, 3)
    summary = json.loads(out.read_text())
    assert summary["samples"] >= 3
    assert summary["duration_s"] > 0 and summary["monitor_cpu_s"] >= 0
    cpu = summary["metrics"]["cpu/process_tree"]
    assert cpu["unit"] == "%" and 0 <= cpu["mean"] <= cpu["max"]
    assert summary["metrics"]["ram/process_tree_rss"]["max"] > 0
    assert summary["metrics"]["process/rss_mb"]["n"] >= 3


def test_no_gpu_here_gives_one_info_line(
    store: MetricsStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.suppress(NvmlUnavailable):
        _load_nvml().nvmlShutdown()
        pytest.skip("this machine has a working NVML")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # GPUs asked for: a node without them says so
    caplog.set_level(logging.INFO, logger="aetherium_hpc.monitors")
    monitor = log_system_resources(interval=0.05, gpu=True)
    try:
        wait_ticks(monitor, 3)
        assert monitor.running
    finally:
        monitor.stop()
    lines = [r for r in caplog.records if r.name.startswith("aetherium_hpc.monitors") and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "GPU metrics skipped" in lines[0].getMessage()
    assert store.query_resource_metrics(metric_type="cpu")
    assert not store.query_resource_metrics(metric_type="gpu")


def test_failing_collector_is_reported_once_and_the_rest_goes_on(
    store: MetricsStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Collector):
        name = "broken"

        def collect(self, out: list[Sample], timestamp: float) -> None:
            raise RuntimeError("boom")

    monitor = ResourceMonitor(0.05, collectors=[Broken(), HostCollector()]).start()
    try:
        wait_ticks(monitor, 3)
    finally:
        monitor.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "broken" in r.getMessage()]
    assert len(warnings) == 1
    assert len(store.query_resource_metrics("cpu", "system_total")) >= 3


def test_one_monitor_per_process(store: MetricsStore) -> None:
    first = log_system_resources(interval=0.5, gpu=False)
    try:
        assert log_system_resources(interval=0.5, gpu=False) is first
    finally:
        first.stop()
    second = log_system_resources(interval=0.5, gpu=False)
    assert second is not first
    second.stop()


def test_without_a_store_the_monitor_warns_once_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdown_db()
    monkeypatch.setattr(process, "_warned_uninitialized", False)  # an earlier test may have had the warning
    with pytest.warns(RuntimeWarning, match="Metrics database not initialized"):
        with ResourceMonitor(0.05, gpu=False) as monitor:
            wait_ticks(monitor, 3)
    assert monitor.samples_taken >= 3


@pytest.mark.parametrize("read_proc", [True, False], ids=["proc-stat", "psutil-oneshot"])
def test_tree_collector_alone_counts_a_new_workers_cpu_from_its_birth(
    children: list[subprocess.Popen[bytes]], read_proc: bool
) -> None:
    tree = ProcessTreeCollector(read_proc=read_proc)
    tree.start()
    busy = subprocess.Popen(python("import time\nt = time.time()\nwhile time.time() - t < 0.3: pass\ntime.sleep(60)"))
    children.append(busy)
    time.sleep(0.5)
    out: list[Sample] = []
    tree.collect(out, time.time())
    mine = [s for s in out if s[4].startswith(f"{busy.pid}:")]
    assert {s[1] for s in mine} == {"cpu_percent", "rss_mb"}  # no baseline needed: born in this interval
    assert busy.pid in tree.pids()


def test_the_tree_walk_is_skipped_only_while_no_pid_is_handed_out(children: list[subprocess.Popen[bytes]]) -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc children files here: psutil walks the tree every tick")
    tree = ProcessTreeCollector(read_proc=True)
    tree.start()
    try:
        assert tree._loadavg_fd >= 0, "/proc/loadavg tells when a walk can find something new"
        # Never more than WALK_EVERY_TICKS ticks in a row without a walk, whatever the node does.
        skipped = 0
        for _ in range(3 * host.WALK_EVERY_TICKS):
            skipped = 0 if tree._walk_due() else skipped + 1
            assert skipped <= host.WALK_EVERY_TICKS
        # A process started since the last tick takes a pid: the next tick walks and finds it.
        tree._walk_due()  # catch up with the pids other work on the node has taken
        sleeper = subprocess.Popen(python("import time; time.sleep(60)"))
        children.append(sleeper)
        out: list[Sample] = []
        tree.collect(out, time.time())
        assert sleeper.pid in tree.pids()
        assert any(s[4].startswith(f"{sleeper.pid}:") for s in out)
    finally:
        tree.close()


def test_a_process_that_leaves_the_tree_alive_is_dropped_at_once_without_a_walk(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc children files here: psutil walks the tree every tick")
    # A worker starts a grandchild and ends: the grandchild is re-parented to init and leaves the tree.
    parent, grandchild = parent_with_grandchild(children)
    assert parent.stdin is not None
    try:
        tree = ProcessTreeCollector(read_proc=True)
        tree.start()
        wait_for(lambda: psutil.Process(grandchild).ppid() == parent.pid, what="the grandchild to start")
        tree.collect([], time.time())
        assert {parent.pid, grandchild} <= set(tree.pids())
        parent.stdin.close()
        parent.wait()
        wait_for(lambda: psutil.Process(grandchild).ppid() != parent.pid, what="the grandchild to be re-parented")
        monkeypatch.setattr(tree, "_walk_due", lambda: False)  # no pid handed out since: no walk due
        out: list[Sample] = []
        tree.collect(out, time.time())
        assert parent.pid not in tree.pids() and grandchild not in tree.pids()
        assert not any(s[4].startswith((f"{parent.pid}:", f"{grandchild}:")) for s in out)
        assert os.getpid() in tree.pids()
        tree.close()
    finally:
        os.kill(grandchild, 9)


def test_host_figures_from_proc_agree_with_psutil() -> None:
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc here: psutil is the only path")
    fast = HostCollector(read_proc=True)
    fast.start()
    assert fast._stat_fd >= 0, "the /proc path is in use"
    first: list[Sample] = []
    fast.collect(first, time.time())
    assert [s[:2] for s in first] == [("ram", "system_used"), ("ram", "system_percent")]  # the CPU baseline
    time.sleep(0.3)
    psutil.cpu_percent(None)
    out: list[Sample] = []
    fast.collect(out, time.time())
    vm = psutil.virtual_memory()
    values = {s[1]: s[2] for s in out}
    assert [s[:2] for s in out] == [("cpu", "system_total"), ("ram", "system_used"), ("ram", "system_percent")]
    assert 0.0 <= values["system_total"] <= 100.0
    assert values["system_used"] == pytest.approx(vm.used / 2**20, rel=0.05)
    assert values["system_percent"] == pytest.approx(vm.percent, abs=2.0)
    assert all(type(s[2]) is float for s in out)
    fast.close()


def test_proc_stat_reading_agrees_with_psutil() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here: psutil is the only path")
    fast, slow = ProcessTreeCollector(read_proc=True), ProcessTreeCollector(read_proc=False)
    for collector in (fast, slow):
        collector.start()
    me = fast._procs[os.getpid()], slow._procs[os.getpid()]
    stat_line = fast._read(me[0])
    assert isinstance(stat_line, bytes)
    (cpu_fast, rss_fast, ppid_fast, threads_fast), (cpu_slow, rss_slow, ppid_slow, threads_slow) = (
        procfs.parse_stat(stat_line) or (0, 0, 0, 0),
        slow._read(me[1]) or (0, 0, 0, 0),
    )
    assert cpu_fast == pytest.approx(cpu_slow, abs=0.05)
    assert rss_fast == pytest.approx(rss_slow, rel=0.1)
    assert ppid_fast == ppid_slow == os.getppid()
    assert threads_fast == threads_slow >= 1


def test_docs_table_lists_every_metric() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\|\s*`?(\w+)`?\s*\|\s*`?(\w+)`?\s*\|\s*`?([^|`]*?)`?\s*\|", text, re.M))
    for spec in units.METRICS:
        assert (spec.metric_type, spec.metric_name, spec.unit) in rows, f"{spec} missing from {DOCS}"


@pytest.mark.parametrize("form", ["existing folder", "path ending in a separator"])
def test_an_output_folder_gets_the_summary_inside_it(
    store: MetricsStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, form: str
) -> None:
    # The original pipeline calls log_system_resources(output_dir) with its output folder.
    from aetherium_hpc.monitors.summary import SUMMARY_FILE_NAME

    folder = tmp_path / "outputs"
    if form == "existing folder":
        folder.mkdir()
        arg = str(folder)
    else:
        arg = str(folder) + os.sep
    caplog.set_level(logging.WARNING, logger="aetherium_hpc")
    monitor = log_system_resources(arg, interval=0.05, gpu=False)
    try:
        wait_ticks(monitor, 2)
    finally:
        summary = monitor.stop()
    on_disk = json.loads((folder / SUMMARY_FILE_NAME).read_text())
    assert on_disk["samples"] == summary["samples"] >= 2
    assert on_disk["metrics"].keys() == summary["metrics"].keys()
    assert [p.name for p in folder.iterdir()] == [SUMMARY_FILE_NAME], "no temporary file left behind"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert SUMMARY_FILE_NAME in DOCS.read_text(encoding="utf-8")


def test_the_summary_never_writes_through_a_link_planted_in_its_folder(tmp_path: Path) -> None:
    # A shared output folder: someone plants links at the summary's name and at the old
    # predictable temporary name (<path>.tmp<pid>); neither target may change.
    from aetherium_hpc.monitors.summary import SUMMARY_FILE_NAME, write_summary

    folder = tmp_path / "shared"
    folder.mkdir()
    victims = [tmp_path / "victim1", tmp_path / "victim2"]
    for victim in victims:
        victim.write_text("keep me\n")
    (folder / SUMMARY_FILE_NAME).symlink_to(victims[0])
    (folder / f"{SUMMARY_FILE_NAME}.tmp{os.getpid()}").symlink_to(victims[1])
    write_summary(str(folder), {"samples": 3, "metrics": {}})
    assert [v.read_text() for v in victims] == ["keep me\n", "keep me\n"]
    written = folder / SUMMARY_FILE_NAME
    assert not written.is_symlink() and json.loads(written.read_text()) == {"samples": 3, "metrics": {}}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [SUMMARY_FILE_NAME, f"{SUMMARY_FILE_NAME}.tmp{os.getpid()}"]
    )


def test_a_file_output_path_is_written_as_given_and_an_unwritable_one_leaves_nothing(
    store: MetricsStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run1.json"
    ResourceMonitor(30.0, gpu=False, output_path=out).start().stop()
    assert json.loads(out.read_text())["samples"] == 1
    caplog.set_level(logging.WARNING, logger="aetherium_hpc")
    missing = tmp_path / "no-such-folder" / "s.json"
    ResourceMonitor(30.0, gpu=False, output_path=missing).start().stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(missing) in warnings[0], warnings
    assert not (tmp_path / "no-such-folder").exists()
    assert not list(tmp_path.rglob("*.tmp*")), "no temporary file left behind"
