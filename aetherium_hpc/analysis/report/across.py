"""Summaries across the tasks of a large array: what the report shows instead of one line per task.

Above :data:`MANY_TASKS` tasks a line, a legend entry or a table row per task no longer
reads (a 1,000-task array on 2 nodes is 2,000 lines in every panel). The report then shows,
for each measure of a task (peak memory, runtime, CPU and memory efficiency against the
request, GPU utilisation, the objective of a sweep): its distribution (percentiles and a
histogram) and the tasks at both ends (:func:`summarise`, into ``data["across"]``); and for
each timeline the median with the p5–p95 and min–max bands over the tasks (:func:`bands`).
Every task's figures stay in the JSON (``data["tasks"]``, ``data["sweep"]["tasks"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..formatting import duration, memory_mb
from ..formatting import num as _num

if TYPE_CHECKING:  # (.load imports this module)
    from .load import Arr, Series

#: Tasks above which the report summarises across tasks (plots, tables, text).
MANY_TASKS = 20
#: Tasks named at each end of every measure ("highest" and "lowest").
TOP_N = 5
#: Bins of a histogram across tasks, and of the time axis of a band.
HIST_BINS = 30
BAND_BINS = 200


def summarised(n_tasks: int) -> bool:
    """Whether a report of ``n_tasks`` tasks shows summaries across tasks instead of every task."""
    return n_tasks > MANY_TASKS


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100.0 * v:.0f}%"


#: The measures of a task: key, label, where its values are ("tasks": per source; "sweep": per
#: task, the objective), how a value is written.
MEASURES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("peak_memory_mb", "peak memory", "tasks", memory_mb),
    ("runtime_s", "runtime", "tasks", duration),
    ("memory_efficiency", "memory efficiency (peak / requested)", "tasks", _pct),
    ("cpu_efficiency", "CPU efficiency (cores used / requested)", "tasks", _pct),
    ("gpu_util_pct", "GPU utilisation", "tasks", lambda v: f"{_num(v)}%"),
    ("objective_value", "objective", "sweep", lambda v: _num(v, 4)),
]
FORMAT = {key: fmt for key, _, _, fmt in MEASURES}


def summarise(tasks: list[dict[str, Any]], sweep: dict[str, Any], n_tasks: int) -> dict[str, Any]:
    """``data["across"]``: per measure, percentiles, a histogram and the :data:`TOP_N` tasks at each end.

    ``tasks``: the per-source rows (a task on one node); ``sweep``: :func:`..sweep.task_table`'s
    result (the objective is a task's, over its nodes); ``n_tasks``: the array's tasks. ``what``
    names the count (``1000 tasks (2000 task-nodes)`` when tasks ran on several nodes)."""
    nodes = f" ({len(tasks)} task-nodes)" if len(tasks) > n_tasks else ""
    out: dict[str, Any] = {"threshold": MANY_TASKS, "top_n": TOP_N, "measures": [], "tasks": n_tasks,
                           "sources": len(tasks), "what": f"{n_tasks} tasks{nodes}"}  # fmt: skip
    obj = sweep.get("objective")
    for key, label, where, _ in MEASURES:
        if where == "sweep":
            if not obj:
                continue
            label = f"final {obj['metric']} ({obj['goal']} is best)"
            rows = [(t["task"], t.get(key)) for t in sweep.get("tasks", [])]
        else:
            rows = [(t["source"], t.get(key)) for t in tasks]
        named = [(who, float(v)) for who, v in rows if v is not None and math.isfinite(v)]
        if not named:
            continue
        vals = np.asarray([v for _, v in named])
        order = np.argsort(vals, kind="stable")
        counts, edges = np.histogram(vals, bins=HIST_BINS)
        p5, p50, p95 = (float(x) for x in np.percentile(vals, [5, 50, 95]))
        out["measures"].append({
            "key": key, "label": label, "n": int(vals.size), "per": "task" if where == "sweep" or not nodes else "task-node",
            "min": float(vals[order[0]]), "p5": p5, "p50": p50, "p95": p95, "max": float(vals[order[-1]]),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            "highest": [{"task": named[i][0], "value": named[i][1]} for i in order[::-1][:TOP_N]],
            "lowest": [{"task": named[i][0], "value": named[i][1]} for i in order[:TOP_N]],
        })  # fmt: skip
    return out


def resource_spread(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric (type, name, unit; every device together): p5 / p50 / p95 / max over the
    sources of their average and of their maximum (instead of one row per node and series)."""
    groups: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
    for r in resources:
        avg, mx = groups.setdefault((r["metric_type"], r["metric_name"], r["unit"]), ([], []))
        if r["avg"] is not None:
            avg.append(r["avg"])
        if r["max"] is not None:
            mx.append(r["max"])
    out = []
    for (mtype, name, unit), (avg, mx) in sorted(groups.items()):
        row: dict[str, Any] = {
            "metric_type": mtype,
            "metric_name": name,
            "unit": unit,
            "series": max(len(avg), len(mx)),
        }
        for what, vals in (("avg", avg), ("max", mx)):
            p = np.percentile(vals, [5, 50, 95]) if vals else [None] * 3
            row[what] = {
                "p5": _float(p[0]),
                "p50": _float(p[1]),
                "p95": _float(p[2]),
                "max": max(vals) if vals else None,
            }
        out.append(row)
    return out


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def bands(picked: Sequence[Series], bins: int = BAND_BINS) -> dict[str, Arr] | None:
    """Median, p5–p95 and min–max over ``picked`` series against the time since each one's first
    sample: ``x`` (seconds, bin centres) and ``p50``, ``p5``, ``p95``, ``min``, ``max``, ``n`` (series
    with samples in the bin); each series counts once per bin (its mean there)."""
    live = [s for s in picked if s.t.size]
    if not live:
        return None
    span = max(float(s.t[-1] - s.t[0]) for s in live) or 1.0
    width = span / bins
    grid = np.full((len(live), bins), np.nan)
    for row, s in enumerate(live):
        idx = np.minimum(((s.t - s.t[0]) / width).astype(np.int64), bins - 1)
        ok = np.isfinite(s.v)
        sums = np.bincount(idx[ok], weights=s.v[ok], minlength=bins)
        counts = np.bincount(idx[ok], minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            grid[row] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    n = np.sum(np.isfinite(grid), axis=0)
    keep = n > 0
    grid = grid[:, keep]
    p5, p50, p95 = np.nanpercentile(grid, [5, 50, 95], axis=0)
    x = (np.arange(bins)[keep] + 0.5) * width
    return {"x": x, "p5": p5, "p50": p50, "p95": p95, "min": np.nanmin(grid, axis=0),
            "max": np.nanmax(grid, axis=0), "n": n[keep]}  # fmt: skip


def band_of_rows(rows: Sequence[tuple[float, float]]) -> dict[str, Arr] | None:
    """The same over (x, value) pairs with a discrete x (a chunk number, an epoch): per x, over the tasks."""
    if not rows:
        return None
    arr = np.asarray(rows, dtype=np.float64)
    arr = arr[np.isfinite(arr[:, 1])]
    if not arr.size:
        return None
    xs = np.unique(arr[:, 0])
    stats = {k: np.empty(xs.size) for k in ("p5", "p50", "p95", "min", "max", "n")}
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    splits = np.searchsorted(arr[:, 0], xs[1:])
    for i, vals in enumerate(np.split(arr[:, 1], splits)):
        stats["p5"][i], stats["p50"][i], stats["p95"][i] = np.percentile(vals, [5, 50, 95])
        stats["min"][i], stats["max"][i], stats["n"][i] = vals.min(), vals.max(), vals.size
    return {"x": xs, **stats}
