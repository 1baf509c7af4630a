"""The benchmark suite: every benchmark of bench/, side by side with the tools people would use instead.

    python -m bench                 # the full run (about 5-10 min on 2 cores), writes docs/PERFORMANCE.md
    python -m bench --quick         # scaled-down sizes (said so), about 1-2 min; table on stdout unless --out
    python -m bench --only ingest,merge --out -     # some sections, table on stdout only

Every figure is the median of ``--repeat`` (>= 3) runs with the spread (min-max); a ratio is taken
pair by pair (the same repeat index of both sides, measured one after the other) and the median of
those pairwise ratios is shown. A peer that is not installed (``pip install -e '.[bench]'``) or a
Slurm cluster that does not answer is said so in its row, and the suite goes on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc.analysis.report.across import MANY_TASKS  # noqa: E402
from bench import (  # noqa: E402
    central,
    central_scale,
    copyback,
    edges,
    ingest,
    merge,
    monitor_overhead,
    peers,
    scale,
    storage,
    timerange,
    tree_cost,
    window,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PERFORMANCE.md"
SECTIONS = (
    "ingest", "peers", "monitor", "tree", "window", "live", "storage", "copyback", "merge", "scale", "edges", "submit", "central",
    "central_scale",
)  # fmt: skip

FULL: dict[str, Any] = {
    "records": 200_000, "workers": 4, "latency_calls": 200_000,
    "single": 200_000, "tbx": 50_000, "mlflow_metric": 300, "mlflow_batch": 20_000,
    "monitor_samples": 150, "children": 8, "live_interval": 0.5, "live_seconds": 10.0,
    "tree_children": (10, 100, 500), "tree_interval": 0.5,
    "window_ticks": 3000,
    "hours": 24.0, "query_repeat": 7,
    "copy_hours": 24.0,
    "tasks": 100, "task_hours": 1.0,
    "scale_tasks": 1000, "scale_minutes": 5.0, "scale_steps": (100, 500, 2000),
    "edge_records": 10_000,
    "array": 1000,
    "central_rows": 200_000, "central_seconds": 8.0, "fleet_nodes": 300, "fleet_seconds": 40.0,
}  # fmt: skip
QUICK: dict[str, Any] = {
    "records": 50_000, "workers": 4, "latency_calls": 50_000,
    "single": 50_000, "tbx": 10_000, "mlflow_metric": 50, "mlflow_batch": 5_000,
    "monitor_samples": 40, "children": 8, "live_interval": 0.5, "live_seconds": 3.0,
    "tree_children": (10, 100), "tree_interval": 0.5,
    "window_ticks": 1000,
    "hours": 2.0, "query_repeat": 5,
    "copy_hours": 2.0,
    "tasks": 10, "task_hours": 0.5,
    "scale_tasks": 100, "scale_minutes": 5.0, "scale_steps": (20, 100, 200),
    "edge_records": 2_000,
    "array": 200,
    "central_rows": 50_000, "central_seconds": 4.0, "fleet_nodes": 100, "fleet_seconds": 20.0,
}  # fmt: skip

PROSE_FALLBACK = """## How the targets are reached

- **Log call.** In the writer's process a log call is a few `type(...) is` checks, a tuple and
  a `deque.append` (atomic under the GIL): no lock, no I/O, no syscall. Workers append to their
  own buffer and send marshal-encoded batches over the node socket.
- **Ingest.** One transaction per batch; `executemany` without per-row checks, falling back to
  row-by-row validation inside a savepoint only when a batch holds a row SQLite cannot bind.
- **Size.** Samples are not rows: one row per chunk of up to 180 samples of a series, values as
  a JSON array with 7 significant digits, timestamps as millisecond offsets from a regular
  grid (mostly `0`). The chunk being filled is updated in place, so pages stay full.
- **Aggregate query.** `resource_metrics` is one flattened join (series index → chunks by
  series → `json_each`), so the aggregate touches only that series' chunks and never decodes
  timestamps.

The storage bench writes through the real store (`init_db` + `log_resource_samples`, one
commit per simulated minute) with values shaped like psutil and NVML output (CPU % with one
decimal, memory in MB from byte counts, integer GPU utilisation and temperature, power with
mW resolution).
"""


# -- statistics and formatting --------------------------------------------------------------------
def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median (min–max)`` of the runs."""
    return f"{fmt(med(values))} ({fmt(min(values))}–{fmt(max(values))})"


