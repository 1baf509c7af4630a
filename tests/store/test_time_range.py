"""Time-range questions read only the chunks that overlap the range (docs/CENTRAL.md, "Time-range
questions"): the same rows as the naive query, over the index on the chunk ends, in SQLite and
PostgreSQL; the Puller's time window; watch's recent samples."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from central_helpers import private_schema, write_node_db

import aetherium_hpc
from aetherium_hpc.analysis.watch import _RECENT_CHUNKS_SQL, HISTORY, WINDOW_S, read_task
from aetherium_hpc.store import SourceInfo, chunks, client
from aetherium_hpc.store.central.load import load
from aetherium_hpc.store.central.pull import Puller, Selection

JOB, OTHER = "4242", "4343"
T0 = 1_700_000_000.0
SLACK = chunks.T1_SLACK_S

#: The documented query (``{f}``/``{t}``: the placeholders of the range's ends) and its naive baseline.
SELECT = (
    "SELECT timestamp, value, device FROM resource_metrics WHERE metric_type = 'gpu' AND metric_name = 'utilization'"
)
RANGE = (
    SELECT + " AND job_id = {job} AND chunk_t1 >= {f} - {slack} AND chunk_t0 <= {t} AND timestamp BETWEEN {f} AND {t}"
)
NAIVE = SELECT + " AND job_id = {job} AND timestamp BETWEEN {f} AND {t}"
ORDER = " ORDER BY timestamp, device"


def write_store(path: Path, job: str = JOB, samples: int = 700, seed: int = 3) -> None:
    """One job's node database: 1 Hz samples with sub-millisecond jitter (so a chunk's last computed
    timestamp lies up to 0.5 ms past its t1), two GPUs, a host CPU series."""
    aetherium_hpc.init_db(str(path), buffer_size=50, flush_interval=0.05, listen=False,
                          source=SourceInfo(job_id=job, node="n1", hostname="host-n1"))  # fmt: skip
    rnd = random.Random(seed)
    for k in range(samples):
        ts = T0 + k + rnd.random() * 0.0009
        client.log_resource_samples(
            [("cpu", "system_total", float(k % 17), "%", ""), ("gpu", "utilization", float(k % 100), "%", "GPU-a"),
             ("gpu", "utilization", float((3 * k) % 100), "%", "GPU-b")], ts,
        )  # fmt: skip
    aetherium_hpc.shutdown_db()


def ranges(path: Path) -> list[tuple[float, float]]:
    """Ranges at every edge of every chunk of the GPU series: its bounds, its first and last sample as
    the view computes them, the gap just past t1 where that last sample may lie, ranges starting and
    ending inside a chunk, spanning chunks, between two samples, outside the data."""
    conn = sqlite3.connect(path)
    try:
        edges = conn.execute(
            "SELECT chunk_t0, chunk_t1, min(timestamp), max(timestamp) FROM resource_metrics"
            " WHERE metric_type = 'gpu' GROUP BY chunk_t0, chunk_t1, device ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()
    out = [(T0 - 10.0, T0 + 1000.0), (T0 - 10.0, T0 - 1.0), (T0 + 800.0, T0 + 900.0)]
    for t0, t1, first, last in edges:
        out += [(t0, t1), (t0 - 0.5, t0), (first, first), (t1, t1 + 0.5), (last, last + 1.0), ((t1 + last) / 2, last),
                (t1 + 1e-6, t1 + 0.0006), (t0 + 10.5, t0 + 60.2), (t0 + 10.2, t0 + 10.3), (t0 + 100.3, t1 + 20.7),
                (t1 - 300.0, t1 - 0.2)]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("range") / "n1.db"
    write_store(path)
    return path


def _sqlite(path: Path, sql: str, f: float, t: float, slack: float = SLACK) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql.format(f=":f", t=":t", job=":job", slack=":slack") + ORDER,
                            {"f": f, "t": t, "job": JOB, "slack": slack}).fetchall()  # fmt: skip
    finally:
        conn.close()


def test_sqlite_range_query_returns_the_naive_rows_at_every_edge(store: Path) -> None:
    total = 0
    lost_without_slack = 0
    for f, t in ranges(store):
        want = _sqlite(store, NAIVE, f, t)
        assert _sqlite(store, RANGE, f, t) == want, (f - T0, t - T0)
        total += len(want)
        lost_without_slack += len(want) - len(_sqlite(store, RANGE, f, t, slack=0.0))
    assert total > 10_000
    # the edge the slack is for is exercised: without it some ranges lose the chunk's last sample
    assert lost_without_slack > 0


def test_sqlite_plan_reads_the_chunks_by_their_end(store: Path) -> None:
    conn = sqlite3.connect(store)
    try:
        names = {"f": ":f", "t": ":t", "job": ":job", "slack": ":slack"}
        params = {"f": T0, "t": T0 + 300, "job": JOB, "slack": SLACK}
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + RANGE.format(**names), params)]
        naive = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + NAIVE.format(**names), params)]
    finally:
        conn.close()
    assert "SEARCH c USING INDEX sample_chunks_by_end (series_id=? AND t1>?)" in plan, plan
    assert not any("SCAN c" in p for p in plan), plan
    # the naive query reads every chunk of the series (the bound the range query adds is what differs)
    assert "SEARCH c USING INDEX sample_chunks_by_end (series_id=?)" in naive, naive


def test_watch_reads_the_newest_chunks_within_its_window(store: Path) -> None:
    conn = sqlite3.connect(store)
    try:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _RECENT_CHUNKS_SQL, (1, 1, WINDOW_S))]
        cpu = [v for (v,) in conn.execute(
            "SELECT value FROM resource_metrics WHERE metric_type = 'cpu' ORDER BY timestamp")]  # fmt: skip
    finally:
        conn.close()
    assert any("USING INDEX sample_chunks_by_end (series_id=? AND t1>?)" in p for p in plan), plan
    assert any("USING COVERING INDEX sample_chunks_by_end" in p for p in plan), plan  # the newest end
    assert not any(p.startswith("SCAN") for p in plan), plan
    view = read_task(str(store))
    assert view.cpu == cpu[-HISTORY:] and len(view.cpu) == HISTORY


# -- PostgreSQL -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def central(pg_url: str, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The store and another job's loaded into a private schema."""
    other = tmp_path_factory.mktemp("other") / "n1.db"
    write_store(other, job=OTHER, samples=400, seed=4)
    with private_schema(pg_url) as url:
        load([str(store), str(other)], url)
        yield url


