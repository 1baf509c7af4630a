"""Watching a real job in tmux panes of several widths (the local and the Slurm watch tests)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from testenv import ROOT

#: Terminal widths the live view is watched at, each in its own pane.
WIDTHS = (80, 100, 120, 140)
TITLE = "aetherium-hpc watch:"
#: What a terminal acts on but does not show (rich's cursor moves, erases and colours).
_CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def drawn_frames(raw: str) -> list[str]:
    """The frames a watch wrote to its terminal, in order (each from its title, as text without the
    control sequences): one a redraw."""
    return [_CONTROL_SEQUENCE.sub("", piece) for piece in raw.split(TITLE)[1:]]


def watch_in_tmux(tmp_path: Path, backend: str) -> dict[int, list[str]]:
    """Submit configs/train.yaml (2 rounds) to ``backend`` and watch it in one tmux pane per width of
    :data:`WIDTHS` until each watch exits by itself. In every pane: every screen captured shows the
    task id, node and status whole (nothing cut with "…"); the last shows the last epoch; every
    frame written to the terminal differs from the one before it (a redraw only when something
    changed). Returns the screens captured per width."""
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_")) and (k != "SLURM_CONF" or backend == "slurm")}  # fmt: skip
    env["PYTHONPATH"] = str(ROOT)
    submit = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(ROOT / "configs" / "train.yaml"), "--set",
         f"backend={backend}", "--set", f"run_dir={runs}", "--set", "workload.kwargs.rounds=2",
         "--set", "workload.kwargs.samples_per_chunk=256"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    run_dir = re.search(r"^run directory: (.+)$", submit.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    go = tmp_path / "go"  # each pane waits for it: its terminal output is recorded from the start
    sessions = {width: f"aeth-watch-{width}-{uuid.uuid4().hex[:8]}" for width in WIDTHS}
    done = {width: tmp_path / f"exit-code-{width}" for width in WIDTHS}
    raw = {width: tmp_path / f"terminal-{width}.out" for width in WIDTHS}
    screens: dict[int, list[str]] = {width: [] for width in WIDTHS}
    final: dict[int, str] = {}
    try:
        for width, session in sessions.items():
            command = (f"while [ ! -e {go} ]; do sleep 0.1; done; {sys.executable} -m aetherium_hpc watch {run_dir}"
                       f" --interval 0.5; echo $? > {done[width]}; sleep 30")  # fmt: skip
            subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", "20", command],
                           check=True, env=env, cwd=ROOT, timeout=30)  # fmt: skip
            _tmux("pipe-pane", "-t", session, f"cat > {raw[width]}")
        go.touch()
        for _ in range(600):  # at most about 5 minutes on a loaded machine; normally seconds
            for width, session in sessions.items():
                if width not in final:
                    screens[width].append(_tmux("capture-pane", "-p", "-t", session))
                    if done[width].exists():
                        final[width] = _tmux("capture-pane", "-p", "-t", session)
            if len(final) == len(WIDTHS):
                break
            time.sleep(0.5)
    finally:
        for session in sessions.values():
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
    task = str(json.loads((Path(run_dir) / "jobs.json").read_text())["job_ids"][0])
    node = next((Path(run_dir) / "db").glob("*/*.db")).stem
    for width in WIDTHS:
        last = final.get(width, screens[width][-1])
        assert done[width].exists() and done[width].read_text().strip() == "0", (width, last)
        assert "every task has ended" in last and "1/1 ended" in last and "completed" in last, (width, last)
        assert re.search(r"completed +1/19 +16 \([\d.]+/min\)", last), (width, last)  # last epoch of round 1
        assert any(TITLE in s for s in screens[width]), width
        for screen in [*screens[width], last]:
            assert "…" not in screen, (width, screen)
            for row in (line for line in screen.splitlines() if line.split()[:1] == [task]):
                assert row.split()[:3] in ([task, node, status] for status in ("starting", "running", "completed")), (
                    width, screen)  # fmt: skip
        row = next(line for line in last.splitlines() if line.split()[:1] == [task])
        assert row.split()[:4] == [task, node, "completed", "1/19"], (width, last)
        frames = drawn_frames(raw[width].read_text(encoding="utf-8", errors="replace"))
        assert frames and all(a != b for a, b in itertools.pairwise(frames)), (width, frames)
    return screens