def pairwise(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def rate(x: float) -> str:
    return f"{x:,.0f}/s"


def ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def us(x: float) -> str:
    return f"{x:.2f} µs"


def secs(x: float) -> str:
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s"


def times(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def pct(x: float) -> str:
    return f"{x:.0%}"


@dataclass
class Row:
    what: str
    figure: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: no target, or not measured
    command: str
    key: str = ""
    note: str = ""


@dataclass
class Results:
    quick: bool
    repeat: int
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # 'section: why'
    loads: dict[str, tuple[float, float]] = field(default_factory=dict)  # section: 1-min load average start, end
    log: Callable[[str], None] = print

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.log(f"  {row.what}: {row.figure} | {row.baseline} | {row.ratio} | target {row.target}")

    def missing(self, what: str, why: str, target: str, command: str) -> None:
        self.rows.append(Row(what, "not measured", why, "–", target, None, command))
        self.log(f"  {what}: not measured: {why}")


# -- the sections ---------------------------------------------------------------------------------
def run_ingest(res: Results, s: dict[str, Any]) -> None:
    m = ingest.measure(s["records"], s["workers"], res.repeat, s["latency_calls"])
    r = pairwise(m["ours"], m["raw"])
    res.add(Row(
        f"end-to-end ingest, 1 main + {s['workers']} fork workers, {s['records']:,} training rows",
        spread(m["ours"], rate), f"raw `sqlite3.executemany`, 1,000 rows per transaction, WAL: {spread(m['raw'], rate)}",
        f"**{pct(med(r))}** of raw ({', '.join(pct(x) for x in r)})", "≥ 40 %", med(r) >= 0.40,
        "`python bench/ingest.py`", "ingest",
    ))  # fmt: skip
    res.add(Row(
        f"log call in the logging process (writer running), {s['latency_calls']:,} calls",
        f"**p50 {spread(m['p50'], us)}**, p99 {spread(m['p99'], us)}",
        f"timer overhead {us(med(m['timer_overhead']))} subtracted", "–", "p50 ≤ 2 µs (p99 ≤ 20 µs)",
        med(m["p50"]) <= 2.0 and med(m["p99"]) <= 20.0, "`python bench/ingest.py`", "latency",
    ))  # fmt: skip


def run_peers(res: Results, s: dict[str, Any]) -> None:
    ours: list[float] = []
    tbx: list[float] = []
    ml_metric: list[float] = []
    ml_batch: list[float] = []
    tbx_why = ml_why = ""
    with tempfile.TemporaryDirectory() as d:
        for _ in range(res.repeat):
            ours.append(peers.ours_single(s["single"]))
            if not tbx_why:
                try:
                    tbx.append(peers.tensorboardx(s["tbx"]))
                except peers.Missing as exc:
                    tbx_why = str(exc)
            if not ml_why:
                try:
                    one, batch = peers.mlflow_ingest(s["mlflow_metric"], s["mlflow_batch"], d)
                    ml_metric.append(one)
                    ml_batch.append(batch)
                except peers.Missing as exc:
                    ml_why = str(exc)
    cmd = "`python -m bench --only peers`"
    what = f"ingest in one process: aetherium {s['single']:,} rows (until committed)"
    if tbx_why:
        res.missing(what + " vs tensorboardX", tbx_why, "≥ 10× tensorboardX", cmd)
    else:
        r = pairwise(ours, tbx)
        res.add(Row(
            what + f" vs tensorboardX {peers.version('tensorboardX')} `SummaryWriter.add_scalar` ({s['tbx']:,} scalars, until closed)",
            spread(ours, rate), f"tensorboardX: {spread(tbx, rate)}", f"**{times(med(r))}** ({', '.join(times(x) for x in r)})",
            "≥ 10×", med(r) >= 10.0, cmd, "tbx",
        ))  # fmt: skip
    if ml_why:
        res.missing(what + " vs MLflow", ml_why, "–", cmd)
    else:
        r1, r2 = pairwise(ours, ml_metric), pairwise(ours, ml_batch)
        ver = peers.version("mlflow") or peers.version("mlflow-skinny")
        res.add(Row(
            what + f" vs MLflow {ver} `log_metric` ({s['mlflow_metric']:,} calls), backend `sqlite:///…`",
            spread(ours, rate), f"MLflow `log_metric`: {spread(ml_metric, rate)}",
            f"**{times(med(r1))}** ({', '.join(times(x) for x in r1)})", "–", None, cmd, "mlflow_metric",
        ))  # fmt: skip
        res.add(Row(
            what + f" vs MLflow {ver} `log_batch` (1,000 metrics a call, {s['mlflow_batch']:,} in all), backend `sqlite:///…`",
            spread(ours, rate), f"MLflow `log_batch`: {spread(ml_batch, rate)}",
            f"**{times(med(r2))}** ({', '.join(times(x) for x in r2)})", "–", None, cmd, "mlflow_batch",
        ))  # fmt: skip


def run_monitor(res: Results, s: dict[str, Any]) -> None:
    ours: list[float] = []
    naive: list[float] = []
    n_tree = 0
    with monitor_overhead.process_tree(s["children"]):
        for _ in range(res.repeat):
            o, n, n_tree = monitor_overhead.sample_costs(s["monitor_samples"], 0.02)
            # the mean, not the median: some ticks do more (a tree walk, the summary's fold every 10 ticks)
            ours.append(statistics.fmean(o))
            naive.append(statistics.fmean(n))
    r = pairwise(naive, ours)
    res.add(Row(
        f"monitor CPU per sample, {n_tree}-process tree (`sample_once`, thread CPU, mean of {s['monitor_samples']} a run)",
        f"**{spread(ours, ms)}**", f"naive psutil loop: {spread(naive, ms)}",
        f"naive is **{times(med(r))}** ({', '.join(times(x) for x in r)})", "≤ 0.5 ms, naive ≥ 5×",
        med(ours) <= 0.5 and med(r) >= 5.0,
        "`python bench/monitor_overhead.py`", "monitor",
    ))  # fmt: skip
    big: list[float] = []
    small: list[float] = []
    g: dict[str, Any] = {}
    for _ in range(res.repeat):
        g = monitor_overhead.big_node_costs(s["monitor_samples"], 0.02)
        big.append(statistics.fmean(g["big"]))
        small.append(statistics.fmean(g["small"]))
    r = pairwise(big, small)
    res.add(Row(
        f"monitor CPU per sample on a big node: {g['gpus']} GPUs (tests/support/fake_pynvml.py) and a {g['processes_big']}-process "
        f"tree (`sample_once`, thread CPU, mean of {s['monitor_samples']} a run); rows per sample: {g['rows_big']}",
        f"**{spread(big, ms)}**",
        f"{g['processes_small']}-process tree, no GPU, interleaved: {spread(small, ms)}; rows per sample: {g['rows_small']}",
        f"{times(med(r))} the small node ({', '.join(times(x) for x in r)}); "
        f"{g['rows_big'] / max(1, g['rows_small']):.1f}× the rows", "–", None,
        "`python -m bench --only monitor`", "monitor_gpu",
    ))  # fmt: skip
    for gpus in (0, 8):
        plain: list[float] = []
        with_file: list[float] = []
        t: dict[str, Any] = {}
        for _ in range(res.repeat):
            t = monitor_overhead.textfile_costs(s["monitor_samples"], 0.02, gpus=gpus)
            plain.append(statistics.fmean(t["plain"]))
            with_file.append(statistics.fmean(t["textfile"]))
        r = pairwise(with_file, plain)
        res.add(Row(
            f"monitor CPU per sample with `monitoring.prometheus_textfile` ({gpus} GPUs, {t['series']} series, "
            f"{t['bytes']:,} B rewritten each tick: render, write, rename), same monitor without it interleaved",
            f"**{spread(with_file, ms)}**", f"without the textfile: {spread(plain, ms)}",
            f"{times(med(r))} ({', '.join(times(x) for x in r)})",
            f"– (no target; +{med([w - p for w, p in zip(with_file, plain, strict=True)]):.2f} ms a sample is "
            f"{med([w - p for w, p in zip(with_file, plain, strict=True)]) / 10:.3f} % of a core at 1 Hz)", None,
            "`python bench/monitor_overhead.py`", f"monitor_textfile_{gpus}gpu",
        ))  # fmt: skip


WINDOW_MAX_BYTES = 8 * 1024  # the design says "about 5 KB": its figures are 4 KB, the index the rest
WINDOW_MAX_US = 10.0


def run_window(res: Results, s: dict[str, Any]) -> None:
    """The monitor's window of the last 60 s (get_db().recent()): memory and CPU per tick."""
    with monitor_overhead.process_tree(s["children"]):
        ticks, tick_ms = window.real_ticks()
    runs = [window.measure(ticks, s["window_ticks"]) for _ in range(res.repeat)]
    us_ = [r["us"] for r in runs]
    share = [u / 1000.0 / tick_ms for u in us_]
    last = runs[-1]
    cmd = "`python bench/window.py`"
    res.add(Row(
        f"memory of the monitor's window of the last 60 s (`get_db().recent()`), {last['series']} series "
        f"({len(ticks[0])} samples a tick, 9-process tree) after {s['window_ticks']:,} ticks at 1 Hz",
        f"**{last['bytes']:,} B** (`monitor/window_bytes`); tracemalloc: {last['traced']:,} B",
        "design: about 5 KB (the figures alone: 40 floats × 4 B a series)", "–",
        f"≤ {WINDOW_MAX_BYTES // 1024} KiB", last["bytes"] <= WINDOW_MAX_BYTES, cmd, "window_bytes",
    ))  # fmt: skip
    res.add(Row(
        "CPU of the window per tick (`RecentWindow.add` of a real tick's samples, thread CPU)",
        f"**{spread(us_, us)}**", f"the tick itself (`sample_once`, same tree): {ms(tick_ms)}",
        f"{pct(med(share))} of the tick", f"≤ {WINDOW_MAX_US:g} µs", med(us_) <= WINDOW_MAX_US, cmd, "window_cpu",
    ))  # fmt: skip


LIVE_TARGET = "MLflow ≥ 25×"
LIVE_FLUSH_S = 5.0  # monitoring.flush_interval_s of a job (the default): how the runtime runs the store
LIVE_PEERS = {
    "mlflow": "MLflow {ver} `SystemMetricsMonitor` (same interval, `log_batch` per sample to `sqlite:///…`)",
    "wandb": "W&B {ver} offline (system monitor at the same interval over the process tree; its process + "
    "`wandb-core` + `wandb-symon`)",
}


def run_live(res: Results, s: dict[str, Any]) -> None:
    interval, seconds = s["live_interval"], s["live_seconds"]
    ours: list[float] = []
    ours_1s: list[float] = []
    theirs: dict[str, list[float]] = {peer: [] for peer in LIVE_PEERS}
    why = dict.fromkeys(LIVE_PEERS, "")

    def per_sample(run: dict[str, Any], idle: float) -> float:
        return float((run["cpu_s"] - idle) / max(1.0, run["samples"]) * 1000)

    for _ in range(res.repeat):
        idle = peers.live_cpu("idle", interval, seconds)["cpu_s"]
        ours.append(per_sample(peers.live_cpu("ours", interval, seconds, LIVE_FLUSH_S), idle))
        ours_1s.append(per_sample(peers.live_cpu("ours", interval, seconds, 1.0), idle))
        for peer in LIVE_PEERS:
            if not why[peer]:
                try:
                    theirs[peer].append(per_sample(peers.live_cpu(peer, interval, seconds), idle))
                except peers.Missing as exc:
                    why[peer] = str(exc)
    what = (f"live monitor at {interval:g} s beside a job-like tree of {peers.JOB_CHILDREN + 1} processes, {seconds:g} s "
            "of steady state in a fresh interpreter, into a store: process CPU per sample (sampling thread + store "
            "writer), idle interpreter subtracted")  # fmt: skip
    cmd = "`python -m bench --only live`"
    for peer, label in LIVE_PEERS.items():
        ver = peers.version(peer) or peers.version(f"{peer}-skinny")
        first = peer == "mlflow"
        row_what = what + f"; the store as a job runs it (`flush_interval_s` {LIVE_FLUSH_S:g} s, the default)"
        target, key = (LIVE_TARGET, "live") if first else ("–", f"live_{peer}")
        if why[peer]:
            res.add(Row(row_what, f"**{spread(ours, ms)}**", f"{label.format(ver=ver or '')}: not measured ({why[peer]})",
                        "–", target, None, cmd, key))  # fmt: skip
            continue
        r = pairwise(theirs[peer], ours)
        name = "MLflow" if first else "W&B"
        res.add(Row(
            row_what, f"**{spread(ours, ms)}**", f"{label.format(ver=ver)}: {spread(theirs[peer], ms)}",
            f"{name} is **{times(med(r))}** ({', '.join(times(x) for x in r)})", target,
            med(r) >= 25.0 if first else None, cmd, key,
        ))  # fmt: skip
    peer = "mlflow" if not why["mlflow"] else "wandb"
    if why[peer]:
        res.add(Row("the same with the store committing every second (`flush_interval_s` 1 s)",
                    f"**{spread(ours_1s, ms)}**", "–", "–", "–", None, cmd, "live_1s"))  # fmt: skip
        return
    r = pairwise(theirs[peer], ours_1s)
    res.add(Row(
        "the same with the store committing every second (`flush_interval_s` 1 s)",
        f"**{spread(ours_1s, ms)}**", f"{'MLflow' if peer == 'mlflow' else 'W&B'}: {spread(theirs[peer], ms)}",
        f"{times(med(r))} ({', '.join(times(x) for x in r)})", "–", None, cmd, "live_1s",
    ))  # fmt: skip


#: ours ÷ the C floor, by tree size (`sleep` children): at most this (issue: 2x everywhere is the stretch goal)
TREE_TARGETS = {10: 2.5, 100: 3.0, 500: 3.0}
TREE_FIRST_TARGET = 2.0  # the first flush at the largest tree, against the smallest: the same few series


def run_tree(res: Results, s: dict[str, Any]) -> None:
    """CPU per sample as the tree grows: ours vs the C floor vs a naive psutil + SQLite loop."""
    sizes, interval = s["tree_children"], s["tree_interval"]
    runs = res.repeat if res.quick else max(res.repeat, 5)  # each ratio: the median of at least 5 interleaved pairs
    m = tree_cost.measure(sizes, runs, interval)  # (the window: tree_cost.window_s, 20 s at 10 children)
    cmd = "`python bench/tree_cost.py`"
    for n in sizes:
        ours, naive, floor = (m["ms"][kind, n] for kind in tree_cost.KINDS)
        what = (f"monitor CPU per sample, a tree of {n} `sleep` children + the interpreter: `init_db` + "
                f"`log_system_resources` in a fresh interpreter, process CPU over {m['seconds'][n]:g} s at {interval:g} s "
                f"({runs} runs, interleaved with the others'); {m['series'][n]} per-process series")  # fmt: skip
        rn = pairwise(naive, ours)
        target = TREE_TARGETS.get(n)
        goal = f"≤ {target:g}× the floor" if target else "–"
        if m["floor_missing"]:
            res.add(Row(what, f"**{spread(ours, ms)}**", f"naive psutil + SQLite: {spread(naive, ms)}; the floor: "
                        f"not measured ({m['floor_missing']})", f"naive is {times(med(rn))}", goal, None, cmd,
                        f"tree_{n}"))  # fmt: skip
            continue
        r = pairwise(ours, floor)
        res.add(Row(
            what, f"**{spread(ours, ms)}**",
            f"the floor (C, `pread` of the same `/proc` files on kept descriptors): {spread(floor, ms)}; "
            f"naive psutil + SQLite: {spread(naive, ms)}",
            f"**{times(med(r))}** the floor ({', '.join(times(x) for x in r)}); naive is {times(med(rn))} ours",
            goal, med(r) <= target if target else None, cmd, f"tree_{n}",
        ))  # fmt: skip
    small, big = sizes[0], sizes[-1]
    first, write = m["first_ms"], m["first_write_ms"]
    r = pairwise(write[big], write[small])
    res.add(Row(
        "the first flush: the store's transaction that takes the monitor's first tick (creating its series; "
        "`batch_write_ms`), by tree size; and the whole first tick, CPU from `log_system_resources` to "
        "`get_db().flush()` (collectors started, every process of the tree read once)",
        "**" + ", ".join(f"{n}: {spread(write[n], ms)}" for n in sizes) + "**; first tick: "
        + ", ".join(f"{n}: {spread(first[n], ms)}" for n in sizes),
        f"{small} children: {spread(write[small], ms)}",
        f"{times(med(r))} at {big} children ({', '.join(times(x) for x in r)})",
        f"≤ {TREE_FIRST_TARGET:g}× at {big}", med(r) <= TREE_FIRST_TARGET, cmd, "tree_first",
    ))  # fmt: skip


def run_storage(res: Results, s: dict[str, Any]) -> None:
    m = storage.measure(s["hours"], max(res.repeat, s["query_repeat"]))
    n = m["samples"]
    b_ours, b_plain = m["size_ours"] / n, m["size_plain"] / n
    res.add(Row(
        f"bytes per resource sample, {s['hours']:g} h × 42 metrics × 1 Hz ({n / 1e6:.2f}M samples; one build, sizes do not vary)",
        f"**{b_ours:.1f} B** ({m['size_ours'] / 2**20:.1f} MiB, written in {m['t_ours']:.1f} s)",
        f"one row per sample with an index: {b_plain:.1f} B", f"{b_ours / b_plain:.2f}× the row table",
        "≤ 16 B", b_ours <= 16.0, "`python bench/storage.py`", "bytes",
    ))  # fmt: skip
    r = pairwise(m["q_ours"], m["q_plain"])
    agree = m["row_ours"][1:] == m["row_plain"][1:]
    res.add(Row(
        f"`{storage.QUERY}` on those {n / 1e6:.2f}M samples ({len(m['q_ours'])} runs; results agree: {agree})",
        f"**{spread(m['q_ours'], ms)}**", f"indexed row table: {spread(m['q_plain'], ms)}",
        f"{times(med(r))} the row table's time", "< 50 ms", med(m["q_ours"]) < 50.0, "`python bench/storage.py`",
        "query",
    ))  # fmt: skip
    run_time_range(res, s)


def run_time_range(res: Results, s: dict[str, Any]) -> None:
    """One metric of one job over the last 5 minutes, SQLite and PostgreSQL: chunk bounds vs naive."""
    m = timerange.measure(s["hours"], max(res.repeat, s["query_repeat"]))
    cmd = "`python bench/timerange.py`"
    what = (f"one metric of one job over the last {timerange.WINDOW_S / 60:g} minutes on {m['samples'] / 1e6:.2f}M "
            "samples, `chunk_t1 >= :from - 0.001 AND chunk_t0 <= :to AND timestamp BETWEEN :from AND :to`")  # fmt: skip
    target = f"≤ {timerange.TARGET_MS:g} ms"
    for name, key in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
        if key not in m:
            res.missing(
                f"{what}, {name}", f"skipped: set {central.URL_VARIABLE} ({m['postgres_skipped']})", target, cmd
            )
            continue
        q = m[key]
        r = pairwise(q["range"], q["naive"])
        res.add(Row(
            f"{what}, {name} ({len(q['range'])} runs; {q['rows']} rows, the naive rows: {q['agree']}; "
            f"index on the chunk ends: {q['index_used']})",
            f"**{spread(q['range'], ms)}**", f"`timestamp BETWEEN` alone (every chunk unpacked): {spread(q['naive'], ms)}",
            f"**{times(med(r))}** the naive time", target, med(q["range"]) <= timerange.TARGET_MS and q["agree"], cmd,
            f"range_{key}",
        ))  # fmt: skip
    if "postgres" in m:
        pg = m["postgres"]
        res.add(Row(
            f"`watch` on the central store: its first pull of that job, the last {pg['watch_window_s']:g} s of each "
            f"series ({pg['window_samples']:,} samples; {len(pg['pull_window'])} runs)",
            f"**{spread([x * 1000 for x in pg['pull_window']], ms)}**, then a refresh with nothing new "
            f"{spread([x * 1000 for x in pg['pull_refresh']], ms)}",
            f"the whole job ({pg['whole_samples']:,} samples): {secs(pg['pull_whole'])}",
            f"{times(med(pg['pull_window']) / pg['pull_whole'])} the whole pull's time", "–", None, cmd, "range_pull",
        ))  # fmt: skip


def run_copyback(res: Results, s: dict[str, Any]) -> None:
    hours = s["copy_hours"]
    m = copyback.measure(hours, None, res.repeat, log=res.log)
    cmd = f"`python bench/copyback.py --hours {hours:g}`"
    mib = 2**20
    ratio = m["written"] / m["node_size"]
    res.add(Row(
        f"copy-back to the run directory, a simulated {hours:g} h job (42 metrics × 1 Hz, generation and training rows), "
        f"checkpoint every {m['interval']:g} s ({m['checkpoints']} incremental copies + the final one; one run: byte counts do not vary)",
        f"**{m['written'] / mib:.1f} MiB** written (copy + journal, `wchar`), {m['per_checkpoint'] / 1024:.1f} KiB a checkpoint",
        f"the database's growth: {m['node_size'] / mib:.1f} MiB; a full copy every checkpoint: {m['full_equiv'] / mib:,.0f} MiB",
        f"**{ratio:.2f}×** the growth ({m['full_equiv'] / m['node_size']:,.0f}× for full copies)", "≤ 2×", ratio <= 2.0,
        cmd, "copy_bytes",
    ))  # fmt: skip
    base = statistics.median(m["base_cpu"])
    r = m["cpu_last_hour"] / base
    res.add(Row(
        f"CPU of one checkpoint in the last simulated hour of that job (median of {min(120, m['checkpoints'])}; thread CPU)",
        f"**{ms(m['cpu_last_hour'] * 1000)}** (final copy {ms(m['final_cpu'] * 1000)})",
        f"SQLite backup-API copy of the final {m['node_size'] / mib:.0f} MiB database: {spread([c * 1000 for c in m['base_cpu']], ms)}",
        f"**{r:.3f}×**", "≤ 0.1× at 24 h", r <= 0.1 if hours >= 24 else None, cmd, "copy_cpu",
    ))  # fmt: skip


def run_merge(res: Results, s: dict[str, Any]) -> None:
    m = merge.measure(s["tasks"], s["task_hours"], res.repeat, report_repeat=res.repeat, log=res.log)
    r = pairwise(m["merge"], m["bare"])
    res.add(Row(
        f"merge of {s['tasks']} task databases ({s['task_hours']:g} h × 42 metrics × 1 Hz each, {m['input_bytes'] / 2**20:.0f} MiB)",
        spread(m["merge"], secs), f"bare `ATTACH … INSERT … SELECT`: {spread(m['bare'], secs)}",
        f"**{times(med(r))}** ({', '.join(times(x) for x in r)})", "≤ 1.2×", med(r) <= 1.2, "`python bench/merge.py`",
        "merge",
    ))  # fmt: skip
    res.add(Row(
        f"`aetherium-hpc report --quiet --html` on that merged DB ({m['merged_bytes'] / 2**20:.0f} MiB; fresh interpreter, plots included)",
        f"**{spread(m['report'], secs)}**", f"no peer; for scale, a re-merge of the same inputs (adds nothing): {spread(m['remerge'], secs)}",
        "–", "–", None, "`python -m bench --only merge`", "report",
    ))  # fmt: skip


SCALE_LINEAR = 1.25  # per-input cost at the largest step / at the smallest: "linear" within noise
SCALE_RSS_MIB = 256.0  # SQLite's page cache of the output is capped at 64 MiB (merge.open_output)
SCALE_FDS = 16
SCALE_REPORT = 3.0  # report of the 1,000-task array / of 100 tasks (10x the data)


def run_scale(res: Results, s: dict[str, Any]) -> None:
    base_tasks = min(scale.REPORT_BASE_TASKS, max(1, s["scale_tasks"] // 10))
    m = scale.measure(s["scale_tasks"], s["scale_minutes"], s["scale_steps"], repeat=1, log=res.log,
                      report_repeat=res.repeat, report_base_tasks=base_tasks)  # fmt: skip
    steps = m["steps"]
    ns = sorted(steps)
    per = {n: steps[n][0]["per_input_ms"] for n in ns}
    rss = {n: steps[n][0]["rss_mib"] for n in ns}
    fds = {n: steps[n][0]["fds"] for n in ns}
    grow = per[ns[-1]] / per[ns[0]]
    cmd = f"`python bench/scale.py --tasks {s['scale_tasks']}`"
    what = (f"merge of a {s['scale_tasks']:,}-task array × 2 nodes ({m['files']:,} node databases, "
            f"{s['scale_minutes']:g} min × 42 metrics × 1 Hz each, {m['input_bytes'] / 2**20:.0f} MiB), each count in one "
            "pass in a fresh interpreter")  # fmt: skip
    res.add(Row(
        what + ": time per input",
        "**" + ", ".join(f"{n:,}: {per[n]:.1f} ms" for n in ns) + "**",
        f"the same merge of the first {ns[0]:,}: {per[ns[0]]:.1f} ms an input",
        f"**{times(grow)}** at {ns[-1]:,} (linear: 1×)", f"≤ {SCALE_LINEAR:g}× (linear)", grow <= SCALE_LINEAR, cmd,
        "scale_time",
    ))  # fmt: skip
    res.add(Row(
        "the same merges: peak RSS of the interpreter, most file descriptors open at once",
        "**" + ", ".join(f"{n:,}: {rss[n]:.0f} MiB / {fds[n]:.0f} fds" for n in ns) + "**",
        "bounded: SQLite's page cache of the output is capped at 64 MiB, at most 8 inputs attached at a time", "–",
        f"≤ {SCALE_RSS_MIB:.0f} MiB, ≤ {SCALE_FDS} fds at every count",
        max(rss.values()) <= SCALE_RSS_MIB and max(fds.values()) <= SCALE_FDS, cmd, "scale_memory",
    ))  # fmt: skip
    rep = m["report"]
    if rep["full"]:
        r = pairwise(rep["full"], rep["base"])
        res.add(Row(
            f"`aetherium-hpc report --quiet --html` on the merge of all {m['files']:,} (fresh interpreter, plots "
            f"included; summaries across tasks above {MANY_TASKS} tasks)",
            f"**{spread(rep['full'], secs)}**",
            f"the same on the merge of the first {base_tasks} tasks ({2 * base_tasks} databases): "
            f"{spread(rep['base'], secs)}",
            f"**{times(med(r))}** ({', '.join(times(x) for x in r)})", f"≤ {SCALE_REPORT:g}×", med(r) <= SCALE_REPORT,
            f"`python bench/scale.py --tasks {s['scale_tasks']} --report 3`", "scale_report",
        ))  # fmt: skip


def run_edges(res: Results, s: dict[str, Any]) -> None:
    m = edges.measure(res.repeat, s["edge_records"])
    _edge_rows(res, m, "locally", "from starting the job's process", "`python bench/edges.py --local`", "")
    why = peers.slurm_ready()
    if why:
        where = "on the Slurm cluster"
        res.missing(f"start-up, {where}", f"Slurm not reachable: {why} (the local row above stands)",
                    "≤ 0.5 s added", "`python bench/edges.py --slurm`")  # fmt: skip
        res.missing(f"SIGTERM to disk, {where}", f"Slurm not reachable: {why} (the local row above stands)",
                    "≤ 1 s, every row", "`python bench/edges.py --slurm`")  # fmt: skip
        return
    m = edges.slurm_measure(res.repeat, s["edge_records"], os.environ.get("BENCH_SLURM_DIR"))
    _edge_rows(
        res, m, "on the Slurm cluster",
        "from the batch job's first line (`date +%s.%N`) through `srun`", "`python bench/edges.py --slurm`", "_slurm",
    )  # fmt: skip


def _edge_rows(res: Results, m: dict[str, Any], where: str, start: str, cmd: str, suffix: str) -> None:
    added = [o - b for o, b in zip(m["ours"], m["bare"], strict=True)]
    slurm = bool(suffix)
    res.add(Row(
        f"start-up, {where}: {start} to the first line of the user's code with the store, "
        "socket and monitor up (`aetherium-hpc run -- python -c …`)",
        f"{spread(m['ours'], secs)}: **{secs(med(added))} added** ({', '.join(secs(x) for x in added)})",
        f"the same {'step' if slurm else 'command'} started bare: {spread(m['bare'], secs)}", "–", "≤ 0.5 s added",
        med(added) <= 0.5, cmd, "startup" + suffix,
    ))  # fmt: skip
    complete = all(n == m["records"] for n in m["rows"])
    signal = (
        "plain `scancel` of the job (SIGTERM to its steps and batch script) until the copy in the run directory "
        "holds every row and the final status (polled read-only)"
        if slurm
        else "SIGTERM to its process group (as `scancel`) until the runtime has exited with the copy in the run "
        "directory"
    )
    res.add(Row(
        f"SIGTERM to disk, {where}: a command has logged {m['records']:,} training rows through the node socket; "
        + signal,
        f"**{spread(m['term'], secs)}**; rows in the copy: {', '.join(f'{n:,}' for n in m['rows'])}",
        "–", "–", "≤ 1 s, every row", med(m["term"]) <= 1.0 and complete, cmd, "sigterm" + suffix,
    ))  # fmt: skip


SUBMIT_PAIRS = 9  # cheap and noisy (sbatch, slurmctld and the file system share the CPUs): many pairs
SUBMIT_SETTLE_S = 0.3  # after each submit and its scancel, before the next one


def run_submit(res: Results, s: dict[str, Any]) -> None:
    n = s["array"]
    what = f"submit of a {n:,}-task array on the Slurm cluster (held with `--hold` on both sides, cancelled at once)"
    cmd = "`python -m bench --only submit`"
    why = peers.slurm_ready()
    if why:
        res.missing(what, f"Slurm not reachable: {why}", "≤ 1.2× submitit", cmd)
        return
    _wait_for_room(1000, 400.0, settled=True)
    ours, theirs = submit_pairs(n, max(res.repeat, SUBMIT_PAIRS))
    r = pairwise([w for w, _ in ours], [w for w, _ in theirs])
    cpu = pairwise([c for _, c in ours], [c for _, c in theirs])
    res.add(Row(
        what + f": `launch.submit` of a config (validation, run directory, job records), {len(ours)} pairs "
        "after one warm-up pair, which side goes first alternating",
        spread([w for w, _ in ours], secs),
        f"submitit {peers.version('submitit')} `AutoExecutor.map_array` of a trivial function: "
        f"{spread([w for w, _ in theirs], secs)}",
        f"**{times(med(r))}** ({', '.join(times(x) for x in r)}); CPU of the submitting process "
        f"{times(med(cpu))} ({', '.join(times(x) for x in cpu)})",
        "≤ 1.2× submitit", med(r) <= 1.2, cmd, "submit",
    ))  # fmt: skip


def submit_pairs(n: int, pairs: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(ours, submitit) (wall, CPU) seconds of ``pairs`` pairs; a first pair (imports, cold caches) is
    not counted, and the side measured first alternates, so neither always runs after the other's scancel."""
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SLURM_DIR")) as d:
        for r in range(pairs + 1):
            sides = [("ours", peers.ours_submit, ours), ("submitit", peers.submitit_submit, theirs)]
            for name, fn, out in sides if r % 2 else sides[::-1]:
                _wait_for_room(n)
                took = fn(n, os.path.join(d, f"{name}{r}"))
                if r:
                    out.append(took)
                time.sleep(SUBMIT_SETTLE_S)
    return ours, theirs


def _wait_for_room(n: int, most_s: float = 360.0, *, settled: bool = False) -> None:
    """Wait (untimed) until slurmctld can take ``n`` more job records; with ``settled``, until at
    most ``n`` records are left at all.

    A cancelled array's tasks stay job records for MinJobAge (300 s by default) and count towards
    MaxJobCount; a submit past it makes sbatch sleep and retry, which once made a pair 232x. Tens of
    thousands of records also slow both sides' submits several times over, so the section starts
    settled (back-to-back runs of `--only submit` then start alike). Gives up after ``most_s`` (the
    submit is then measured as it goes)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"^MaxJobCount\s*=\s*(\d+)", config.stdout, re.MULTILINE)
    if found is None:
        return
    most_records = n if settled else int(found.group(1)) - n - 100
    deadline = time.monotonic() + most_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                             timeout=30, check=False)  # fmt: skip
        if out.returncode != 0 or len(out.stdout.splitlines()) <= most_records:
            return
        time.sleep(2.0)


def run_central(res: Results, s: dict[str, Any]) -> None:
    cmd = "`python -m bench --only central`"
    why = central.unreachable()
    if why:
        for what, target in (("log call and monitor sample with the central sender", "≤ 1.1× without"),
                             ("rows per second into PostgreSQL (push vs bare COPY)", "–")):  # fmt: skip
            res.missing(what, why, target, cmd)
        return
    job = central.measure_job(s["central_seconds"], res.repeat)
    r = pairwise(job["call_on"], job["call_off"])
    res.add(Row(
        f"log call p50 with the central sender pushing every 1 s (10 Hz monitor, {s['central_seconds']:g} s training loop)",
        f"**{spread(job['call_on'], us)}**", f"no sender, interleaved: {spread(job['call_off'], us)}",
        f"**{times(med(r))}** ({', '.join(times(x) for x in r)})", "≤ 1.1×", med(r) <= 1.1, cmd, "central_call",
    ))  # fmt: skip
    r = pairwise(job["sample_on"], job["sample_off"])
    res.add(Row(
        "monitor CPU per sample (its own `monitor/sample_cpu_ms`) with the central sender (1-s interval) streaming "
        f"the training loop's {med(job['rows_per_s_on']):,.0f} rows/s (it never sleeps at that rate)",
        f"**{spread(job['sample_on'], ms)}**", f"no sender, interleaved: {spread(job['sample_off'], ms)}",
        f"**{times(med(r))}** ({', '.join(times(x) for x in r)})", "≤ 1.1×", med(r) <= 1.1, cmd, "central_monitor",
    ))  # fmt: skip
    rates = central.measure_rates(s["central_rows"], res.repeat)
    r = pairwise(rates["push"], rates["copy"])
    e = pairwise(rates["executemany"], rates["copy"])
    res.add(Row(
        f"{s['central_rows']:,} training rows into PostgreSQL by the push (`merge --into`: INSERT ... SELECT FROM "
        "unnest(one array parameter per column) ON CONFLICT DO NOTHING on the unique key)",
        f"**{spread(rates['push'], rate)}**",
        f"bare binary `COPY` into an unindexed table: {spread(rates['copy'], rate)}; executemany (pipelined) "
        f"+ ON CONFLICT: {spread(rates['executemany'], rate)} ({pct(med(e))} of COPY)",
        f"**{pct(med(r))}** of bare COPY ({', '.join(pct(x) for x in r)})", "–", None, cmd, "central_rate",
    ))  # fmt: skip


def run_central_scale(res: Results, s: dict[str, Any]) -> None:
    """The server's side of a lab: N senders straight to PostgreSQL, then through PgBouncer."""
    cmd = "`python bench/central_scale.py [--pgbouncer]`"
    n = s["fleet_nodes"]
    for bouncer, variable in ((False, central.URL_VARIABLE), (True, central_scale.BOUNCER_VARIABLE)):
        way = (
            "through PgBouncer (transaction pooling)" if bouncer else "straight to PostgreSQL, one connection per push"
        )
        what = f"{n} node senders {way}, 20 series at 1 Hz each, a push every 5 s: server CPU per push"
        why = central.unreachable(variable)
        if why:
            res.missing(what, why, "–", cmd)
            continue
        runs = [central_scale.measure(os.environ[variable], n, 20, s["fleet_seconds"], bouncer=bouncer)
                for _ in range(res.repeat)]  # fmt: skip
        if any(r["cpu_per_push_ms"] is None for r in runs):
            res.missing(what, "the server does not run on this machine (its CPU cannot be read)", "–", cmd)
            continue
        cpu = [r["cpu_per_push_ms"] for r in runs]
        bare = [r["connect_cpu_ms"] for r in runs]
        extra = ""
        if bouncer:
            extra = f"; PgBouncer's own CPU per push {spread([r['pgbouncer_per_push_ms'] for r in runs], ms)}"
        res.add(Row(
            what,
            f"**{spread(cpu, ms)}** at {spread([r['pushes_per_s'] for r in runs], rate)} pushes; WAL "
            f"{spread([r['wal_per_sample'] for r in runs], lambda x: f'{x:.0f} B')}/sample; peak "
            f"{max(r['peak_connections'] for r in runs)} sender connections{extra}",
            f"a bare connection (connect, SELECT 1, close): {spread(bare, ms)}",
            f"**{times(med(pairwise(cpu, bare)))}** a bare connection", "–", None, cmd, f"central_scale_{int(bouncer)}",
        ))  # fmt: skip


RUNNERS: dict[str, Callable[[Results, dict[str, Any]], None]] = {
    "ingest": run_ingest, "peers": run_peers, "monitor": run_monitor, "tree": run_tree, "window": run_window,
    "live": run_live,
    "storage": run_storage, "copyback": run_copyback, "merge": run_merge, "scale": run_scale, "edges": run_edges,
    "submit": run_submit, "central": run_central, "central_scale": run_central_scale,
}  # fmt: skip


# -- the document ---------------------------------------------------------------------------------
def machine() -> str:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " (" + line.split(":", 1)[1].strip() + ")"
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs{model}, {psutil.virtual_memory().total / 2**30:.1f} GiB, {os_name}"


def slurm_version() -> str | None:
    try:
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def versions() -> str:
    import psutil

    parts = [f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}",
             f"aetherium-hpc {peers.version('aetherium-hpc')}", f"psutil {psutil.__version__}"]  # fmt: skip
    for dist in ("submitit", "tensorboardX", "protobuf", "mlflow", "mlflow-skinny", "SQLAlchemy", "alembic", "wandb"):
        v = peers.version(dist)
        parts.append(f"{dist} {v}" if v else f"{dist} not installed")
    parts.append(slurm_version() or "Slurm not found")
    return ", ".join(parts)


SHORT = {
    "ingest": "End-to-end ingest", "latency": "Log call", "live": "Live monitor + store", "tbx": "Ingest vs tensorboardX", "monitor": "Monitor sample",
    "bytes": "Bytes per sample", "query": "Aggregate query",
    "range_sqlite": "Time range, SQLite", "range_postgres": "Time range, PostgreSQL", "merge": "Merge", "submit": "1,000-task array submit",
    "copy_bytes": "Copy-back bytes", "copy_cpu": "Copy-back CPU", "scale_time": "2,000-database merge time",
    "scale_memory": "2,000-database merge memory", "scale_report": "Report of the 2,000-database merge",
    "tree_10": "Monitor over 10 sleep children", "tree_100": "Monitor over 100 sleep children",
    "tree_500": "Monitor over 500 sleep children", "tree_first": "First flush", "live_wandb": "Live monitor vs W&B",
    "startup": "Start-up, locally", "sigterm": "SIGTERM to disk, locally",
    "startup_slurm": "Start-up on Slurm", "sigterm_slurm": "SIGTERM to disk on Slurm",
    "central_call": "Log call beside the central sender", "central_monitor": "Monitor sample beside the central sender",
}  # fmt: skip
WHY_MISSED = {
    "ingest": "the store's writer shares the cores with the producers; on 2 cores the 5 producer processes and "
    "the writer compete. More cores, or fewer worker processes per node, bring it back above 40 %.",
    "latency": "p50 above 2 µs means the logging thread waits on the GIL for the writer thread; a writer that "
    "holds the GIL for shorter stretches (smaller executemany batches) reaches it.",
    "tbx": "tensorboardX buffers protobuf events in memory and writes them from a thread; our end-to-end figure "
    "includes the SQLite commit. Batching more rows per transaction (buffer_size) would reach it.",
    "monitor": "`sample_once` reads and processes a tick on its own (no batch: every step on cold caches) "
    "and sends it to the store. The same path measured 0.38-0.42 ms in the full runs of 2026-12-07 and 0.53-0.55 "
    "ms in those of 2026-12-08, when every CPU-bound row of this VM was slower (see the aggregate query's row).",
    "live": "the row monitors a job-like tree of 10 processes, as a job has: our monitor reads each process's stat "
    "file every tick and writes per-process rows (about 0.5 ms a sample here: the Python thread's wake, the "
    "/proc reads on cold caches, 10 ticks turned into samples and committed every 5 s), where MLflow's "
    "`SystemMetricsMonitor` samples the node (CPU, memory, disk, network) whatever the job's tree. Over a process "
    "with no children (the figure before this row had a tree) it was 32-44x.",
    "tree_10": "with few processes the fixed part of a tick dominates, and what is left is mostly what any Python "
    "thread pays. Per thread (`/proc/self/task/<tid>/schedstat`, 20 s at 10 children, at 6599468 on 2026-12-08): "
    "the timed wait's wake and loop take 0.11 ms a tick (a bare Python `time.sleep` loop 0.12 ms, C's "
    "`clock_nanosleep` 0.056 ms on this VM), a tick's 14 reads 0.30 ms, the batch turned into samples (window and "
    "store's record included) about 0.09 ms and the store's writer 0.10 ms (one transaction of about 1 ms every "
    "5 s). The same process with its tick cut down to the 14 `pread`s in one `map()` (no samples, nothing "
    "stored) takes 0.40-0.41 ms, 1.6-1.8x the floor: the room left under 2.5x for the samples, the window and "
    "SQLite is about 0.2 ms, which is what they take. `perf` (cpu-clock): the kernel 41 % of our process's "
    "time, the interpreter and libc 55 %, SQLite 3 %. The pairs of one run spread over about ±10 %; with the test "
    "set-up's Slurm and PostgreSQL daemons stopped the same code measured 2.39-2.52x. A store flushed every 10 s "
    "(the monitor's batch 20 ticks, one transaction per 10 s) measured 0.91x this (4 interleaved pairs in fresh interpreters): "
    "a default that would double what a SIGKILL can lose.",
    "tree_100": "see the 10-children row; the per-process part (a pread of each stat file, a comparison with the last "
    "line) is within a few µs of the floor's.",
    "tree_500": "see the 100-children row.",
    "tree_first": "the first transaction creates the series of the processes that get rows of their own: at most "
    "16, whatever the tree; a figure this small (under a millisecond) moves with the disk and the load.",
    "central_call": "the sender's snapshot of the new rows (SQLite, in the job's process) holds the GIL about "
    "1.3 µs a row; at this rate (the loop logs as fast as it can) the sender never sleeps, and a log call that "
    "lands while it holds the GIL waits for it. At a job's usual rates (hundreds of rows a second) the sender is "
    "idle between pushes. Noisy: 0.94x and 1.35x in two full runs of the same code.",
    "window_cpu": "on this shared VM the same code measures in one of two modes from one run to the next: 10 runs "
    "of `python bench/window.py` in a row (at 96fc1d4, pinned to either CPU or not) gave medians of 6.7-7.0 µs or "
    "8.1-11.7 µs; the row's 3 runs of 2 s fall in one mode together. On 2026-12-08, when every CPU-bound row of this VM "
    "was slower, the one-tick path measured 17.3 and 19.1 µs in two full runs, and the older code of c2a7528 "
    "15-17 µs the same day; it measured 6.4 µs on 2026-12-07.",
    "central_monitor": "the sender's snapshot of the new rows (SQLite, in the job's process) holds the GIL "
    "about 1.3 µs a row; streaming tens of thousands of rows a second it never sleeps, and the monitor's thread "
    "waits for the GIL at its ticks. At a job's usual rates the sender is idle between pushes.",
    "bytes": "the chunks are too short or values too wide; longer chunks (CHUNK_SAMPLES) or fewer significant "
    "digits reach it.",
    "query": "the MIN needs every value, so SQLite decodes each chunk's JSON array (`json_each`); AVG and MAX "
    "alone could come from the chunks' `nfin`, `vsum` and `vmax`. 21.7-21.9 ms in the full runs of 2026-12-07; "
    "on 2026-12-08 the same query over the same data took 52-60 ms with this code and with 14302b7's alike "
    "(`--only storage`, three runs in a row): the VM was slower, not the query.",
    "merge": "besides the copy, merge opens each input once more (schema, truncation and quick_check of the "
    "small tables), fingerprints its sources and writes into the real schema with its indexes "
    "(`sample_chunks_by_series`, `series_by_name`), which the bare copy's `CREATE TABLE … AS` lacks; both "
    "commit (fsync) once per input, which dominates on a slow disk. Noisy under load.",
    "scale_time": "each input's commit rewrites the pages of `series_by_name` its 42 series land in (spread over "
    "the index, which grows with the output); dropping that index during a large merge and building it at the "
    "end would flatten it.",
    "scale_memory": "",
    "scale_report": "the series the report draws are decoded (six per task: about 3.6 million values for the "
    "2,000 databases) and every training and generation row becomes a Python dict (500,000 here); the "
    "plots and the page are the same size as for 100 tasks. Noisy under load.",
    "copy_bytes": "every checkpoint is one rollback-journal transaction: besides the new rows (about 1×) it "
    "rewrites, and journals, the file header, the last leaf and parent of `sample_chunks` and of each table "
    "that got rows, and `store_stats` every 10th time (about 0.9× together at 1 KiB pages). Fewer metrics or "
    "more generation/training tables touched per checkpoint raise the ratio; a longer `checkpoint_interval_s` "
    "lowers it.",
    "copy_cpu": "the increment reads the newest chunk of every series and the rows above the last copied ids; "
    "many more series (thousands of short-lived processes) make that part grow.",
    "submit": "the runner is pickled once for the whole array, MaxArraySize is asked on a thread, the YAML "
    "is built from libyaml's nodes in one pass and config.yaml's array.params written line by line; with "
    "sbatch faked and the run folder on tmpfs (the client side alone) the submit is about 1.3x submitit's: "
    "parsing and validating the config (about 7 ms) and writing config.yaml (about 2 ms), which submitit "
    "does not do. On the cluster sbatch's round trip is added to both sides (both submit held); the ratio is "
    "noisy under load (sbatch, slurmctld and the file system share the 2 CPUs), and a submit past "
    "MaxJobCount stalls (cancelled arrays keep their task records for MinJobAge), which the bench waits out.",
    "startup": "noisy on this VM: the three pairs of one run spread 0.30-0.62 s; the four full runs before, "
    "with the same start-up path, added 0.14-0.40 s.",
    "startup_slurm": "the srun step starts the runtime's interpreter, store, socket and monitor before the "
    "command; compare the local row to tell Slurm's step launch from ours.",
    "sigterm_slurm": "slurmctld and slurmd deliver the signal after scancel returns; the final copy follows the "
    "runtime's drain (compare the local row).",
}


def render(res: Results, prose: str, took: float, only: Sequence[str]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    scope = "a **quick** run (scaled-down sizes: not the documented figures)" if res.quick else "a full run"
    if set(only) != set(SECTIONS):
        scope += f", sections {', '.join(only)} only"
    lines = [
        "# Performance",
        "",
        "<!-- generated by `python -m bench` (bench/suite.py); edit the prose below the table there or here, "
        'the suite keeps the section "How the targets are reached" -->',
        "",
        "Generated by `python -m bench`"
        + (" --quick" if res.quick else "")
        + f": {scope}, {when}, {took / 60:.1f} min. "
        "Every figure is the median of "
        f"{res.repeat} runs (more where a row says so) with the spread (min–max); a ratio is taken pair by pair (the same repeat index of "
        "both sides, measured one after the other) and the median of the pairwise ratios is shown, with each "
        "pair's ratio in brackets. Absolute figures move with the load of the machine, ratios much less.",
        "",
        f"- **Machine:** {machine()}",
        f"- **Versions:** {versions()}",
        "- **Load** (1-min load average at each section's start → end; the suite itself keeps about 1 of the "
        f"{os.cpu_count()} CPUs busy, more means other work shared the machine): "
        + ", ".join(f"{k} {a:.1f} → {b:.1f}" for k, (a, b) in res.loads.items()),
        "- **Peers** come from `pip install -e '.[bench]'`; a peer not installed is said so in its row.",
        "",
        "| what | figure | baseline in the same run | ratio | target | met | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in res.rows:
        met = "–" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.what} | {row.figure} | {row.baseline} | {row.ratio} | {row.target} | {met} | {row.command} |"
        )
    if res.skipped:
        lines += ["", "Not run: " + "; ".join(res.skipped) + "."]
    missed = [row for row in res.rows if row.met is False]
    lines += ["", "## Targets missed", ""]
    if not missed:
        lines.append("None in this run.")
    for row in missed:
        name = SHORT.get(row.key, row.what.split(" (")[0])
        lines.append(f"- **{name}** ({row.target}): {row.note or WHY_MISSED.get(row.key, '')}")
    lines += ["", prose.rstrip(), ""]
    return "\n".join(lines)


def current_prose(path: Path) -> str:
    """The "How the targets are reached" section of the current document (to its end), or the fallback."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return PROSE_FALLBACK
    start = text.find("## How the targets are reached")
    return text[start:] if start >= 0 else PROSE_FALLBACK


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="scaled-down sizes (printed and written as such)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of every measurement, at least 3 [3]")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections [{','.join(SECTIONS)}]")
    ap.add_argument("--out", default=None,
                    help="markdown file to write, '-' for stdout only [docs/PERFORMANCE.md; with --quick: stdout]")  # fmt: skip
    args = ap.parse_args(argv)
    if args.repeat < 3:
        ap.error("--repeat: at least 3 (a median and a spread need them)")
    if args.out is None:
        args.out = "-" if args.quick else str(DOC)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if "SLURM_CONF" not in os.environ and os.path.exists(peers.SLURM_CONF):
        os.environ["SLURM_CONF"] = peers.SLURM_CONF  # the test cluster of slurm/cluster.sh
    sizes = QUICK if args.quick else FULL
    res = Results(quick=args.quick, repeat=args.repeat, log=lambda m: print(m, flush=True))
    print(f"python -m bench: {'QUICK run, scaled-down sizes' if args.quick else 'full run'}: {sizes}", flush=True)
    print(f"machine: {machine()}\nversions: {versions()}", flush=True)
    t_all = time.perf_counter()
    for name in only:
        print(f"\n== {name}", flush=True)
        t = time.perf_counter()
        load0 = os.getloadavg()[0]
        try:
            RUNNERS[name](res, sizes)
        except Exception as exc:  # a benchmark that breaks is reported, the others still run
            traceback.print_exc()
            res.skipped.append(f"{name} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        res.loads[name] = (load0, os.getloadavg()[0])
        print(
            f"   ({time.perf_counter() - t:.0f} s; 1-min load average {load0:.1f} -> {res.loads[name][1]:.1f})",
            flush=True,
        )
    took = time.perf_counter() - t_all
    prose = current_prose(Path(args.out)) if args.out != "-" else current_prose(DOC)
    text = render(res, prose, took, only)
    if args.out == "-":
        print("\n" + text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"\nwrote {args.out} ({took / 60:.1f} min)")
    return 0
