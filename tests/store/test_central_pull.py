"""``report`` and ``watch`` on a ``postgresql://`` URL: the selection pulled back into SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from central_helpers import private_schema, write_node_db
from launch_helpers import aetherium_cli
from rel_helpers import chunk_stats, one_error_line, same_stats

from aetherium_hpc import init_db, shutdown_db
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.paths import RunLayout
from aetherium_hpc.store import SourceInfo, client, schema
from aetherium_hpc.store.central.load import load
from aetherium_hpc.store.central.pull import Puller, Selection

pytestmark = pytest.mark.postgres

ARRAY, OTHER = "900", "555"
RUN = "sweep-20240501-093000-1a2b"


@pytest.fixture
def central(pg_url: str) -> Iterator[str]:
    with private_schema(pg_url) as url:
        yield url


@pytest.fixture
def lab(central: str, tmp_path: Path) -> tuple[str, Path]:
    """A merged 3-task array (in its run directory) and an unrelated job, loaded with ``merge --into``."""
    run = tmp_path / RUN
    tasks = []
    for task, node in ((0, "n1"), (1, "n2"), (2, "n1")):
        path = run / "db" / f"{ARRAY}_{task}" / f"{node}.db"
        path.parent.mkdir(parents=True)
        write_node_db(path, job=ARRAY, task=task, node=node, t0=1_700_000_000.0 + task * 0.25, samples=400 + task)
        tasks.append(str(path))
    merged = run / "merged.db"
    merge(tasks, str(merged), progress=False)
    other = tmp_path / "other" / "n3.db"
    other.parent.mkdir()
    write_node_db(other, job=OTHER, task=None, node="n3", t0=1_700_100_000.0)
    loaded = aetherium_cli(["merge", str(merged), str(other), "--into", central], tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    return central, merged


def _figures(stdout: str) -> dict[str, object]:
    """The report's JSON without what names the database or the moment it was made."""
    data = json.loads(stdout)
    data.pop("database")
    data.pop("generated_at")
    return data


