"""The HTML page of a report: one self-contained file, plots embedded as base64 PNG.

Every string shown goes through :func:`html.escape` (a metric named ``<script>`` shows as
text); the page has no scripts and no external resources.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from ..formatting import duration as fmt_duration
from ..formatting import memory_mb, minutes
from ..formatting import num as _num
from ..sweep import OK_STATUSES
from .across import FORMAT
from .text import (
    ACROSS,
    LAB_HEADER,
    cell,
    hours_cell,
    lab_rows,
    lab_title,
    lab_user_lines,
    lab_who,
    pct_cell,
    requeue_lines,
    status_counts,
    summary_lines,
    sweep_rows,
    training_rows,
    who,
)

#: Rows of the ranking and sacct tables of a large array (every row in JSON), and of its tasks
#: that did not complete.
_MANY_ROWS = 20
_MANY_JOB_ROWS = 100

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.advice li{margin:4px 0} img{width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px} figure{margin:0}
tr.winner td{background:#eef7ee}
details.job{margin:4px 0} details.job summary{cursor:pointer;font-size:13px}
.st-completed{color:#176b1e} .st-failed,.st-timeout,.st-cancelled,.st-preempted,.st-lost,.st-out_of_memory,
.st-node_fail,.st-boot_fail,.st-deadline{color:#b3261e;font-weight:600} .st-unknown{color:#8a5a00}
"""


