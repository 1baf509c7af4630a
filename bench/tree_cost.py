"""Process CPU per sample as the tree grows: the monitor, a naive psutil + SQLite loop, and the floor.

Each side runs in a fresh interpreter that starts ``N`` ``sleep`` children, then samples its own
tree (itself + the children) every ``interval`` seconds:

* **ours**: ``init_db(path); log_system_resources(folder/)``, as a user starts it; the process's CPU
  clock (the sampling thread, the store's writer and the rest) over the steady state;
* **naive**: a thread that walks the tree with fresh ``psutil.Process`` objects each tick (name,
  CPU %, RSS of every process, the node's CPU and memory) and inserts the rows into SQLite, one
  commit a tick;
* **floor**: a small C program, built here with the system compiler (``cc``), that ``pread``\\ s
  ``/proc/stat``, ``/proc/meminfo`` and every ``/proc/<pid>/stat`` of the tree on descriptors kept
  open, and takes out the fields the monitor uses; its own CPU clock over the steady state. No
  compiler: the floor is skipped, with the reason.

``first_ms`` (ours only): the process's CPU from just before ``log_system_resources`` until the
first tick is committed (``get_db().flush()``): starting the collectors, finding the tree and the
store's first transaction, which creates the new series; ``first_write_ms``: the wall time of
that transaction (the store's ``batch_write_ms``); ``series``: how many processes got series of
their own (see ``PER_PROCESS_TOP`` in aetherium_hpc/monitors/tree.py).

The window is longer for small trees (:func:`window_s`): at 10 children one of the store's
transactions (one every ``flush_interval_s``, 5 s, about 1 ms of the writer's CPU) is a fifth of
what a window of 5 s measures, and whether one or two fall in it depends on their phase; 20 s,
the window the issue measured with, averages over four.

    python bench/tree_cost.py [--children 10,100,500] [--repeat 5] [--interval 0.5] [--seconds 20,5,5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

WARMUP_S = 1.5  # seconds before the CPU clock starts: collectors started, first samples taken
#: The window measured (seconds) over a tree of up to SMALL_TREE children, and over a larger one:
#: see the module's docstring.
SMALL_TREE, SMALL_TREE_WINDOW_S, WINDOW_S = 10, 20.0, 5.0
KINDS = ("ours", "naive", "floor")

FLOOR_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The n-th space-separated field after p (0: the first), as an unsigned number. */
static unsigned long long field(const char *p, int n) {
    while (n-- > 0) {
        p = strchr(p, ' ');
        if (!p) return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: floor INTERVAL WARMUP SECONDS PID...\n");
        return 2;
    }
    double interval = atof(argv[1]), warmup = atof(argv[2]), seconds = atof(argv[3]);
    int n = argc - 4;
    int stat_fd = open("/proc/stat", O_RDONLY), mem_fd = open("/proc/meminfo", O_RDONLY);
    int *fds = malloc(sizeof(int) * n);
    char path[64], buf[4096];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "/proc/%s/stat", argv[4 + i]);
        fds[i] = open(path, O_RDONLY);
    }
    volatile double sink = 0;
    double start = clock_s(CLOCK_MONOTONIC), cpu0 = -1;
    long samples = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        double now = clock_s(CLOCK_MONOTONIC) - start;
        if (cpu0 < 0 && now >= warmup) {
            cpu0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            samples = 0;
        }
        if (cpu0 >= 0 && now >= warmup + seconds) break;
        ssize_t k = pread(stat_fd, buf, sizeof buf - 1, 0);
        if (k > 0) {
            buf[k] = 0;
            unsigned long long total = 0;
            for (int f = 1; f <= 8; f++) total += field(buf, f);
            sink += total - field(buf, 4) - field(buf, 5);
        }
        k = pread(mem_fd, buf, 255, 0);
        if (k > 0) {
            buf[k] = 0;
            char *avail = strstr(buf, "MemAvailable:");
            sink += strtoull(buf + 9, NULL, 10) - (avail ? strtoull(avail + 13, NULL, 10) : 0);
        }
        double cpu = 0, rss = 0;
        for (int i = 0; i < n; i++) {
            k = fds[i] < 0 ? -1 : pread(fds[i], buf, sizeof buf - 1, 0);
            if (k <= 0) continue;
            buf[k] = 0;
            char *p = strrchr(buf, ')');
            if (!p || p[2] == 'Z') continue;
            p += 2; /* state ppid ... */
            cpu += field(p, 11) + field(p, 12);
            rss += field(p, 21);
            sink += field(p, 1);
        }
        sink += cpu + rss;
        samples++;
        next.tv_nsec += (long)(interval * 1e9);
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    printf("{\"cpu_s\": %.9f, \"samples\": %ld}\n", clock_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0, samples);
    return sink < 0;
}
"""