def test_report_of_an_array_equals_the_report_of_its_merged_database(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, merged = lab
    central = aetherium_cli(["report", url, "--job", ARRAY, "--json"], tmp_path)
    assert central.returncode == 0, central.stderr
    local = aetherium_cli(["report", str(merged), "--json"], tmp_path)
    assert local.returncode == 0, local.stderr
    assert _figures(central.stdout) == _figures(local.stdout)
    assert json.loads(central.stdout)["database"].endswith(f" --job {ARRAY}")
    text = aetherium_cli(["report", url, "--job", ARRAY], tmp_path)
    assert text.returncode == 0 and f"{ARRAY}_2" in text.stdout and OTHER not in text.stdout
    assert text.stdout.splitlines()[1:] == aetherium_cli(["report", str(merged)], tmp_path).stdout.splitlines()[1:]


def test_pulled_database_is_a_node_kind_of_file_with_the_same_statistics(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, merged = lab
    pulled = tmp_path / "pulled.db"
    with Puller(url, Selection(jobs=(ARRAY,)), pulled) as puller:
        first = puller.pull()
        again = puller.pull()
    assert first.sources == 3 and first.chunks > 0 and again.chunks == again.training_rows == again.series == 0
    conn = sqlite3.connect(pulled)
    try:
        assert schema.check_version(conn, str(pulled))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    got, want = chunk_stats(pulled), chunk_stats(merged)
    assert got and got.keys() == want.keys()
    for key in want:
        assert same_stats(got[key], want[key]), key
    # the chunk text is the codec's: byte for byte that of the merged database the store was loaded from
    q = "SELECT t0, n, dt_ms, jit, vals, nfin, vmax FROM sample_chunks ORDER BY series_id, t0"
    lite, pg = sqlite3.connect(merged), sqlite3.connect(pulled)
    try:
        assert lite.execute(q).fetchall() == pg.execute(q).fetchall()
    finally:
        lite.close()
        pg.close()


def test_task_and_run_select_their_sources(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = lab
    two = aetherium_cli(["report", url, "--job", ARRAY, "--task", "0,2", "--json"], tmp_path)
    assert two.returncode == 0, two.stderr
    tasks = {t["source"] for t in json.loads(two.stdout)["tasks"]}
    assert tasks == {f"{ARRAY}_0/n1", f"{ARRAY}_2/n1"}
    one = aetherium_cli(["report", url, "--job", f"{ARRAY}_1", "--json"], tmp_path)
    assert one.returncode == 0 and json.loads(one.stdout)["run"]["sources"] == 1
    # the run: from source_path (<run>/db/<job>_<task>/<node>.db, what merge records), a path's last part
    by_run = aetherium_cli(["report", url, "--run", str(tmp_path / RUN), "--json"], tmp_path)
    assert by_run.returncode == 0, by_run.stderr
    assert json.loads(by_run.stdout)["run"]["sources"] == 3


def test_run_recorded_in_the_config_snapshot_is_found(central: str, tmp_path: Path) -> None:
    """A job of the runtime records its run directory in its config snapshot (whatever source_path
    says: a live store's is node-local)."""
    path = tmp_path / "scratch" / "metrics.db"
    path.parent.mkdir()
    init_db(str(path), source=SourceInfo(job_id="77", node="n1"), listen=False)
    client.log_job(status="completed", start_time=1.0e9, config={"name": "demo", "run": f"/x/runs/{RUN}"})
    client.log_resource_samples([("cpu", "system_total", 5.0, "%", "")], 1.0e9)
    shutdown_db()
    load([str(path)], central)
    assert RunLayout.run_of(json.dumps({"run": f"/x/runs/{RUN}/"}), None) == RUN
    got = aetherium_cli(["report", central, "--run", RUN, "--json"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["run"]["job_ids"] == ["77"]


def test_no_filter_on_many_jobs_is_refused_in_one_line(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = lab
    proc = aetherium_cli(["report", url], tmp_path)
    line = one_error_line(proc)
    assert proc.returncode == 2 and "2 jobs there, choose one with --job ID" in line
    assert f"{ARRAY} (run {RUN}, 3 tasks" in line and f"; {OTHER} (" in line.replace(f": {OTHER} (", f"; {OTHER} (")


def test_a_filter_that_selects_nothing_is_one_line(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = lab
    for args in (["--job", "4242"], ["--job", ARRAY, "--task", "7"], ["--run", "nope-20240101-000000-abcd"]):
        proc = aetherium_cli(["report", url, *args], tmp_path)
        line = one_error_line(proc)
        assert proc.returncode == 2 and f"nothing matches {' '.join(args)}" in line, line
    tasks_alone = aetherium_cli(["report", url, "--task", "1"], tmp_path)
    assert tasks_alone.returncode == 2 and "add --job ARRAY_JOB_ID or --run NAME" in one_error_line(tasks_alone)


def test_a_wrong_password_is_one_line_with_the_password_masked(central: str, tmp_path: Path) -> None:
    parts = urlsplit(central)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:sesame-wrong@{parts.hostname}:{parts.port}"))
    for command in ("report", "watch"):
        proc = aetherium_cli([command, wrong, "--job", ARRAY, *(["--once"] if command == "watch" else [])], tmp_path)
        line = one_error_line(proc)
        assert proc.returncode == 2 and "sesame-wrong" not in proc.stdout + proc.stderr
        assert f"{parts.username}:***@" in line


def test_filters_on_a_file_are_refused(lab: tuple[str, Path], tmp_path: Path) -> None:
    _, merged = lab
    proc = aetherium_cli(["report", str(merged), "--job", ARRAY], tmp_path)
    assert proc.returncode == 2 and "choose sources of a postgresql:// central store" in one_error_line(proc)


def test_watch_once_shows_every_task(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = lab
    proc = aetherium_cli(["watch", url, "--job", ARRAY, "--once"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip().startswith(f"{ARRAY}_")}
    assert sorted(rows) == [f"{ARRAY}_{t}" for t in range(3)]
    assert all("completed" in r and "central" in r and "val/loss" in r for r in rows.values())
    assert "3/3 ended" in proc.stdout and "***@" in proc.stdout and OTHER not in proc.stdout


def test_an_incremental_pull_adds_what_the_store_received_since(central: str, tmp_path: Path) -> None:
    """What watch does between frames: new chunks, the live chunk grown in place, new rows, new tasks."""
    first = tmp_path / "900_0" / "n1.db"
    first.parent.mkdir()
    write_node_db(first, job=ARRAY, task=0, node="n1", t0=1_700_000_000.0, samples=100)
    load([str(first)], central)
    pulled = tmp_path / "pulled.db"
    with Puller(central, Selection(jobs=(ARRAY,)), pulled) as puller:
        puller.pull()
        assert puller.source_ids == [1]
        # the same task, now further on (a later copy), and a second task
        grown = tmp_path / "grown" / "n1.db"
        grown.parent.mkdir()
        write_node_db(grown, job=ARRAY, task=0, node="n1", t0=1_700_000_000.0, samples=300)
        second = tmp_path / "900_1" / "n2.db"
        second.parent.mkdir()
        write_node_db(second, job=ARRAY, task=1, node="n2", t0=1_700_000_000.5, samples=50)
        load([str(grown), str(second)], central)
        step = puller.pull()
        assert puller.source_ids == [1, 2] and step.chunks > 0
    whole = tmp_path / "whole.db"
    with Puller(central, Selection(jobs=(ARRAY,)), whole) as fresh:
        fresh.pull()
    assert chunk_stats(pulled) == chunk_stats(whole)
    q = "SELECT count(*), sum(n) FROM sample_chunks"
    for sql in (q, "SELECT count(*) FROM training_rows", "SELECT count(*) FROM generation_rows"):
        a, b = sqlite3.connect(pulled), sqlite3.connect(whole)
        try:
            assert a.execute(sql).fetchone() == b.execute(sql).fetchone(), sql
        finally:
            a.close()
            b.close()
