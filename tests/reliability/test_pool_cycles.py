"""Executors kept open across stores: every cycle of ``init_db`` / work / ``shutdown_db`` keeps
every row, with joblib's loky executor (reused across ``Parallel`` calls), a
``ProcessPoolExecutor`` and a ``Pool``, each made once before the first store.

The workers outlive each store; they keep their connection's address, which the next store of
the same process listens on again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import testenv
from rel_helpers import child_env, read

CYCLES = 6


@pytest.mark.parametrize("kind", ["loky", "executor", "pool"])
def test_every_cycle_keeps_every_row(tmp_path: Path, kind: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(testenv.SUPPORT / "pool_cycles.py"), kind, str(tmp_path), str(CYCLES)],
        env=child_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    cycles = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(cycles) == CYCLES
    got = [read(Path(c["db"]), "SELECT count(*) FROM training_rows")[0][0] for c in cycles]
    assert got == [c["expected"] for c in cycles], f"rows per cycle: {got}; stderr: {proc.stderr[-2000:]}"
    assert "not reachable" not in proc.stderr and "dropped" not in proc.stderr, proc.stderr[-2000:]
