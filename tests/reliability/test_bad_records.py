"""One bad record never stops the store.

A value the public calls refuse raises at the call (TypeError/ValueError naming the argument).
A record that reaches the writer anyway -- sent by another process over the node socket, or put
straight into the queue -- is refused alone: counted in ``store_stats.bad_records``, logged once
with what was wrong, never retried; the rest of its batch and everything after it is stored and
``flush()`` returns True. Failures that can pass (a lock, a full disk) are still retried, and
their message names the real cause (the disk-full case: test_disk_full.py).
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import ROOT, integrity, read

import aetherium_hpc as ah
from aetherium_hpc.store.client import MetricsStore, log_resource_samples
from aetherium_hpc.store.failures import retry_cause
from aetherium_hpc.store.records import GENERATION, JOB, RESOURCE, STATS, TRAINING

NAN = float("nan")


@pytest.fixture
def store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[MetricsStore]:
    caplog.set_level(logging.WARNING, logger="aetherium_hpc")
    db = ah.init_db(tmp_path / "m.db", buffer_size=1000, flush_interval=0.05, socket_dir=str(tmp_path))
    assert isinstance(db, MetricsStore), "this process owns the writer"
    yield db
    ah.shutdown_db()


def _bad_stats(store: MetricsStore) -> int:
    rows = read(store.path, "SELECT value FROM store_stats WHERE name = 'bad_records'")
    value = rows[0][0] if rows else 0
    assert isinstance(value, (int, float))
    return int(value)


def _writer_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("aetherium_hpc.store")]


def _log_after(n: int = 100) -> None:
    for i in range(n):
        ah.log_training_epoch_metric("after", float(i), 9, i)


# -- at the call --------------------------------------------------------------------------------
LOG_JOB_CASES = [
    ("detail-nested-dict", {"detail": {"a": {"b": 1}}}, TypeError, "detail"),
    ("unknown-column", {"satus": "completed"}, TypeError, "satus"),
    ("status-none", {"status": None}, TypeError, "status"),
    ("status-empty", {"status": ""}, ValueError, "status"),
    ("status-dict", {"status": {"s": 1}}, TypeError, "status"),
    ("exit-code-float", {"exit_code": 1.5}, TypeError, "exit_code"),
    ("exit-code-str", {"exit_code": "0"}, TypeError, "exit_code"),
    ("exit-code-2**70", {"exit_code": 2**70}, ValueError, "exit_code"),
    ("job-id-bool", {"job_id": True}, TypeError, "job_id"),
    ("job-id-list", {"job_id": [1]}, TypeError, "job_id"),
    ("array-task-id-float", {"array_task_id": 1.5}, TypeError, "array_task_id"),
    ("array-task-id-text", {"array_task_id": "x"}, ValueError, "array_task_id"),
    ("start-time-str", {"start_time": "now"}, TypeError, "start_time"),
    ("end-time-nan", {"end_time": NAN}, ValueError, "end_time"),
    ("end-time-milliseconds-of-year-9999", {"end_time": 2.5e14}, ValueError, "end_time"),
    ("node-int", {"node": 3}, TypeError, "node"),
    ("node-surrogate", {"node": "n\udc801"}, ValueError, "node"),
    ("config-list", {"config": [1, 2]}, TypeError, "config"),
    ("config-object", {"config": {"a": object()}}, TypeError, "config"),
    ("config-nan", {"config": {"lr": NAN}}, ValueError, "config"),
    ("config-tuple-key", {"config": {(1, 2): 3}}, TypeError, "config"),
    ("requested-set", {"requested": {"gpus": {1, 2}}}, TypeError, "requested"),
    ("detail-bytes", {"detail": b"boom"}, TypeError, "detail"),
]


@pytest.mark.parametrize(("fields", "error", "word"), [c[1:] for c in LOG_JOB_CASES], ids=[c[0] for c in LOG_JOB_CASES])
def test_log_job_refuses_a_bad_value_at_the_call(
    store: MetricsStore, fields: dict[str, Any], error: type[Exception], word: str
) -> None:
    with pytest.raises(error) as info:
        ah.log_job(**fields)
    message = str(info.value)
    assert word in message and "\n" not in message and len(message) < 300, message
    # Nothing reached the store; it goes on.
    ah.log_job(status="completed", exit_code=0, config={"lr": 0.1, "layers": [1, 2]}, detail="ok", array_task_id=3)
    _log_after()
    assert store.flush()
    assert read(store.path, "SELECT status, exit_code, config, detail, array_task_id FROM jobs") == [
        ("completed", 0, '{"lr": 0.1, "layers": [1, 2]}', "ok", 3)
    ]
    assert read(store.path, "SELECT count(*) FROM training_metrics WHERE metric_name = 'after'") == [(100,)]
    assert _bad_stats(store) == 0


def test_log_job_accepts_every_documented_form(store: MetricsStore) -> None:
    ah.log_job(job_id=123, array_job_id="122", array_task_id="4", node="n1", start_time=1_700_000_000,
               status="running", config='{"a": 1}', requested={"mem_gb": 4.0, "gpus": None})  # fmt: skip
    ah.log_job(status="failed", exit_code=-9, end_time=1_700_000_060.5, detail=None, config=None)
    assert store.flush()
    assert read(store.path, "SELECT job_id, array_job_id, array_task_id, node, start_time, end_time, status,"
                " exit_code, config, requested, detail FROM jobs") == [
        ("123", "122", 4, "n1", 1_700_000_000.0, 1_700_000_060.5, "failed", -9, None,
         '{"mem_gb": 4.0, "gpus": null}', None)
    ]  # fmt: skip


SAMPLE_CASES = [
    ("timestamp-nan", [("cpu", "x", 1.0, "%", "")], NAN, ValueError, "timestamp"),
    ("timestamp-str", [("cpu", "x", 1.0, "%", "")], "now", TypeError, "timestamp"),
    ("type-none", [(None, "x", 1.0, "%", "")], None, TypeError, "metric_type"),
    ("name-dict", [("cpu", {"a": 1}, 1.0, "%", "")], None, TypeError, "metric_name"),
    ("unit-int", [("cpu", "x", 1.0, 5, "")], None, TypeError, "unit"),
    ("device-list", [("gpu", "x", 1.0, "%", [0])], None, TypeError, "device"),
    ("value-str", [("cpu", "x", "1.0", "%", "")], None, TypeError, "cpu/x"),
]


@pytest.mark.parametrize(
    ("samples", "ts", "error", "word"), [c[1:] for c in SAMPLE_CASES], ids=[c[0] for c in SAMPLE_CASES]
)
def test_log_resource_samples_refuses_a_bad_value_at_the_call(
    store: MetricsStore, samples: list[Any], ts: Any, error: type[Exception], word: str
) -> None:
    with pytest.raises(error, match=word):
        log_resource_samples(samples, ts)


# -- at the writer: from another process, over the node socket ----------------------------------
CHILD = """
import marshal, sys, time
from multiprocessing.connection import Client
from aetherium_hpc.store.records import JOB, TRAINING

