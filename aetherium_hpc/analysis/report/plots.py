"""The plots of a report, drawn with matplotlib's Agg backend into PNG bytes.

The only module of the package that imports matplotlib, and only when a plot is drawn
(inside the functions), so a text or JSON report never loads it. One colour per task
in every panel; statistics use every sample, a timeline is thinned for drawing. A sweep's
winner is drawn over the other tasks (thicker, outlined), a star on its final objective value,
and named in the legend (the only task named above :data:`_LEGEND_MAX_TASKS` tasks).

Every symbol the plots write is in DejaVu Sans (matplotlib's font). Names from the data are
drawn as written (no mathtext, control characters written out); for a character the font
lacks (CJK, emoji) matplotlib's "Glyph ... missing" warning is not shown.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..formatting import duration as fmt_duration
from ..formatting import num as _num
from ..sweep import is_schedule, metric_key, params_text, task_key, task_label
from . import across
from .across import FORMAT
from .load import Arr, EmptyDatabaseError, Loaded, Series

Panel = tuple[str, Callable[[Any], None]]  # (title, draw(ax))

#: Points per line above which a timeline is thinned for plotting (statistics use every sample).
_MAX_PLOT_POINTS = 4000
#: Control characters but the line feed: no font draws them; written out (``\\x1b``).
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
#: matplotlib's warning for a character its font lacks (a CJK or emoji name from the data).
_MISSING_GLYPH = r"Glyph \d+ .* missing from font"


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


@dataclass(frozen=True)
class _Winner:
    """The sweep's winning task as the plots mark it."""

    sids: frozenset[int]  # its sources (its nodes, its attempts)
    name: str  # ``900_9 learning_rate=0.003, seed=2``
    objective: str  # the metric key it won by (``val/loss``)


def _winner(d: dict[str, Any], task_of: dict[int, tuple[str, int]], name: Callable[[Any], str]) -> _Winner | None:
    """The winner of a sweep of several tasks (none in the lab view, where the jobs are unrelated)."""
    sweep = d.get("sweep") or {}
    obj, won = sweep.get("objective"), sweep.get("winner")
    if len(sweep.get("tasks") or []) < 2 or not obj or not won or d.get("lab"):
        return None
    sids = frozenset(sid for sid, key in task_of.items() if task_label(key) == won)
    return _Winner(sids, name(task_of[min(sids)]), obj["metric"]) if sids else None


def _winner_style(lw: float, edge: str = "black") -> dict[str, Any]:
    """Plot keywords of the winner's line: twice as thick, outlined in ``edge``, over the other lines."""
    from matplotlib import patheffects

    outline = patheffects.withStroke(linewidth=2 * lw + 2.5, foreground=edge)
    return {"lw": 2 * lw, "zorder": 5, "path_effects": [outline]}


def _line_style(names: list[str], name: str, phase: str) -> str:
    """One metric: solid train, dashed val; several: a style per metric."""
    return ("--" if phase == "val" else "-") if len(names) == 1 else ["-", "--", ":", "-."][names.index(name) % 4]


def _star_final(ax: Any, rows: list[dict[str, Any]], winner: _Winner, colour: Any) -> None:
    """A star on the winner's final objective value among the training ``rows`` (its last in
    (round, epoch, time) order), at its epoch."""
    mine = [
        r
        for r in rows
        if r["source_id"] in winner.sids and metric_key(r["metric_name"], r["phase"]) == winner.objective
    ]
    if mine:
        last = max(mine, key=lambda r: (r["round_number"] or 0, r["epoch_number"] or 0, r["timestamp"]))
        x = -1 if last["epoch_number"] is None else last["epoch_number"]
        ax.plot([x], [last["metric_value"]], "*", ms=16, color=colour, mec="black", mew=1.2, zorder=6)


def _quiet_matplotlib() -> None:
    """matplotlib's log at WARNING (unless set otherwise): not its first run's "generated new
    fontManager" at the command's INFO level."""
    log = logging.getLogger("matplotlib")
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)


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


def plain_log_axis(ax: Any, decades: float) -> None:
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


