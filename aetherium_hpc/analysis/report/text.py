"""The text report: the terminal summary of a report's data, answers first.

The table rows shared with the HTML page (:mod:`.html`) are built here once, values
unformatted where each output writes them its own way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from ..formatting import duration as fmt_duration
from ..formatting import memory_gb, memory_mb, minutes
from ..formatting import num as _num
from ..sweep import OK_STATUSES, is_schedule, params_text
from .across import FORMAT
from .compute import tasks_on_nodes

#: Sources above which the text report lists per-node statistics only in JSON / HTML.
_TEXT_MAX_SOURCES = 16
#: Tasks listed in the text's per-task table (all of them in HTML and JSON).
_TEXT_MAX_TASKS = 20
#: The resource series the text lists per node (JSON and HTML list every series).
_KEY_METRICS = {
    ("cpu", "system_total"), ("cpu", "process_tree"), ("ram", "system_used"), ("ram", "process_tree_rss"),
    ("gpu", "utilization"), ("gpu", "memory_used"),
}  # fmt: skip


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def render(d: dict[str, Any]) -> str:
    """The terminal summary of :attr:`..Report.data`, Slurm accounting last."""
    return _summary(d) + _sacct_text(d["sacct"], _TEXT_MAX_TASKS if d["array"].get("summarised") else None)


def _summary(d: dict[str, Any]) -> str:
    run, smp = d["run"], d["samples"]
    lines = [
        f"aetherium-hpc report: {d['database']}",
        f"run: {run['start_utc']} -> {run['end_utc']} UTC, {fmt_duration(run['duration_s'])}; {who(run)}",
        f"samples: {smp['resource']} resource samples in {smp['series']} series, "
        f"{smp['generation']} generation rows, {smp['training']} training rows",
    ]
    lines += summary_lines(d)
    if d.get("lab"):
        lines += ["", *lab_lines(d["lab"])]
    sweep = d.get("sweep") or {}
    if len(sweep.get("tasks", [])) > 1 and not d.get("lab"):  # a ranking across unrelated jobs says nothing
        header, rows = sweep_rows(sweep)
        obj = sweep["objective"]
        how = f"ranked by the final {obj['metric']} ({obj['goal']})" if obj else "no training metric to rank by"
        lines += ["", f"tasks, {how}:"]
        shown = rows[:_TEXT_MAX_TASKS]
        lines += _table(header, [[cell(c) for c in r] for r in shown])
        if len(rows) > len(shown):
            lines.append(f"  ... {len(rows) - len(shown)} more tasks: see --html or --json")
    key = [r for r in d["resources"] if (r["metric_type"], r["metric_name"]) in _KEY_METRICS]
    if key and d["run"]["sources"] <= _TEXT_MAX_SOURCES:
        lines += ["", "resources per node (avg / max):"]
        lines += _table(
            ["node", "metric", "device", "unit", "avg", "max"],
            [[r["source"], f"{r['metric_type']}/{r['metric_name']}", r["device"][:20], r["unit"], _num(r["avg"]),
              _num(r["max"])] for r in key],
        )  # fmt: skip
    elif key:
        lines += ["", f"resources per node: {len(key)} rows, see --json or --html"]
    arr = d["array"]
    if d.get("across"):
        lines += ["", *across_lines(d)]
    elif arr["tasks"] > 1:
        lines += ["", f"across {arr['over']} (p50 / p95 / max):"]
        for label, k, fmt in ACROSS:
            dist = arr[k]
            if dist:
                lines.append(f"  {label:16} {fmt(dist['p50'])} / {fmt(dist['p95'])} / {fmt(dist['max'])}")
    if d["generation"]:
        lines += ["", "data generation per round:"]
        lines += _table(
            ["operation", "round", "chunks", "samples", "mean s", "max s", "samples/s", "mem mean MB", "mem max MB"],
            [[str(g["operation"]), _num(g["round"]), str(g["chunks"]), _num(g["samples"]), _num(g["duration_mean_s"]),
              _num(g["duration_max_s"]), _num(g["throughput_per_chunk_s"]), _num(g["memory_mean_mb"]),
              _num(g["memory_max_mb"])] for g in d["generation"]],
        )  # fmt: skip
    if d["training"]:
        header, rows = training_rows(d["training"])
        many = any(t["sources"] > 1 for t in d["training"])
        lines += ["", "training metrics (median of the tasks' final values, best of all tasks):" if many
                  else "training metrics (final, best):"]  # fmt: skip
        lines += _table(header, [[cell(c) for c in r] for r in rows])
    if d["jobs"] and d["array"].get("summarised"):
        lines += ["", f"tasks: {len(d['jobs'])} rows (every one in --json; the HTML lists those that did not complete)"]
        lines.append("  " + status_counts(d["jobs"]))
        lines += requeue_lines(d, _TEXT_MAX_TASKS)
        lines += [f"  {x}" for x in d.get("differences", [])[:_TEXT_MAX_TASKS]]
        noted = [j for j in d["jobs"] if j.get("resolved_from") or j["status"] == "unknown"]
        lines += [f"  {j['source']}: {j['status']}: {j['detail']}" for j in noted[:_TEXT_MAX_TASKS]]
        if len(noted) > _TEXT_MAX_TASKS:
            lines.append(f"  ... {len(noted) - _TEXT_MAX_TASKS} more resolved after the fact: see --json")
    elif d["jobs"]:
        lines += ["", "tasks:"]
        lines += _table(
            ["task", "status", "exit", "start UTC", "runtime"],
            [[j["source"], str(j["status"]), _num(j["exit_code"]), j["start_utc"], fmt_duration(j["runtime_s"])]
             for j in d["jobs"]],
        )  # fmt: skip
        lines.append("  " + status_counts(d["jobs"]))
        lines += requeue_lines(d)
        lines += [f"  {x}" for x in d.get("differences", [])]
        for j in d["jobs"]:
            if j.get("resolved_from") or j["status"] == "unknown":
                lines.append(f"  {j['source']}: {j['status']}: {j['detail']}")
    if d["efficiency"]["advice"] and not d.get("lab"):  # (the lab view advises each job on its own)
        lines += ["", "against what was requested:"] + [f"  {a}" for a in d["efficiency"]["advice"]]
    return "\n".join(lines) + "\n"


def who(run: dict[str, Any]) -> str:
    """``1 task on 2 nodes``; the databases too when there are more (one per node and attempt of a task)."""
    dbs = f" ({run['sources']} databases)" if run["sources"] != run["jobs"] else ""
    return tasks_on_nodes(run["jobs"], len(run["nodes"])) + dbs


def pct_cell(x: Any) -> str:
    return "-" if x is None else f"{100.0 * x:.0f}%"


def hours_cell(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


#: The columns of the lab view's table of jobs (text and HTML); the first five are words.
LAB_HEADER = ["job", "user", "name", "tasks", "state", "cores", "memory", "GPUs", "time limit", "CPU used/req",
              "mem peak/req", "GPU busy", "runtime/limit", "unused core-h", "unused GB-h", "idle GPU-h"]  # fmt: skip


def lab_title(lab: dict[str, Any]) -> str:
    n, users = len(lab["jobs"]), len(lab["users"])
    return (f"{n} jobs of {users} user{'s' if users != 1 else ''}, most wasteful first (requested but unused "
            f"core-hours + GB-hours, {_num(lab['gb_per_core'])} GB counted as one core)")  # fmt: skip


def lab_rows(lab: dict[str, Any]) -> list[list[str]]:
    """One row per job of the lab view, in its order (waste first), every cell written."""
    rows = []
    for j in lab["jobs"]:
        req = j["requested"]
        rows.append([
            j["job"], j["user"] or "-", j["name"] or "-", str(j["tasks"]), j["status"],
            cell(req.get("cpus")), memory_gb(req.get("mem_gb")), cell(req.get("gpus")), minutes(req.get("timeout_min")),
            pct_cell(j["cpu_efficiency"]), pct_cell(j["memory_efficiency"]),
            "-" if j["gpu_util_pct"] is None else f"{j['gpu_util_pct']:.0f}%", pct_cell(j["time_efficiency"]),
            hours_cell(j["wasted_core_hours"]), hours_cell(j["wasted_gb_hours"]), hours_cell(j["idle_gpu_hours"]),
        ])  # fmt: skip
    return rows


def lab_user_lines(lab: dict[str, Any]) -> list[str]:
    """``alice: 25 jobs (40 tasks), 120.5 core-h, 380.0 GB-h unused, 2.0 GPU-h idle`` per user."""
    return [f"{user}: {u['jobs']} jobs ({u['tasks']} tasks), {hours_cell(u['wasted_core_hours'])} core-h and "
            f"{hours_cell(u['wasted_gb_hours'])} GB-h unused, {hours_cell(u['idle_gpu_hours'])} GPU-h idle"
            for user, u in lab["users"].items()]  # fmt: skip


def lab_lines(lab: dict[str, Any]) -> list[str]:
    """The lab view: the table of jobs, the waste per user, each job's advice."""
    out = [f"jobs: {lab_title(lab)}:"]
    out += _table(LAB_HEADER, lab_rows(lab))
    out += ["", "per user:"] + [f"  {line}" for line in lab_user_lines(lab)]
    out += ["", "advice per job (each task's figures: --html, --json, or report with --job ID):"]
    for j in lab["jobs"]:
        out.append(f"  {lab_who(j)}:" + ("" if j["advice"] else " no advice"))
        out += [f"    {a}" for a in j["advice"]]
    return out


