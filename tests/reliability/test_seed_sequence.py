"""The seed's own sequence never hangs and keeps the monitor's last sample.

``init_db -> log_system_resources -> a fork Pool(4) kept open whose workers log -> sleep ->
shutdown_db()``, each in a fresh interpreter (tests/support/seed_sequence.py), the sleep before
``shutdown_db()`` spread evenly over 0-10 s so that every phase of the store's 5 s flush and of the
monitor's batch falls inside the close. Every shutdown returns within 2 s, prints nothing, and the
file's last resource sample is within one interval (1 s) of the call. 24 runs always; 300 behind
``slow`` (AETHERIUM_SLOW=1).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent.parent / "support"
ROOT = SUPPORT.parent.parent
INTERVAL_S = 1.0  # log_system_resources()'s default
SHUTDOWN_BOUND_S = 2.0
AT_ONCE = 8  # runs side by side (they sleep most of their time)


def one_run(db: Path, sleep_s: float) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(SUPPORT / "seed_sequence.py"), str(db), f"{sleep_s:.3f}"],
        capture_output=True, text=True, timeout=120, cwd=db.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out: dict[str, object] = {"sleep": sleep_s, "rc": proc.returncode, "stderr": proc.stderr}
    if proc.returncode == 0:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        conn = sqlite3.connect(db)
        try:
            out["last_sample"] = conn.execute("SELECT max(timestamp) FROM resource_metrics").fetchone()[0]
            out["cpu_rows"] = conn.execute(
                "SELECT count(*) FROM resource_metrics WHERE metric_type = 'cpu'"
            ).fetchone()[0]
            out["ram_rows"] = conn.execute(
                "SELECT count(*) FROM resource_metrics WHERE metric_type = 'ram'"
            ).fetchone()[0]
            out["epochs"] = conn.execute("SELECT count(DISTINCT epoch_number) FROM training_rows").fetchone()[0]
            out["chunks"] = conn.execute("SELECT count(*) FROM generation_rows").fetchone()[0]
        finally:
            conn.close()
    return out


@pytest.mark.parametrize("runs", [pytest.param(24, id="24"), pytest.param(300, id="300", marks=pytest.mark.slow)])
def test_shutdown_is_prompt_silent_and_keeps_the_last_sample(tmp_path: Path, runs: int) -> None:
    sleeps = [10.0 * i / (runs - 1) for i in range(runs)]
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda a: one_run(tmp_path / f"m{a[0]}.db", a[1]), enumerate(sleeps)))
    bad = [r for r in results if r["rc"] != 0 or r["stderr"]]
    assert not bad, f"{len(bad)} of {runs} runs failed or printed: {bad[:3]}"
    took = sorted(float(r["took"]) for r in results)  # type: ignore[arg-type]
    print(
        f"shutdown_db() of {runs} runs: median {took[runs // 2]:.3f} s, p99 {took[int(runs * 0.99)]:.3f} s, max {took[-1]:.3f} s"
    )
    slow = [r for r in results if float(r["took"]) > SHUTDOWN_BOUND_S]  # type: ignore[arg-type]
    assert not slow, f"{len(slow)} shutdowns over {SHUTDOWN_BOUND_S} s: {slow[:3]}"
    for r in results:
        assert r["epochs"] == 40 and r["chunks"] == 40, r
        assert r["cpu_rows"] and r["ram_rows"], r  # type: ignore[truthy-bool]
        lag = float(r["called"]) - float(r["last_sample"])  # type: ignore[arg-type]
        assert lag <= INTERVAL_S, f"the last sample is {lag:.2f} s before shutdown_db(): {r}"