def panels(d: dict[str, Any], loaded: Loaded) -> dict[str, Panel]:
    """The plots that have data, by name: CPU, memory, GPU timelines, data generation, training."""
    _quiet_matplotlib()
    t_start = d["run"]["start"] or 0.0
    unit, scale = _time_unit(d["run"]["duration_s"] or 0.0)
    sources = loaded.sources
    found: dict[str, Panel] = {}
    task_of = {sid: task_key(s.job_id, s.array_job_id, s.task) for sid, s in sources.items()}
    keys = sorted(set(task_of.values()))
    colours = _task_colours(keys) if keys else {}
    n_tasks = len(keys)
    legend = n_tasks <= _LEGEND_MAX_TASKS
    many = bool(d["array"].get("summarised"))
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

    winner = _winner(d, task_of, task_name)

    def line_kw(sid: int, label: str | None, lw: float) -> dict[str, Any]:
        """A task's line: labelled where the legend names every task; the winner's drawn over the
        others and always labelled."""
        if winner is None or sid not in winner.sids:
            return {"lw": lw, "label": label if legend else None}
        if label is not None:
            label = f"{label} (winner)" if legend else f"winner: {label}"
        return {**_winner_style(lw), "label": label}

    def source_name(sid: int, device: str = "") -> str:
        key = task_of.get(sid)
        src = sources.get(sid)
        name = task_name(key) if key else str(sid)
        if key and src and len(nodes_per_task[key]) > 1:
            name += f" on {src.node}"
        if src and src.requeued:  # each attempt of a requeued task its own line, named
            name += f" #{src.attempt + 1}"
        return f"{name} {device[:12]}" if device else name

    def colour(sid: int) -> Any:
        key = task_of.get(sid)
        return colours.get(key) if key else None

    def note_many(ax: Any) -> None:
        if not legend:
            ax.text(0.99, 0.97, f"{n_tasks} tasks; colour: task index (viridis, first dark)" if n_tasks > 20
                    else f"{n_tasks} tasks", transform=ax.transAxes, ha="right", va="top", fontsize=8)  # fmt: skip

    def lines_timeline(title: str, picks: list[tuple[Series, str]], ylabel: str) -> Panel:
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
                        alpha=0.7 if n_tasks > 20 else 0.95, marker="o" if few else None, ms=3.5,
                        **line_kw(s.sid, label, 0.8 if n_tasks > 20 else 1.2))  # fmt: skip
            ax.set_xlabel(f"time since the run started, {unit}")
            ax.set_ylabel(ylabel)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=9, loc="best")
            note_many(ax)

        return (title, draw)

    # A large array: the spread across tasks instead of a line per task.
    timeline = _band_timeline(n_tasks, winner) if many else lines_timeline

    by_sid: dict[int, list[Series]] = defaultdict(list)
    for ser in loaded.series:
        by_sid[ser.sid].append(ser)

    def choose(mtype: str, names: Sequence[str]) -> list[tuple[Series, str]]:
        out = []
        for sid in sorted(by_sid):
            for name in names:
                found = [s for s in by_sid[sid] if s.mtype == mtype and s.mname == name]
                if found:
                    out += [(s, source_name(s.sid, s.device)) for s in found]
                    break
        return out

    per = f", across {n_tasks} tasks" if many else ", per task" if n_tasks > 1 else ""
    cpu = choose("cpu", ("process_tree", "system_total"))
    if cpu:
        mine = cpu[0][0].mname == "process_tree"
        what = "the job's processes" if mine else "the whole node"
        found["cpu"] = timeline(f"CPU use of {what}{per}", cpu, "CPU, % of one core" if mine else "CPU, % of the node")
    ram = choose("ram", ("process_tree_rss", "system_used"))
    if ram:
        mine = ram[0][0].mname == "process_tree_rss"
        what = "the job's processes (RSS)" if mine else "the whole node (used)"
        found["memory"] = timeline(f"Memory of {what}{per}", ram, f"memory, {ram[0][0].unit or 'MB'}")
    gutil = [(s, source_name(s.sid, s.device)) for s in loaded.series if s.mtype == "gpu" and s.mname == "utilization"]
    if gutil:
        found["gpu_utilization"] = timeline(f"GPU utilisation per GPU{per}", gutil, "GPU utilisation, %")
    gmem = [(s, source_name(s.sid, s.device)) for s in loaded.series if s.mtype == "gpu" and s.mname == "memory_used"]
    if gmem:
        found["gpu_memory"] = timeline(f"GPU memory per GPU{per}", gmem, f"GPU memory, {gmem[0][0].unit or 'MB'}")

    rounds_all = sorted(
        {r["round_number"] for r in loaded.training + loaded.generation if r["round_number"] is not None}
    )
    round_colours = _task_colours([("r", r) for r in rounds_all])

    def line_colour(sid: int, rnd: Any) -> Any:
        """One task: a colour per round; an array: a colour per task."""
        if n_tasks > 1:
            return colour(sid)
        return round_colours.get(("r", rnd)) if rnd is not None else None

    def lines_per_chunk(rows_all: list[dict[str, Any]], field: str, marker: str, ylabel: str) -> Callable[[Any], None]:
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
                if lab_key not in labelled:
                    label = source_name(sid) if n_tasks > 1 else f"round {_num(rnd)}"
                    labelled.add(lab_key)
                ax.plot(x, [g[field] for g in rows], marker, ms=4, alpha=0.8, color=line_colour(sid, rnd),
                        **line_kw(sid, label, 1.5))  # fmt: skip
            ax.set_xlabel("chunk number")
            ax.set_ylabel(ylabel)
            _integer_x(ax)
            if 0 < len(ax.get_legend_handles_labels()[1]) <= 16:
                ax.legend(fontsize=9)
            note_many(ax)

        return draw

    per_chunk = _band_per_chunk if many else lines_per_chunk
    gen = [g for g in loaded.generation if g["duration_seconds"] is not None]
    if gen:
        how = "median, p5–p95 and min–max across tasks" if many else "colour: task" if n_tasks > 1 else "colour: round"
        found["generation_duration"] = (
            f"Data generation: seconds per chunk ({how})",
            per_chunk(gen, "duration_seconds", "o", "duration, s"),
        )
        mem = [g for g in gen if g["memory_used_mb"] is not None]
        if mem:
            found["generation_memory"] = (
                f"Data generation: memory per chunk ({how})",
                per_chunk(mem, "memory_used_mb", "s", "memory, MB"),
            )

    def lines_training(title: str, pred: Callable[[str], bool], ylabel: str, logy: bool) -> Panel | None:
        rows = _training_rows(loaded, pred)
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
                style = _line_style(names, name, phase)
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
                if lab_key not in labelled:
                    label = text
                    labelled.add(lab_key)
                ax.plot(xs, [r["metric_value"] for r in rs], style, color=line_colour(sid, rnd),
                        alpha=0.7 if n_tasks > 20 else 0.95, marker="o" if few else None, ms=3.5,
                        **line_kw(sid, label, 1.3))  # fmt: skip
            if winner is not None:
                _star_final(ax, rows, winner, colour(min(winner.sids)))
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            _integer_x(ax)
            values = [r["metric_value"] for r in rows if math.isfinite(r["metric_value"])]
            if logy and values and min(values) > 0 and max(values) / min(values) > 10:  # log only over a decade
                plain_log_axis(ax, math.log10(max(values) / min(values)))
            shown = len(ax.get_legend_handles_labels()[1])
            if 0 < shown <= 24:
                ax.legend(fontsize=9, ncols=2 if shown > 8 else 1)
            note_many(ax)

        return (title, draw)

    training_panel = _band_training(loaded, round_colours, winner) if many else lines_training
    line_note = "solid: train, dashed: val"
    colour_note = "median and p5–p95 across tasks; colour: round" if many else "colour: task" if n_tasks > 1 \
        else "colour: round"  # fmt: skip
    p = training_panel(
        f"Training loss per epoch ({line_note}; {colour_note})", lambda n: "loss" in n.lower(), "loss", True
    )
    if p:
        found["training_loss"] = p
    p = training_panel(f"Learning rate per epoch ({colour_note})", lambda n: is_schedule(n) and "learning_rate" in n.lower()
                       or n.lower() in ("lr",) or n.lower().endswith("/lr"), "learning rate", True)  # fmt: skip
    if p:
        found["learning_rate"] = p
    if many:
        found.update(_histograms(d, winner))
    return found


