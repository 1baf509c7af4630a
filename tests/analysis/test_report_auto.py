"""``report: {auto: true}``: the merge + report job after an array, on the local backend."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from testenv import ROOT


def test_local_array_with_auto_report_writes_merged_db_and_report(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["AETHERIUM_LOCAL_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(ROOT / "configs" / "array.yaml"),
         "--set", "backend=local", "--set", f"run_dir={tmp_path}", "--set", "report.auto=true",
         "--set", "monitoring.interval_s=0.2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report job" in proc.stdout
    run_dir = Path(
        next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run directory: "))
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run_dir / "report.html").exists():
        time.sleep(0.5)
    assert (run_dir / "report.html").exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    conn = sqlite3.connect(f"file:{run_dir / 'merged.db'}?mode=ro", uri=True)
    try:
        tasks = conn.execute("SELECT count(DISTINCT array_task_id) FROM training_metrics").fetchone()
        statuses = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    finally:
        conn.close()
    assert tasks == (4,)
    assert statuses == [("completed", 4)]
    html = (run_dir / "report.html").read_text()
    assert "<img" in html and "p95" in html
