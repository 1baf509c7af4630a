"""The central store through PgBouncer in transaction-pooling mode (Debian's pgbouncer, started by
``postgres/pgbouncer.sh`` with 4 server connections): live senders, ``merge --into``, ``report``.

PgBouncer hands each transaction whichever server connection is free, so a client may keep no
session state across transactions (prepared statements, temporary tables, session locks); these
tests run the real code paths through it and compare what arrives with what was written.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from central_helpers import pg_counts, sqlite_counts, write_node_db
from fleet import Feeder, central_counts, local_counts, make_nodes, start_senders, stop_senders
from launch_helpers import aetherium_cli
from testenv import ROOT, server_url

from aetherium_hpc.analysis.merge import merge

pytestmark = pytest.mark.postgres

HOW = '`postgres/server.sh up && postgres/pgbouncer.sh up && eval "$(postgres/pgbouncer.sh env)"`'


@pytest.fixture
def bouncer() -> Iterator[str]:
    """The PgBouncer URL, its database emptied before the test."""
    url = server_url("AETHERIUM_TEST_PGBOUNCER", HOW)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    yield url


def test_live_senders_through_pgbouncer_store_every_row(bouncer: str, tmp_path: Path) -> None:
    """40 nodes, 4 server connections: every push goes through, in turn, and nothing is lost."""
    paths = make_nodes(tmp_path, 40, series=4)
    feeder = Feeder(paths, tick=0.5)
    feeder.start()
    senders = start_senders(paths, bouncer, interval=1.0, final_timeout=20.0)
    try:
        feeder.stopping.wait(6.0)
    finally:
        feeder.stop()
        stop_senders(senders)
    assert feeder.error is None, feeder.error
    assert [s.gave_up for s in senders if s.gave_up] == []
    assert sum(s.errors for s in senders) == 0
    assert all(s.pushes >= 2 for s in senders), sorted(s.pushes for s in senders)[:3]
    with psycopg.connect(bouncer, prepare_threshold=None) as conn:
        central = central_counts(conn)
    local = {job: (samples, rows) for job, samples, rows in map(local_counts, paths)}
    assert central == local


def test_merge_into_and_report_through_pgbouncer(bouncer: str, tmp_path: Path) -> None:
    tasks = []
    for task in range(3):
        path = tmp_path / "run" / "db" / f"700_{task}" / f"n{task}.db"
        path.parent.mkdir(parents=True)
        write_node_db(path, job="700", task=task, node=f"n{task}", t0=1_700_000_000.0 + task, samples=300)
        tasks.append(str(path))
    merged = tmp_path / "run" / "merged.db"  # the run directory names the run, here and in the store
    merge(tasks, str(merged), progress=False)
    loaded = aetherium_cli(["merge", *tasks, "--into", bouncer], tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert pg_counts(bouncer) == sqlite_counts(merged)
    again = aetherium_cli(["merge", *tasks, "--into", bouncer], tmp_path)  # nothing stored twice
    assert again.returncode == 0, again.stderr
    assert pg_counts(bouncer) == sqlite_counts(merged)

    central = aetherium_cli(["report", bouncer, "--job", "700", "--json"], tmp_path)
    assert central.returncode == 0, central.stderr
    local = aetherium_cli(["report", str(merged), "--json"], tmp_path)
    got, want = json.loads(central.stdout), json.loads(local.stdout)
    for data in (got, want):
        data.pop("database")
        data.pop("generated_at")
    assert got == want


def test_pgbouncer_sh_refuses_a_planted_folder(bouncer: str, tmp_path: Path) -> None:
    """Its folder under /tmp is a link someone planted, or another user's: refused, nothing written there."""
    target = tmp_path / "theirs"
    target.mkdir()
    link = tmp_path / "planted"
    link.symlink_to(target)
    script = ROOT / "postgres" / "pgbouncer.sh"
    cases = [(link, "is a symbolic link")]
    if os.geteuid() == 0:  # root runs PgBouncer as postgres: a folder of root's is another user's
        cases.append((target, "is not a folder owned by"))
    for folder, words in cases:
        proc = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "AETHERIUM_PGBOUNCER_DIR": str(folder), "AETHERIUM_PGBOUNCER_PORT": "16499"})  # fmt: skip
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr
        assert list(target.iterdir()) == []
