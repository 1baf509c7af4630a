"""Report on one metrics database (a node database or a merged one): text, PNG, HTML, JSON.

:func:`build_report` reads the database read-only and computes everything into
:attr:`Report.data` (plain JSON-able values); :attr:`Report.text` is the summary for the
terminal; :meth:`Report.plots` renders PNGs with matplotlib's Agg backend (imported only
then); :meth:`Report.to_html` writes one self-contained file with the plots embedded as
base64 PNG, every string escaped with :func:`html.escape`.

This is the only module of the package that imports matplotlib.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AetheriumError, StoreError
from ..store import chunks, reader, schema
from ..store.backup import readable
from .formatting import duration as fmt_duration
from .formatting import memory_gb, memory_mb, minutes, pct, slurm_time
from .formatting import num as _num
from .sweep import OK_STATUSES, higher_is_better, is_schedule, params_text, task_key, task_label, task_table

#: Points per line above which a timeline is thinned for plotting (statistics use every sample).
_MAX_PLOT_POINTS = 4000
#: Sources above which the text report lists per-node statistics only in JSON / HTML.
_TEXT_MAX_SOURCES = 16
#: Headroom on top of the largest observed use when advising --mem / --time.
HEADROOM = 1.2

Arr = np.ndarray[Any, np.dtype[np.float64]]


class EmptyDatabaseError(StoreError):
    """The database holds no metrics to report on."""


# -- reading ------------------------------------------------------------------------------------
@dataclass
class _Source:
    sid: int
    job_id: str | None
    array_job_id: str | None
    task: int | None
    node: str
    attempt: int
    path: str | None

    @property
    def label(self) -> str:
        who = self.job_id or self.array_job_id or "local"
        if self.task is not None and self.array_job_id and not str(who).endswith(f"_{self.task}"):
            who = f"{self.array_job_id}_{self.task}"
        text = f"{who}/{self.node or '?'}"
        return text + (f"#{self.attempt}" if self.attempt else "")


@dataclass
class _Series:
    sid: int  # source id
    mtype: str
    mname: str
    unit: str
    device: str
    t: Arr = field(default_factory=lambda: np.empty(0))
    v: Arr = field(default_factory=lambda: np.empty(0))


def _open(db: str) -> sqlite3.Connection:
    if not os.path.exists(db):
        raise StoreError(f"{db}: no such file; pass a database written by aetherium-hpc (or `aetherium-hpc merge`)")
    if os.path.isdir(db):
        raise StoreError(f"{db}: is a folder; merge it first: aetherium-hpc merge {db} -o merged.db")
    # A copy-back killed inside its transaction is read from a rolled-back copy (the file stays
    # as it is); the open connection keeps reading that copy after its folder is removed.
    with readable(db, prefix="aeth-report-") as read_from:
        conn = reader.open_readonly(read_from)
        if read_from != db:  # open the copy before its folder goes
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        if not schema.check_version(conn, db):
            raise EmptyDatabaseError(f"{db}: empty file, no metrics to report; check the path")
    except BaseException:
        conn.close()
        raise
    return conn


def _load_series(conn: sqlite3.Connection, types: Sequence[str]) -> list[_Series]:
    """Series of the given metric types with their samples decoded (timestamps, values)."""
    marks = ",".join("?" * len(types))
    series: dict[int, _Series] = {}
    for ser_id, sid, mtype, mname, unit, device in conn.execute(
        f"SELECT series_id, source_id, metric_type, metric_name, unit, device FROM series WHERE metric_type IN ({marks})",
        tuple(types),
    ):
        series[ser_id] = _Series(sid, mtype, mname, unit, device)
    parts: dict[int, tuple[list[Arr], list[Arr]]] = defaultdict(lambda: ([], []))
    for table in _chunk_tables(conn):
        for ser_id, t0, n, dt_ms, jit, vals in conn.execute(
            f"SELECT c.series_id, c.t0, c.n, c.dt_ms, c.jit, c.vals FROM {table} c"
            f" JOIN series s ON s.series_id = c.series_id WHERE s.metric_type IN ({marks})",
            tuple(types),
        ):
            ts, vs = chunks.decode(t0, n, dt_ms, jit, vals)
            p = parts[ser_id]
            p[0].append(ts)
            p[1].append(vs)
    for ser_id, (ts_list, vs_list) in parts.items():
        s = series[ser_id]
        t = np.concatenate(ts_list)
        order = np.argsort(t, kind="stable")
        s.t, s.v = t[order], np.concatenate(vs_list)[order]
    return [s for s in series.values() if s.t.size]


def _chunk_tables(conn: sqlite3.Connection) -> list[str]:
    """``sample_chunks``, and ``open_chunks`` where an earlier writer left one."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return ["sample_chunks", *(["open_chunks"] if "open_chunks" in names else [])]


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


