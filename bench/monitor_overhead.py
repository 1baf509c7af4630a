"""CPU cost of one resource sample: the monitor vs a naive psutil loop, measured in the same run.

Also: the cost of ``monitoring.prometheus_textfile`` (the same monitor with and without
the node_exporter textfile it rewrites each tick, interleaved), without GPUs and with 8 fake ones.

A 9-process tree (this process + 8 children, half sleeping, half lightly busy) is
sampled ``--samples`` times by each side, interleaved, with ``time.thread_time``
around each sample (CPU time of the sampling thread only). Then the real monitor
runs at 1 Hz for ``--live`` seconds into a real store and reports its own cost.

    python bench/monitor_overhead.py [--samples 300] [--children 8] [--live 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc import get_db, init_db, shutdown_db  # noqa: E402
from aetherium_hpc.monitors import ResourceMonitor  # noqa: E402
from aetherium_hpc.monitors.host import HostCollector, ProcessTreeCollector  # noqa: E402

SLEEPER = "import time\nwhile True: time.sleep(0.05)"
LIGHT = "import time\nwhile True:\n    sum(range(20000))\n    time.sleep(0.01)"


def naive_sample(pid: int) -> list[Any]:
    """What a first attempt looks like: walk the tree and make fresh Process objects every time."""
    root = psutil.Process(pid)
    out: list[Any] = [psutil.cpu_percent(None), psutil.virtual_memory().used]
    for proc in [root, *root.children(recursive=True)]:
        try:
            out.append((proc.pid, proc.name(), proc.cpu_percent(None), proc.memory_info().rss))
        except psutil.Error:
            pass
    return out


def cpu_ms(fn: Callable[[], object]) -> float:
    start = time.thread_time()
    fn()
    return (time.thread_time() - start) * 1000.0


def stats(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.fmean(ordered), ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95) - 1]


@contextmanager
def process_tree(children: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """This process + ``children`` Python children (half sleeping, half lightly busy)."""
    kids = [subprocess.Popen([sys.executable, "-c", LIGHT if i % 2 else SLEEPER]) for i in range(children)]
    try:
        time.sleep(1.0)  # let the interpreters start
        yield kids
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()


def sample_costs(samples: int, spacing: float) -> tuple[list[float], list[float], int]:
    """CPU ms per sample of (monitor, naive loop), interleaved, for this process's current tree."""
    me = os.getpid()
    tree = ProcessTreeCollector(me)
    monitor = ResourceMonitor(collectors=[HostCollector(), tree], sink=lambda s, ts: None, store_getter=None)
    for collector in monitor.collectors:
        collector.start()
    monitor.sample_once()
    ours: list[float] = []
    naive: list[float] = []
    for _ in range(samples):
        ours.append(cpu_ms(monitor.sample_once))
        time.sleep(spacing)
        naive.append(cpu_ms(lambda: naive_sample(me)))
        time.sleep(spacing)
    for collector in monitor.collectors:
        collector.close()
    return ours, naive, len(tree.pids())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300, help="samples per side (default 300)")
    parser.add_argument("--children", type=int, default=8, help="child processes (default 8)")
    parser.add_argument("--spacing", type=float, default=0.02, help="seconds between samples (default 0.02)")
    parser.add_argument("--live", type=float, default=10.0, help="seconds of a real 1 Hz run into a store (0: skip)")
    args = parser.parse_args()

    with process_tree(args.children):
        ours, naive, n_tree = sample_costs(args.samples, args.spacing)
        n_node = len(psutil.pids())

        print(f"tree: {n_tree} processes; node: {n_node} processes; {psutil.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}, psutil {psutil.__version__}")  # fmt: skip
        print(f"{args.samples} samples per side, interleaved, {args.spacing * 1000:.0f} ms apart\n")
        print(f"{'CPU per sample (ms)':<44}{'mean':>8}{'median':>8}{'p95':>8}{'% core @1 Hz':>14}")
        rows = [("ResourceMonitor.sample_once (no store)", ours), ("naive psutil loop", naive)]
        for label, values in rows:
            mean, median, p95 = stats(values)
            print(f"{label:<44}{mean:8.3f}{median:8.3f}{p95:8.3f}{mean / 10.0:14.4f}")
        ratio = statistics.fmean(naive) / statistics.fmean(ours)
        print(f"\nnaive / monitor: {ratio:.1f}x  (target: monitor <= 0.5 ms per sample with a 9-process tree)")

        print()
        for where in (tempfile.gettempdir(), "/dev/shm"):
            if not os.path.isdir(where):
                continue
            for gpus in (0, 8):
                t = textfile_costs(args.samples, args.spacing, gpus=gpus, where=where)
                plain, with_file = statistics.fmean(t["plain"]), statistics.fmean(t["textfile"])
                print(f"prometheus_textfile in {where} ({fs_type(where)}), {gpus} GPUs, {t['series']} series, "
                      f"{t['bytes']:,} B: {plain:.3f} ms without, {with_file:.3f} ms with "
                      f"({with_file / plain:.2f}x, +{(with_file - plain) * 1000:.0f} us a sample)")  # fmt: skip

        if args.live > 0:
            live(args.live)
    return 0


