"""``aetherium-hpc watch``: a live terminal view of a running job or array.

Per task and node, in the order they matter: the task, node and status, the last epoch, the
data-generation chunks done and their rate, the runtime, the last loss, CPU and memory now with a
short history (a sparkline of the last samples), GPU utilisation, and where the figures come from.
A terminal too narrow for every column shows the first ones that fit, each whole (sparklines
narrower first); the caption names those left out. It reads the live node-local database when it
is on this machine (``<scratch>/aeth-<job>_<task>-<node>/metrics.db``, read-only), else the copy
in the run directory (``db/``, at most ``checkpoint_interval_s`` old). It takes a frame every
``--interval`` seconds, draws it over the last one only when it differs, and ends by itself when
every task has ended; ``--once`` prints one frame (for scripts). Drawn with ``rich``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import envvars
from ..errors import AetheriumError
from ..paths import NodeFolder, RunLayout
from ..store import chunks, reader
from ..store.central import is_central_url
from ..store.central.pull import Puller, Selection
from .formatting import duration, memory_mb, num, printable, unescaped

__all__ = ["Screen", "TaskView", "read_task", "render", "watch"]

#: Samples read of each series: one character each in the widest sparkline.
HISTORY = 12
#: The sparklines draw at most this many seconds before a series' newest sample: the chunks read
#: (and, from a central store, pulled) are those that end in it (docs/CENTRAL.md, "Time-range questions").
WINDOW_S = 600.0
#: The index the newest chunks of a series are read over (the node database and a merged one have
#: it; the run-directory copy has not: store/backup.py).
_END_INDEX = "sample_chunks_by_end"
#: A series' chunks that end in :data:`WINDOW_S` of its newest end, newest first (index
#: ``sample_chunks_by_end``, twice: its newest end, then the chunks from there back); read until
#: they hold :data:`HISTORY` samples, so no other chunk of the series is read.
_RECENT_CHUNKS_SQL = (
    "SELECT t1, n, vals FROM sample_chunks WHERE series_id = ?"
    " AND t1 >= (SELECT max(t1) FROM sample_chunks WHERE series_id = ?) - ? ORDER BY t1 DESC"
)
#: The same without that index (the run-directory copy, where ``series_id = ?`` would scan the
#: whole table for each series): chunks are appended in time order, so a series' newest chunks are
#: its newest rows. The table is read backwards by rowid (no index, no sort) until every series of
#: ``{ids}`` has its samples: a few rows per series and checkpoint of the copy.
_NEWEST_ROWS_SQL = "SELECT series_id, t1, n, vals FROM sample_chunks WHERE series_id IN ({ids}) ORDER BY rowid DESC"
_BLOCKS = "▁▂▃▄▅▆▇█"
#: Statuses of a task that has not ended.
_LIVE = ("running", None)


@dataclass
class TaskView:
    """What one database (one task on one node) says now."""

    path: str
    live: bool  # the node-local file (else the copy in db/)
    origin: str | None = None  # what the "from" column says instead of live / copy (``central``)
    job: str = "?"
    node: str = "?"
    status: str | None = None
    start: float | None = None
    end: float | None = None
    cpu: list[float] = field(default_factory=list)  # % of one core, oldest first
    mem: list[float] = field(default_factory=list)  # MB
    gpu: list[float] = field(default_factory=list)  # %
    chunks: int = 0
    chunk_rate: float | None = None  # chunks per minute
    epoch: str = "-"
    loss: float | None = None
    loss_name: str = ""
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.status not in _LIVE


def sparkline(values: list[float], width: int = HISTORY) -> str:
    """The last ``width`` values as block characters, scaled from 0 to their maximum."""
    vals = [v for v in values[max(0, len(values) - width) :] if v == v]  # drop NaN
    if not vals:
        return ""
    top = max(vals) or 1.0
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, int(v / top * (len(_BLOCKS) - 1) + 0.5))] if v > 0 else " "
                   for v in vals)  # fmt: skip


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone() is not None


def _recent_chunks(conn: sqlite3.Connection, ids: list[int], indexed: bool) -> dict[int, list[tuple[float, str]]]:
    """Per series of ``ids``: (t1, values) of its newest chunks, newest first, that end within
    :data:`WINDOW_S` of its newest end, as many as hold its last :data:`HISTORY` samples.
    ``indexed``: the database has :data:`_END_INDEX` (else it is read backwards by rowid)."""
    got: dict[int, list[tuple[float, str]]] = {sid: [] for sid in ids}
    held = dict.fromkeys(ids, 0)
    if indexed:
        for sid in ids:
            cur = conn.execute(_RECENT_CHUNKS_SQL, (sid, sid, WINDOW_S))
            try:
                for t1, n, text in cur:
                    got[sid].append((t1, text))
                    held[sid] += n
                    if held[sid] >= HISTORY:
                        break
            finally:
                cur.close()
        return got
    newest: dict[int, float] = {}
    wanted = set(ids)
    cur = conn.execute(_NEWEST_ROWS_SQL.format(ids=",".join("?" * len(ids))), ids)
    try:
        for sid, t1, n, text in cur:
            if sid not in wanted:
                continue
            if t1 < newest.setdefault(sid, t1) - WINDOW_S:
                wanted.discard(sid)  # older than the window: the series is done
            else:
                got[sid].append((t1, text))
                held[sid] += n
                if held[sid] >= HISTORY:
                    wanted.discard(sid)
            if not wanted:
                break
    finally:
        cur.close()
    return got


def _last_samples(
    conn: sqlite3.Connection, mtype: str, names: tuple[str, ...], source: int, indexed: bool = True
) -> list[float]:
    """The last samples (within :data:`WINDOW_S`) of the first of ``names`` the source has (averaged over
    devices by time). ``indexed``: see :func:`_recent_chunks`."""
    for name in names:
        ids = [r[0] for r in conn.execute(
            "SELECT series_id FROM series WHERE metric_type = ? AND metric_name = ? AND source_id = ?",
            (mtype, name, source))]  # fmt: skip
        if not ids:
            continue
        per_series: list[list[float]] = []
        for rows in _recent_chunks(conn, ids, indexed).values():
            vals: list[float] = []
            for _, text in sorted(rows):
                vals += chunks.decode_values(text)
            per_series.append(vals[-HISTORY:])
        if len(per_series) == 1:
            return per_series[0]
        n = min(len(s) for s in per_series)
        return [sum(s[len(s) - n + i] for s in per_series) / len(per_series) for i in range(n)]
    return []


def read_task(path: str, live: bool = False, source: int | None = None, origin: str | None = None) -> TaskView:
    """One database's view now (of its source ``source``, default its last one: a node database has
    one); a database that cannot be read yet gives a view with ``error``."""
    view = TaskView(path, live, origin)
    try:
        conn = reader.open_readonly(path, timeout=2.0)
    except sqlite3.Error as exc:
        view.error = str(exc)
        return view
    try:
        src = conn.execute(
            "SELECT source_id, job_id, array_job_id, array_task_id, node FROM sources"
            + (" ORDER BY source_id DESC LIMIT 1" if source is None else " WHERE source_id = ?"),
            () if source is None else (source,),
        ).fetchone()
        if src is None:
            view.error = "no source yet"
            return view
        sid, job_id, array_id, task, node = src
        view.job = f"{array_id}_{task}" if array_id and task is not None else str(job_id)
        view.node = node or "?"
        job = conn.execute("SELECT status, start_time, end_time FROM job_rows WHERE source_id = ?", (sid,)).fetchone()
        if job:
            view.status, view.start, view.end = job
        indexed = _has_index(conn, _END_INDEX)
        view.cpu = _last_samples(conn, "cpu", ("process_tree", "system_total"), sid, indexed)
        view.mem = _last_samples(conn, "ram", ("process_tree_rss", "system_used"), sid, indexed)
        view.gpu = _last_samples(conn, "gpu", ("utilization",), sid, indexed)
        n, first, last = conn.execute(
            "SELECT count(*), min(timestamp), max(timestamp) FROM generation_rows WHERE source_id = ?", (sid,)
        ).fetchone()
        view.chunks = int(n or 0)
        if n and n > 1 and last > first:
            view.chunk_rate = (n - 1) / (last - first) * 60.0
        row = (
            conn.execute(
                "SELECT metric_name, phase, metric_value, round_number, epoch_number FROM training_rows"
                " WHERE source_id = ? AND lower(metric_name) LIKE '%loss%'"
                " ORDER BY coalesce(round_number, -1) DESC, coalesce(epoch_number, -1) DESC, phase = 'val' DESC,"
                " timestamp DESC LIMIT 1",
                (sid,),
            ).fetchone()
            or conn.execute(
                "SELECT metric_name, phase, metric_value, round_number, epoch_number FROM training_rows"
                " WHERE source_id = ? ORDER BY timestamp DESC LIMIT 1",
                (sid,),
            ).fetchone()
        )
        if row:
            name, phase, value, rnd, epoch = row
            view.loss, view.loss_name = value, f"{phase}/{name}" if phase else str(name)
            view.epoch = f"{num(rnd)}/{num(epoch)}" if rnd is not None else num(epoch)
    except sqlite3.Error as exc:  # a copy being replaced, a table not there yet: next frame
        view.error = str(exc)
    finally:
        conn.close()
    return view


def _live_path(scratch: str, key: str, node: str) -> str | None:
    path = NodeFolder.of(scratch, key, node).database
    return path if os.path.isfile(path) else None


def find_databases(target: str) -> tuple[list[tuple[str, bool]], int | None]:
    """(database, live) pairs to read for ``target`` (a run directory or a database), and the number
    of tasks submitted (None when unknown): a task without a database yet counts as not ended."""
    if os.path.isfile(target):
        return [(target, False)], None
    if not RunLayout.is_run_dir(target):
        raise AetheriumError(
            f"{target}: not a run directory or a database; give a folder printed by `aetherium-hpc submit`"
        )
    layout = RunLayout(Path(target))
    record = layout.record() or {}
    expected = len(record.get("job_ids") or []) or None
    scratch = envvars.local_scratch_dir()
    try:
        import yaml

        local_dir = (
            (yaml.safe_load(layout.config_path.read_text(encoding="utf-8")) or {})
            .get("monitoring", {})
            .get("local_dir")
        )
        scratch = local_dir or scratch
    except (OSError, ValueError, AttributeError):
        pass
    out: dict[str, tuple[str, bool]] = {}
    for copy in layout.databases():  # db/<job>_<task>/<node>.db
        key, node = copy.parent.name, copy.stem
        live = _live_path(scratch, key, node)
        out[f"{key}/{node}"] = (live, True) if live else (str(copy), False)
    # Tasks running on this machine whose first copy is not in db/ yet.
    ids = [str(i) for i in (record.get("array_job_ids") or record.get("job_ids") or [])]
    for job_id in ids:
        for key, node, live in NodeFolder.live_databases(scratch, job_id):
            out.setdefault(f"{key}/{node}", (live, True))
    return [out[k] for k in sorted(out)], expected


#: The columns in the order they matter: a terminal too narrow for all of them shows the first ones
#: that fit.
_COLUMNS = ("task", "node", "status", "epoch", "chunks", "runtime", "loss", "CPU %", "memory", "GPU %", "from")
_LEFT = {"task", "node", "status", "from"}  # justified left; figures right
#: (columns shown, sparkline width) in the order tried: the most columns with sparklines, widest first,
#: as long as the CPU one fits; else the most columns without sparklines.
_LAYOUTS = [(n, spark) for n in range(len(_COLUMNS), _COLUMNS.index("CPU %"), -1) for spark in (HISTORY, HISTORY // 2)]
_LAYOUTS += [(n, 0) for n in range(len(_COLUMNS), 0, -1)]
#: Characters between two columns: a column's right padding and the (blank) column separator.
_GAP = 2
_COLOURS = {"completed": "green", "running": "cyan", "starting": "cyan"}


def _cells(v: TaskView, spark: int, now: float) -> tuple[str, ...]:
    """``v``'s row, in :data:`_COLUMNS` order, its sparklines at most ``spark`` characters wide; control
    characters written out (strings from a database never drive the terminal)."""
    runtime = None if v.start is None else (v.end or now) - v.start
    rate = f" ({num(v.chunk_rate)}/min)" if v.chunk_rate is not None else ""
    cells = (
        v.job, v.node, v.status or "starting", v.epoch, f"{v.chunks}{rate}", duration(runtime),
        f"{num(v.loss, 4)} {v.loss_name}" if v.loss is not None else "-",
        _now_and_history(num(v.cpu[-1]) if v.cpu else "-", v.cpu, spark),
        _now_and_history(memory_mb(v.mem[-1]) if v.mem else "-", v.mem, spark),
        _now_and_history(num(v.gpu[-1]), v.gpu, spark) if v.gpu else "-",
        (v.origin or ("live" if v.live else "copy")) + (f" ({v.error[:30]})" if v.error else ""),
    )  # fmt: skip
    return tuple(printable(c) for c in cells)


def _now_and_history(now: str, values: list[float], spark: int) -> str:
    line = sparkline(values, spark)
    return f"{now} {line}" if line else now


@dataclass(frozen=True)
class Screen:
    """One frame as text: two frames that draw the same are equal. Drawn as a rich Table."""

    title: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __rich__(self) -> Any:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.title), caption=Text(self.caption), box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False, padding=(0, 1, 0, 0))  # fmt: skip
        for name in self.columns:
            table.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=True)
        for row in self.rows:  # Text: shown as it is, no rich markup
            table.add_row(*(Text(c, style=_COLOURS.get(c, "red bold") if name == "status" else "")
                            for name, c in zip(self.columns, row, strict=True)))  # fmt: skip
        return table


def render(views: list[TaskView], title: str, expected: int | None = None, width: int = 200) -> Screen:
    """The frame of ``views`` for a terminal ``width`` characters wide: the first of :data:`_LAYOUTS` that
    fits. A column shown is shown whole; the caption names those left out."""
    from rich.cells import cell_len

    now = time.time()
    sparks = sorted({spark for _, spark in _LAYOUTS})
    rows = {spark: [_cells(v, spark, now) for v in views] for spark in sparks}
    widths = {spark: [max([cell_len(name)] + [cell_len(row[i]) for row in rows[spark]])
                      for i, name in enumerate(_COLUMNS)] for spark in sparks}  # fmt: skip
    n, spark = next(((n, spark) for n, spark in _LAYOUTS if sum(widths[spark][:n]) + _GAP * (n - 1) <= width),
                    _LAYOUTS[-1])  # fmt: skip
    ended = sum(1 for v in views if v.ended)
    total = max(expected or 0, len(views))
    caption = f"{ended}/{total} ended" + (f"; {total - len(views)} not started" if total > len(views) else "")
    if n < len(_COLUMNS):
        caption += "; left out to fit the terminal: " + ", ".join(_COLUMNS[n:])
    return Screen(printable(title), caption, _COLUMNS[:n],
                  tuple(row[:n] for row in rows[spark]))  # fmt: skip


class _InPlace:
    """Draws each frame over the one before it (rich's LiveRender: cursor up, erase, write; a frame
    taller than the terminal is cut with "..."). A frame equal to the one shown writes nothing."""

    def __init__(self, console: Any) -> None:
        from rich.live_render import LiveRender

        self.console = console
        self.render = LiveRender("")
        self.shown: Screen | None = None
        console.show_cursor(False)

    def show(self, screen: Screen) -> None:
        if screen == self.shown:
            return
        self.render.set_renderable(screen)
        self.console.print(self.render.position_cursor(), self.render)
        self.shown = screen

    def close(self) -> None:
        if self.shown is not None:
            self.console.line()
        self.console.show_cursor(True)


#: Takes one frame for a terminal so many characters wide: the screen, and whether every task has ended.
Frame = Callable[[int], tuple[Screen, bool]]


def watch(target: str, *, interval: float = 2.0, once: bool = False, selection: Selection | None = None) -> int:
    """Show ``target`` until every task has ended (or once); 0, or 130 when interrupted. ``target``: a
    run directory, a database, or a central store's ``postgresql://`` URL with ``selection``."""
    from rich.console import Console

    with ExitStack() as stack:
        if is_central_url(target):
            frame = _central_frames(target, selection or Selection(), stack)
        else:
            frame = _run_frames(target)
        out = unescaped(sys.stdout)  # the table draws the terminal; its cells are printable() already
        console = Console(file=out)
        if not console.is_terminal:  # a script or a pipe: one frame as wide as it needs, no colour codes
            console = Console(file=out, width=200, no_color=True)
        return _show(frame, console, interval=interval, once=once)