# -- statistics helpers -------------------------------------------------------------------------
def _f(x: Any) -> float | None:
    """A float for JSON: None for missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


def _nanstat(v: Arr) -> tuple[float | None, float | None]:
    finite = v[np.isfinite(v)]
    if not finite.size:
        return None, None
    return float(finite.mean()), float(finite.max())


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


def _dashboard_title(d: dict[str, Any]) -> str:
    run = d["run"]
    ids = run.get("job_ids") or []
    shown = ", ".join(ids[:6]) + (f" and {len(ids) - 6} more" if len(ids) > 6 else "")
    tasks = f", {run['jobs']} tasks" if run["jobs"] > 1 else ""
    return f"{run.get('name') or 'run'}: job {shown}{tasks}, {run['start_utc']} UTC, {fmt_duration(run['duration_s'])}"


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Report:
    """Everything :func:`build_report` found; ``data`` is JSON-able, ``text`` the terminal summary."""

    db: str
    data: dict[str, Any]
    text: str
    _series: list[_Series] = field(default_factory=list, repr=False)
    _sources: dict[int, _Source] = field(default_factory=dict, repr=False)
    _generation: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _training: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent, allow_nan=False, default=str)

    def plots(self) -> dict[str, bytes]:
        """Each plot as PNG bytes, by name (only plots with data)."""
        return {name: _render([panel], dpi=130, size=(7.0, 4.0)) for name, panel in _panels(self).items()}

    def dashboard_png(self) -> bytes:
        """All plots in one PNG (two columns)."""
        panels = list(_panels(self).values())
        if not panels:
            raise EmptyDatabaseError(f"{self.db}: nothing to plot (no samples, generation or training rows)")
        return _render(panels, columns=2, title=_dashboard_title(self.data))

    def to_html(self) -> str:
        return _html(self)


def build_report(db: str | os.PathLike[str], objective: str | None = None) -> Report:
    """Read ``db`` (read-only) and compute the report; :class:`EmptyDatabaseError` if it holds nothing.

    ``objective``: ``METRIC[:min|max]`` that ranks the tasks of an array (``val/loss:min``);
    default: the first validation loss, else the first metric that is not a learning rate."""
    path = os.path.abspath(os.fspath(db))
    conn = _open(path)
    try:
        status = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if status != ["ok"]:
            raise StoreError(
                f"{path}: corrupt or truncated (PRAGMA quick_check: {'; '.join(map(str, status))}); "
                "copy it again from the run directory, or merge the other databases without it"
            )
        sources = {
            r[0]: _Source(r[0], r[1], r[2], r[3], r[4] or "", r[5] or 0, r[6])
            for r in conn.execute(
                "SELECT source_id, job_id, array_job_id, array_task_id, node, attempt, source_path FROM sources"
            )
        }
        series = _load_series(conn, ("cpu", "ram", "gpu"))
        chunk_tables = _chunk_tables(conn)
        n_samples = sum(conn.execute(f"SELECT coalesce(sum(n), 0) FROM {t}").fetchone()[0] for t in chunk_tables)
        n_series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        generation = _rows(conn, "SELECT * FROM generation_metrics ORDER BY timestamp")
        training = _rows(conn, "SELECT * FROM training_metrics ORDER BY timestamp")
        has_resolved = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs_resolved'"
        ).fetchone()  # a merged database whose merge resolved unfinished jobs
        resolved_cols = ", r.resolved_from, r.recorded_status" if has_resolved else ""
        resolved_join = " LEFT JOIN jobs_resolved r ON r.source_id = j.source_id" if has_resolved else ""
        jobs = _rows(conn, f"SELECT j.*, s.attempt, s.hostname, s.source_path{resolved_cols} FROM jobs j"
                           f" LEFT JOIN sources s USING (source_id){resolved_join}"
                           " ORDER BY j.array_task_id, j.node, s.attempt")  # fmt: skip
        chunk_span = " UNION ALL ".join(
            f"SELECT min(t0) t FROM {t} UNION ALL SELECT max(t1) FROM {t}" for t in chunk_tables
        )
        span = conn.execute(
            f"SELECT min(t), max(t) FROM ({chunk_span}"
            " UNION ALL SELECT min(timestamp) FROM generation_rows UNION ALL SELECT max(timestamp) FROM generation_rows"
            " UNION ALL SELECT min(timestamp) FROM training_rows UNION ALL SELECT max(timestamp) FROM training_rows)"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot be read ({exc}); is it a complete aetherium-hpc database?") from exc
    finally:
        conn.close()
    if not n_samples and not generation and not training and not jobs:
        raise EmptyDatabaseError(
            f"{path}: no metrics to report (no resource samples, generation, training or job rows); "
            "check the path, or that the job ran with the metrics store enabled"
        )
    sacct = _check_unfinished(path, jobs)
    data = _compute(path, sources, series, generation, training, jobs, span, n_samples, n_series)
    source_task = {s.sid: task_key(s.job_id, s.array_job_id, s.task) for s in sources.values()}
    data["sweep"] = task_table(jobs, training, data["tasks"], source_task, objective)
    data["sacct"] = sacct
    data_text = _text(data) + _sacct_text(data["sacct"])
    return Report(path, data, data_text, series, sources, generation, training)


def _check_unfinished(path: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """sacct figures for the Slurm jobs of ``jobs`` (asked once), and the truth about every row
    that still says ``running`` (:mod:`.final_status`): its ``status``, ``exit_code``,
    ``end_time`` and ``detail`` are replaced in place, ``resolved_from`` says how."""
    from ..scheduler import ACCOUNTING_LAG_S, sacct_figures_when_final
    from .final_status import RUNNING, classify, resolve_rows, run_record, slurm_name

    cache: dict[str, dict[str, Any] | None] = {}

    def record(j: dict[str, Any]) -> dict[str, Any] | None:
        # A node database in its run directory, else the file a merged source was copied from.
        return run_record(path, cache) or run_record(j.get("source_path"), cache)

    slurm_ids: list[str | None] = []
    ended_recently: list[str] = []
    for j in jobs:
        cluster, _ = classify(j.get("job_id"), j.get("array_task_id"), j.get("config"), record(j))
        if cluster in ("slurm", None):  # never ask Slurm about a local job: its id is a process id
            job_id = slurm_name(j.get("job_id"), j.get("array_job_id"), j.get("array_task_id"))
            slurm_ids.append(job_id)
            end = j.get("end_time")
            if (
                job_id
                and j.get("status") != RUNNING
                and isinstance(end, (int, float))
                and time.time() - end < ACCOUNTING_LAG_S
            ):
                ended_recently.append(job_id)
    sacct = sacct_figures_when_final(slurm_ids, ended_recently)
    open_rows = [(i, j, record(j), j.get("hostname")) for i, j in enumerate(jobs) if j.get("status") == RUNNING]
    for i, res in resolve_rows(open_rows, sacct=sacct).items():
        if res.status == RUNNING or not isinstance(i, int):  # (the keys are the row indexes)
            continue
        j = jobs[i]
        j.update(status=res.status, detail=res.detail, resolved_from=res.how or None, recorded_status=RUNNING)
        if j.get("exit_code") is None:
            j["exit_code"] = res.exit_code
        if j.get("end_time") is None:
            j["end_time"] = res.end_time
    return sacct


def _sacct_text(sacct: dict[str, Any]) -> str:
    if not sacct["rows"]:
        return f"\nslurm accounting: {sacct.get('not_final') or sacct.get('why', 'none')}\n"
    header = ("job", "state", "exit", "elapsed", "total cpu", "req mem", "cpus", "limit", "max rss MB")
    rows = [
        (r["job"], r.get("state", ""), r.get("exit_code", ""), r.get("elapsed", ""), r.get("total_cpu", ""),
         r.get("req_mem", ""), r.get("alloc_cpus", ""), r.get("timelimit", ""), _num(r["max_rss_mb"]))
        for r in sacct["rows"]
    ]  # fmt: skip
    note = [f"  ({sacct['not_final']})"] if sacct.get("not_final") else []
    return "\n".join(["", "slurm accounting (sacct):", *_table(header, rows), *note]) + "\n"


def _compute(
    path: str,
    sources: dict[int, _Source],
    series: list[_Series],
    generation: list[dict[str, Any]],
    training: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    span: tuple[float | None, float | None],
    n_samples: int,
    n_series: int,
) -> dict[str, Any]:
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
        avg, mx = _nanstat(s.v)
        res.append({
            "source": src.label if src else str(s.sid), "source_id": s.sid,
            "job_id": src.job_id if src else None, "array_task_id": src.task if src else None,
            "node": src.node if src else None, "attempt": src.attempt if src else None,
            "metric_type": s.mtype, "metric_name": s.mname, "device": s.device, "unit": s.unit,
            "samples": int(s.v.size), "avg": avg, "max": mx,
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
        }  # fmt: skip
        for j in jobs
    ]
    tasks = _per_task(sources, series, jobs)
    data["tasks"] = tasks
    data["array"] = {
        "tasks": len(tasks),
        "peak_memory_mb": _dist([t["peak_memory_mb"] for t in tasks if t["peak_memory_mb"] is not None]),
        "runtime_s": _dist([t["runtime_s"] for t in tasks if t["runtime_s"] is not None]),
        "gpu_utilization_pct": _dist([t["gpu_util_pct"] for t in tasks if t["gpu_util_pct"] is not None]),
        "cpu_cores_used": _dist([t["cpu_cores"] for t in tasks if t["cpu_cores"] is not None]),
    }
    data["efficiency"] = _efficiency(tasks, jobs)
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


def _training_summary(rows: list[dict[str, Any]], sources: dict[int, _Source]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["metric_value"] is not None:
            groups[(r["metric_name"], r["phase"] or "")].append(r)
    out = []
    for (name, phase), rs in sorted(groups.items()):
        higher = higher_is_better(name)
        schedule = is_schedule(name)  # a learning rate is set, not achieved: no "best" of it
        order = sorted(rs, key=lambda r: (r["round_number"] or 0, r["epoch_number"] or 0, r["timestamp"]))
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


def _pick(series: list[_Series], sid: int, mtype: str, names: Sequence[str]) -> list[_Series]:
    for name in names:
        found = [s for s in series if s.sid == sid and s.mtype == mtype and s.mname == name]
        if found:
            return found
    return []


def _per_task(sources: dict[int, _Source], series: list[_Series], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak memory, runtime, GPU and CPU use of every source (one task on one node, one attempt)."""
    job_of = {j["source_id"]: j for j in jobs}
    with_data = {s.sid for s in series} | set(job_of)
    out = []
    for sid in sorted(with_data):
        src = sources.get(sid)
        mem = _pick(series, sid, "ram", ("process_tree_rss", "system_used"))
        gpu = _pick(series, sid, "gpu", ("utilization",))
        cpu = _pick(series, sid, "cpu", ("process_tree",))
        peak = _nanstat(mem[0].v)[1] if mem else None
        gpu_util = _nanstat(np.concatenate([g.v for g in gpu]))[0] if gpu else None
        cores = _nanstat(cpu[0].v)[0] if cpu else None
        job = job_of.get(sid, {})
        runtime = None
        if job.get("start_time") is not None and job.get("end_time") is not None:
            runtime = job["end_time"] - job["start_time"]
        else:
            ts = [x for s in series if s.sid == sid for x in (s.t[0], s.t[-1])]
            runtime = (max(ts) - min(ts)) if ts else None
        out.append({
            "source": src.label if src else str(sid), "source_id": sid, "status": job.get("status"),
            "peak_memory_mb": peak, "peak_memory_metric": f"ram/{mem[0].mname}" if mem else None,
            "runtime_s": _f(runtime), "gpu_util_pct": gpu_util, "cpu_cores": None if cores is None else cores / 100.0,
            "requested": _requested(job.get("requested")),
        })  # fmt: skip
    return out