def _training_rows(loaded: Loaded, pred: Callable[[str], bool]) -> list[dict[str, Any]]:
    """The training rows with a value whose metric name ``pred`` accepts (asked once per name)."""
    names = {r["metric_name"] for r in loaded.training}
    keep = {n for n in names if pred(n)}
    return [r for r in loaded.training if r["metric_name"] in keep and r["metric_value"] is not None]


# -- a large array: the spread across tasks (see .across) -----------------------------------------
def _draw_band(ax: Any, x: Any, b: dict[str, Arr], colour: Any = "tab:blue", style: str = "-", labels: bool = True,
               minmax: bool = True) -> None:  # fmt: skip
    """Median line with a p5–p95 band (and a fainter min–max band) over ``x``."""
    if minmax:
        ax.fill_between(x, b["min"], b["max"], color=colour, alpha=0.1, lw=0, label="min–max" if labels else None)
    ax.fill_between(x, b["p5"], b["p95"], color=colour, alpha=0.25, lw=0, label="p5–p95" if labels else None)
    ax.plot(x, b["p50"], style, color=colour, lw=1.5, label="median" if labels else None)


def _band_timeline(n_tasks: int, winner: _Winner | None) -> Callable[[str, list[tuple[Series, str]], str], Panel]:
    def timeline(title: str, picks: list[tuple[Series, str]], ylabel: str) -> Panel:
        series = [s for s, _ in picks]

        def draw(ax: Any) -> None:
            b = across.bands(series)
            if b is None:
                return
            unit, scale = _time_unit(float(b["x"][-1]) if b["x"].size else 0.0)
            _draw_band(ax, b["x"] / scale, b)
            won = [s for s in series if winner is not None and s.sid in winner.sids and s.t.size]
            for i, s in enumerate(won):  # against the time since its own first sample, as the bands
                t, v = _thin(s.t - s.t[0], s.v)
                ax.plot(t / scale, v, color="black", label=f"winner: {winner.name}" if winner and not i else None,
                        **_winner_style(1.0, "white"))  # fmt: skip
            ax.set_xlabel(f"time since the task started, {unit}")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=9, loc="best")
            ax.text(0.01, 0.97, f"{len(series)} series of {n_tasks} tasks", transform=ax.transAxes, ha="left",
                    va="top", fontsize=8)  # fmt: skip

        return (title.replace(", per task", "") + ": median, p5–p95, min–max", draw)

    return timeline


