"""A 4-task array on the real Slurm cluster streaming live into the central PostgreSQL store."""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest
from central_helpers import pg_counts, pg_rows, private_schema, sqlite_counts
from launch_helpers import aetherium_cli

from aetherium_hpc.analysis.merge import merge

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.usefixtures("slurm_conf")]

ROOT = Path(__file__).parent.parent.parent


def test_four_task_array_streams_what_the_merged_files_hold(pg_url: str, tmp_path: Path) -> None:
    with private_schema(pg_url) as central:
        proc = aetherium_cli(
            ["submit", str(ROOT / "configs" / "array.yaml"), "--set", f"run_dir={tmp_path / 'runs'}",
             "--set", "backend=slurm", "--set", "resources.mem_gb=1", "--set", "monitoring.interval_s=0.5",
             "--set", "workload.callable=runtime_workloads:log_slowly", "--set", "workload.kwargs={seconds: 12}",
             "--wait"],
            tmp_path,
            timeout=400,
            AETHERIUM_CENTRAL=central,  # what an sbatch script exports; the job inherits it
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        match = re.search(r"^run directory: (.+)$", proc.stdout, re.MULTILINE)
        assert match, proc.stdout
        run = Path(match.group(1))
        merged = run / "merged.db"
        merge([str(run)], str(merged), progress=False)
        local = sqlite_counts(merged)
        assert local["sources"] == 4 and local["job_rows"] == 4 and local["samples"] > 0
        assert pg_counts(central) == local
        print(f"4-task array on Slurm: PostgreSQL = merged files = {local}", file=sys.stderr)
        statuses = pg_rows(central, "SELECT array_task_id, status FROM jobs ORDER BY array_task_id")
        assert statuses == [(i, "completed") for i in range(4)]
        # while the tasks ran (12 s each, a push every 5 s), not only at their end
        sent = pg_rows(central, "SELECT count(*) FROM store_stats WHERE name = 'central/sent_rows' AND value > 0")
        assert sent == [(4,)]
        conn = sqlite3.connect(merged)
        try:  # each task's sender's own counters, in its local store
            rows = conn.execute("SELECT count(*) FROM store_stats WHERE name = 'central/sent_rows' AND value > 0")
            assert rows.fetchone()[0] == 4
        finally:
            conn.close()
        logs = "".join(p.read_text(errors="replace") for p in run.rglob("*.err"))
        assert central.split("@")[0].split(":")[-1] not in logs  # the password is not in the job logs
