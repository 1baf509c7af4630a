"""What the report concludes: statistics per node, round, metric and task, and advice.

:func:`conclude` turns what :mod:`.load` read into :attr:`..Report.data`, plain JSON-able
values that the text, the HTML page and ``--json`` all show: run span, resources per node,
data-generation rounds, training finals and bests, per-task peaks, their spread across an
array, the ranking of a sweep, and ``--mem`` / ``--time`` / ``--cpus-per-task`` advice
against what was requested; of several jobs, the lab view (:mod:`.lab`): each job's use and
waste, with the same advice for that job alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..formatting import duration as fmt_duration
from ..formatting import memory_gb, memory_mb, minutes, pct, requeued, slurm_time
from ..formatting import num as _num
from ..sweep import higher_is_better, is_schedule, task_key, task_label, task_table
from . import across, lab
from .load import Loaded, Series, Source, nanstat

#: Headroom on top of the largest observed use when advising --mem / --time.
HEADROOM = 1.2


def conclude(loaded: Loaded, sacct: dict[str, Any], objective: str | None = None) -> dict[str, Any]:
    """The report's figures and conclusions as JSON-able values (:attr:`..Report.data`).

    ``sacct``: the accounting figures of :func:`.load.resolve_unfinished`; ``objective``:
    ``METRIC[:min|max]`` that ranks the tasks of an array (:func:`..sweep.task_table`)."""
    data = _figures(loaded)
    sources = loaded.sources
    source_task = {s.sid: task_key(s.job_id, s.array_job_id, s.task) for s in sources.values()}
    data["sweep"] = task_table(loaded.jobs, loaded.training, data["tasks"], source_task, objective)
    data["missing"] = sacct.pop("missing", [])  # tasks the run submitted that left no database
    data["sacct"] = sacct
    data["differences"] = status_differences(data["jobs"], sacct)
    n_tasks = len(set(source_task.values()))
    data["array"]["summarised"] = across.summarised(n_tasks)
    if data["array"]["summarised"]:
        data["across"] = across.summarise(data["tasks"], data["sweep"], n_tasks)
        data["across"]["resources"] = across.resource_spread(data["resources"])
    if lab.spans_jobs(loaded):  # several jobs: one row each, most wasteful first, with its own advice
        data["lab"] = lab.summarise(loaded, data["tasks"], efficiency)
    return data


def _figures(loaded: Loaded) -> dict[str, Any]:
    path, sources, series, jobs, span = loaded.path, loaded.sources, loaded.series, loaded.jobs, loaded.span
    generation, training, n_samples, n_series = loaded.generation, loaded.training, loaded.n_samples, loaded.n_series
    starts = [j["start_time"] for j in jobs if j.get("start_time") is not None] + ([span[0]] if span[0] else [])
    ends = [j["end_time"] for j in jobs if j.get("end_time") is not None] + ([span[1]] if span[1] else [])
    start, end = (min(starts) if starts else None), (max(ends) if ends else None)
    data: dict[str, Any] = {
        "database": path,
        "generated_at": _dt.datetime.now(tz=_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "start": start,
            "end": end,
            "start_utc": _ts(start),
            "end_utc": _ts(end),
            "duration_s": _f(end - start) if start is not None and end is not None else None,
            "sources": len(sources),
            "jobs": len({(s.job_id, s.task) for s in sources.values()}),
            "nodes": sorted({s.node for s in sources.values() if s.node}),
            "name": _run_name(path, jobs),
            "job_ids": sorted(
                {str(s.array_job_id or s.job_id) for s in sources.values() if s.array_job_id or s.job_id}
            ),
        },  # fmt: skip
        "samples": {
            "resource": int(n_samples),
            "series": int(n_series),
            "generation": len(generation),
            "training": len(training),
        },  # fmt: skip
    }
    # Resources per node (source): average and maximum of every cpu / ram / gpu series.
    res = []
    for s in sorted(
        series, key=lambda s: (sources[s.sid].label if s.sid in sources else "", s.mtype, s.mname, s.device)
    ):
        src = sources.get(s.sid)
        avg, mx = s.mean_max()
        res.append({
            "source": src.label if src else str(s.sid), "source_id": s.sid,
            "job_id": src.job_id if src else None, "array_task_id": src.task if src else None,
            "node": src.node if src else None, "attempt": src.attempt if src else None,
            "metric_type": s.mtype, "metric_name": s.mname, "device": s.device, "unit": s.unit,
            "samples": s.count, "avg": avg, "max": mx,
        })  # fmt: skip
    data["resources"] = res
    data["generation"] = _generation_rounds(generation)
    data["training"] = _training_summary(training, sources)
    data["jobs"] = [
        {
            "source": sources[j["source_id"]].label if j["source_id"] in sources else str(j["source_id"]),
            "job_id": j["job_id"],
            "array_job_id": j["array_job_id"],
            "array_task_id": j["array_task_id"],
            "node": j["node"],
            "attempt": j.get("attempt"),
            "status": j["status"],
            "exit_code": j["exit_code"],
            "start_utc": _ts(j["start_time"]),
            "end_utc": _ts(j["end_time"]),
            "runtime_s": _f(j["end_time"] - j["start_time"]) if j["start_time"] and j["end_time"] else None,
            "requested": _requested(j.get("requested")),
            "detail": j.get("detail"),
            # set when the database said running after the job had ended: sacct | squeue | process
            "resolved_from": j.get("resolved_from"),
            "recorded_status": j.get("recorded_status"),
            "superseded": bool(j.get("superseded")),  # a later attempt of the task followed
        }  # fmt: skip
        for j in jobs
    ]
    data["requeues"] = requeues(sources, data["jobs"])
    tasks = _per_task(sources, series, jobs, loaded.superseded)
    data["tasks"] = tasks
    data["array"] = {
        "tasks": len(tasks),
        "over": spread_of(tasks, jobs),  # what "tasks" counts, in words: 4 tasks | the 2 nodes of 1 task | ...
        "peak_memory_mb": _dist([t["peak_memory_mb"] for t in tasks if t["peak_memory_mb"] is not None]),
        "runtime_s": _dist([t["runtime_s"] for t in tasks if t["runtime_s"] is not None]),
        "gpu_utilization_pct": _dist([t["gpu_util_pct"] for t in tasks if t["gpu_util_pct"] is not None]),
        "cpu_cores_used": _dist([t["cpu_cores"] for t in tasks if t["cpu_cores"] is not None]),
    }
    data["efficiency"] = efficiency(tasks, jobs)
    return data


def _requested(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return dict(parsed) if isinstance(parsed, dict) else {}


def _generation_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["operation"], r["round_number"])].append(r)
    out = []
    for (op, rnd), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        dur = [r["duration_seconds"] for r in rs if r["duration_seconds"] is not None]
        samples = [r["samples_generated"] for r in rs if r["samples_generated"] is not None]
        mem = [r["memory_used_mb"] for r in rs if r["memory_used_mb"] is not None]
        first = min(r["timestamp"] - (r["duration_seconds"] or 0.0) for r in rs)
        wall = max(r["timestamp"] for r in rs) - first
        out.append({
            "operation": op, "round": rnd, "chunks": len(rs), "samples": sum(samples) if samples else None,
            "duration_total_s": _f(sum(dur)) if dur else None, "duration_mean_s": _f(np.mean(dur)) if dur else None,
            "duration_max_s": _f(max(dur)) if dur else None, "wall_s": _f(wall),
            "throughput_per_chunk_s": _f(sum(samples) / sum(dur)) if samples and dur and sum(dur) > 0 else None,
            "throughput_wall_s": _f(sum(samples) / wall) if samples and wall > 0 else None,
            "memory_mean_mb": _f(np.mean(mem)) if mem else None, "memory_max_mb": _f(max(mem)) if mem else None,
        })  # fmt: skip
    return out


def _training_summary(rows: list[dict[str, Any]], sources: dict[int, Source]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["metric_value"] is not None:
            groups[(r["metric_name"], r["phase"] or "")].append(r)
    out = []
    for (name, phase), rs in sorted(groups.items()):
        higher = higher_is_better(name)
        schedule = is_schedule(name)  # a learning rate is set, not achieved: no "best" of it
        order = rs  # in (round, epoch, time) order, as .load reads them
        finite = [r for r in rs if math.isfinite(r["metric_value"])]
        best = (max if higher else min)(finite, key=lambda r: r["metric_value"]) if finite and not schedule else None
        last_by_source: dict[int, dict[str, Any]] = {}
        for r in order:
            last_by_source[r["source_id"]] = r
        final = order[-1]
        finals = [r["metric_value"] for r in last_by_source.values()]
        out.append({
            "metric_name": name, "phase": phase, "count": len(rs),
            "goal": None if schedule else "max" if higher else "min",
            "final": _f(final["metric_value"]), "final_round": final["round_number"], "final_epoch": final["epoch_number"],
            "final_source": sources[final["source_id"]].label if final["source_id"] in sources else None,
            "final_median_over_sources": _f(float(np.median(finals))) if len(finals) > 1 else None,
            "best": _f(best["metric_value"]) if best else None,
            "best_round": best["round_number"] if best else None, "best_epoch": best["epoch_number"] if best else None,
            "best_source": sources[best["source_id"]].label if best and best["source_id"] in sources else None,
            "sources": len(last_by_source),
        })  # fmt: skip
    return out


def _pick(by_key: dict[tuple[int, str, str], list[Series]], sid: int, mtype: str, names: Sequence[str]) -> list[Series]:
    for name in names:
        found = by_key.get((sid, mtype, name))
        if found:
            return found
    return []


#: The database's status and the sacct state that say the same.
_SAME = {"completed": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED", "timeout": "TIMEOUT",
         "preempted": "PREEMPTED", "requeued": "REQUEUED"}  # fmt: skip


def status_differences(jobs: list[dict[str, Any]], sacct: dict[str, Any]) -> list[str]:
    """Where a task's own status and Slurm accounting disagree, one line saying why."""
    from ..final_status import slurm_name

    by_job = {str(r["job"]): r for r in sacct.get("rows", [])}
    out = []
    for j in jobs:
        row = by_job.get(str(slurm_name(j["job_id"], j["array_job_id"], j["array_task_id"])))
        if row is None or j["superseded"] or j.get("resolved_from") or not row.get("state"):
            continue
        state, status = str(row["state"]).split()[0], str(j["status"])
        if _SAME.get(status) == state or state in ("RUNNING", "PENDING", "REQUEUED"):
            continue
        said = f"{j['source']}: the database says {status}, sacct {state} (exit {row.get('exit_code') or '-'})"
        if status in ("timeout", "preempted") and state in ("FAILED", "COMPLETED", "CANCELLED"):
            said += (": the job stopped at Slurm's warning signal (USR2), which may come up to a minute before "
                     "the time limit, after saving its metrics; Slurm saw it end before the limit (submitit ends "
                     "a timed-out job that has no checkpoint with an error)")  # fmt: skip
        else:
            said += ": the database tells how the workload ended, sacct how the whole allocation did"
        out.append(said)
    return out


