"""Which setting won: one row per task of an array, ranked by an objective.

:func:`task_table` groups the training rows, job rows and per-source figures of a report by
task (array job, task), reads each task's parameters from its configuration snapshot
(``task_params``, written by the launcher), and ranks the tasks by the objective: the final
value of one training metric (``val/loss:min``). Learning-rate-like metrics are schedules, not
results: they are never a default objective and have no "best".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..errors import AetheriumError

#: Metrics whose best value is the largest (otherwise the smallest is best).
HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "auc", "precision", "recall", "score", "iou", "map", "r2")
#: Statuses of a task that ended well; every other final status is named in the summary.
OK_STATUSES = ("completed", "running")


def higher_is_better(name: str) -> bool:
    low = name.lower()
    return any(
        low == w or low.endswith("_" + w) or low.startswith(w + "_") or w in low.split("/") for w in HIGHER_IS_BETTER
    )


def is_schedule(name: str) -> bool:
    """A value the training sets (learning rate, momentum, weight decay), not one it achieves."""
    low = name.lower()
    parts = low.replace("/", "_").split("_")
    return "learning_rate" in low or "lr" in parts or low in ("momentum", "weight_decay", "wd")


def metric_key(name: str, phase: str | None) -> str:
    """``val/loss`` for (loss, val); the name alone without a phase."""
    return f"{phase}/{name}" if phase else name


@dataclass(frozen=True)
class Objective:
    key: str  # metric key, e.g. "val/loss"
    goal: str  # "min" | "max"
    chosen: str  # "given" | "default"

    def as_dict(self) -> dict[str, str]:
        return {"metric": self.key, "goal": self.goal, "value": "final", "chosen": self.chosen}


def parse_objective(spec: str | None, keys: list[str]) -> Objective | None:
    """``METRIC[:min|max]`` against the metric keys present; default: the first validation loss,
    else the first metric that is not a schedule. :class:`AetheriumError` for a metric not logged."""
    if spec:
        name, _, goal = spec.rpartition(":")
        if goal not in ("min", "max"):
            name, goal = spec, ""
        matches = [k for k in keys if k == name] or [k for k in keys if k.rpartition("/")[2] == name]
        if not matches:
            raise AetheriumError(
                f"--objective {spec}: no training metric {name!r} in this database; "
                f"choose one of: {', '.join(keys) or '(none logged)'}, e.g. --objective {keys[0] if keys else 'val/loss'}:min"
            )
        key = matches[0]
        return Objective(key, goal or ("max" if higher_is_better(key) else "min"), "given")
    candidates = [k for k in keys if not is_schedule(k.rpartition("/")[2])]
    val_loss = [k for k in candidates if k.startswith("val/") and "loss" in k.rpartition("/")[2].lower()]
    val_loss += [k for k in candidates if "/" not in k and k.lower().startswith("val") and "loss" in k.lower()]
    if not (val_loss or candidates):
        return None
    key = (val_loss or candidates)[0]
    return Objective(key, "max" if higher_is_better(key.rpartition("/")[2]) else "min", "default")


def task_params(config: Any) -> dict[str, Any]:
    """The ``task_params`` of a job row's configuration snapshot (JSON text or a dict); {} when none."""
    try:
        parsed = json.loads(config) if isinstance(config, str) else config
    except ValueError:
        return {}
    params = parsed.get("task_params") if isinstance(parsed, dict) else None
    return dict(params) if isinstance(params, dict) else {}


def _status_of(rows: list[dict[str, Any]]) -> str | None:
    """One status for a task: its latest attempt; on several nodes, the first that did not complete."""
    if not rows:
        return None
    last = max(r.get("attempt") or 0 for r in rows)
    statuses = [str(r.get("status")) for r in rows if (r.get("attempt") or 0) == last]
    bad = [s for s in statuses if s not in OK_STATUSES]
    return bad[0] if bad else statuses[0]


def task_key(job_id: Any, array_job_id: Any, task: Any) -> tuple[str, int]:
    """(array job, task) of an array task; (job, -1) of a plain job."""
    if array_job_id is not None and task is not None:
        return (str(array_job_id), int(task))
    return (str(job_id), -1 if task is None else int(task))


def task_label(key: tuple[str, int]) -> str:
    job, task = key
    return f"{job}_{task}" if task >= 0 else job