conn = Client(sys.argv[1], family="AF_UNIX", authkey=bytes.fromhex(sys.argv[2]))
# What log_job now refuses at the call; an older client, or any program speaking the protocol, can send it.
conn.send_bytes(marshal.dumps([(JOB, time.time(), {"detail": {"a": {"b": 1}}})]))
conn.send_bytes(marshal.dumps([(TRAINING, time.time(), "child", float(i), 7, i, "train") for i in range(100)]))
conn.close()
"""


def test_a_poison_job_record_from_another_process_is_counted_and_the_rest_is_stored(
    store: MetricsStore, caplog: pytest.LogCaptureFixture
) -> None:
    address = store.address
    assert address is not None, "this test needs the node socket"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, address.path, address.key.hex()],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _log_after()  # and from this process, after it
    assert store.flush(), "flush() must return True: the poison record is refused, not retried"
    assert read(store.path, "SELECT count(*) FROM training_metrics WHERE metric_name = 'child'") == [(100,)]
    assert read(store.path, "SELECT count(*) FROM training_metrics WHERE metric_name = 'after'") == [(100,)]
    assert _bad_stats(store) == 1
    stats = store.get_summary_stats()
    assert stats["bad_records"] == 1 and stats["dropped"] == 0
    assert store.writer.stats.write_errors == 0 and not store.writer._retry
    messages = _writer_messages(caplog)
    bad = [m for m in messages if "bad record" in m]
    assert len(bad) == 1 and "job" in bad[0] and "detail" in bad[0] and "not retried" in bad[0], messages
    assert not [m for m in messages if "disk" in m.lower()], messages
    # The store is still alive for everyone: one more round from this process.
    _log_after()
    assert store.flush()
    assert read(store.path, "SELECT count(*) FROM training_metrics WHERE metric_name = 'after'") == [(200,)]
    assert integrity(store.path) == "ok"


# -- at the writer: injected into the queue, in the middle of a batch ---------------------------
T = 1_700_000_000.0
POISON_CASES = [
    ("job-detail-dict", (JOB, T, {"detail": {"a": {"b": 1}}}), "detail"),
    ("job-status-none", (JOB, T, {"status": None}), "status"),
    ("job-unknown-column", (JOB, T, {"bogus": 1}), "bogus"),
    ("job-config-nan", (JOB, T, {"config": {"lr": NAN}}), "config"),
    ("job-fields-not-a-dict", (JOB, T, [("status", "x")]), "dict"),
    ("training-value-dict", (TRAINING, T, "x", {"a": 1}, 1, 1, "train"), "metric_value"),
    ("training-name-none", (TRAINING, T, None, 1.0, 1, 1, "train"), "metric_name"),
    ("training-name-surrogate", (TRAINING, T, "bad\udc80", 1.0, 1, 1, "train"), "surrogates"),
    ("training-short", (TRAINING, T, "x", 1.0), "fields"),
    ("generation-round-2**70", (GENERATION, T, "op", 2**70, 0, 1.0, 1, None, 1), "round_number"),
    ("resource-time-nan", (RESOURCE, NAN, "cpu", "x", 1.0, "%", ""), "timestamp"),
    ("resource-value-str", (RESOURCE, T, "cpu", "x", "lots", "%", ""), "float"),
    ("resource-name-surrogate", (RESOURCE, T, "cpu", "bad\udc80", 1.0, "%", ""), "surrogates"),
    ("stats-nan", (STATS, T, {"c": NAN}), "finite"),
    ("stats-key-surrogate", (STATS, T, {"c\udc80": 1.0}), "surrogates"),
    ("unknown-kind", (99, T), "kind"),
    ("not-a-tuple", 12345, "not a tuple"),
]


@pytest.mark.parametrize(("poison", "word"), [c[1:] for c in POISON_CASES], ids=[c[0] for c in POISON_CASES])
def test_a_poison_record_in_a_batch_is_refused_alone(
    store: MetricsStore, caplog: pytest.LogCaptureFixture, poison: Any, word: str
) -> None:
    ah.log_resource_metric("custom", "probe", -1.0, timestamp=T - 1)  # the series and its open chunk exist
    assert store.flush()

    def good(lo: int, hi: int) -> list[Any]:
        return [(TRAINING, T + i, "good", float(i), 1, i, "train") for i in range(lo, hi)] + [
            (RESOURCE, T + i, "custom", "probe", float(i), "", "") for i in range(lo, hi)
        ]

    # One put: the poison sits in the middle of one writer batch.
    store.queue.put_many([*good(0, 50), poison, *good(50, 100)])
    _log_after()
    assert store.flush(), "flush() must return True: the poison record is refused, not retried"
    assert read(store.path, "SELECT count(*), count(DISTINCT epoch_number) FROM training_metrics"
                " WHERE metric_name = 'good'") == [(100, 100)]  # fmt: skip
    assert read(store.path, "SELECT count(*) FROM training_metrics WHERE metric_name = 'after'") == [(100,)]
    # The probe series goes on in the chunk it had: a refused record costs no extra chunk row.
    assert read(store.path, "SELECT count(*), sum(n) FROM sample_chunks JOIN series USING (series_id)"
                " WHERE metric_name = 'probe'") == [(1, 101)]  # fmt: skip
    assert _bad_stats(store) == 1
    assert store.writer.stats.bad_records == 1
    assert store.writer.stats.write_errors == 0 and not store.writer._retry
    messages = _writer_messages(caplog)
    bad = [m for m in messages if "bad record" in m]
    assert len(bad) == 1 and word in bad[0] and "not retried" in bad[0], messages
    assert not [m for m in messages if "disk" in m.lower()], messages
    # Nothing of it is left behind: another batch goes through untouched.
    _log_after()
    assert store.flush()
    assert _bad_stats(store) == 1
    assert integrity(store.path) == "ok"


def test_many_poison_records_are_logged_once_per_cause(store: MetricsStore, caplog: pytest.LogCaptureFixture) -> None:
    poison = [(JOB, T, {"detail": {"n": i}}) for i in range(500)] + [
        (TRAINING, T, f"m{i}", [i], 1, i, "train") for i in range(500)
    ]
    store.queue.put_many(poison)
    _log_after()
    assert store.flush()
    assert _bad_stats(store) == 1000
    assert read(store.path, "SELECT count(*) FROM training_metrics") == [(100,)]
    bad = [m for m in _writer_messages(caplog) if "bad record" in m]
    assert len(bad) == 2, bad  # one per cause: the job's detail, the training value


# -- what can pass on a later try is still retried ----------------------------------------------
def test_a_locked_database_is_retried_and_the_message_names_the_lock(
    store: MetricsStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.writer._conn is not None
    store.writer._conn.execute("PRAGMA busy_timeout = 50")  # the writer idles: no batch is in flight
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        _log_after()
        deadline = time.monotonic() + 60
        while store.writer.stats.write_errors < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.writer.stats.write_errors >= 2, "the writer retries while the lock is held"
        assert read(store.path, "SELECT count(*) FROM training_rows") == [(0,)]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.flush(), "the kept records are written once the lock is released"
    assert read(store.path, "SELECT count(*), count(DISTINCT epoch_number) FROM training_metrics") == [(100, 100)]
    assert _bad_stats(store) == 0
    errors = [m for m in _writer_messages(caplog) if "failed" in m]
    assert len(errors) == 1, errors  # once per cause, however many retries
    assert "locked" in errors[0] and "write lock" in errors[0] and "retried" in errors[0], errors
    assert "disk" not in errors[0].lower(), errors


def _real_error(tmp_path: Path, what: str) -> BaseException:
    db = tmp_path / "probe.db"
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS t (x TEXT NOT NULL)")
    try:
        if what == "readonly":
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            conn.execute("INSERT INTO t VALUES ('a')")
        elif what == "locked":
            setup.execute("BEGIN EXCLUSIVE")
            conn = sqlite3.connect(db, timeout=0, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
        elif what == "not null":
            setup.execute("INSERT INTO t VALUES (NULL)")
        elif what == "unbindable":
            setup.execute("INSERT INTO t VALUES (?)", ({"a": 1},))
        elif what == "no such table":
            setup.execute("INSERT INTO nowhere VALUES (1)")
    except Exception as exc:
        return exc
    finally:
        if setup.in_transaction:
            setup.execute("ROLLBACK")
        setup.close()
    raise AssertionError(f"{what}: no error")


@pytest.mark.parametrize(
    ("what", "cause"),
    [("readonly", "readonly"), ("locked", "locked"), ("not null", None), ("unbindable", None), ("no such table", None)],
)
def test_only_what_can_pass_later_is_retried(tmp_path: Path, what: str, cause: str | None) -> None:
    assert retry_cause(_real_error(tmp_path, what)) == cause


@pytest.mark.parametrize(
    ("text", "cause"),
    [("database or disk is full", "full"), ("disk I/O error", "io"), ("database is locked", "locked"),
     ("attempt to write a readonly database", "readonly"), ("unable to open database file", "cantopen"),
     ("no such table: x", None)],
)  # fmt: skip
def test_the_cause_is_read_from_the_message_without_an_error_code(text: str, cause: str | None) -> None:
    # Python 3.10 has no sqlite_errorcode: the message decides.
    exc = sqlite3.OperationalError(text)
    assert getattr(exc, "sqlite_errorcode", None) is None
    assert retry_cause(exc) == cause
    assert retry_cause(MemoryError()) == "memory"
    assert retry_cause(sqlite3.IntegrityError("NOT NULL constraint failed: t.x")) is None
