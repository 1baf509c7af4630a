"""The README's library example, run exactly as written in a fresh folder: it stores CPU and RAM
rows, writes the monitor's summary, and prints nothing on stderr."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from testenv import ROOT


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no python block"
    return str(blocks[0])


def test_the_readme_example_stores_cpu_and_ram_and_is_silent(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIUM_")}
    proc = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    first = proc.stdout.splitlines()[0]
    assert first != "None" and "'n': " in first, proc.stdout  # recent() answered at once
    conn = sqlite3.connect(tmp_path / "metrics.db")
    try:
        kinds = dict(conn.execute("SELECT metric_type, count(*) FROM resource_metrics GROUP BY metric_type"))
        assert kinds.get("cpu", 0) >= 1 and kinds.get("ram", 0) >= 2, kinds
        assert conn.execute("SELECT count(*) FROM generation_rows").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM training_rows").fetchone() == (3,)
    finally:
        conn.close()
    summary = json.loads((tmp_path / "monitor.json").read_text())
    assert summary["samples"] >= 2 and "cpu/system_total" in summary["metrics"]