def _band_per_chunk(rows_all: list[dict[str, Any]], field: str, marker: str, ylabel: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        b = across.band_of_rows([(g["chunk_number"], g[field]) for g in rows_all if g["chunk_number"] is not None])
        if b is None:
            return
        _draw_band(ax, b["x"], b, style=marker + "-")
        ax.set_xlabel("chunk number")
        ax.set_ylabel(ylabel)
        _integer_x(ax)
        ax.legend(fontsize=9, loc="best")

    return draw


def _band_training(
    loaded: Loaded, round_colours: dict[tuple[str, int], Any], winner: _Winner | None
) -> Callable[..., Panel | None]:
    def training_panel(title: str, pred: Callable[[str], bool], ylabel: str, logy: bool) -> Panel | None:
        rows = _training_rows(loaded, pred)
        if not rows:
            return None

        def draw(ax: Any) -> None:
            groups: dict[tuple[str, str, Any], list[tuple[float, float]]] = defaultdict(list)
            for r in rows:
                x = -1 if r["epoch_number"] is None else r["epoch_number"]
                groups[(r["metric_name"], r["phase"] or "", r["round_number"])].append((x, r["metric_value"]))
            names = sorted({k[0] for k in groups})
            rounds = sorted({k[2] for k in groups}, key=lambda r: -1 if r is None else r)
            for (name, phase, rnd), pairs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                      -1 if kv[0][2] is None else kv[0][2])):  # fmt: skip
                b = across.band_of_rows(pairs)
                if b is None:
                    continue
                style = _line_style(names, name, phase)
                colour = round_colours.get(("r", rnd)) if rnd is not None else "tab:blue"
                first = phase != "val" or not any(k[2] == rnd and k[1] != "val" for k in groups)
                ax.fill_between(b["x"], b["p5"], b["p95"], color=colour, alpha=0.15, lw=0)
                label = f"round {_num(rnd)}" if len(rounds) > 1 and first and len(rounds) <= 12 else None
                ax.plot(b["x"], b["p50"], style, color=colour, lw=1.3, label=label)
            if winner is not None:  # the winner's own lines over the bands
                won: dict[tuple[str, str, Any], list[dict[str, Any]]] = defaultdict(list)
                for r in rows:
                    if r["source_id"] in winner.sids:
                        won[(r["metric_name"], r["phase"] or "", r["round_number"])].append(r)
                for i, ((name, phase, _rnd), rs) in enumerate(sorted(won.items(), key=lambda kv: str(kv[0]))):
                    rs.sort(key=lambda r: (r["epoch_number"] or 0, r["timestamp"]))
                    style = _line_style(names, name, phase)
                    ax.plot([-1 if r["epoch_number"] is None else r["epoch_number"] for r in rs],
                            [r["metric_value"] for r in rs], style, color="black",
                            label=None if i else f"winner: {winner.name}", **_winner_style(1.0, "white"))  # fmt: skip
                _star_final(ax, rows, winner, "gold")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            _integer_x(ax)
            values = [r["metric_value"] for r in rows if math.isfinite(r["metric_value"])]
            if logy and values and min(values) > 0 and max(values) / min(values) > 10:
                plain_log_axis(ax, math.log10(max(values) / min(values)))
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=9, ncols=2 if len(rounds) > 6 else 1)

        return (title, draw)

    return training_panel