def _h(x: Any) -> str:
    return escape("-" if x is None else str(x), quote=True)


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (), highlight: int | None = None
) -> str:
    """A table; ``highlight``: the index of a row to mark (the winner)."""
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = []
    for k, r in enumerate(rows):
        cells = []
        for i, c in enumerate(r):
            cls = ' class="n"' if i in numeric else ""
            cells.append(f"<td{cls}>{_h(_num(c) if isinstance(c, float) else c)}</td>")
        body.append(("<tr class='winner'>" if k == highlight else "<tr>") + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(d: dict[str, Any], plots: Callable[[], dict[str, bytes]]) -> str:
    """The page of the report data ``d``; ``plots`` draws its PNGs by name (a failure is noted on the page)."""
    run, smp = d["run"], d["samples"]
    run_line = f"run: {run['start_utc']} → {run['end_utc']} UTC, {fmt_duration(run['duration_s'])}"
    samples_line = (
        f"{smp['resource']} resource samples in {smp['series']} series, "
        f"{smp['generation']} generation rows, {smp['training']} training rows"
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_h('aetherium-hpc report: ' + os.path.basename(d['database']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_h('aetherium-hpc report')}</h1>",
        f"<p>{_h(d['database'])}<br>{_h('generated ' + d['generated_at'])}</p>",
        "<h2>Summary</h2><ul>",
        f"<li>{_h(run_line)}</li>",
        f"<li>{_h(who(run))}</li>",
        f"<li>{_h(samples_line)}</li>",
        *(f"<li><b>{_h(line)}</b></li>" for line in summary_lines(d)),
        "</ul>",
    ]
    if d.get("lab"):
        parts += _lab(d["lab"])
    elif d["efficiency"]["advice"]:  # (the lab view advises each job on its own)
        parts.append("<h2>Against what was requested</h2><ul class='advice'>")
        parts += [f"<li>{_h(a)}</li>" for a in d["efficiency"]["advice"]]
        parts.append("</ul>")
    arr = d["array"]
    many = bool(arr.get("summarised"))
    if d.get("across"):
        parts += _across(d)
    elif arr["tasks"] > 1:
        rows = [
            [label, fmt(arr[k]["p50"]), fmt(arr[k]["p95"]), fmt(arr[k]["max"])] for label, k, fmt in ACROSS if arr[k]
        ]
        across = "Across {}".format(arr["over"])
        parts.append(f"<h2>{_h(across)}</h2>")
        parts.append(_html_table(["", "p50", "p95", "max"], rows, numeric=(1, 2, 3)))
    sweep = d.get("sweep") or {}
    if len(sweep.get("tasks", [])) > 1 and not d.get("lab"):  # a ranking across unrelated jobs says nothing
        header, rows = sweep_rows(sweep)
        obj = sweep["objective"]
        how = f"ranked by the final {obj['metric']} ({obj['goal']})" if obj else "no training metric to rank by"
        parts.append(f"<h2>{_h('Tasks, ' + how)}</h2>")
        numeric = [i for i, h in enumerate(header) if i == 0 or h.endswith((" final", " best"))]
        win = next((i for i, t in enumerate(sweep["tasks"]) if t["task"] == sweep["winner"]), None)
        shown = rows[:_MANY_ROWS] if many else rows
        parts.append(_html_table(header, shown, numeric=numeric, highlight=win))
        if len(rows) > len(shown):
            parts.append(f"<p class='note'>{_h(f'... {len(rows) - len(shown)} more tasks: every one in --json')}</p>")
    try:
        drawn = plots()
    except Exception as exc:  # a plot must never cost the rest of the report
        drawn = {}
        parts.append(f"<p>{_h(f'plots could not be drawn: {exc}')}</p>")
    if drawn:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for name, png in drawn.items():
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{_h(name)}' src='data:image/png;base64,{b64}'></figure>")
        parts.append("</div>")
    if d["generation"]:
        parts.append("<h2>Data generation per round</h2>")
        parts.append(_html_table(
            ["operation", "round", "chunks", "samples", "mean s", "max s", "samples/s per chunk", "samples/s wall",
             "memory mean MB", "memory max MB"],
            [[g["operation"], g["round"], g["chunks"], g["samples"], g["duration_mean_s"], g["duration_max_s"],
              g["throughput_per_chunk_s"], g["throughput_wall_s"], g["memory_mean_mb"], g["memory_max_mb"]]
             for g in d["generation"]],
            numeric=range(1, 10),
        ))  # fmt: skip
    if d["training"]:
        parts.append("<h2>Training metrics</h2>")
        header, rows = training_rows(d["training"])
        parts.append(_html_table(header, rows, numeric=[i for i, h in enumerate(header)
                                                        if h in ("tasks", "median final", "final", "best", "rows")]))  # fmt: skip
    if d.get("across"):
        spread = d["across"]["resources"]
        parts.append(
            f"<h2>{_h('Resources across {} sources (every node and series in --json)'.format(arr['tasks']))}</h2>"
        )
        parts.append(_html_table(
            ["type", "metric", "unit", "series", "avg p5", "avg p50", "avg p95", "avg max", "max p5", "max p50",
             "max p95", "max max"],
            [[r["metric_type"], r["metric_name"], r["unit"], r["series"],
              *(r[w][k] for w in ("avg", "max") for k in ("p5", "p50", "p95", "max"))] for r in spread],
            numeric=range(3, 12),
        ))  # fmt: skip
    elif d["resources"]:
        parts.append("<h2>Resources per node (average, maximum)</h2>")
        parts.append(_html_table(
            ["node", "type", "metric", "device", "unit", "samples", "avg", "max"],
            [[r["source"], r["metric_type"], r["metric_name"], r["device"], r["unit"], r["samples"], r["avg"], r["max"]]
             for r in d["resources"]],
            numeric=(5, 6, 7),
        ))  # fmt: skip
    sacct = d.get("sacct") or {"rows": []}
    if sacct["rows"]:
        parts.append("<h2>Slurm accounting (sacct)</h2>")
        acct = sacct["rows"][:_MANY_ROWS] if many else sacct["rows"]
        parts.append(_html_table(
            ["job", "state", "exit", "elapsed", "total CPU", "requested memory", "CPUs", "time limit", "max RSS MB"],
            [[r["job"], r.get("state", ""), r.get("exit_code", ""), r.get("elapsed", ""), r.get("total_cpu", ""),
              r.get("req_mem", ""), r.get("alloc_cpus", ""), r.get("timelimit", ""), _num(r["max_rss_mb"])]
             for r in acct],
            numeric=[8],
        ))  # fmt: skip
        if len(sacct["rows"]) > len(acct):
            more = len(sacct["rows"]) - len(acct)
            parts.append(f"<p class='note'>{_h(f'... {more} more rows: see --json')}</p>")
    if sacct.get("not_final"):
        parts.append(f"<p class='note'>Slurm accounting: {_h(sacct['not_final'])}</p>")
    elif not sacct["rows"] and sacct.get("why"):
        parts.append(f"<p class='note'>Slurm accounting: {_h(sacct['why'])}</p>")
    jobs = d["jobs"]
    if jobs:
        parts.append("<h2>Tasks</h2>")
        said = [*requeue_lines(d, _MANY_JOB_ROWS), *d.get("differences", [])[:_MANY_JOB_ROWS]]
        if said:
            parts.append("<p>" + "<br>".join(_h(line.strip()) for line in said) + "</p>")
    if jobs and many:
        counts = f"{len(jobs)} rows: {status_counts(jobs)}"
        jobs = [j for j in jobs if not j["superseded"] and (j["status"] not in OK_STATUSES or j.get("resolved_from"))]
        jobs = jobs[:_MANY_JOB_ROWS]
        listed = "those that did not complete" if jobs else "none: every task completed"
        parts.append(f"<p>{_h(counts)}<br>{_h(f'Listed: {listed} (every row in --json).')}</p>")
    if jobs:
        head = [
            "task",
            "job id",
            "array task",
            "node",
            "attempt",
            "status",
            "exit code",
            "start UTC",
            "end UTC",
            "runtime",
            "requested CPUs",
            "requested memory",
            "time limit",
            "requested GPUs",
        ]
        notes = any(j.get("resolved_from") or j["status"] == "unknown" for j in jobs)
        if notes:
            head.append("note")
        body = []
        for j in jobs:
            cells = [j["source"], j["job_id"], j["array_task_id"], j["node"], (j["attempt"] or 0) + 1]
            row = "".join(f"<td>{_h(c)}</td>" for c in cells)
            row += f"<td class='st-{_h(j['status'])}'>{_h(j['status'])}</td>"
            row += "".join(f"<td>{_h(c)}</td>" for c in (j["exit_code"], j["start_utc"], j["end_utc"],
                                                        fmt_duration(j["runtime_s"]), *_requested_cells(j["requested"])))  # fmt: skip
            if notes:
                shown = j.get("resolved_from") or j["status"] == "unknown"
                row += f"<td>{_h(j['detail'] if shown else '')}</td>"
            body.append(f"<tr>{row}</tr>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{_h(h)}</th>" for h in head) + "</tr></thead><tbody>"
                     + "".join(body) + "</tbody></table>")  # fmt: skip
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _lab(lab: dict[str, Any]) -> list[str]:
    """The lab view: a table of the jobs (most wasteful first), the waste per user, and per job its
    advice and its tasks (a section each, folded)."""
    out = [f"<h2>{_h('Jobs: ' + lab_title(lab))}</h2>",
           _html_table(LAB_HEADER, lab_rows(lab), numeric=(3, *range(5, len(LAB_HEADER)))),
           "<ul>", *(f"<li>{_h(line)}</li>" for line in lab_user_lines(lab)), "</ul>",
           f"<h2>{_h('Each job: advice and tasks')}</h2>"]  # fmt: skip
    for j in lab["jobs"]:
        said = f"{lab_who(j)}: {j['tasks']} task(s), {j['status']}; unused {hours_cell(j['wasted_core_hours'])} core-h, " \
               f"{hours_cell(j['wasted_gb_hours'])} GB-h"  # fmt: skip
        out.append(f"<details class='job'><summary>{_h(said)}</summary><ul class='advice'>")
        out += [f"<li>{_h(a)}</li>" for a in j["advice"]] or ["<li>no advice</li>"]
        out.append("</ul>")
        out.append(_html_table(
            ["task", "status", "runtime", "cores busy", "CPU used/req", "peak memory", "mem peak/req", "GPU busy",
             "unused core-h", "unused GB-h", "idle GPU-h"],
            [[t["source"], t["status"], fmt_duration(t["runtime_s"]), _num(t["cpu_cores"]), pct_cell(t["cpu_efficiency"]),
              memory_mb(t["peak_memory_mb"]), pct_cell(t["memory_efficiency"]),
              "-" if t["gpu_util_pct"] is None else f"{t['gpu_util_pct']:.0f}%", hours_cell(t["wasted_core_hours"]),
              hours_cell(t["wasted_gb_hours"]), hours_cell(t["idle_gpu_hours"])] for t in j["task_rows"]],
            numeric=range(2, 11),
        ))  # fmt: skip
        out.append("</details>")
    return out


def _across(d: dict[str, Any]) -> list[str]:
    """The distributions across the tasks of a large array, and the tasks at both ends of each."""
    acr = d["across"]
    title = f"Across {acr['what']} (histograms under Plots; every task in --json)"
    rows = [[m["label"], f"{m['n']} {m['per']}s", *(FORMAT[m["key"]](m[k]) for k in ("min", "p5", "p50", "p95", "max"))]
            for m in acr["measures"]]  # fmt: skip
    out = [f"<h2>{_h(title)}</h2>", _html_table(["", "of", "min", "p5", "p50", "p95", "max"], rows,
                                                 numeric=range(1, 7))]  # fmt: skip
    n = acr["top_n"]
    ends = []
    for m in acr["measures"]:
        fmt = FORMAT[m["key"]]
        for i in range(max(len(m["highest"]), len(m["lowest"]))):
            hi = m["highest"][i] if i < len(m["highest"]) else None
            lo = m["lowest"][i] if i < len(m["lowest"]) else None
            ends.append([m["label"] if i == 0 else "", i + 1, hi and hi["task"], hi and fmt(hi["value"]),
                         lo and lo["task"], lo and fmt(lo["value"])])  # fmt: skip
    out.append(f"<h2>{_h(f'Top and bottom {n} tasks')}</h2>")
    out.append(_html_table(["measure", "#", "highest", "value", "lowest", "value"], ends, numeric=(1, 3, 5)))
    return out


def _requested_cells(req: dict[str, Any]) -> list[str]:
    """CPUs, memory, time limit and GPUs asked for, as table cells ("-" when not recorded)."""
    mem = req.get("mem_gb")
    limit = req.get("timeout_min")
    return [
        cell(req.get("cpus")),
        "-" if mem is None else f"{_num(float(mem))} GB",
        minutes(limit),
        cell(req.get("gpus")),
    ]