def lab_who(job: dict[str, Any]) -> str:
    """``8800114 (bob, exp-a)``: a job of the lab view, its user and name."""
    return f"{job['job']} ({', '.join(x for x in (job['user'], job['name']) if x) or '-'})"


def status_counts(jobs: list[dict[str, Any]]) -> str:
    """``998 completed, 2 timeout`` (each task's last attempt; ``+ 1 earlier attempt`` of requeued ones)."""
    counts: dict[str, int] = defaultdict(int)
    for j in jobs:
        if not j.get("superseded"):
            counts[str(j["status"])] += 1
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    earlier = sum(1 for j in jobs if j.get("superseded"))
    return text + (f" (+ {earlier} earlier attempt{'s' if earlier > 1 else ''}, requeued)" if earlier else "")


def requeue_lines(d: dict[str, Any], limit: int | None = None) -> list[str]:
    """``  7_3: requeued once (attempt 2 completed)`` for every requeued task (the first ``limit``)."""
    found = d.get("requeues") or []
    shown = found[:limit] if limit else found
    if len(found) == 1 and d["run"]["jobs"] == 1:
        return [f"  {found[0]['text']}"]
    lines = [f"  {r['task']}: {r['text']}" for r in shown]
    if len(found) > len(shown):
        lines.append(f"  ... {len(found) - len(shown)} more requeued tasks: see --json")
    return lines