def _histograms(d: dict[str, Any], winner: _Winner | None) -> dict[str, Panel]:
    """One histogram across tasks per measure of ``data["across"]``, its median marked (and the
    winner's value on the objective's)."""
    out: dict[str, Panel] = {}
    sweep = d.get("sweep") or {}
    won = next((t["objective_value"] for t in sweep.get("tasks") or [] if t["task"] == sweep.get("winner")), None)
    for m in d["across"]["measures"]:
        edges, counts = m["histogram"]["edges"], m["histogram"]["counts"]
        key = m["key"]
        scale, unit = 1.0, ""
        if key == "peak_memory_mb":
            scale, unit = (1024.0, "GB") if m["max"] >= 1024 else (1.0, "MB")
        elif key == "runtime_s":
            unit, scale = _time_unit(m["max"])
        elif key.endswith("efficiency"):
            scale, unit = 0.01, "%"
        elif key == "gpu_util_pct":
            unit = "%"

        def draw(ax: Any, edges: list[float] = edges, counts: list[int] = counts, m: dict[str, Any] = m,
                 scale: float = scale, unit: str = unit) -> None:  # fmt: skip
            xs = [e / scale for e in edges]
            ax.stairs(counts, xs, fill=True, color="tab:blue", alpha=0.6)
            ax.axvline(m["p50"] / scale, color="black", lw=1.2, ls="--", label=f"median {FORMAT[m['key']](m['p50'])}")
            if m["key"].endswith("efficiency"):
                ax.axvline(100.0, color="tab:red", lw=1.0, label="all of the request")
            if m["key"] == "objective_value" and winner is not None and won is not None:
                ax.axvline(won, color="black", label=f"winner: {winner.name}: {FORMAT['objective_value'](won)}",
                           **_winner_style(1.0, "gold"))  # fmt: skip
            ax.set_xlabel(f"{m['label']}" + (f", {unit}" if unit else ""))
            ax.set_ylabel("tasks")
            ax.legend(fontsize=9, loc="best")

        what = m["label"].split(" (")[0] if key != "objective_value" else m["label"]
        title = f"{what[0].upper() + what[1:]}: histogram over {m['n']} {m['per']}s"
        out[f"histogram_{key}"] = (title, draw)
    return out


def _literal_texts(fig: Any) -> None:
    """Titles, labels, legend entries and notes drawn as written: no mathtext (a ``$`` in a name
    is a dollar), control characters written out. Tick labels are the formatters' own."""
    from matplotlib.text import Text

    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in axis.findobj(Text)}
    for text in fig.findobj(Text):
        if id(text) not in ticks:
            text.set_parse_math(False)
            text.set_text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.get_text()))


def _render(
    panels: list[Panel],
    columns: int = 1,
    title: str | None = None,
    dpi: int = 100,
    size: tuple[float, float] = (8.0, 4.2),
) -> bytes:
    """``panels`` on one figure, ``columns`` wide; ``size``: inches per panel."""
    _quiet_matplotlib()
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
    _literal_texts(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MISSING_GLYPH, category=UserWarning)
        fig.savefig(buf, format="png")
    return buf.getvalue()


def pngs(d: dict[str, Any], loaded: Loaded) -> dict[str, bytes]:
    """Each plot as PNG bytes, by name (only plots with data)."""
    return {name: _render([panel], dpi=130, size=(7.0, 4.0)) for name, panel in panels(d, loaded).items()}


def dashboard_png(d: dict[str, Any], loaded: Loaded) -> bytes:
    """All plots in one PNG (two columns) under :func:`dashboard_title`."""
    drawn = list(panels(d, loaded).values())
    if not drawn:
        raise EmptyDatabaseError(f"{loaded.path}: nothing to plot (no samples, generation or training rows)")
    return _render(drawn, columns=2, title=dashboard_title(d))


def dashboard_title(d: dict[str, Any]) -> str:
    run = d["run"]
    ids = run.get("job_ids") or []
    shown = ", ".join(ids[:6]) + (f" and {len(ids) - 6} more" if len(ids) > 6 else "")
    tasks = f", {run['jobs']} tasks" if run["jobs"] > 1 else ""
    return f"{run.get('name') or 'run'}: job {shown}{tasks}, {run['start_utc']} UTC, {fmt_duration(run['duration_s'])}"
