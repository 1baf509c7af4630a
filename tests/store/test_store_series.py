"""The monitor's batch as one SERIES record: stored as its samples one by one would be, checked
whole by the writer, counted by its samples when written, refused or dropped, and carried through
the node socket."""

from __future__ import annotations

import math
import multiprocessing as mp
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import aetherium_hpc as ah
from aetherium_hpc.store import client, records
from aetherium_hpc.store.options import StoreOptions
from aetherium_hpc.store.record_queue import RecordQueue
from aetherium_hpc.store.records import RESOURCE, SERIES
from aetherium_hpc.store.writer import StoreWriter

Sample = tuple[str, str, float, str, str]


def random_ticks(seed: int, n: int = 40) -> list[tuple[float, list[Sample]]]:
    """Ticks as a monitor gives them: most name the same series in the same order; now and then a
    process comes or goes, a CPU figure is missing, a series is named twice, a value is NaN or ±inf."""
    rng = random.Random(seed)
    base: list[tuple[str, str, str, str]] = [
        ("cpu", "system_total", "%", ""),
        ("ram", "system_used", "MB", ""),
        ("process", "rss_mb", "MB", "101:python"),
        ("process", "cpu_percent", "%", "101:python"),
    ]
    ticks = []
    t = 1_700_000_000.0 + rng.random()
    for _ in range(n):
        series = list(base)
        if rng.random() < 0.2:
            series.insert(rng.randrange(len(series) + 1), ("process", "rss_mb", "MB", f"{rng.randrange(5)}:sleep"))
        if rng.random() < 0.1:
            series.pop(rng.randrange(len(series)))
        if rng.random() < 0.1:
            series.append(series[0])  # a series twice in a tick
        samples: list[Sample] = []
        for mtype, mname, unit, device in series:
            value = rng.choice([rng.uniform(0, 100), rng.uniform(0, 1e6), float(rng.randrange(10))])
            if rng.random() < 0.03:
                value = rng.choice([math.nan, math.inf, -math.inf])
            samples.append((mtype, mname, value, unit, device))
        ticks.append((t, samples))
        t += 0.5 + rng.uniform(-0.01, 0.01)
    return ticks


def write(path: Path, recs: list[Any]) -> dict[str, float]:
    """Write records through a writer of their own; its store_stats counters."""
    writer = StoreWriter(str(path), options=StoreOptions(flush_interval_s=3600), telemetry=False)
    writer.start_and_wait()
    try:
        writer.queue.put_many(recs)
        assert writer.flush()
    finally:
        writer.stop()
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, value FROM store_stats").fetchall())


def stored(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT s.metric_type, s.metric_name, s.unit, s.device, c.t0, c.t1, c.n, c.dt_ms, c.jit, c.vals, c.nfin,"
            " c.vsum, c.vmax FROM sample_chunks c JOIN series s USING (series_id) ORDER BY s.series_id, c.t0"
        ).fetchall()


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_as_one_record_is_stored_as_its_samples_one_by_one(tmp_path: Path, seed: int) -> None:
    ticks = random_ticks(seed)
    one_by_one = [(RESOURCE, ts, t, n, v, u, d) for ts, samples in ticks for t, n, v, u, d in samples]
    rec = client.series_record(ticks)
    assert rec is not None and rec[0] == SERIES
    assert records.count([rec]) == len(one_by_one)
    stats_a = write(tmp_path / "a.db", one_by_one)
    stats_b = write(tmp_path / "b.db", [rec])
    assert stored(tmp_path / "b.db") == stored(tmp_path / "a.db") != []
    assert stats_b["records_written"] == stats_a["records_written"] == len(one_by_one)


def test_no_sample_is_no_record() -> None:
    assert client.series_record([]) is None
    assert client.series_record([(1.0, []), (2.0, [])]) is None


GOOD = ("cpu", "system_total", "%", "", [1000.0, 1000.5], [1.0, 2.0])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(("cpu", "system_total", "%", "", [1000.0, 1000.5], [1.0]), id="fewer-values-than-times"),
        pytest.param(("cpu", "system_total", "%", "", [], []), id="no-samples"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, math.nan], [1.0, 2.0]), id="nan-time"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, math.inf], [1.0, 2.0]), id="inf-time"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, 1e12], [1.0, 2.0]), id="time-in-ms"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, "later"], [1.0, 2.0]), id="time-not-a-number"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, 1000.5], [1.0, "high"]), id="value-not-a-number"),
        pytest.param(("cpu", "system_total", "%", "", [1000.0, 1000.5], [1.0, [2.0]]), id="value-a-list"),
        pytest.param(("cpu", 7, "%", "", [1000.0], [1.0]), id="name-not-text"),
        pytest.param(("", "system_total", "%", "", [1000.0], [1.0]), id="empty-type"),
        pytest.param(("cpu", "system_total", "%", ""), id="no-columns"),
    ],
)
def test_a_malformed_series_record_is_refused_whole_and_the_rest_is_written(tmp_path: Path, bad: tuple) -> None:
    """The bad series comes after a good one in the same record: the record is refused whole (no
    part of it stored), counted once, and the batch's other records are written."""
    path = tmp_path / "bad.db"
    good_other = ("ram", "system_used", "MB", "", [1000.0], [5.0])
    stats = write(
        path,
        [
            (RESOURCE, 999.0, "gpu", "util", 3.0, "%", "0"),
            (SERIES, [good_other, bad]),
            (SERIES, [GOOD]),
        ],
    )
    assert stats["bad_records"] == 1
    assert stats["records_written"] == 1 + 2  # the RESOURCE record and GOOD's two samples
    with sqlite3.connect(path) as conn:
        names = {n for (n,) in conn.execute("SELECT metric_name FROM series")}
        vals = dict(conn.execute("SELECT s.metric_name, c.vals FROM sample_chunks c JOIN series s USING (series_id)"))
    assert names == {"util", "system_total"}  # nothing of the refused record, not even its good series
    assert vals["system_total"] == "[1,2]"


def test_a_series_record_dropped_from_a_full_queue_counts_its_samples() -> None:
    q = RecordQueue(maxsize=1, wake_at=1, on_full="drop")
    assert q.put((RESOURCE, 1.0, "cpu", "system_total", 1.0, "%", ""))
    assert not q.put((SERIES, [GOOD, ("ram", "system_used", "MB", "", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])]))
    assert not q.put_many([(RESOURCE, 2.0, "cpu", "system_total", 1.0, "%", ""), (SERIES, [GOOD])])
    assert q.dropped == 5 + 3
    assert records.count([(SERIES, "not columns")]) == 1  # (the writer refuses it as one)


def _log_ticks_joined(ticks: list[tuple[float, list[Sample]]]) -> None:
    client.log_builtin_ticks(ticks)
    ah.shutdown_db()  # (sends what this process holds)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_s_batch_crosses_the_node_socket(tmp_path: Path, method: str) -> None:
    """A monitor in a process joined to the store sends its batch through the socket (marshal):
    it arrives whole."""
    path = tmp_path / "joined.db"
    ticks = random_ticks(99, n=12)
    ah.init_db(str(path))
    try:
        worker = mp.get_context(method).Process(target=_log_ticks_joined, args=(ticks,))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
    finally:
        ah.shutdown_db()
    write(tmp_path / "direct.db", [client.series_record(ticks)])
    ours = [row for row in stored(path) if row[0] != "store"]  # (the store's own telemetry left out)
    assert ours == stored(tmp_path / "direct.db") != []