def fs_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (from psutil), '?' if unknown."""
    best = max((p for p in psutil.disk_partitions(all=True) if path.startswith(p.mountpoint)),
               key=lambda p: len(p.mountpoint), default=None)  # fmt: skip
    return best.fstype if best is not None else "?"


def textfile_costs(samples: int, spacing: float, gpus: int = 0, where: str | None = None) -> dict[str, Any]:
    """CPU ms per sample of the same monitor without and with a Prometheus textfile, interleaved
    (host + this process's tree, and ``gpus`` fake GPUs), and the file's size. ``where``: the
    folder's parent (its file system decides the cost of the write and rename)."""
    from aetherium_hpc.identity import JobIdentity
    from aetherium_hpc.monitors import PrometheusTextfile
    from aetherium_hpc.monitors.gpu import GpuCollector

    with installed_nvml(fake_gpus(gpus, [os.getpid()]) if gpus else None):
        with tempfile.TemporaryDirectory(dir=where) as folder:
            job = JobIdentity(job_id="1200_7", array_job_id="1200", array_task_id=7, node="n1")
            textfile = PrometheusTextfile.for_job(folder, job)
            monitors = []
            for exporter in (None, textfile):
                tree = ProcessTreeCollector(os.getpid())
                collectors: list[Any] = [HostCollector(), tree]
                if gpus:
                    collectors.append(GpuCollector(tree_pids=tree.pids, environ={}))
                monitors.append(
                    ResourceMonitor(
                        collectors=collectors, sink=lambda s, ts: None, store_getter=None, textfile=exporter
                    )
                )
            for m in monitors:
                for collector in m.collectors:
                    collector.start()
                m.sample_once()
            costs: list[list[float]] = [[], []]
            for _ in range(samples):
                for side, m in enumerate(monitors):
                    costs[side].append(cpu_ms(m.sample_once))
                    time.sleep(spacing)
            text = open(textfile.path, encoding="utf-8").read()
            for m in monitors:
                for collector in m.collectors:
                    collector.close()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {"plain": costs[0], "textfile": costs[1], "series": series, "bytes": len(text.encode())}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name: Python's names, the kernel's
    ``comm`` for a thread Python did not start. Linux only."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as fh:
                ns = int(fh.read().split()[0])
            name = names.get(int(tid))
            if name is None:
                with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as fh:
                    name = fh.read().strip()
        except (OSError, ValueError, IndexError):  # the thread has just ended
            continue
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def live(seconds: float) -> None:
    """The real thing: log_system_resources-style monitor at 1 Hz into a real store, and where
    its process CPU goes, thread by thread (the sampling thread, the store's writer, the rest)."""
    with tempfile.TemporaryDirectory() as folder:
        init_db(os.path.join(folder, "bench.db"), flush_interval=5.0)
        monitor = ResourceMonitor(1.0, gpu=True).start()
        time.sleep(1.5)  # collectors started, first samples taken
        n0, c0, t0 = monitor.samples_taken, time.process_time(), thread_cpu()
        time.sleep(seconds)
        n, cpu, t1 = monitor.samples_taken - n0, time.process_time() - c0, thread_cpu()
        summary = monitor.stop()
        store = get_db()
        assert store is not None
        per_sample = [r["value"] for r in store.query_resource_metrics("monitor", "sample_cpu_ms")]
        shutdown_db()
    if not per_sample or not n:
        print(f"\nlive 1 Hz run: no samples in {seconds:.0f} s")
        return
    mean, median, p95 = stats(per_sample)
    print(
        f"\nlive 1 Hz run into a store (flush_interval 5 s), {summary['samples']} samples over {summary['duration_s']:.1f} s:"
    )
    print(f"  monitor/sample_cpu_ms stored (a row per batch, the first tick's alone): mean {mean:.3f}, "
          f"median {median:.3f}, p95 {p95:.3f} ms")  # fmt: skip
    print(f"  process CPU per sample over {seconds:.0f} s of steady state: {cpu / n * 1000:.3f} ms, of which")
    for name, value in sorted(t1.items(), key=lambda kv: kv[1] - t0.get(kv[0], 0.0), reverse=True):
        used = (value - t0.get(name, 0.0)) / n * 1000
        if used >= 0.0005:
            print(f"    {name:<32}{used:8.3f} ms")


# -- a big node: 8 GPUs (fake NVML) and a 64-process tree, against the 9-process, no-GPU case ------------
@contextmanager
def sleeper_tree(processes: int) -> Iterator[int]:
    """A tree of ``processes`` processes (a shell and its ``sleep`` children); yields the shell's pid."""
    shell = subprocess.Popen(["/bin/sh", "-c", f"for i in $(seq {processes - 1}); do sleep 600 & done; wait"])
    try:
        want = processes - 1
        deadline = time.monotonic() + 30
        while len(psutil.Process(shell.pid).children()) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        yield shell.pid
    finally:
        for kid in psutil.Process(shell.pid).children():
            kid.kill()
        shell.kill()
        shell.wait()


def fake_gpus(n: int, pids: list[int]) -> Any:
    """tests/support/fake_pynvml.py answering for ``n`` whole GPUs, each running the given processes."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
    import fake_pynvml

    devices = [
        fake_pynvml.FakeDevice(
            f"GPU-{i:08x}-0000-0000-0000-000000000000", bus_id=f"00000000:{16 + i:02X}:00.0", minor=i,
            unsupported={"nvmlDeviceGetMigMode"}, processes=[(pid, 512 * 2**20) for pid in pids[i::n]],
        )
        for i in range(n)
    ]  # fmt: skip
    return fake_pynvml.make_module(devices)


@contextmanager
def installed_nvml(module: Any) -> Iterator[None]:
    """``module`` as ``pynvml`` (None: leave it as it is) while the block runs; the real one back after."""
    saved = sys.modules.get("pynvml")
    if module is not None:
        sys.modules["pynvml"] = module
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved


def big_node_costs(samples: int, spacing: float, gpus: int = 8, processes: int = 64) -> dict[str, Any]:
    """CPU ms and rows per sample: a ``processes``-process tree with ``gpus`` fake GPUs vs 9 processes, no GPU."""
    from aetherium_hpc.monitors.gpu import GpuCollector

    with sleeper_tree(processes) as big_root, sleeper_tree(9) as small_root:
        big_pids = [big_root, *(p.pid for p in psutil.Process(big_root).children())]
        with installed_nvml(fake_gpus(gpus, big_pids)):
            big_tree = ProcessTreeCollector(big_root)
            gpu = GpuCollector(tree_pids=big_tree.pids, environ={})
            big = ResourceMonitor(collectors=[HostCollector(), big_tree, gpu], sink=lambda s, ts: None,
                                  store_getter=None)  # fmt: skip
            small_tree = ProcessTreeCollector(small_root)
            small = ResourceMonitor(
                collectors=[HostCollector(), small_tree], sink=lambda s, ts: None, store_getter=None
            )
            for m in (big, small):
                for collector in m.collectors:
                    collector.start()
                m.sample_once()
            rows_big, rows_small = len(big.sample_once()), len(small.sample_once())
            cost_big: list[float] = []
            cost_small: list[float] = []
            for _ in range(samples):
                cost_big.append(cpu_ms(big.sample_once))
                time.sleep(spacing)
                cost_small.append(cpu_ms(small.sample_once))
                time.sleep(spacing)
            n_big, n_small, n_gpus = len(big_tree.pids()), len(small_tree.pids()), len(gpu.devices)
            for m in (big, small):
                for collector in m.collectors:
                    collector.close()
    return {"big": cost_big, "small": cost_small, "rows_big": rows_big, "rows_small": rows_small,
            "processes_big": n_big, "processes_small": n_small, "gpus": n_gpus}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
