"""The store API from the main process: DESIGN.md's "Store API" and "Schema contract"."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path

import pytest
from procs import read
from testenv import ROOT

import aetherium_hpc as ah
from aetherium_hpc.errors import ForeignDatabaseError, NewerSchemaError, OlderSchemaError, StoreError
from aetherium_hpc.store import SourceInfo, chunks, process, records, schema


def test_whole_api_round_trip(db_path: Path) -> None:
    db = ah.init_db(str(db_path), buffer_size=100)
    assert ah.get_db() is db and ah.get_metrics_db() is db
    t = ah.log_data_generation_start(operation="signal_injection", round_number=1, chunk_number=2)
    time.sleep(0.01)
    ah.log_data_generation_complete(
        start_time=t, operation="signal_injection", samples_generated=64, round_number=1, chunk_number=2,
        memory_used_mb=12.5,
    )  # fmt: skip
    ah.log_data_generation_complete(start_time=t, operation="noise", samples_generated=8)
    for epoch in range(5):
        ah.log_training_epoch_metric("loss", 1.0 / (epoch + 1), round_number=1, epoch_number=epoch, phase="train")
        ah.log_training_epoch_metric("loss", 1.5 / (epoch + 1), round_number=1, epoch_number=epoch, phase="val")
    ah.log_resource_metric("cpu", "system_total", 42.5, "%")
    ah.log_resource_samples([("ram", "system_used", 1024.0, "MB", ""), ("gpu", "utilization", 90, "%", "GPU-abc")])

    gen = db.query_generation_metrics(operation="signal_injection")
    assert len(gen) == 1
    assert gen[0]["round_number"] == 1 and gen[0]["chunk_number"] == 2 and gen[0]["samples_generated"] == 64
    assert gen[0]["memory_used_mb"] == 12.5 and gen[0]["duration_seconds"] >= 0.01
    assert db.query_generation_metrics(operation="noise")[0]["memory_used_mb"] is None
    val = db.query_training_metrics(metric_name="loss", phase="val")
    assert [r["epoch_number"] for r in val] == [0, 1, 2, 3, 4]
    assert val[2]["metric_value"] == pytest.approx(0.5)
    cpu = db.query_resource_metrics(metric_type="cpu")
    assert [(r["metric_name"], r["value"], r["unit"]) for r in cpu] == [("system_total", 42.5, "%")]
    assert cpu[0]["node"] and abs(cpu[0]["timestamp"] - time.time()) < 60
    gpu = db.query_resource_metrics(metric_type="gpu", metric_name="utilization")
    assert gpu[0]["device"] == "GPU-abc" and gpu[0]["value"] == 90

    stats = db.get_summary_stats()
    for key in ("resource_metrics_count", "generation_metrics_count", "training_metrics_count",
                "duration_minutes", "db_size_mb"):  # fmt: skip
        assert key in stats
    assert stats["generation_metrics_count"] == 2
    assert stats["training_metrics_count"] == 10
    assert stats["resource_metrics_count"] >= 3
    assert stats["db_size_mb"] > 0
    ah.shutdown_db()
    ah.shutdown_metrics_db()  # twice is fine
    assert ah.get_db() is None
    # Plain SQL on the contract names, from another connection.
    assert read(db_path, "SELECT count(*) FROM training_metrics WHERE phase='train'") == [(5,)]
    assert read(db_path, "SELECT metric_name, value FROM resource_metrics WHERE metric_type='ram'") == [
        ("system_used", 1024.0)
    ]
    assert read(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_aliases_are_the_same_functions() -> None:
    assert ah.init_metrics_db is ah.init_db
    assert ah.get_metrics_db is ah.get_db
    assert ah.shutdown_metrics_db is ah.shutdown_db


def test_log_before_init_warns_once_and_goes_on(recwarn: pytest.WarningsRecorder) -> None:
    from aetherium_hpc.store import process

    process._warned_uninitialized = False
    ah.log_training_epoch_metric("loss", 1.0, 0, 0)
    ah.log_training_epoch_metric("loss", 1.0, 0, 1)
    messages = [str(w.message) for w in recwarn if "Metrics database not initialized" in str(w.message)]
    assert len(messages) == 1


def test_buffer_size_triggers_a_commit_before_the_interval(db_path: Path) -> None:
    ah.init_db(str(db_path), buffer_size=10, flush_interval=3600)
    for i in range(10):
        ah.log_training_epoch_metric("x", float(i), 0, i)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if read(db_path, "SELECT count(*) FROM training_rows") == [(10,)]:
            break
        time.sleep(0.02)
    assert read(db_path, "SELECT count(*) FROM training_rows") == [(10,)]


def test_interval_triggers_a_commit_of_a_small_batch(db_path: Path) -> None:
    ah.init_db(str(db_path), buffer_size=10_000, flush_interval=0.2)
    ah.log_training_epoch_metric("x", 1.0, 0, 0)
    deadline = time.monotonic() + 30
    while read(db_path, "SELECT count(*) FROM training_rows") != [(1,)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read(db_path, "SELECT count(*) FROM training_rows") == [(1,)]


def test_nothing_is_committed_before_buffer_or_interval(db_path: Path) -> None:
    ah.init_db(str(db_path), buffer_size=1000, flush_interval=3600)
    for i in range(5):
        ah.log_training_epoch_metric("x", float(i), 0, i)
    time.sleep(0.3)
    assert read(db_path, "SELECT count(*) FROM training_rows") == [(0,)]
    ah.shutdown_db()  # drains
    assert read(db_path, "SELECT count(*) FROM training_rows") == [(5,)]


@pytest.mark.parametrize(
    "value, error",
    [("1.0", TypeError), (None, TypeError), ([1], TypeError), (True, TypeError), (10**400, ValueError)],
)
def test_non_numeric_values_are_refused_at_the_call(db_path: Path, value: object, error: type) -> None:
    ah.init_db(str(db_path))
    with pytest.raises(error, match="metric_value"):
        ah.log_training_epoch_metric("loss", value, 0, 0)  # type: ignore[arg-type]
    ah.log_training_epoch_metric("loss", 2.0, 0, 1)  # the writer is unaffected
    assert len(ah.get_db().query_training_metrics()) == 1  # type: ignore[union-attr]


def test_bad_names_and_numbers_are_refused(db_path: Path) -> None:
    ah.init_db(str(db_path))
    with pytest.raises(ValueError, match="limit is 256"):
        ah.log_training_epoch_metric("x" * 10_000, 1.0)
    with pytest.raises(TypeError, match="metric_name"):
        ah.log_training_epoch_metric(None, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64-bit"):
        ah.log_training_epoch_metric("x", 1.0, round_number=2**70)
    with pytest.raises(TypeError, match="epoch_number"):
        ah.log_training_epoch_metric("x", 1.0, epoch_number=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value"):
        ah.log_resource_metric("cpu", "x", "high")  # type: ignore[arg-type]


def test_nan_is_null_and_inf_is_inf(db_path: Path) -> None:
    db = ah.init_db(str(db_path))
    ah.log_training_epoch_metric("loss", float("nan"), 0, 0)
    ah.log_training_epoch_metric("loss", float("inf"), 0, 1)
    ah.log_training_epoch_metric("loss", float("-inf"), 0, 2)
    ah.log_resource_metric("gpu", "power", float("nan"), "W")
    ah.log_resource_metric("gpu", "power", float("inf"), "W")
    values = [r["metric_value"] for r in db.query_training_metrics()]
    assert values[0] is None and values[1] == math.inf and values[2] == -math.inf
    res = [r["value"] for r in db.query_resource_metrics(metric_type="gpu")]
    assert res[0] is None and res[1] == math.inf


def test_numpy_scalars_are_accepted(db_path: Path) -> None:
    np = pytest.importorskip("numpy")
    db = ah.init_db(str(db_path))
    ah.log_training_epoch_metric("loss", np.float32(0.25), np.int64(1), np.int32(2))
    row = db.query_training_metrics()[0]
    assert row["metric_value"] == 0.25 and row["round_number"] == 1 and row["epoch_number"] == 2


def test_second_init_same_path_returns_store_other_path_fails(db_path: Path, tmp_path: Path) -> None:
    db = ah.init_db(str(db_path))
    assert ah.init_db(str(db_path)) is db
    with pytest.raises(StoreError, match="shutdown_db"):
        ah.init_db(str(tmp_path / "other.db"))


def test_reopen_in_the_same_run_appends_to_its_source(db_path: Path) -> None:
    ah.init_db(str(db_path))
    ah.log_resource_metric("cpu", "system_total", 1.0, "%")
    ah.shutdown_db()
    db = ah.init_db(str(db_path))
    ah.log_resource_metric("cpu", "system_total", 2.0, "%")
    assert [r["value"] for r in db.query_resource_metrics(metric_type="cpu")] == [1.0, 2.0]
    ah.shutdown_db()
    assert read(db_path, "SELECT source_id, attempt FROM sources") == [(1, 0)]


def test_a_requeued_job_writes_its_attempt_as_a_source_of_its_own(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURMD_NODENAME", "n1")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for attempt, value in ((None, 1.0), ("1", 2.0), ("1", 3.0), ("2", 4.0)):
        if attempt is not None:
            monkeypatch.setenv("SLURM_RESTART_COUNT", attempt)  # as Slurm sets it in a requeued job
        ah.init_db(str(db_path))
        ah.log_training_epoch_metric("loss", value)
        ah.log_job(status="completed" if value == 4.0 else "cancelled")
        ah.shutdown_db()
    assert read(db_path, "SELECT source_id, job_id, node, attempt FROM sources") == [
        (1, "41", "n1", 0), (2, "41", "n1", 1), (3, "41", "n1", 2)
    ]  # fmt: skip
    assert read(db_path, "SELECT source_id, metric_value FROM training_metrics ORDER BY timestamp") == [
        (1, 1.0), (2, 2.0), (2, 3.0), (3, 4.0)
    ]  # fmt: skip
    assert read(db_path, "SELECT source_id, status FROM jobs ORDER BY source_id") == [
        (1, "cancelled"), (2, "cancelled"), (3, "completed")
    ]  # fmt: skip
    # Another job writing to the same file is another source too.
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    ah.init_db(str(db_path))
    ah.shutdown_db()
    assert read(db_path, "SELECT source_id, job_id, attempt FROM sources WHERE source_id = 4") == [(4, "42", 0)]


def test_foreign_database_is_refused_not_rewritten(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE precious (x)")
    conn.execute("INSERT INTO precious VALUES (42)")
    conn.commit()
    conn.close()
    with pytest.raises(ForeignDatabaseError, match="not one written by aetherium-hpc"):
        ah.init_db(str(db_path))
    assert read(db_path, "SELECT x FROM precious") == [(42,)]
    assert read(db_path, "SELECT count(*) FROM sqlite_master") == [(1,)]


@pytest.mark.parametrize(
    ("step", "error", "words"),
    [(+1, NewerSchemaError, "upgrade"), (-1, OlderSchemaError, "older than .* not rewritten; read it with the")],
    ids=["newer", "older"],
)
def test_another_schema_version_is_refused_and_left_as_it_is(
    db_path: Path, step: int, error: type[Exception], words: str
) -> None:
    """Older: schema 1, whose ``jobs`` was a table repeating the identity; neither read nor rewritten."""
    ah.init_db(str(db_path))
    ah.shutdown_db()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + step}")
    conn.close()
    with pytest.raises(error, match=words):
        ah.init_db(str(db_path))
    assert read(db_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION + step,)]


def test_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        ah.init_db(str(db_path))


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ah.init_db(str(tmp_path / "nope" / "m.db"))


def test_full_queue_blocks_and_loses_nothing(db_path: Path) -> None:
    db = ah.init_db(str(db_path), buffer_size=10, flush_interval=0.05, max_queue=50, on_full="block")
    for i in range(2000):
        ah.log_training_epoch_metric("x", float(i), 0, i)
    stats = db.get_summary_stats()
    assert stats["training_metrics_count"] == 2000
    assert stats["dropped"] == 0


def test_full_queue_in_drop_mode_counts_drops(db_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ah.init_db(str(db_path), buffer_size=100, flush_interval=3600, max_queue=100, on_full="drop")
    for i in range(150):  # the writer cannot drain in between: nothing wakes it below 100
        ah.log_training_epoch_metric("x", float(i), 0, i)
    ah.shutdown_db()
    written = read(db_path, "SELECT count(*) FROM training_rows")[0][0]
    dropped = read(db_path, "SELECT value FROM store_stats WHERE name='dropped_queue_full'")
    n_dropped = int(dropped[0][0]) if dropped else 0
    assert written + n_dropped == 150
    assert written >= 100
    # the owner says how many in one line at shutdown (none: no line)
    lines = [x for x in capfd.readouterr().err.splitlines() if "could not be stored" in x]
    assert lines == ([f"aetherium-hpc: {n_dropped} record(s) logged for {db_path} could not be stored (a full queue "
                      "with on_full='drop', or workers that could not reach the store); counted in its store_stats"]
                     if n_dropped else [])  # fmt: skip


def test_records_a_worker_could_not_deliver_are_counted_by_the_next_store_and_said_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from aetherium_hpc.store import transport

    ah.init_db(str(tmp_path / "a.db"))
    pid = os.fork()
    if pid == 0:  # a worker kept across stores that overflows its held records while no store listens
        code = 1
        try:
            ah.log_training_epoch_metric("w", 0.0)  # connects
            sink = process.sink
            assert sink is not None and sink.flush()
            while os.path.exists(str(tmp_path / "go")) is False:
                time.sleep(0.01)
            transport.MAX_HELD = 10
            for i in range(25):  # the store is gone: 10 held, 15 dropped and counted
                ah.log_training_epoch_metric("w", float(i))
            while not os.path.exists(str(tmp_path / "b.ready")):
                time.sleep(0.01)
            code = 0 if sink.commit(30.0) else 2  # delivers the 10 and the count to the next store
        finally:
            os._exit(code)
    try:
        time.sleep(0.3)
        ah.shutdown_db()
        (tmp_path / "go").touch()
        time.sleep(0.5)
        ah.init_db(str(tmp_path / "b.db"))
        (tmp_path / "b.ready").touch()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        ah.shutdown_db()
    assert read(tmp_path / "b.db", "SELECT count(*) FROM training_rows") == [(10,)]
    assert read(tmp_path / "b.db", "SELECT value FROM store_stats WHERE name = 'dropped_client'") == [(15,)]
    err = capfd.readouterr().err
    assert f"aetherium-hpc: 15 record(s) logged for {tmp_path / 'b.db'} could not be stored" in err


def test_malformed_record_is_counted_not_fatal(db_path: Path) -> None:
    db = ah.init_db(str(db_path))
    db.queue.put(("garbage",))
    db.queue.put((2, time.time(), "loss", 1.0, 0, [1, 2], "train"))  # a list cannot be stored
    ah.log_training_epoch_metric("loss", 1.0, 0, 0)
    stats = db.get_summary_stats()
    assert stats["training_metrics_count"] == 1
    assert stats["bad_records"] == 2


def test_views_answer_while_the_writer_runs(db_path: Path) -> None:
    ah.init_db(str(db_path), buffer_size=1, flush_interval=0.05)
    for name in schema.CONTRACT_NAMES:
        read(db_path, f"SELECT * FROM {name} LIMIT 1")
    ah.log_resource_metric("cpu", "system_total", 5.0, "%")
    ah.get_db().flush()  # type: ignore[union-attr]
    rows = read(
        db_path,
        "SELECT AVG(value), MAX(value), MIN(value) FROM resource_metrics"
        " WHERE metric_type='cpu' AND metric_name='system_total'",
    )
    assert rows == [(5.0, 5.0, 5.0)]


def test_chunks_close_and_timestamps_survive(db_path: Path) -> None:
    db = ah.init_db(str(db_path), buffer_size=50, flush_interval=0.05)
    t0 = 1_800_000_000.0
    n = chunks.CHUNK_SAMPLES * 2 + 7
    for k in range(n):
        ah.log_resource_metric(
            "cpu", "system_total", k % 100 + 0.5, "%", timestamp=t0 + k * 1.0 + (0.003 if k % 7 else 0)
        )
    rows = db.query_resource_metrics(metric_type="cpu", metric_name="system_total")
    assert len(rows) == n
    assert [r["value"] for r in rows] == [k % 100 + 0.5 for k in range(n)]
    for k, r in enumerate(rows):
        assert r["timestamp"] == pytest.approx(t0 + k + (0.003 if k % 7 else 0), abs=0.0011)
    ah.shutdown_db()
    cpu_chunks = "SELECT count(*), sum(n) FROM sample_chunks JOIN series USING (series_id) WHERE metric_type='cpu'"
    assert read(db_path, cpu_chunks) == [(3, n)]


def test_the_jobs_identity_is_stored_once(db_path: Path) -> None:
    """``job_rows`` has no identity column: ``jobs`` answers job, array task and node from ``sources``,
    and a log_job() that names them changes them there, for every view alike."""
    ah.init_db(str(db_path), source=SourceInfo(job_id="7", node="n0"), listen=False)
    ah.log_job(status="running", start_time=1.0)
    ah.log_training_epoch_metric("loss", 0.5, 0, 0)
    ah.shutdown_db()
    columns = {r[1] for r in read(db_path, "PRAGMA table_info(job_rows)")}
    assert columns and not columns & set(records.JOB_IDENTITY_COLUMNS)
    assert read(db_path, "SELECT job_id, node, status FROM jobs") == [("7", "n0", "running")]

    ah.init_db(str(db_path), source=SourceInfo(job_id="7", node="n0"), listen=False)
    ah.log_job(node="n9", array_job_id="6", array_task_id=3)
    ah.shutdown_db()
    who = "SELECT job_id, array_job_id, array_task_id, node FROM"
    assert read(db_path, f"{who} jobs") == read(db_path, f"{who} sources") == [("7", "6", 3, "n9")]
    assert read(db_path, f"{who} training_metrics") == [("7", "6", 3, "n9")]
    assert read(db_path, "SELECT status, start_time FROM jobs") == [("running", 1.0)]


def test_job_row(db_path: Path) -> None:
    ah.init_db(str(db_path))
    ah.log_job(job_id="123", array_task_id=4, status="running", start_time=1.0, config={"a": 1})
    ah.log_job(status="completed", exit_code=0, end_time=2.0)
    ah.shutdown_db()
    assert read(db_path, "SELECT job_id, array_task_id, status, exit_code, config FROM jobs") == [
        ("123", 4, "completed", 0, '{"a": 1}')
    ]


def test_log_resource_metric_checks_its_timestamp_as_log_resource_samples_does(db_path: Path) -> None:
    ah.init_db(str(db_path))
    for bad, error in ((1.7e12, ValueError), (math.nan, ValueError), ("now", TypeError)):
        with pytest.raises(error, match="timestamp"):
            ah.log_resource_metric("cpu", "x", 1.0, timestamp=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="timestamp"):
            ah.log_resource_samples([("cpu", "x", 1.0, "", "")], timestamp=bad)  # type: ignore[arg-type]
    ah.log_resource_metric("cpu", "x", 1.0, timestamp=1000.0)
    ah.shutdown_db()
    assert read(db_path, "SELECT timestamp, value FROM resource_metrics WHERE metric_type = 'cpu'") == [(1000.0, 1.0)]
    assert read(db_path, "SELECT count(*) FROM store_stats WHERE name = 'bad_records'") == [(0,)]


def test_the_queue_counts_drops_of_many_threads_under_its_lock(db_path: Path) -> None:
    import threading

    db = ah.init_db(str(db_path), buffer_size=10, max_queue=10, on_full="drop")
    assert isinstance(db, ah.MetricsStore)
    with pytest.raises(AttributeError):
        db.queue.dropped = 0  # type: ignore[misc]  # read-only: changed only through count_dropped, under a lock

    def drop(n: int) -> None:
        for i in range(n):
            ah.log_training_epoch_metric("drop", float(i))

    threads = [threading.Thread(target=drop, args=(5000,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ah.shutdown_db()
    # every record is stored or counted, while the writer thread took counts as the producers added them
    ((stored,),) = read(db_path, "SELECT count(*) FROM training_rows")
    dropped = read(db_path, "SELECT value FROM store_stats WHERE name = 'dropped_queue_full'")
    assert stored + (dropped[0][0] if dropped else 0) == 8 * 5000
    assert db.queue.dropped == 0  # all counted in the file


def test_a_node_store_that_does_not_answer_is_replaced_by_the_file_opened_with_what_was_logged(
    tmp_path: Path,
) -> None:
    """What a process logged for the node store its environment names, which does not answer, goes
    into the database init_db opens instead; one line says so, and no line says records were lost."""
    import subprocess
    import sys

    db = tmp_path / "own.db"
    code = (
        "import aetherium_hpc as ah\n"
        "ah.log_training_epoch_metric('before', 1.0)\n"
        f"ah.init_db({str(db)!r})\n"
        "ah.log_training_epoch_metric('after', 2.0)\n"
        "ah.shutdown_db()\n"
    )
    env = {
        **os.environ,
        "AETHERIUM_METRICS_ADDR": str(tmp_path / "gone.sock"),
        "AETHERIUM_METRICS_KEY": "00" * 32,
        "AETHERIUM_METRICS_DB": str(tmp_path / "node.db"),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read(db, "SELECT metric_name FROM training_rows ORDER BY id") == [("before",), ("after",)]
    said = [line for line in proc.stderr.splitlines() if "aetherium-hpc" in line]
    assert said == [
        f"aetherium-hpc: the node store named by AETHERIUM_METRICS_ADDR ({tmp_path / 'gone.sock'}) does not answer; "
        f"records go to {db} instead (the 1 this process logged before too)"
    ]