class Missing(Exception):
    """A side cannot run here; the message says why."""


def build_floor(folder: str) -> str:
    """Compile the floor into ``folder`` with the system C compiler; its path. Raises :class:`Missing`."""
    if not os.path.exists("/proc/self/stat"):
        raise Missing("no /proc here: the floor reads /proc")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise Missing("no C compiler (cc, gcc or clang) on PATH")
    src, exe = os.path.join(folder, "floor.c"), os.path.join(folder, "floor")
    with open(src, "w", encoding="ascii") as fh:
        fh.write(FLOOR_C)
    out = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise Missing(f"{cc} could not build the floor: {out.stderr.strip()[:300]}")
    return exe


@contextmanager
def sleepers(n: int) -> Iterator[list[int]]:
    """``n`` ``sleep`` children of this process; yields their pids."""
    kids: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            kids.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        yield [kid.pid for kid in kids]
    finally:
        for kid in kids:
            kid.kill()
        for kid in kids:
            kid.wait()


def run(kind: str, children: int, interval: float, seconds: float, floor_exe: str = "") -> dict[str, Any]:
    """One side in a fresh interpreter: {"cpu_s", "samples"[, "first_ms"]}."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "child", kind, str(children), str(interval), str(seconds),
         floor_exe],
        capture_output=True, text=True, check=False, timeout=seconds + 180,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"tree_cost {kind} {children} failed: {out.stderr.strip()[-800:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _child(kind: str, children: int, interval: float, seconds: float, floor_exe: str) -> dict[str, Any]:
    with sleepers(children) as pids, tempfile.TemporaryDirectory() as folder:
        if kind == "floor":
            cmd = [floor_exe, str(interval), str(WARMUP_S), str(seconds), str(os.getpid()), *map(str, pids)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            return dict(json.loads(out.stdout))
        if kind == "ours":
            import aetherium_hpc as ah

            w0 = time.perf_counter()
            store = ah.init_db(os.path.join(folder, "ours.db"))
            store.flush()
            c0 = time.process_time()
            monitor = ah.log_system_resources(folder + "/", interval=interval)
            store.flush()
            first_ms = (time.process_time() - c0) * 1000.0
            first_write_ms = store.writer.stats.last_batch_ms  # (the transaction that took the first tick)
            time.sleep(max(0.0, WARMUP_S - (time.perf_counter() - w0)))
            n0, c0 = monitor.samples_taken, time.process_time()
            time.sleep(seconds)
            cpu, samples = time.process_time() - c0, monitor.samples_taken - n0
            monitor.stop()
            ah.shutdown_db()
            with sqlite3.connect(os.path.join(folder, "ours.db")) as conn:
                query = "SELECT count(DISTINCT device) FROM resource_metrics WHERE metric_type = 'process'"
                series = conn.execute(query).fetchone()[0]
            return {"cpu_s": cpu, "samples": samples, "first_ms": first_ms, "first_write_ms": first_write_ms,
                    "series": series}  # fmt: skip
        naive = NaiveLoop(os.path.join(folder, "naive.db"), interval)
        naive.start()
        time.sleep(WARMUP_S)
        n0, c0 = naive.samples, time.process_time()
        time.sleep(seconds)
        cpu, samples = time.process_time() - c0, naive.samples - n0
        naive.stop()
        return {"cpu_s": cpu, "samples": samples}


class NaiveLoop(threading.Thread):
    """What a first attempt looks like: each tick, fresh psutil objects for the whole tree and one
    SQLite transaction of its rows."""

    def __init__(self, path: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.path, self.interval, self.samples = path, interval, 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        import psutil

        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE metrics (ts REAL, name TEXT, device TEXT, value REAL)")
        procs: dict[int, psutil.Process] = {}
        root = psutil.Process()
        next_tick = time.monotonic()
        while not self._stop_event.wait(max(0.0, next_tick - time.monotonic())):
            ts = time.time()
            rows = [(ts, "cpu", "", psutil.cpu_percent(None)), (ts, "ram", "", psutil.virtual_memory().used / 2**20)]
            for proc in [root, *root.children(recursive=True)]:
                proc = procs.setdefault(proc.pid, proc)  # cpu_percent needs the same object across ticks
                try:
                    rows.append((ts, "cpu_percent", f"{proc.pid}:{proc.name()}", proc.cpu_percent(None)))
                    rows.append((ts, "rss_mb", f"{proc.pid}:{proc.name()}", proc.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            with conn:
                conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", rows)
            self.samples += 1
            next_tick += self.interval
        conn.close()


def window_s(children: int) -> float:
    """The steady-state seconds measured at a tree size: 20 s at up to 10 children, 5 s above."""
    return SMALL_TREE_WINDOW_S if children <= SMALL_TREE else WINDOW_S


def measure(
    sizes: Sequence[int], repeat: int, interval: float, seconds: Sequence[float] | None = None
) -> dict[str, Any]:
    """CPU ms per sample of each side and tree size, ``repeat`` interleaved rounds (ours, naive,
    floor in turn, each size); ours's first tick to commit and its per-process series (the most in
    a run). ``seconds``: the window at each size (default :func:`window_s`); ``floor_missing``: why
    no floor."""
    windows = [window_s(n) for n in sizes] if seconds is None else list(seconds)
    ms: dict[tuple[str, int], list[float]] = {(k, n): [] for k in KINDS for n in sizes}
    first: dict[int, list[float]] = {n: [] for n in sizes}
    first_write: dict[int, list[float]] = {n: [] for n in sizes}
    series: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        try:
            exe, why = build_floor(folder), ""
        except Missing as exc:
            exe, why = "", str(exc)
        for _ in range(repeat):
            for n, window in zip(sizes, windows, strict=True):
                for kind in KINDS:
                    if kind == "floor" and not exe:
                        continue
                    r = run(kind, n, interval, window, exe)
                    ms[kind, n].append(r["cpu_s"] / max(1, r["samples"]) * 1000.0)
                    if kind == "ours":
                        first[n].append(r["first_ms"])
                        first_write[n].append(r["first_write_ms"])
                        series[n] = max(series.get(n, 0), r["series"])
    return {"ms": ms, "first_ms": first, "first_write_ms": first_write, "series": series, "floor_missing": why,
            "seconds": dict(zip(sizes, windows, strict=True))}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", default="10,100,500", help="tree sizes, comma-separated [10,100,500]")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds [5]")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples [0.5]")
    ap.add_argument("--seconds", help="steady-state seconds measured per run: one for every size, or one per "
                    "size [20 up to 10 children, else 5]")  # fmt: skip
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.children.split(",")]
        windows = None if args.seconds is None else [float(x) for x in args.seconds.split(",")]
    except ValueError as exc:
        ap.error(f"--children {args.children!r} / --seconds {args.seconds!r}: comma-separated numbers ({exc})")
    if windows is not None and len(windows) == 1:
        windows = windows * len(sizes)
    if windows is not None and len(windows) != len(sizes):
        ap.error(f"--seconds {args.seconds!r}: one number, or one per size of --children {args.children!r}")
    m = measure(sizes, args.repeat, args.interval, windows)
    if m["floor_missing"]:
        print(f"floor skipped: {m['floor_missing']}")
    print(f"{'children':>8} {'seconds':>7} {'ours ms':>9} {'naive ms':>9} {'floor ms':>9} {'ours/floor':>11} {'first ms':>9} "
          f"{'write ms':>9} series")  # fmt: skip
    for n in sizes:
        o, nv, fl = (m["ms"][k, n] for k in KINDS)
        ratio = statistics.median([a / b for a, b in zip(o, fl, strict=True)]) if fl else float("nan")
        print(f"{n:>8} {m['seconds'][n]:7g} {statistics.median(o):9.3f} {statistics.median(nv):9.3f} "
              f"{statistics.median(fl) if fl else float('nan'):9.3f} {ratio:10.2f}x "
              f"{statistics.median(m['first_ms'][n]):9.1f} {statistics.median(m['first_write_ms'][n]):9.1f} "
              f"{m['series'][n]:6d}")  # fmt: skip
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "child":
        kind, n, interval, seconds, exe = (
            sys.argv[2],
            int(sys.argv[3]),
            float(sys.argv[4]),
            float(sys.argv[5]),
            sys.argv[6],
        )
        print(json.dumps(_child(kind, n, interval, seconds, exe)))
        sys.exit(0)
    sys.exit(main())
