"""The lab's view: every job of a report side by side, the most wasteful first.

When the database holds several jobs (a central store read with ``--since`` / ``--user``, or a
merge of several runs), :func:`summarise` puts into ``data["lab"]`` one row per job: who
submitted it, its tasks and their states, what it requested (cores, memory, GPUs, time limit),
how much of that it used (CPU and memory efficiency, GPU utilisation, runtime against the
limit) and the requested capacity it held unused:

* core-hours: per task ``max(0, cores requested - cores busy on average) * runtime``;
* GB-hours: per task ``max(0, memory requested - peak memory) * runtime``;
* GPU-hours idle: per task ``GPUs requested * (1 - mean utilisation) * runtime``.

Jobs are sorted by the two first together, in core-hour equivalents with memory counted at
:data:`GB_PER_CORE` GB per core (the share of memory that comes with a core on a typical
node), so a job that holds 64 GB unused ranks with one that holds 16 cores unused. Each job
keeps its per-task rows and its ``--mem`` / ``--time`` / ``--cpus-per-task`` / ``--gres``
advice, written by :func:`.compute.efficiency` from that job's tasks alone (the same sentences
a report of that job gives).

The per-task figures are those of :attr:`..Report.data` ``["tasks"]`` (one source: a task on
one node, its last attempt), computed once by :mod:`.compute`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ...paths import RunLayout
from .load import Loaded

#: Memory that counts as one core when jobs are ranked by waste (core-hour equivalents).
GB_PER_CORE = 4.0

Efficiency = Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]


def job_key(job_id: str | None, array_job_id: str | None) -> str:
    """A source's job: its array job, else its job id (``local`` for a store outside any job)."""
    return str(array_job_id or job_id or "local")


def spans_jobs(loaded: Loaded) -> bool:
    """Whether the database holds more than one job (the report then shows the lab view)."""
    return len({job_key(s.job_id, s.array_job_id) for s in loaded.sources.values()}) > 1


def summarise(loaded: Loaded, tasks: list[dict[str, Any]], efficiency: Efficiency) -> dict[str, Any]:
    """``data["lab"]``: one row per job, sorted by waste, each with its task rows and advice.

    ``tasks``: the report's per-source rows (``data["tasks"]``); ``efficiency``:
    :func:`.compute.efficiency`, applied to each job's tasks and job rows."""
    sources = loaded.sources
    job_of_source = {sid: job_key(s.job_id, s.array_job_id) for sid, s in sources.items()}
    rows_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for j in loaded.jobs:
        rows_of[job_of_source.get(j["source_id"], "local")].append(j)
    tasks_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        tasks_of[job_of_source.get(t["source_id"], "local")].append(t)
    jobs = [
        _job(key, tasks_of.get(key, []), rows_of.get(key, []), efficiency)
        for key in sorted(set(job_of_source.values()))
    ]
    jobs.sort(key=lambda j: (-(j["waste_core_hours_eq"] or 0.0), j["job"]))
    users: dict[str, dict[str, Any]] = {}
    for j in jobs:
        u = users.setdefault(j["user"] or "-", {"jobs": 0, "tasks": 0, "wasted_core_hours": 0.0,
                                                "wasted_gb_hours": 0.0, "idle_gpu_hours": 0.0})  # fmt: skip
        u["jobs"] += 1
        u["tasks"] += j["tasks"]
        for k in ("wasted_core_hours", "wasted_gb_hours", "idle_gpu_hours"):
            u[k] += j[k] or 0.0
    return {"gb_per_core": GB_PER_CORE, "jobs": jobs, "users": dict(sorted(users.items()))}