def task_table(
    jobs: list[dict[str, Any]],
    training: list[dict[str, Any]],
    per_source: list[dict[str, Any]],
    source_task: dict[int, tuple[str, int]],
    objective: str | None,
) -> dict[str, Any]:
    """The per-task table: ``{"objective", "parameters", "metrics", "tasks", "winner", "median"}``.

    ``training``: rows in (round, epoch, time) order (a missing round or epoch counts as 0): a
    task's final value is its last row.
    ``per_source``: the report's per-source figures (``source_id``, ``peak_memory_mb``,
    ``runtime_s``); ``source_task``: source id → task key."""
    tasks: dict[tuple[str, int], dict[str, Any]] = {}

    def entry(key: tuple[str, int]) -> dict[str, Any]:
        if key not in tasks:
            tasks[key] = {"task": task_label(key), "array_task_id": key[1] if key[1] >= 0 else None,
                          "params": {}, "status": None, "metrics": {}, "peak_memory_mb": None, "runtime_s": None}  # fmt: skip
        return tasks[key]

    job_rows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for j in jobs:
        key = source_task.get(j.get("source_id") or -1) or task_key(j.get("job_id"), j.get("array_job_id"),
                                                                     j.get("array_task_id"))  # fmt: skip
        job_rows[key].append(j)
        e = entry(key)
        e["params"] = e["params"] or task_params(j.get("config"))
    for key, rows in job_rows.items():
        tasks[key]["status"] = _status_of(rows)
    for s in per_source:
        skey = source_task.get(s["source_id"])
        if skey is None:
            continue
        e = entry(skey)
        for field in ("peak_memory_mb", "runtime_s"):
            if s.get(field) is not None:
                e[field] = max(e[field] or 0.0, s[field])
    by_metric: dict[tuple[tuple[str, int], str], list[dict[str, Any]]] = defaultdict(list)
    keys: list[str] = []
    for r in training:
        v = r.get("metric_value")
        rkey = source_task.get(r["source_id"])
        if rkey is None or v is None:
            continue
        mkey = metric_key(r["metric_name"], r.get("phase"))
        if mkey not in keys:
            keys.append(mkey)
        by_metric[(rkey, mkey)].append(r)
    keys.sort()
    for (key, mkey), rows in by_metric.items():
        # ``training`` comes in (round, epoch, time) order (the report's loader sorts it so)
        name = mkey.rpartition("/")[2]
        finite = [r for r in rows if math.isfinite(r["metric_value"])]
        best = None
        if finite and not is_schedule(name):
            best = (max if higher_is_better(name) else min)(finite, key=lambda r: r["metric_value"])
        final = rows[-1]
        entry(key)["metrics"][mkey] = {
            "final": final["metric_value"] if math.isfinite(final["metric_value"]) else None,
            "final_round": final["round_number"], "final_epoch": final["epoch_number"],
            "best": best["metric_value"] if best else None,
            "best_round": best["round_number"] if best else None, "best_epoch": best["epoch_number"] if best else None,
        }  # fmt: skip
    obj = parse_objective(objective, keys)
    params: list[str] = []
    for e in tasks.values():
        params += [p for p in e["params"] if p not in params]

    def score(e: dict[str, Any]) -> float | None:
        m = e["metrics"].get(obj.key) if obj else None
        return None if m is None else m["final"]

    ordered = sorted(tasks.values(), key=lambda e: (e["array_task_id"] is None, e["array_task_id"] or 0, e["task"]))
    if obj:
        sign = 1.0 if obj.goal == "min" else -1.0
        ordered.sort(key=lambda e: (score(e) is None, sign * (score(e) or 0.0)))
    for rank, e in enumerate(ordered, 1):
        e["objective_value"] = score(e)
        e["rank"] = rank if score(e) is not None else None
    scored = [e for e in ordered if e["objective_value"] is not None]
    good = [e for e in scored if e["status"] in (*OK_STATUSES, None)]
    winner = (good or scored)[0] if scored else None
    values = sorted(e["objective_value"] for e in scored)
    median = None
    if values:
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0
    return {
        "objective": obj.as_dict() if obj else None,
        "parameters": params,
        "metrics": keys,
        "tasks": ordered,
        "winner": winner["task"] if winner else None,
        "median": median,
        "scored": len(scored),
    }


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
