"""The push routine and ``merge --into postgresql://``: same views as SQLite, nothing stored twice."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from central_helpers import VIEWS, norm, pg_counts, pg_rows, private_schema, sqlite_counts, write_node_db
from launch_helpers import aetherium_cli

from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.errors import CentralStoreError
from aetherium_hpc.store import CopyBack, client, reader
from aetherium_hpc.store.central import schema as pg_schema
from aetherium_hpc.store.central.load import load
from aetherium_hpc.store.central.push import push
from aetherium_hpc.store.central.url import connect

pytestmark = pytest.mark.postgres


@pytest.fixture
def central(pg_url: str) -> Iterator[str]:
    with private_schema(pg_url) as url:
        yield url


@pytest.fixture
def two_nodes(tmp_path: Path) -> list[Path]:
    paths = []
    for task, node in ((0, "n1"), (1, "n2")):
        path = tmp_path / f"7_{task}" / f"{node}.db"
        path.parent.mkdir()
        write_node_db(path, job="7", task=task, node=node, t0=1_700_000_000.0 + task * 0.25)
        paths.append(path)
    return paths


def test_pg_views_equal_the_sqlite_views(central: str, two_nodes: list[Path], tmp_path: Path) -> None:
    merged = tmp_path / "merged.db"
    merge([str(p) for p in two_nodes], str(merged), progress=False)
    load([str(p) for p in two_nodes], central)
    conn = sqlite3.connect(merged)
    try:
        for view, cols in VIEWS.items():
            lite = norm(conn.execute(f"SELECT {cols} FROM {view}").fetchall())
            pg = norm(pg_rows(central, f"SELECT {cols} FROM {view}"))
            assert len(lite) > 0 and lite == pg, view
    finally:
        conn.close()
    # NaN is a NULL value, +inf is Infinity, in both
    assert pg_rows(central, "SELECT count(*) FROM resource_metrics WHERE value IS NULL")[0][0] == 2
    assert pg_rows(central, "SELECT count(*) FROM resource_metrics WHERE value = 'Infinity'")[0][0] == 2


def test_the_attempts_of_a_requeued_task_stay_apart(central: str, tmp_path: Path) -> None:
    first = tmp_path / "attempt0" / "n1.db"
    first.parent.mkdir()
    write_node_db(first, job="8", task=None, node="n1", t0=1_700_000_000.0, samples=50)
    requeued = tmp_path / "attempt1" / "n1.db"  # the next attempt goes on from the copy
    requeued.parent.mkdir()
    requeued.write_bytes(first.read_bytes())
    write_node_db(requeued, job="8", task=None, node="n1", t0=1_700_000_200.0, samples=50, attempt=1)
    load([str(first), str(requeued)], central)
    assert pg_rows(central, "SELECT s.attempt, j.status FROM jobs j JOIN sources s USING (source_id) ORDER BY 1") == [
        (0, "completed"), (1, "completed")
    ]  # fmt: skip
    per_attempt = (
        "SELECT s.attempt, count(*) FROM training_rows t JOIN sources s USING (source_id) GROUP BY 1 ORDER BY 1"
    )
    assert pg_rows(central, per_attempt) == [(0, 20), (1, 20)]  # each attempt's rows once
    assert pg_counts(central) == sqlite_counts(requeued)


def test_merge_into_twice_gives_the_same_counts(central: str, two_nodes: list[Path], tmp_path: Path) -> None:
    inputs = [str(p) for p in two_nodes]
    first = aetherium_cli(["merge", *inputs, "--into", central], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 sources" in first.stdout and "pw" not in first.stdout + first.stderr
    counts = pg_counts(central)
    again = aetherium_cli(["merge", *inputs, "--into", central], tmp_path)
    assert again.returncode == 0 and "0 sources, 0 series, 0 chunks (0 samples), 0 generation rows" in again.stdout
    assert pg_counts(central) == counts
    merged = tmp_path / "merged.db"
    merge(inputs, str(merged), progress=False)
    assert counts == sqlite_counts(merged)
    # the merged database too: the same sources, nothing new
    aetherium_cli(["merge", str(merged), "--into", central], tmp_path)
    assert pg_counts(central) == counts
    # the config snapshot's URL password never reaches the central store
    (config,) = pg_rows(central, "SELECT DISTINCT config::text FROM job_rows")
    assert "u:***@h" in config[0] and "pw@" not in config[0]


def test_a_copy_cut_mid_chunk_then_the_live_database_store_every_sample_once(central: str, tmp_path: Path) -> None:
    """A checkpoint copy loaded while the job ran, then the finished database: the chunk that
    overlaps both is sent from where PostgreSQL stands (its samples re-encoded), nothing twice."""
    live, copy = tmp_path / "live.db", tmp_path / "copy.db"
    client.init_db(str(live), buffer_size=10, flush_interval=0.05, listen=False)
    store = client.get_db()
    assert store is not None
    copier = CopyBack(live, copy)
    t0 = time.time() - 1000
    for k in range(450):
        client.log_resource_samples([("cpu", "system_total", float(k), "%", "")], t0 + k + (0.002 if k % 3 else 0))
        if k in (100, 250):
            store.flush()
            copier.copy()
    load([str(copy)], central)
    client.shutdown_db()
    load([str(live)], central)
    assert pg_counts(central)["samples"] == sqlite_counts(live)["samples"]
    got = pg_rows(central, "SELECT timestamp, value FROM resource_metrics WHERE metric_type = 'cpu' ORDER BY timestamp")
    assert [v for _, v in got] == [float(k) for k in range(450)]
    assert all(abs(ts - (t0 + k + (0.002 if k % 3 else 0))) < 0.0015 for k, (ts, _) in enumerate(got))


def test_live_pushes_then_checkpoint_copies_store_every_sample_once(central: str, tmp_path: Path) -> None:
    """Pushes while the writer fills chunks in place, then the run-directory copy (cut at every
    checkpoint) loaded on top: every sample once."""
    live, copy = tmp_path / "live.db", tmp_path / "copy.db"
    client.init_db(str(live), buffer_size=10, flush_interval=0.05, listen=False)
    store = client.get_db()
    assert store is not None
    copier = CopyBack(live, copy)
    pg = connect(central)
    pg_schema.ensure(pg, "test")
    sconn = reader.open_readonly(live)
    sconn.isolation_level = None
    mark = None
    t0 = time.time() - 1000
    for k in range(500):
        client.log_resource_samples([("cpu", "system_total", float(k), "%", "")], t0 + k)
        if k % 37 == 0:
            store.flush()
            mark, _ = push(sconn, pg, mark)
        if k % 53 == 0:
            store.flush()
            copier.copy()
    client.shutdown_db()
    copier.copy(final=True)
    mark, _ = push(sconn, pg, mark)
    sconn.close()
    pg.close()
    expected = sqlite_counts(live)["samples"]  # 500 + the writer's own telemetry
    assert pg_counts(central)["samples"] == expected >= 500
    load([str(copy)], central)
    assert pg_counts(central)["samples"] == expected
    values = [
        r[0]
        for r in pg_rows(central, "SELECT value FROM resource_metrics WHERE metric_type = 'cpu' ORDER BY timestamp")
    ]
    assert values == [float(k) for k in range(500)]


def test_newer_schema_is_refused_in_one_line(central: str, two_nodes: list[Path]) -> None:
    load([str(two_nodes[0])], central)
    with psycopg.connect(central) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CentralStoreError, match="schema version 99 is newer than this aetherium-hpc understands"):
        load([str(two_nodes[0])], central)


def test_an_input_the_server_refuses_is_skipped_by_name_and_the_rest_loaded(
    central: str, two_nodes: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "7_9" / "n9.db"
    bad.parent.mkdir()
    write_node_db(bad, job="7", task=9, node="n9", t0=1_700_000_100.0)
    conn = sqlite3.connect(bad)
    conn.execute("UPDATE training_rows SET metric_name = ?", ("x" * 1_000_000,))  # past PostgreSQL's index rows
    conn.commit()
    conn.close()
    out = aetherium_cli(["merge", str(two_nodes[0]), str(bad), str(two_nodes[1]), "--into", central], tmp_path)
    assert out.returncode == 3, out.stdout + out.stderr
    (line,) = [x for x in out.stderr.splitlines() if "skipped" in x]
    assert str(bad) in line and "refused by the server" in line and len(line) < 2000
    assert (
        pg_rows(central, "SELECT count(DISTINCT array_task_id) FROM sources WHERE array_task_id IN (0, 1)")[0][0] == 2
    )


def test_the_same_sql_gives_the_same_numbers_on_both(central: str, two_nodes: list[Path], tmp_path: Path) -> None:
    """Whole-number samples are REAL in SQLite's view as in PostgreSQL's: ``value / 3`` is not an
    integer division in one of them only."""
    merged = tmp_path / "merged.db"
    merge([str(p) for p in two_nodes], str(merged), progress=False)
    load([str(p) for p in two_nodes], central)
    sql = (
        "SELECT job_id, metric_name, timestamp, value / 3 FROM resource_metrics WHERE value IS NOT NULL"
        " AND value = round(value) AND value < 1e300 ORDER BY job_id, metric_name, timestamp"
    )
    conn = sqlite3.connect(merged)
    try:
        lite = conn.execute(sql).fetchall()
        assert {t for (t,) in conn.execute("SELECT DISTINCT typeof(value) FROM resource_metrics")} <= {"real", "null"}
    finally:
        conn.close()
    pg = pg_rows(central, sql)
    assert len(lite) > 0 and any(r[3] != int(r[3]) for r in lite)  # whole numbers, divided: fractions
    assert [(r[0], r[1], r[3]) for r in lite] == [(r[0], r[1], r[3]) for r in pg]


def test_a_version_1_database_is_upgraded_by_the_next_push(central: str, two_nodes: list[Path]) -> None:
    """A central store written by the previous release (text config, no user_name) is brought to this
    schema under the schema lock by the first sender or load that meets it; its rows stay."""
    load([str(two_nodes[0])], central)
    with psycopg.connect(central) as conn:  # back to version 1, as that release left it
        conn.execute("DROP VIEW jobs; DROP VIEW resource_metrics")
        conn.execute("ALTER TABLE job_rows ALTER COLUMN config TYPE text, ALTER COLUMN requested TYPE text")
        conn.execute("ALTER TABLE job_rows DROP COLUMN user_name")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with connect(central) as conn, pytest.raises(CentralStoreError, match="older than 2; the next sender"):
        pg_schema.check(conn, "x")
    load([str(p) for p in two_nodes], central)
    assert pg_rows(central, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert pg_rows(central, "SELECT count(*), count(DISTINCT config->'monitoring') FROM jobs") == [(2, 1)]
    assert pg_rows(central, "SELECT count(*) FROM resource_metrics")[0][0] == sqlite_counts(two_nodes[0])["samples"] * 2


class _Recorder:
    """A psycopg connection whose cursors record each statement and its parameters."""

    def __init__(self, pg: psycopg.Connection) -> None:
        self.pg = pg
        self.calls: list[tuple[str, Any]] = []

    def cursor(self) -> _RecordingCursor:
        return _RecordingCursor(self.pg.cursor(), self.calls)

    def commit(self) -> None:
        self.pg.commit()

    def rollback(self) -> None:
        self.pg.rollback()

    def training_params(self) -> list[str]:
        """How each parameter of the one INSERT of training rows since the last call travelled."""
        (params,) = [p for sql, p in self.calls if sql.startswith("INSERT INTO training_rows")]
        self.calls.clear()
        return [
            "binary" if isinstance(p, bytes) else "text" if isinstance(p, str) else type(p).__name__ for p in params
        ]


class _RecordingCursor:
    def __init__(self, cur: psycopg.Cursor[Any], calls: list[tuple[str, Any]]) -> None:
        self.cur, self.calls = cur, calls

    def __enter__(self) -> _RecordingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cur.close()

    def execute(self, sql: str, params: Any = None) -> Any:
        self.calls.append((sql, params))
        return self.cur.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)


def test_a_push_sends_a_column_as_one_parameter_and_every_value_exactly(central: str, tmp_path: Path) -> None:
    """Each column of a table's new rows is one parameter of one statement: a float column without
    NULL in binary (bytes), any other as one array literal (str) -- never a list psycopg adapts element
    by element in Python, which held the GIL ~5 µs per training row and made a monitor thread wait
    for it at every tick (docs/PERFORMANCE.md, the central rows). Every value arrives as it was stored:
    extreme and negative-zero floats, infinities, NaN (NULL), text with quotes, backslashes, commas,
    braces, 'NULL', accents, empty."""
    path = tmp_path / "n.db"
    client.init_db(str(path), buffer_size=10_000, flush_interval=60, listen=False)
    store = client.get_db()
    assert store is not None
    floats = [0.1, 1 / 3, 5e-324, -0.0, 1.7976931348623157e308, -2.5e-308, math.inf, -math.inf, 2.0**53 + 2]
    names = ["loss", 'a"b', "back\\slash", "c,d", "{e}", "NULL", "é ü", " sp ", 'x\\"y']
    phases = ["train", "", 'p"q', "NULL"]
    ints = [0, -1, 2**62, -(2**63), None]

    def log(k: int, value: float) -> None:
        client.log_training_epoch_metric(names[k % len(names)], value, ints[k % len(ints)],
                                         ints[(k + 2) % len(ints)], phases[k % len(phases)])  # fmt: skip

    for k in range(60):
        log(k, floats[k % len(floats)])
    store.flush()
    pg = _Recorder(connect(central))
    pg_schema.ensure(pg.pg, "test")
    sconn = reader.open_readonly(path)
    sconn.isolation_level = None
    mark, _ = push(sconn, pg, None)
    # (source_id, timestamp, metric_name, metric_value, round_number, epoch_number, phase)
    assert pg.training_params() == ["text", "binary", "text", "binary", "text", "text", "text"]
    for k in range(60, 80):
        log(k, math.nan if k % 3 == 0 else floats[k % len(floats)])  # NULLs in metric_value: text
    store.flush()
    mark, _ = push(sconn, pg, mark)
    assert pg.training_params() == ["text", "binary", "text", "text", "text", "text", "text"]
    client.shutdown_db()
    lite = sconn.execute("SELECT timestamp, metric_name, metric_value, round_number, epoch_number, phase"
                         " FROM training_rows").fetchall()  # fmt: skip
    sconn.close()
    pg.pg.close()
    got = pg_rows(central, "SELECT timestamp, metric_name, metric_value, round_number, epoch_number, phase"
                  " FROM training_rows")  # fmt: skip
    exact = sorted(tuple(repr(x) for x in r) for r in lite)
    assert len(exact) == 80 and sorted(tuple(repr(x) for x in r) for r in got) == exact