def _job(key: str, tasks: list[dict[str, Any]], rows: list[dict[str, Any]], efficiency: Efficiency) -> dict[str, Any]:
    last = [r for r in rows if not r.get("superseded")]
    counts: dict[str, int] = defaultdict(int)
    for r in last:
        counts[str(r.get("status"))] += 1
    req = _requested(tasks)
    per_task = [_task(t) for t in tasks]
    core_req = core_used = gpu_req = gpu_busy = 0.0
    for t, w in zip(tasks, per_task, strict=True):
        hours = w["runtime_h"]
        cpus = t["requested"].get("cpus")
        if hours is not None and _positive(cpus) and t["cpu_cores"] is not None:
            core_req += cpus * hours
            core_used += t["cpu_cores"] * hours
        gpus = t["requested"].get("gpus")
        if hours is not None and _positive(gpus) and t["gpu_util_pct"] is not None:
            gpu_req += gpus * hours
            gpu_busy += gpus * hours * t["gpu_util_pct"] / 100.0
    mem = [t["memory_efficiency"] for t in tasks if t["memory_efficiency"] is not None]
    runtimes = [t["runtime_s"] for t in tasks if t["runtime_s"] is not None]
    limit = req.get("timeout_min")
    wasted = {k: _total(per_task, k) for k in ("wasted_core_hours", "wasted_gb_hours", "idle_gpu_hours")}
    eq = None
    if wasted["wasted_core_hours"] is not None or wasted["wasted_gb_hours"] is not None:
        eq = (wasted["wasted_core_hours"] or 0.0) + (wasted["wasted_gb_hours"] or 0.0) / GB_PER_CORE
    return {
        "job": key,
        "user": next((r["user_name"] for r in rows if r.get("user_name")), None),
        "name": _name(rows),
        "tasks": len(tasks),
        "statuses": dict(sorted(counts.items())),
        "status": ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if len(counts) > 1 else next(iter(counts), "-"),
        "requested": req,
        "cpu_efficiency": core_used / core_req if core_req else None,
        "memory_efficiency": max(mem) if mem else None,  # the peak of the most demanding task
        "gpu_util_pct": 100.0 * gpu_busy / gpu_req if gpu_req else None,
        "runtime_max_s": max(runtimes) if runtimes else None,
        "time_efficiency": max(runtimes) / 60.0 / limit if runtimes and _positive(limit) else None,
        **wasted,
        "waste_core_hours_eq": eq,
        "advice": efficiency(tasks, rows)["advice"] if tasks else [],
        "task_rows": per_task,
    }  # fmt: skip


def _task(t: dict[str, Any]) -> dict[str, Any]:
    """One task's use and the requested capacity it held unused."""
    req = t["requested"]
    hours = t["runtime_s"] / 3600.0 if t["runtime_s"] is not None else None
    cpus, mem_gb, gpus = req.get("cpus"), req.get("mem_gb"), req.get("gpus")
    peak_gb = t["peak_memory_mb"] / 1024.0 if t["peak_memory_mb"] is not None else None
    known = hours is not None
    return {
        "source": t["source"], "status": t["status"], "runtime_s": t["runtime_s"], "runtime_h": hours,
        "cpu_cores": t["cpu_cores"], "cpu_efficiency": t["cpu_efficiency"], "peak_memory_mb": t["peak_memory_mb"],
        "memory_efficiency": t["memory_efficiency"], "gpu_util_pct": t["gpu_util_pct"],
        "wasted_core_hours": max(0.0, cpus - t["cpu_cores"]) * hours
        if known and _positive(cpus) and t["cpu_cores"] is not None else None,
        "wasted_gb_hours": max(0.0, mem_gb - peak_gb) * hours if known and _positive(mem_gb) and peak_gb is not None
        else None,
        "idle_gpu_hours": gpus * max(0.0, 1.0 - t["gpu_util_pct"] / 100.0) * hours
        if known and _positive(gpus) and t["gpu_util_pct"] is not None else None,
    }  # fmt: skip


def _requested(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """What the job asked for per task: the largest request of its tasks, per resource."""
    out: dict[str, Any] = {}
    for key in ("cpus", "mem_gb", "gpus", "timeout_min"):
        vals = [t["requested"][key] for t in tasks if _positive(t["requested"].get(key))]
        if vals:
            out[key] = max(vals)
    return out


def _name(rows: list[dict[str, Any]]) -> str | None:
    """The configuration's name, else the run directory's."""
    for r in rows:
        try:
            cfg = json.loads(r["config"]) if isinstance(r.get("config"), str) else r.get("config")
        except ValueError:
            cfg = None
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) and cfg["name"]:
            return str(cfg["name"])
    for r in rows:
        run = RunLayout.run_of(r.get("config"), r.get("source_path"))
        if run:
            return run
    return None


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return sum(vals) if vals else None


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