def _show(frame: Frame, console: Any, *, interval: float, once: bool) -> int:
    """Take a frame every ``interval`` seconds until every task has ended (0; 130 when interrupted). A
    terminal shows each frame that differs from the one on it, in place; a pipe or a dumb terminal gets
    the last frame only; ``once``: the first frame."""
    drawer = _InPlace(console) if console.is_terminal and not console.is_dumb_terminal and not once else None
    try:
        while True:
            screen, done = frame(console.width)
            if drawer:
                drawer.show(screen)
            if done or once:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        return 130
    finally:
        if drawer:
            drawer.close()
    if drawer is None:
        console.print(screen)
    if not once:
        console.print("every task has ended")
    return 0


def _run_frames(target: str) -> Frame:
    title = f"aetherium-hpc watch: {os.path.basename(os.path.normpath(target))}"

    def frame(width: int) -> tuple[Screen, bool]:
        dbs, expected = find_databases(target)
        views = [read_task(p, live) for p, live in dbs]
        done = bool(views) and all(v.ended for v in views) and (expected is None or len(views) >= expected)
        return render(views, title, expected, width), done

    return frame


def _central_frames(url: str, selection: Selection, stack: ExitStack) -> Frame:
    """Frames of a central store's selection: each pulls what is new into one temporary database
    (the first pull the chunks of the last :data:`WINDOW_S` of each series and every row, later ones
    what is new: :class:`...store.central.pull.Puller`), then reads one view per source. A refresh
    that fails keeps the last frame and says why in the title."""
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="aeth-watch-"))
    puller = stack.enter_context(Puller(url, selection, os.path.join(folder, "central.db"), recent_s=WINDOW_S))
    title = f"aetherium-hpc watch: {puller.where} {selection.describe()}"
    pulls = 0

    def frame(width: int) -> tuple[Screen, bool]:
        nonlocal pulls
        note = ""
        try:
            puller.pull()
        except AetheriumError as exc:
            if not pulls:  # a wrong URL or an empty selection: one line, exit code 2
                raise
            note = f" (not refreshed: {str(exc)[:120]})"  # the server away for a moment: the last state
        pulls += 1
        views = [read_task(puller.path, False, sid, "central") for sid in puller.source_ids]
        done = bool(views) and all(v.ended for v in views)
        return render(views, title + note, width=width), done

    return frame
