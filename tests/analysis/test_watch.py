"""`aetherium-hpc watch`: one frame of a run (`--once`); the columns a terminal of each width shows;
a redraw only for a frame that differs; the live view in real terminals (tmux) of 80 to 140 columns."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from task_dbs import TASKS, write_task
from testenv import ROOT
from watch_helpers import TITLE, drawn_frames, watch_in_tmux

from aetherium_hpc.analysis import watch
from aetherium_hpc.analysis.watch import TaskView, read_task, render, sparkline


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetherium_hpc", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


def test_once_prints_every_task(tmp_path: Path) -> None:
    run = tmp_path / "sweep-20240501-093000-1a2b"
    for task in range(len(TASKS)):
        write_task(run / "db" / f"77_{task}" / "n1.db", task)
    (run / "config.yaml").write_text("name: sweep\n")
    proc = cli("watch", str(run), "--once")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip().startswith("77_")}
    assert sorted(lines) == [f"77_{t}" for t in range(len(TASKS))]
    assert "completed" in lines["77_1"] and "0.2 val/loss" in lines["77_1"] and "copy" in lines["77_1"]
    assert "cancelled" in lines["77_2"] and "failed" in lines["77_4"]
    assert "5/5 ended" in proc.stdout
    view = read_task(str(run / "db" / "77_0" / "n1.db"))
    assert view.job == "77_0" and view.node == "n1" and view.mem == [100.0] and view.ended


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0, 4.0]) == " ▃▅█" and sparkline([]) == ""
    assert sparkline([1.0, 2.0, 4.0], 2) == "▅█" and sparkline([1.0, 2.0], 0) == ""


def slurm_views() -> list[TaskView]:
    """Tasks of a Slurm array as wide as they come: long ids and node names, GPUs, errors."""
    history = [float(k % 7 + 1) * 10.0 for k in range(40)]
    start = time.time() - 11000.0  # 3 hours ago
    views = [
        TaskView("a.db", True, job=f"12345678_{t}", node=f"gpu-node-{t:03d}", status=status, start=start,
                 end=None if status == "running" else start + 10000.0, cpu=history, mem=[m * 300.0 for m in history],
                 gpu=history, chunks=120, chunk_rate=12.5, epoch="2/19", loss=0.01234, loss_name="val/loss")
        for t, status in enumerate(("running", "completed", "cancelled"))
    ]  # fmt: skip
    views.append(TaskView("b.db", False, job="12345678_3", node="gpu-node-003", error="database is locked"))
    return views


@pytest.mark.parametrize(("width", "last", "spark"), [(60, "chunks", 0), (80, "runtime", 0), (100, "CPU %", 6),
                                                     (120, "memory", 6), (140, "GPU %", 6), (200, "from", 12)])  # fmt: skip
def test_the_columns_that_fit_the_terminal_are_shown_whole(width: int, last: str, spark: int) -> None:
    """At each width: the columns that matter first (task, node, status, epoch) whole, then as many as
    fit, in order, up to ``last``, with sparklines ``spark`` characters wide at most (none when the CPU
    one does not fit); nothing cut short, no line wider than the terminal."""
    screen = render(slurm_views(), "aetherium-hpc watch: sweep-20240501-093000-1a2b", 4, width)
    assert screen.columns == watch._COLUMNS[: watch._COLUMNS.index(last) + 1]
    left_out = watch._COLUMNS[len(screen.columns) :]
    assert ("left out to fit the terminal: " + ", ".join(left_out) in screen.caption) == bool(left_out)
    out = io.StringIO()
    Console(file=out, width=width).print(screen)  # not a terminal: the text alone
    lines = out.getvalue().splitlines()
    assert "…" not in out.getvalue() and max(len(line) for line in lines) <= width, out.getvalue()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("12345678_")}
    assert sorted(rows) == [f"12345678_{t}" for t in range(4)], out.getvalue()
    assert rows["12345678_0"][:4] == ["12345678_0", "gpu-node-000", "running", "2/19"]
    assert rows["12345678_2"][:4] == ["12345678_2", "gpu-node-002", "cancelled", "2/19"]
    assert rows["12345678_3"][:4] == ["12345678_3", "gpu-node-003", "starting", "-"]
    runs = [run for line in lines for run in "".join(c if c in "▁▂▃▄▅▆▇█" else " " for c in line).split()]
    assert {len(run) for run in runs} == ({spark} if spark else set()), out.getvalue()  # sparklines as wide


def test_a_terminal_is_redrawn_only_when_the_frame_changed() -> None:
    """Six frames taken, three distinct: three written to the terminal (each over the one before)."""
    ended = {"start": 1e9, "end": 1e9 + 5.0}
    states = [TaskView("a.db", True, job="7_0", node="n1")] * 3 + [
        TaskView("a.db", True, job="7_0", node="n1", status="running", **ended)] * 2 + [
        TaskView("a.db", True, job="7_0", node="n1", status="completed", epoch="1/19", **ended)]  # fmt: skip
    taken = iter(states)

    def frame(width: int) -> tuple[watch.Screen, bool]:
        view = next(taken)
        return render([view], f"{TITLE} run", 1, width), view.ended

    out = io.StringIO()
    console = Console(file=out, width=100, height=30, force_terminal=True, legacy_windows=False)
    assert watch._show(frame, console, interval=0.0, once=False) == 0
    assert next(taken, None) is None  # every frame was taken
    frames = drawn_frames(out.getvalue())
    assert len(frames) == 3 and "starting" in frames[0] and "running" in frames[1] and "1/19" in frames[2]
    assert "every task has ended" in frames[2]
    assert out.getvalue().count("\x1b[1A\x1b[2K") == 2 * 4  # each redraw erased the 5 lines before it


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_in_tmux_until_the_job_ends(tmp_path: Path) -> None:
    """A local job watched in real terminals of 80, 100, 120 and 140 columns: frames while it runs, then it
    ends by itself (watch_in_tmux checks each screen)."""
    watch_in_tmux(tmp_path, "local")