def across_lines(d: dict[str, Any]) -> list[str]:
    """The summary across the tasks of a large array (``data["across"]``): a distribution and
    the tasks at both ends of every measure."""
    acr = d["across"]
    n = acr["top_n"]
    out = [f"across {acr['what']} (p5 / p50 / p95 / max; {n} highest and lowest; every task in --json):"]
    for m in acr["measures"]:
        fmt = FORMAT[m["key"]]
        out.append(f"  {m['label']}: {' / '.join(fmt(m[k]) for k in ('p5', 'p50', 'p95', 'max'))}")
        for end in ("highest", "lowest"):
            out.append(f"    {end + ':':8} " + ", ".join(f"{e['task']} {fmt(e['value'])}" for e in m[end]))
    return out


#: The rows "across N tasks" (text and HTML): label, key in data["array"], how a value is written.
ACROSS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("peak memory", "peak_memory_mb", memory_mb),
    ("runtime", "runtime_s", fmt_duration),
    ("GPU utilisation", "gpu_utilization_pct", lambda v: f"{_num(v)}%"),
    ("CPU cores used", "cpu_cores_used", lambda v: f"{_num(v)} cores"),
]


def cell(x: Any) -> str:
    return _num(x, 4) if isinstance(x, float) else "-" if x is None else str(x)


