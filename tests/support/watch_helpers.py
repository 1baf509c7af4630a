"""Watching a real job in a tmux pane (the local and the Slurm watch tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def watch_in_tmux(tmp_path: Path, backend: str) -> list[str]:
    """Submit configs/train.yaml (2 rounds) to ``backend``, watch it in a tmux pane until watch
    exits by itself; check the last frame; return every frame captured."""
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
    session = f"aeth-watch-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    command = f"{sys.executable} -m aetherium_hpc watch {run_dir} --interval 0.5; echo $? > {done}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "170", "-y", "20", command], check=True,
                   env=env, cwd=ROOT, timeout=30)  # fmt: skip
    frames: list[str] = []
    try:
        for _ in range(600):  # at most about 5 minutes on a loaded machine; normally seconds
            frames.append(subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                         text=True, timeout=30).stdout)  # fmt: skip
            if done.exists():
                break
            time.sleep(0.5)
        final = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                               timeout=30).stdout  # fmt: skip
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
    assert done.exists() and done.read_text().strip() == "0", final
    assert "every task has ended" in final and "1/1 ended" in final and "completed" in final
    assert re.search(r"completed .* \d+ \(\d+/min\) +1/19 ", final), final  # 16 chunks, last epoch of round 1
    assert any("aetherium-hpc watch:" in f for f in frames)
    return frames