def _efficiency(tasks: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
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
    over = f" (max over {n} tasks)" if n > 1 else ""
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
        if peak_gb > 0.9 * req:
            advice.append(f"memory: {said}; raise it: --mem={need}")
        elif need_gb < 0.8 * req:
            advice.append(f"memory: {said}; ask for --mem={need}")
        else:
            advice.append(f"memory: {said}: --mem is about right")
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
        elif longest > 0.9 * limit:
            advice.append(f"time: {said}; raise it: --time={slurm_time(need_min)}")
        elif need_min < 0.8 * limit:
            advice.append(f"time: {said}; ask for --time={slurm_time(need_min)} (shorter jobs start sooner)")
        else:
            advice.append(f"time: {said}: --time is about right")
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
            which = "p95 over tasks" if n > 1 else "average over the run"
            advice.append(f"cpu: {_num(used, 2)} of {req_cpus} cores busy ({which}); "
                          f"--cpus-per-task={max(1, math.ceil(used * HEADROOM))} would do")  # fmt: skip
    gutil = [t["gpu_util_pct"] for t in req_tasks if t["gpu_util_pct"] is not None]
    gpus = [t["requested"]["gpus"] for t in req_tasks if t["requested"].get("gpus")]
    if gpus:
        out["gpu"] = {"requested": max(gpus), "utilization_pct": _dist(gutil)}
        if not gutil:
            advice.append(f"gpu: {max(gpus)} GPU(s) requested but no GPU samples recorded; drop --gpus if unused")
        elif float(np.median(gutil)) < 30.0:
            advice.append(f"gpu: median utilisation {float(np.median(gutil)):.0f}%; the GPU waits on data "
                          "(more data-loader workers) or is not needed")  # fmt: skip
    return out


# -- text ---------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def _text(d: dict[str, Any]) -> str:
    run, smp = d["run"], d["samples"]
    lines = [
        f"aetherium-hpc report: {d['database']}",
        f"run: {run['start_utc']} -> {run['end_utc']} UTC, {fmt_duration(run['duration_s'])}; "
        f"{run['jobs']} job(s)/task(s), {run['sources']} source(s) on {len(run['nodes'])} node(s)",
        f"samples: {smp['resource']} resource samples in {smp['series']} series, "
        f"{smp['generation']} generation rows, {smp['training']} training rows",
    ]
    lines += _summary_lines(d)
    sweep = d.get("sweep") or {}
    if len(sweep.get("tasks", [])) > 1:
        header, rows = _sweep_rows(sweep)
        obj = sweep["objective"]
        how = f"ranked by the final {obj['metric']} ({obj['goal']})" if obj else "no training metric to rank by"
        lines += ["", f"tasks, {how}:"]
        shown = rows[:_TEXT_MAX_TASKS]
        lines += _table(header, [[_cell(c) for c in r] for r in shown])
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
    if arr["tasks"] > 1:
        lines += ["", f"across {arr['tasks']} tasks (p50 / p95 / max):"]
        for label, k, fmt in _ACROSS:
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
        header, rows = _training_rows(d["training"])
        many = any(t["sources"] > 1 for t in d["training"])
        lines += ["", "training metrics (median of the tasks' final values, best of all tasks):" if many
                  else "training metrics (final, best):"]  # fmt: skip
        lines += _table(header, [[_cell(c) for c in r] for r in rows])
    if d["jobs"]:
        lines += ["", "tasks:"]
        lines += _table(
            ["task", "status", "exit", "start UTC", "runtime"],
            [[j["source"], str(j["status"]), _num(j["exit_code"]), j["start_utc"], fmt_duration(j["runtime_s"])]
             for j in d["jobs"]],
        )  # fmt: skip
        counts: dict[str, int] = defaultdict(int)
        for j in d["jobs"]:
            counts[str(j["status"])] += 1
        lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for j in d["jobs"]:
            if j.get("resolved_from") or j["status"] == "unknown":
                lines.append(f"  {j['source']}: {j['status']}: {j['detail']}")
    if d["efficiency"]["advice"]:
        lines += ["", "against what was requested:"] + [f"  {a}" for a in d["efficiency"]["advice"]]
    return "\n".join(lines) + "\n"


#: The rows "across N tasks" (text and HTML): label, key in data["array"], how a value is written.
_ACROSS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("peak memory", "peak_memory_mb", memory_mb),
    ("runtime", "runtime_s", fmt_duration),
    ("GPU utilisation", "gpu_utilization_pct", lambda v: f"{_num(v)}%"),
    ("CPU cores used", "cpu_cores_used", lambda v: f"{_num(v)} cores"),
]
#: Tasks listed in the text's per-task table (all of them in HTML and JSON).
_TEXT_MAX_TASKS = 20