def _pg(url: str, sql: str, f: float, t: float) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.format(f="%(f)s", t="%(t)s", job="%(job)s", slack="%(slack)s") + ORDER,
                            {"f": f, "t": t, "job": JOB, "slack": SLACK}).fetchall()  # fmt: skip


@pytest.mark.postgres
def test_postgres_range_query_returns_the_naive_rows_at_every_edge(central: str, store: Path) -> None:
    total = 0
    for f, t in ranges(store):
        want = _pg(central, NAIVE, f, t)
        assert _pg(central, RANGE, f, t) == want, (f - T0, t - T0)
        total += len(want)
    assert total > 10_000
    whole = (T0 - 10.0, T0 + 1000.0)
    assert _pg(central, RANGE, *whole) == [(float(a), float(b), c) for a, b, c in _sqlite(store, RANGE, *whole)]


@pytest.mark.postgres
def test_postgres_plan_bounds_the_chunks_by_the_index_before_unnest(central: str) -> None:
    with psycopg.connect(central) as conn:
        conn.execute("SET enable_seqscan = off")  # a table this small would be scanned whole anyway
        sql = RANGE.format(f="%(f)s", t="%(t)s", job="%(job)s", slack="%(slack)s")
        plan = [r[0] for r in conn.execute("EXPLAIN " + sql, {"f": T0, "t": T0 + 300, "job": JOB, "slack": SLACK})]
    cond = [i for i, line in enumerate(plan) if "Index Cond" in line and "t1 >=" in line]
    unnest = [i for i, line in enumerate(plan) if "Function Scan on unnest" in line]
    assert cond and unnest, "\n".join(plan)
    # the chunk bound is an index condition on sample_chunks_by_end, on the chunks' side of the join
    # that feeds unnest: no chunk outside the range is unpacked
    assert "sample_chunks_by_end" in plan[cond[0] - 1] or "sample_chunks_by_end" in plan[cond[0]], "\n".join(plan)
    assert cond[0] < unnest[0], "\n".join(plan)