def requeues(sources: dict[int, Source], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every requeued task: how often (Slurm's count), and how its last attempt ended."""
    last: dict[tuple[str, int], Source] = {}
    for s in sources.values():
        if s.requeued and (s.task_key not in last or s.attempt > last[s.task_key].attempt):
            last[s.task_key] = s
    status = {j["source"]: j["status"] for j in jobs}
    out = []
    for key, src in sorted(last.items()):
        end = status.get(src.label) or "no end recorded"
        out.append({"task": task_label(key), "requeues": src.attempt, "last_attempt": src.attempt + 1,
                    "status": status.get(src.label), "text": requeued(src.attempt, end)})  # fmt: skip
    return out


def _per_task(
    sources: dict[int, Source], series: list[Series], jobs: list[dict[str, Any]], superseded: frozenset[int]
) -> list[dict[str, Any]]:
    """Peak memory, runtime, GPU and CPU use of every source (one task on one node) of its last attempt."""
    job_of = {j["source_id"]: j for j in jobs}
    with_data = ({s.sid for s in series} | set(job_of)) - superseded
    by_key: dict[tuple[int, str, str], list[Series]] = defaultdict(list)
    span: dict[int, tuple[float, float]] = {}
    for s in series:
        by_key[(s.sid, s.mtype, s.mname)].append(s)
        if not s.t.size:  # values only (a large array's series that are not drawn)
            continue
        lo, hi = span.get(s.sid, (math.inf, -math.inf))
        span[s.sid] = (min(lo, float(s.t[0])), max(hi, float(s.t[-1])))
    out = []
    for sid in sorted(with_data):
        src = sources.get(sid)
        mem = _pick(by_key, sid, "ram", ("process_tree_rss", "system_used"))
        gpu = _pick(by_key, sid, "gpu", ("utilization",))
        cpu = _pick(by_key, sid, "cpu", ("process_tree",))
        peak = mem[0].mean_max()[1] if mem else None
        gpu_util = _pooled_mean(gpu) if gpu else None
        cores = cpu[0].mean_max()[0] if cpu else None
        job = job_of.get(sid, {})
        runtime = None
        if job.get("start_time") is not None and job.get("end_time") is not None:
            runtime = job["end_time"] - job["start_time"]
        elif sid in span:
            runtime = span[sid][1] - span[sid][0]
        req = _requested(job.get("requested"))
        out.append({
            "source": src.label if src else str(sid), "source_id": sid, "status": job.get("status"),
            "peak_memory_mb": peak, "peak_memory_metric": f"ram/{mem[0].mname}" if mem else None,
            "runtime_s": _f(runtime), "gpu_util_pct": gpu_util, "cpu_cores": None if cores is None else cores / 100.0,
            "requested": req,
            "memory_efficiency": _share(peak / 1024.0 if peak is not None else None, req.get("mem_gb")),
            "cpu_efficiency": _share(cores / 100.0 if cores is not None else None, req.get("cpus")),
        })  # fmt: skip
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def tasks_on_nodes(n_tasks: int, n_nodes: int) -> str:
    """``1 task on 2 nodes``, ``16 tasks on 1 node`` (the tasks alone when no node is known)."""
    return _plural(n_tasks, "task") + (f" on {_plural(n_nodes, 'node')}" if n_nodes else "")


def spread_over(n_sources: int, n_tasks: int, n_nodes: int) -> str:
    """What a figure over ``n_sources`` per-node rows is taken over: ``4 tasks``; a task on
    several nodes counts once per node: ``the 2 nodes of 1 task``, ``8 task-nodes of 4 tasks on 2 nodes``."""
    if n_sources == n_tasks:
        return _plural(n_tasks, "task")
    if n_tasks == 1:
        return f"the {n_sources} nodes of 1 task"
    return f"{n_sources} task-nodes of {tasks_on_nodes(n_tasks, n_nodes)}"


def spread_of(rows: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> str:
    """:func:`spread_over` of per-source ``rows``, their tasks and nodes found in the ``jobs`` rows."""
    where = {j.get("source_id"): ((j.get("job_id"), j.get("array_task_id")), j.get("node")) for j in jobs}
    found = [where.get(r.get("source_id"), ((i, None), None)) for i, r in enumerate(rows)]  # unknown: its own task
    return spread_over(len(rows), len({task for task, _ in found}), len({node for _, node in found if node}))


def efficiency(tasks: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Use against what was requested, and concrete --mem / --time / --cpus-per-task advice.

    Every figure in an advice sentence is written by :mod:`.formatting` from the same value the
    JSON carries, and each percentage is computed from those values."""
    req_tasks = [t for t in tasks if t["requested"]]
    out: dict[str, Any] = {"requested": req_tasks[0]["requested"] if req_tasks else {}, "advice": []}
    advice: list[str] = out["advice"]
    if not req_tasks:
        advice.append("no requested resources recorded (jobs.requested): submit with aetherium-hpc submit, or run "
                      "inside a Slurm job (srun aetherium-hpc run -- ...) to get advice")  # fmt: skip
        return out
    n = len(req_tasks)
    spread = spread_of(req_tasks, jobs)
    over = f" (max over {spread})" if n > 1 else ""
    mem_eff = [t["peak_memory_mb"] / 1024.0 / t["requested"]["mem_gb"] for t in req_tasks
               if t["peak_memory_mb"] is not None and t["requested"].get("mem_gb")]  # fmt: skip
    peaks = [t["peak_memory_mb"] for t in req_tasks if t["peak_memory_mb"] is not None]
    mem_req = [t["requested"]["mem_gb"] for t in req_tasks if t["requested"].get("mem_gb")]
    if mem_eff and peaks:
        peak_mb = max(peaks)
        peak_gb = peak_mb / 1024.0
        req = max(mem_req)
        want_mb = peak_mb * HEADROOM
        # --mem in whole GB, or in 100 MB steps below 1 GB (a small job need not ask for a whole GB)
        need_gb = math.ceil(want_mb / 1024.0) if want_mb > 1000 else math.ceil(want_mb / 100.0) * 100 / 1024.0
        need = f"{need_gb:.0f}G" if want_mb > 1000 else f"{round(need_gb * 1024)}M"
        out["memory"] = {"requested_gb": req, "peak_max_gb": _f(peak_gb), "efficiency": _dist(mem_eff)}
        said = f"peak {memory_mb(peak_mb)}{over} is {pct(peak_gb, req)} of the {memory_gb(req)} requested"
        advice.append(_fit("memory", said, "mem", need, over=peak_gb > 0.9 * req, under=need_gb < 0.8 * req))
    runtimes = [t["runtime_s"] for t in req_tasks if t["runtime_s"] is not None]
    limits = [t["requested"]["timeout_min"] for t in req_tasks if t["requested"].get("timeout_min")]
    if runtimes and limits:
        limit = max(limits)
        longest_s = max(runtimes)
        longest = longest_s / 60.0
        timed_out = sum(1 for j in jobs if j.get("status") == "timeout")
        out["time"] = {"requested_min": limit, "runtime_max_min": _f(longest),
                       "efficiency": _dist([r / 60.0 / limit for r in runtimes]), "timed_out": timed_out}  # fmt: skip
        need_min = max(5, 5 * math.ceil(longest * HEADROOM / 5))
        said = f"longest task ran {fmt_duration(longest_s)}{over}, {pct(longest, limit)} of the " \
               f"{minutes(limit)} requested"  # fmt: skip
        if timed_out:
            need_min = max(need_min, 5 * math.ceil(limit * 1.5 / 5))
            advice.append(f"time: {timed_out} task(s) hit the {minutes(limit)} limit; raise it: "
                          f"--time={slurm_time(need_min)} (or checkpoint and requeue)")  # fmt: skip
        else:
            advice.append(_fit("time", said, "time", slurm_time(need_min), over=longest > 0.9 * limit,
                               under=need_min < 0.8 * limit, why_less=" (shorter jobs start sooner)"))  # fmt: skip
    cores = [t["cpu_cores"] for t in req_tasks if t["cpu_cores"] is not None]
    cpus = [t["requested"]["cpus"] for t in req_tasks if t["requested"].get("cpus")]
    if cores and cpus:
        req_cpus = max(cpus)
        used = float(np.percentile(cores, 95))
        out["cpu"] = {
            "requested": req_cpus,
            "cores_used_p95": _f(used),
            "efficiency": _dist([c / req_cpus for c in cores]),
        }
        if used < 0.5 * req_cpus and req_cpus > 1:
            which = f"p95 over {spread}" if n > 1 else "average over the run"
            advice.append(f"cpu: {_num(used, 2)} of {req_cpus} cores busy ({which}); "
                          f"--cpus-per-task={max(1, math.ceil(used * HEADROOM))} would do")  # fmt: skip
    gutil = [t["gpu_util_pct"] for t in req_tasks if t["gpu_util_pct"] is not None]
    gpus = [t["requested"]["gpus"] for t in req_tasks if t["requested"].get("gpus")]
    if gpus:
        out["gpu"] = {"requested": max(gpus), "utilization_pct": _dist(gutil)}
        n_gpus = max(gpus)
        if not gutil:
            advice.append(f"gpu: {n_gpus} GPU(s) requested but no GPU samples recorded; drop --gres=gpu:{n_gpus} "
                          "(--gpus) if unused")  # fmt: skip
        elif float(np.median(gutil)) < 30.0:
            median = float(np.median(gutil))
            fewer = max(1, math.ceil(n_gpus * median / 100.0 * HEADROOM))  # the busy share of them, with headroom
            advice.append(f"gpu: median utilisation {median:.0f}%; the GPU waits on data "
                          "(more data-loader workers) or is not needed"
                          + (f"; --gres=gpu:{fewer} would do" if fewer < n_gpus else ""))  # fmt: skip
    return out


def _fit(what: str, said: str, flag: str, value: str, *, over: bool, under: bool, why_less: str = "") -> str:
    """One advice sentence on a request: raise it (use near the limit), lower it (well below), or keep it."""
    if over:
        return f"{what}: {said}; raise it: --{flag}={value}"
    if under:
        return f"{what}: {said}; ask for --{flag}={value}{why_less}"
    return f"{what}: {said}: --{flag} is about right"


# -- statistics helpers -------------------------------------------------------------------------
def _f(x: Any) -> float | None:
    """A float for JSON: None for missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _share(used: float | None, requested: Any) -> float | None:
    """``used`` / ``requested`` (an efficiency), None when either is missing."""
    if used is None or not isinstance(requested, (int, float)) or requested <= 0:
        return None
    return _f(used / requested)


def _dist(values: Sequence[float]) -> dict[str, float | None] | None:
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not vals.size:
        return None
    return {
        "n": float(vals.size),
        "p50": _f(np.percentile(vals, 50)),
        "p95": _f(np.percentile(vals, 95)),
        "max": _f(vals.max()),
    }


def _pooled_mean(series: Sequence[Series]) -> float | None:
    """Mean of the finite values of several series together (every GPU of a node)."""
    if all(s.stats is None for s in series):
        return nanstat(np.concatenate([s.v for s in series]))[0]
    n = total = 0.0
    for s in series:
        mean = s.mean_max()[0]
        if mean is not None:
            k = s.stats[1] if s.stats is not None else float(np.isfinite(s.v).sum())
            n, total = n + k, total + mean * k
    return total / n if n else None


def _ts(x: float | None) -> str:
    if x is None:
        return "-"
    return _dt.datetime.fromtimestamp(x, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _run_name(path: str, jobs: list[dict[str, Any]]) -> str:
    """The configuration's name, else the run folder's (``<run>/merged.db``, ``<run>/db/<job>_<task>/<node>.db``)."""
    for j in jobs:
        try:
            cfg = json.loads(j["config"]) if isinstance(j.get("config"), str) else j.get("config")
        except ValueError:
            cfg = None
        if isinstance(cfg, dict) and cfg.get("name"):
            return str(cfg["name"])
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 4 and parts[-3] == "db":
        return parts[-4]
    return os.path.basename(os.path.dirname(path)) or os.path.basename(path)