def _cell(x: Any) -> str:
    return _num(x, 4) if isinstance(x, float) else "-" if x is None else str(x)


def _summary_lines(d: dict[str, Any]) -> list[str]:
    """The answers first: which task won, which tasks did not complete."""
    out = []
    sweep = d.get("sweep") or {}
    tasks = sweep.get("tasks") or []
    obj = sweep.get("objective")
    if len(tasks) > 1 and obj and sweep.get("winner"):
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
    return out


def _sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
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


def _training_rows(training: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
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


_KEY_METRICS = {
    ("cpu", "system_total"), ("cpu", "process_tree"), ("ram", "system_used"), ("ram", "process_tree_rss"),
    ("gpu", "utilization"), ("gpu", "memory_used"),
}  # fmt: skip


# -- plots ----------------------------------------------------------------------------------------
Panel = tuple[str, Callable[[Any], None]]  # (title, draw(ax))


def _thin(t: Arr, v: Arr) -> tuple[Arr, Arr]:
    if t.size <= _MAX_PLOT_POINTS:
        return t, v
    step = int(math.ceil(t.size / _MAX_PLOT_POINTS))
    return t[::step], v[::step]


def _time_unit(span_s: float) -> tuple[str, float]:
    """The time axis in seconds, minutes or hours, as fits a run of ``span_s`` seconds."""
    if span_s < 180:
        return "s", 1.0
    if span_s < 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


#: Points below which a line also draws its markers (a short task has a handful of samples).
_MARKERS_BELOW = 60
#: Tasks above which the plots draw no legend (the colour follows the task index, noted on the axes).
_LEGEND_MAX_TASKS = 12


def _task_colours(keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """One colour per task, the same in every panel: tab10/tab20 up to 20 tasks, else viridis by index."""
    from matplotlib import colormaps

    ordered = sorted(set(keys), key=lambda k: (k[0], k[1]))
    if len(ordered) <= 10:
        cmap, n = colormaps["tab10"], 10
    elif len(ordered) <= 20:
        cmap, n = colormaps["tab20"], 20
    else:
        cmap = colormaps["viridis"]
        return {k: cmap(i / max(1, len(ordered) - 1)) for i, k in enumerate(ordered)}
    return {k: cmap(i % n) for i, k in enumerate(ordered)}


def _plain_log_axis(ax: Any, decades: float) -> None:
    """Log y scale with plain tick labels (0.02, 0.05, 0.1) instead of 2×10⁻²; 1-2-5 steps
    up to 3 decades, one label per decade above."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    def plain(v: float, _pos: Any) -> str:
        return f"{v:.3g}"

    ax.set_yscale("log")
    target = ax.yaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    target.set_major_formatter(FuncFormatter(plain))
    target.set_minor_formatter(FuncFormatter(lambda v, p: ""))


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _panels(rep: Report) -> dict[str, Panel]:
    d = rep.data
    t_start = d["run"]["start"] or 0.0
    unit, scale = _time_unit(d["run"]["duration_s"] or 0.0)
    sources = rep._sources
    panels: dict[str, Panel] = {}
    task_of = {sid: task_key(s.job_id, s.array_job_id, s.task) for sid, s in sources.items()}
    keys = sorted(set(task_of.values()))
    colours = _task_colours(keys) if keys else {}
    n_tasks = len(keys)
    legend = n_tasks <= _LEGEND_MAX_TASKS
    params = {}
    for t in (d.get("sweep") or {}).get("tasks", []):
        params[t["task"]] = t["params"]
    nodes_per_task: dict[tuple[str, int], set[str]] = defaultdict(set)
    for sid, src in sources.items():
        nodes_per_task[task_of[sid]].add(src.node)

    def task_name(key: tuple[str, int]) -> str:
        name = task_label(key)
        p = params.get(name)
        return f"{name} {params_text(p)}"[:48] if p else name

    def source_name(sid: int, device: str = "") -> str:
        key = task_of.get(sid)
        src = sources.get(sid)
        name = task_name(key) if key else str(sid)
        if key and src and len(nodes_per_task[key]) > 1:
            name += f" on {src.node}"
        return f"{name} {device[:12]}" if device else name

    def colour(sid: int) -> Any:
        key = task_of.get(sid)
        return colours.get(key) if key else None

    def note_many(ax: Any) -> None:
        if not legend:
            ax.text(0.99, 0.97, f"{n_tasks} tasks; colour: task index (viridis, first dark)" if n_tasks > 20
                    else f"{n_tasks} tasks", transform=ax.transAxes, ha="right", va="top", fontsize=8)  # fmt: skip

    def timeline(title: str, picks: list[tuple[_Series, str]], ylabel: str) -> Panel:
        def draw(ax: Any) -> None:
            styles = ["-", "--", ":", "-."]
            for s, label in picks:
                t, v = _thin(s.t, s.v)
                dev_rank = 0
                if s.device:  # several GPUs of one task: one line style each
                    devs = sorted({p.device for p, _ in picks if p.sid == s.sid})
                    dev_rank = devs.index(s.device)
                few = t.size < _MARKERS_BELOW
                ax.plot((t - t_start) / scale, v, styles[dev_rank % 4], color=colour(s.sid),
                        lw=0.8 if n_tasks > 20 else 1.2, alpha=0.7 if n_tasks > 20 else 0.95,
                        marker="o" if few else None, ms=3.5, label=label if legend else None)  # fmt: skip
            ax.set_xlabel(f"time since the run started, {unit}")
            ax.set_ylabel(ylabel)
            if legend and picks:
                ax.legend(fontsize=9, loc="best")
            note_many(ax)

        return (title, draw)

    by_sid: dict[int, list[_Series]] = defaultdict(list)
    for ser in rep._series:
        by_sid[ser.sid].append(ser)

    def choose(mtype: str, names: Sequence[str]) -> list[tuple[_Series, str]]:
        out = []
        for sid in sorted(by_sid):
            for name in names:
                found = [s for s in by_sid[sid] if s.mtype == mtype and s.mname == name]
                if found:
                    out += [(s, source_name(s.sid, s.device)) for s in found]
                    break
        return out

    per = ", per task" if n_tasks > 1 else ""
    cpu = choose("cpu", ("process_tree", "system_total"))
    if cpu:
        mine = cpu[0][0].mname == "process_tree"
        what = "the job's processes" if mine else "the whole node"
        panels["cpu"] = timeline(f"CPU use of {what}{per}", cpu, "CPU, % of one core" if mine else "CPU, % of the node")
    ram = choose("ram", ("process_tree_rss", "system_used"))
    if ram:
        mine = ram[0][0].mname == "process_tree_rss"
        what = "the job's processes (RSS)" if mine else "the whole node (used)"
        panels["memory"] = timeline(f"Memory of {what}{per}", ram, f"memory, {ram[0][0].unit or 'MB'}")
    gutil = [(s, source_name(s.sid, s.device)) for s in rep._series if s.mtype == "gpu" and s.mname == "utilization"]
    if gutil:
        panels["gpu_utilization"] = timeline(f"GPU utilisation per GPU{per}", gutil, "GPU utilisation, %")
    gmem = [(s, source_name(s.sid, s.device)) for s in rep._series if s.mtype == "gpu" and s.mname == "memory_used"]
    if gmem:
        panels["gpu_memory"] = timeline(f"GPU memory per GPU{per}", gmem, f"GPU memory, {gmem[0][0].unit or 'MB'}")

    rounds_all = sorted({r["round_number"] for r in rep._training + rep._generation if r["round_number"] is not None})
    round_colours = _task_colours([("r", r) for r in rounds_all])

    def line_colour(sid: int, rnd: Any) -> Any:
        """One task: a colour per round; an array: a colour per task."""
        if n_tasks > 1:
            return colour(sid)
        return round_colours.get(("r", rnd)) if rnd is not None else None

    def per_chunk(rows_all: list[dict[str, Any]], field: str, marker: str, ylabel: str) -> Callable[[Any], None]:
        """``field`` per chunk: one task: a colour per round; an array: a colour per task."""

        def draw(ax: Any) -> None:
            groups: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
            for g in rows_all:
                groups[(g["source_id"], g["round_number"])].append(g)
            labelled: set[Any] = set()
            for (sid, rnd), rows in sorted(
                groups.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
            ):
                x = [g["chunk_number"] if g["chunk_number"] is not None else i for i, g in enumerate(rows)]
                lab_key = task_of.get(sid) if n_tasks > 1 else rnd
                label = None
                if legend and lab_key not in labelled:
                    label = source_name(sid) if n_tasks > 1 else f"round {_num(rnd)}"
                    labelled.add(lab_key)
                ax.plot(x, [g[field] for g in rows], marker, ms=4, alpha=0.8, color=line_colour(sid, rnd), label=label)
            ax.set_xlabel("chunk number")
            ax.set_ylabel(ylabel)
            _integer_x(ax)
            if legend and labelled and len(labelled) <= 16:
                ax.legend(fontsize=9)
            note_many(ax)

        return draw

    gen = [g for g in rep._generation if g["duration_seconds"] is not None]
    if gen:
        how = "colour: task" if n_tasks > 1 else "colour: round"
        panels["generation_duration"] = (
            f"Data generation: seconds per chunk ({how})",
            per_chunk(gen, "duration_seconds", "o", "duration, s"),
        )
        mem = [g for g in gen if g["memory_used_mb"] is not None]
        if mem:
            panels["generation_memory"] = (
                f"Data generation: memory per chunk ({how})",
                per_chunk(mem, "memory_used_mb", "s", "memory, MB"),
            )

    def training_panel(title: str, pred: Callable[[str], bool], ylabel: str, logy: bool) -> Panel | None:
        rows = [r for r in rep._training if pred(r["metric_name"]) and r["metric_value"] is not None]
        if not rows:
            return None

        def draw(ax: Any) -> None:
            groups: dict[tuple[int, str, str, Any], list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                groups[(r["source_id"], r["metric_name"], r["phase"] or "", r["round_number"])].append(r)
            names = sorted({k[1] for k in groups})
            labelled: set[Any] = set()
            for (sid, name, phase, rnd), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                        kv[0][3] or 0)):  # fmt: skip
                rs.sort(key=lambda r: (r["epoch_number"] or 0, r["timestamp"]))
                style = (
                    ("--" if phase == "val" else "-")
                    if len(names) == 1
                    else ["-", "--", ":", "-."][names.index(name) % 4]
                )
                xs = [-1 if r["epoch_number"] is None else r["epoch_number"] for r in rs]
                few = len(rs) < _MARKERS_BELOW // 2
                label = None
                # The legend names the colours (task or round); the title says what the line styles are.
                what = name if len(names) > 1 else ""
                if n_tasks > 1:
                    lab_key: Any = (task_of.get(sid), what)
                    text = f"{task_name(task_of[sid]) if sid in task_of else sid} {what}".strip()
                else:
                    lab_key = (rnd, what)
                    text = f"round {_num(rnd)} {what}".strip()
                if legend and lab_key not in labelled:
                    label = text
                    labelled.add(lab_key)
                ax.plot(xs, [r["metric_value"] for r in rs], style, color=line_colour(sid, rnd), lw=1.3,
                        alpha=0.7 if n_tasks > 20 else 0.95, marker="o" if few else None, ms=3.5, label=label)  # fmt: skip
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            _integer_x(ax)
            values = [r["metric_value"] for r in rows if math.isfinite(r["metric_value"])]
            if logy and values and min(values) > 0 and max(values) / min(values) > 10:  # log only over a decade
                _plain_log_axis(ax, math.log10(max(values) / min(values)))
            if legend and labelled and len(labelled) <= 24:
                ax.legend(fontsize=9, ncols=2 if len(labelled) > 8 else 1)
            note_many(ax)

        return (title, draw)

    line_note = "solid: train, dashed: val"
    colour_note = "colour: task" if n_tasks > 1 else "colour: round"
    p = training_panel(
        f"Training loss per epoch ({line_note}; {colour_note})", lambda n: "loss" in n.lower(), "loss", True
    )
    if p:
        panels["training_loss"] = p
    p = training_panel(f"Learning rate per epoch ({colour_note})", lambda n: is_schedule(n) and "learning_rate" in n.lower()
                       or n.lower() in ("lr",) or n.lower().endswith("/lr"), "learning rate", True)  # fmt: skip
    if p:
        panels["learning_rate"] = p
    return panels


def _render(
    panels: list[Panel],
    columns: int = 1,
    title: str | None = None,
    dpi: int = 100,
    size: tuple[float, float] = (8.0, 4.2),
) -> bytes:
    """``panels`` on one figure, ``columns`` wide; ``size``: inches per panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows + (0.4 if title else 0.0)), dpi=dpi, layout="constrained")
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    for i, (panel_title, draw) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, alpha=0.3)
        draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.advice li{margin:4px 0} img{width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px} figure{margin:0}