# -- the Puller's window ---------------------------------------------------------------------------
def _chunks_sqlite(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(
            "SELECT s.metric_type, s.metric_name, s.device, c.t0, c.t1, c.n FROM sample_chunks c"
            " JOIN series s USING (series_id)").fetchall())  # fmt: skip
    finally:
        conn.close()


def _chunks_pg(url: str, where: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return sorted(conn.execute(
            "SELECT s.metric_type, s.metric_name, s.device, c.t0, c.t1, c.n FROM sample_chunks c"
            " JOIN series s USING (series_id) JOIN sources src USING (source_id) WHERE src.array_job_id = '900'"
            f" AND {where}", params).fetchall())  # fmt: skip


@pytest.mark.postgres
def test_puller_since_pulls_the_chunks_that_end_after_it_then_what_is_new(pg_url: str, tmp_path: Path) -> None:
    with private_schema(pg_url) as url:
        first = tmp_path / "a" / "n1.db"
        first.parent.mkdir()
        write_node_db(first, job="900", task=0, node="n1", t0=T0, samples=400)
        load([str(first)], url)
        since = T0 + 200.0
        pulled = tmp_path / "pulled.db"
        with Puller(url, Selection(jobs=("900",)), pulled, since=since) as puller:
            step = puller.pull()
            want = _chunks_pg(url, "c.t1 >= %s", (since - SLACK,))
            assert _chunks_sqlite(pulled) == want and step.chunks == len(want)
            assert len(want) < len(_chunks_pg(url, "true", ()))  # the first chunk of each 1 Hz series is left
            assert step.training_rows == 20  # rows are pulled whole
            grown = tmp_path / "b" / "n1.db"
            grown.parent.mkdir()
            write_node_db(grown, job="900", task=0, node="n1", t0=T0, samples=700)
            load([str(grown)], url)
            again = puller.pull()
            want = _chunks_pg(url, "c.t1 >= %s", (since - SLACK,))
            assert _chunks_sqlite(pulled) == want
            # only the live chunk that grew and the chunks after it (cpu and ram: 360 grew, 540 new; gpu grew)
            assert again.chunks == 5, again
            assert puller.pull().chunks == 0


@pytest.mark.postgres
def test_puller_recent_pulls_the_last_seconds_of_each_series(pg_url: str, tmp_path: Path) -> None:
    with private_schema(pg_url) as url:
        path = tmp_path / "n1.db"
        write_node_db(path, job="900", task=0, node="n1", t0=T0, samples=700)
        load([str(path)], url)
        pulled = tmp_path / "pulled.db"
        with Puller(url, Selection(jobs=("900",)), pulled, recent_s=100.0) as puller:
            puller.pull()
        want = _chunks_pg(url, "c.t1 >= (SELECT max(t1) FROM sample_chunks e WHERE e.series_id = c.series_id) - %s",
                          (100.0 + SLACK,))  # fmt: skip
        got = _chunks_sqlite(pulled)
        assert got == want
        # cpu and ram: their last chunk only (540..699); gpu (every 40th sample): its one chunk
        logged = [(r[1], r[5]) for r in got if r[0] != "store"]  # the store's own series: its one sample
        assert logged == [("system_total", 160), ("utilization", 18), ("system_used", 160)]
