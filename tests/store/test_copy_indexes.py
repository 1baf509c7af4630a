"""The run-directory copy does without both per-series chunk indexes (store/backup.py); a copy loaded
back into a node database (``copy_database``) and ``merge``'s output have every index again; ``watch``
reads such a copy without them (backwards by rowid) and draws what it draws from the node database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import aetherium_hpc as ah
from aetherium_hpc.analysis import watch
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.analysis.watch import HISTORY, read_task
from aetherium_hpc.store import SourceInfo, schema
from aetherium_hpc.store.backup import CHUNK_INDEXES, CopyBack, copy_database
from aetherium_hpc.store.client import log_resource_samples

T0 = 1_790_000_000.0
#: Samples logged between two copies: irregular, several full node chunks (180 samples), and at the
#: end copies of a few samples each, so that the copy's newest chunks hold fewer than HISTORY samples.
STEPS = (1, 30, 400, 0, 7, 181, 30, 5, 3, 4, 2)
#: GPU-b stops after this many samples: a series whose newest chunks lie far back in the copy.
GPU_B_ENDS = 500


def _all_indexes() -> set[str]:
    return {s.split(" IF NOT EXISTS ")[1].split()[0] for s in schema.index_statements()}


def indexes(path: Path | str) -> set[str]:
    """The indexes of ``path`` that the schema declares (``PRAGMA index_list`` of every table)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {r[1] for t in tables for r in conn.execute(f'PRAGMA index_list("{t}")') if r[3] == "c"}
    finally:
        conn.close()


class Job:
    def __init__(self, node: Path, copy: Path, logged: dict[str, list[float]]) -> None:
        self.node, self.copy, self.logged = node, copy, logged


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    """A node database and its run-directory copy after one CopyBack per step of :data:`STEPS`."""
    tmp = tmp_path_factory.mktemp("copyidx")
    node, dest = tmp / "node" / "metrics.db", tmp / "run" / "db" / "5_0" / "n1.db"
    node.parent.mkdir()
    store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, listen=False,
                       source=SourceInfo(job_id="5", node="n1", hostname="n1"))  # fmt: skip
    logged: dict[str, list[float]] = {"cpu": [], "ram": [], "gpu-a": [], "gpu-b": []}
    try:
        ah.log_job(status="running", start_time=T0)
        copier = CopyBack(node, dest)
        k = 0
        for step in STEPS:
            for _ in range(step):
                vals = {"cpu": float(k % 97), "ram": 1000.0 + (k * 7) % 113, "gpu-a": float((k * 3) % 101),
                        "gpu-b": float((k * 5) % 89)}  # fmt: skip
                samples = [("cpu", "system_total", vals["cpu"], "%", ""), ("ram", "system_used", vals["ram"], "MB", ""),
                           ("gpu", "utilization", vals["gpu-a"], "%", "GPU-a")]  # fmt: skip
                if k < GPU_B_ENDS:
                    samples.append(("gpu", "utilization", vals["gpu-b"], "%", "GPU-b"))
                log_resource_samples(samples, timestamp=T0 + k + (k % 3) * 0.001)
                for name in logged:
                    if name != "gpu-b" or k < GPU_B_ENDS:
                        logged[name].append(vals[name])
                k += 1
            assert store.flush()
            copier.copy()
    finally:
        ah.shutdown_db()
    yield Job(node, dest, logged)


def test_the_copy_has_neither_chunk_index_and_every_other(job: Job) -> None:
    assert set(CHUNK_INDEXES) == {"sample_chunks_by_series", "sample_chunks_by_end"}
    assert set(CHUNK_INDEXES) <= _all_indexes() == indexes(job.node)
    assert indexes(job.copy) == _all_indexes() - set(CHUNK_INDEXES) == {"series_by_name"}
    conn = sqlite3.connect(f"file:{job.copy}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA index_list(sample_chunks)").fetchall() == []
        assert conn.execute("SELECT count(*) FROM sample_chunks").fetchone()[0] > 4 * len(STEPS)  # incremental
    finally:
        conn.close()


def test_copy_database_and_merge_output_have_every_index(job: Job, tmp_path: Path) -> None:
    requeued = copy_database(job.copy, tmp_path / "node2" / "metrics.db")  # what a requeued job continues from
    assert indexes(requeued) == _all_indexes()
    out = tmp_path / "merged.db"
    result = merge([job.copy], out, progress=False)
    assert result.sources_added == 1 and not result.skipped
    assert indexes(out) == _all_indexes()
    for path in (requeued, out):  # and both hold every sample logged
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            n = conn.execute("SELECT count(*) FROM resource_metrics WHERE metric_type <> 'store'").fetchone()[0]
        finally:
            conn.close()
        assert n == sum(len(v) for v in job.logged.values()) == 3 * 663 + GPU_B_ENDS


def test_a_copy_asked_for_its_indexes_gets_both(job: Job, tmp_path: Path) -> None:
    """``CopyBack.copy(index=True)``, in a full copy and in an incremental one."""
    full = CopyBack(job.node, tmp_path / "full.db")
    full.copy(index=True)
    assert indexes(tmp_path / "full.db") == _all_indexes()
    later = CopyBack(job.node, tmp_path / "later.db")
    later.copy()
    assert indexes(tmp_path / "later.db") == _all_indexes() - set(CHUNK_INDEXES)
    assert later.copy(index=True).kind == "incremental"
    assert indexes(tmp_path / "later.db") == _all_indexes()


def test_watch_draws_the_same_from_the_copy_as_from_the_node_database(job: Job) -> None:
    at_node, at_copy = read_task(str(job.node)), read_task(str(job.copy))
    assert at_node.error is None and at_copy.error is None
    last = {name: values[-HISTORY:] for name, values in job.logged.items()}
    assert at_node.cpu == last["cpu"] and at_node.mem == last["ram"]
    assert at_node.gpu == [sum((a, b)) / 2 for a, b in zip(last["gpu-a"], last["gpu-b"], strict=True)]
    assert (at_copy.cpu, at_copy.mem, at_copy.gpu) == (at_node.cpu, at_node.mem, at_node.gpu)
    assert len(at_copy.cpu) == HISTORY


def test_watch_reads_a_copy_backwards_by_rowid(job: Job) -> None:
    """Without the index a series' newest chunks are read backwards by rowid: no sort, no automatic
    index; with it, over the index (tests/store/test_time_range.py)."""
    conn = sqlite3.connect(f"file:{job.copy}?mode=ro", uri=True)
    try:
        sql = watch._NEWEST_ROWS_SQL.format(ids="?,?")
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (1, 2))]
        # the copy's newest rows for the cpu series: only a few read for its last HISTORY samples
        (sid,) = conn.execute("SELECT series_id FROM series WHERE metric_type = 'cpu'").fetchone()
        got = watch._recent_chunks(conn, [sid], indexed=False)[sid]
        newest = conn.execute(
            "SELECT t1 FROM sample_chunks WHERE series_id = ? ORDER BY rowid DESC LIMIT ?", (sid, len(got))
        ).fetchall()
    finally:
        conn.close()
    assert plan == ["SCAN sample_chunks"], plan
    assert [t1 for t1, _ in got] == [t1 for (t1,) in newest] and 2 < len(got) < 10  # chunks of 2 to 5 samples