tr.winner td{background:#eef7ee}
.st-completed{color:#176b1e} .st-failed,.st-timeout,.st-cancelled,.st-preempted,.st-lost,.st-out_of_memory,
.st-node_fail,.st-boot_fail,.st-deadline{color:#b3261e;font-weight:600} .st-unknown{color:#8a5a00}
"""


def _h(x: Any) -> str:
    return html.escape("-" if x is None else str(x), quote=True)


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


def _html(rep: Report) -> str:
    d = rep.data
    run, smp = d["run"], d["samples"]
    run_line = f"run: {run['start_utc']} → {run['end_utc']} UTC, {fmt_duration(run['duration_s'])}"
    who_line = f"{run['jobs']} job(s)/task(s), {run['sources']} source(s) on {len(run['nodes'])} node(s)"
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
        f"<li>{_h(who_line)}</li>",
        f"<li>{_h(samples_line)}</li>",
        *(f"<li><b>{_h(line)}</b></li>" for line in _summary_lines(d)),
        "</ul>",
    ]
    if d["efficiency"]["advice"]:
        parts.append("<h2>Against what was requested</h2><ul class='advice'>")
        parts += [f"<li>{_h(a)}</li>" for a in d["efficiency"]["advice"]]
        parts.append("</ul>")
    arr = d["array"]
    if arr["tasks"] > 1:
        rows = [
            [label, fmt(arr[k]["p50"]), fmt(arr[k]["p95"]), fmt(arr[k]["max"])] for label, k, fmt in _ACROSS if arr[k]
        ]
        across = "Across {} tasks".format(arr["tasks"])
        parts.append(f"<h2>{_h(across)}</h2>")
        parts.append(_html_table(["", "p50", "p95", "max"], rows, numeric=(1, 2, 3)))
    sweep = d.get("sweep") or {}
    if len(sweep.get("tasks", [])) > 1:
        header, rows = _sweep_rows(sweep)
        obj = sweep["objective"]
        how = f"ranked by the final {obj['metric']} ({obj['goal']})" if obj else "no training metric to rank by"
        parts.append(f"<h2>{_h('Tasks, ' + how)}</h2>")
        numeric = [i for i, h in enumerate(header) if i == 0 or h.endswith((" final", " best"))]
        win = next((i for i, t in enumerate(sweep["tasks"]) if t["task"] == sweep["winner"]), None)
        parts.append(_html_table(header, rows, numeric=numeric, highlight=win))
    try:
        plots = rep.plots()
    except Exception as exc:  # a plot must never cost the rest of the report
        plots = {}
        parts.append(f"<p>{_h(f'plots could not be drawn: {exc}')}</p>")
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for name, png in plots.items():
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
        header, rows = _training_rows(d["training"])
        parts.append(_html_table(header, rows, numeric=[i for i, h in enumerate(header)
                                                        if h in ("tasks", "median final", "final", "best", "rows")]))  # fmt: skip
    if d["resources"]:
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
        parts.append(_html_table(
            ["job", "state", "exit", "elapsed", "total CPU", "requested memory", "CPUs", "time limit", "max RSS MB"],
            [[r["job"], r.get("state", ""), r.get("exit_code", ""), r.get("elapsed", ""), r.get("total_cpu", ""),
              r.get("req_mem", ""), r.get("alloc_cpus", ""), r.get("timelimit", ""), _num(r["max_rss_mb"])]
             for r in sacct["rows"]],
            numeric=[8],
        ))  # fmt: skip
    if sacct.get("not_final"):
        parts.append(f"<p class='note'>Slurm accounting: {_h(sacct['not_final'])}</p>")
    elif not sacct["rows"] and sacct.get("why"):
        parts.append(f"<p class='note'>Slurm accounting: {_h(sacct['why'])}</p>")
    if d["jobs"]:
        parts.append("<h2>Tasks</h2>")
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
        notes = any(j.get("resolved_from") or j["status"] == "unknown" for j in d["jobs"])
        if notes:
            head.append("note")
        body = []
        for j in d["jobs"]:
            cells = [j["source"], j["job_id"], j["array_task_id"], j["node"], j["attempt"]]
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


def _requested_cells(req: dict[str, Any]) -> list[str]:
    """CPUs, memory, time limit and GPUs asked for, as table cells ("-" when not recorded)."""
    mem = req.get("mem_gb")
    limit = req.get("timeout_min")
    return [
        _cell(req.get("cpus")),
        "-" if mem is None else f"{_num(float(mem))} GB",
        minutes(limit),
        _cell(req.get("gpus")),
    ]


# -- command ------------------------------------------------------------------------------------
def _write(path: str, data: bytes | str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AetheriumError(f"{path}: folder {folder} does not exist; create it or choose another path")
    if isinstance(data, bytes):
        with open(path, "wb") as fb:
            fb.write(data)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(data)
    print(f"wrote {path}", file=sys.stderr)


def run_report(
    db: str,
    *,
    plot: str | None = None,
    html: str | None = None,
    json_out: bool = False,
    json_path: str | None = None,
    plot_dir: str | None = None,
    quiet: bool = False,
    objective: str | None = None,
) -> int:
    """What ``aetherium-hpc report`` does; raises :class:`AetheriumError` for user errors."""
    rep = build_report(db, objective=objective)
    if json_out:
        sys.stdout.write(rep.to_json() + "\n")
    elif not quiet:
        sys.stdout.write(rep.text)
    sys.stdout.flush()
    if json_path:
        _write(json_path, rep.to_json() + "\n")
    if plot:
        _write(plot, rep.dashboard_png())
    if plot_dir:
        os.makedirs(plot_dir, exist_ok=True)
        for name, png in rep.plots().items():
            _write(os.path.join(plot_dir, f"{name}.png"), png)
    if html:
        _write(html, rep.to_html())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aetherium_hpc.analyze DB [--plot out.png] [--html report.html] [--json]``."""
    import argparse

    from .commands import add_report_arguments, report_database

    parser = argparse.ArgumentParser(prog="python -m aetherium_hpc.analyze", description=__doc__.split("\n\n")[0])
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_report(report_database(args.db), plot=args.plot, html=args.html, json_out=args.json, json_path=args.json_file,
                          plot_dir=args.plot_dir, quiet=args.quiet, objective=args.objective)  # fmt: skip
    except AetheriumError as exc:
        print(f"aetherium-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