def summary_lines(d: dict[str, Any]) -> list[str]:
    """The answers first: which task won, which tasks did not complete."""
    out = []
    sweep = d.get("sweep") or {}
    tasks = sweep.get("tasks") or []
    obj = sweep.get("objective")
    if len(tasks) > 1 and obj and sweep.get("winner") and not d.get("lab"):  # (no winner among unrelated jobs)
        w = next(t for t in tasks if t["task"] == sweep["winner"])
        params = f" ({params_text(w['params'])})" if w["params"] else ""
        note = "" if w["status"] in (*OK_STATUSES, None) else f", {w['status']}"
        out.append(
            f"winner: task {w['task']}{params}: final {obj['metric']} {_num(w['objective_value'], 4)}"
            f" ({'lowest' if obj['goal'] == 'min' else 'highest'} of {sweep['scored']} tasks{note};"
            f" median {_num(sweep['median'], 4)})"
        )
    bad = [t for t in tasks if t["status"] not in (*OK_STATUSES, None)] if tasks else []
    if bad:
        names = "; ".join(f"{t['task']}" + (f" ({params_text(t['params'])})" if t["params"] else "") + f" {t['status']}"
                          for t in bad[:10])  # fmt: skip
        more = f"; ... {len(bad) - 10} more" if len(bad) > 10 else ""
        out.append(f"did not complete: {len(bad)} of {len(tasks)} tasks: {names}{more}")
    missing = d.get("missing") or []
    if missing:
        n_tasks = len({(j["job_id"], j["array_task_id"]) for j in d["jobs"]}) + len(missing)
        names = "; ".join(f"{m['task']} ({m['detail'].removeprefix('no database; ')})" for m in missing[:10])
        more = f"; ... {len(missing) - 10} more (see --json)" if len(missing) > 10 else ""
        out.append(f"no database: {len(missing)} of the {n_tasks} tasks submitted left none: {names}{more}")
    return out


def sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the per-task table (values unformatted; text and HTML format them)."""
    metrics = [m for m in sweep["metrics"] if not is_schedule(m.rpartition("/")[2])]
    obj = sweep["objective"]
    if obj and obj["metric"] in metrics:  # the objective first
        metrics = [obj["metric"]] + [m for m in metrics if m != obj["metric"]]
    header = ["rank", "task", *sweep["parameters"], "status"]
    for m in metrics:
        header += [f"{m} final", f"{m} best"]
    header += ["peak memory", "runtime"]
    rows = []
    for t in sweep["tasks"]:
        row: list[Any] = [t["rank"], t["task"], *(t["params"].get(p) for p in sweep["parameters"]), t["status"]]
        for m in metrics:
            v = t["metrics"].get(m) or {}
            row += [v.get("final"), v.get("best")]
        row += [memory_mb(t["peak_memory_mb"]), fmt_duration(t["runtime_s"])]
        rows.append(row)
    return header, rows


def training_rows(training: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    many = any(t["sources"] > 1 for t in training)
    if many:
        header = ["metric", "phase", "goal", "tasks", "median final", "best", "best in", "best at round/epoch", "rows"]
        rows = [[t["metric_name"], t["phase"], t["goal"] or "(schedule)", t["sources"],
                 t["final_median_over_sources"] if t["sources"] > 1 else t["final"], t["best"], t["best_source"],
                 f"{_num(t['best_round'])}/{_num(t['best_epoch'])}" if t["best"] is not None else None, t["count"]]
                for t in training]  # fmt: skip
    else:
        header = ["metric", "phase", "goal", "final", "final at round/epoch", "best", "best at round/epoch", "rows"]
        rows = [[t["metric_name"], t["phase"], t["goal"] or "(schedule)", t["final"],
                 f"{_num(t['final_round'])}/{_num(t['final_epoch'])}", t["best"],
                 f"{_num(t['best_round'])}/{_num(t['best_epoch'])}" if t["best"] is not None else None, t["count"]]
                for t in training]  # fmt: skip
    return header, rows


def _sacct_text(sacct: dict[str, Any], limit: int | None = None) -> str:
    """The sacct table; ``limit``: rows shown (a large array: the rest in --json)."""
    if not sacct["rows"]:
        return f"\nslurm accounting: {sacct.get('not_final') or sacct.get('why', 'none')}\n"
    header = ("job", "state", "exit", "elapsed", "total cpu", "req mem", "cpus", "limit", "max rss MB")
    rows = [
        (r["job"], r.get("state", ""), r.get("exit_code", ""), r.get("elapsed", ""), r.get("total_cpu", ""),
         r.get("req_mem", ""), r.get("alloc_cpus", ""), r.get("timelimit", ""), _num(r["max_rss_mb"]))
        for r in sacct["rows"][:limit]
    ]  # fmt: skip
    note = [f"  ({sacct['not_final']})"] if sacct.get("not_final") else []
    if limit is not None and len(sacct["rows"]) > limit:
        note.append(f"  ... {len(sacct['rows']) - limit} more rows: see --json")
    return "\n".join(["", "slurm accounting (sacct):", *_table(header, rows), *note]) + "\n"
