"""Every way into the store: fork and spawn children, Pool initializer, unrelated processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import procs
import pytest
from procs import read
from testenv import ROOT

import aetherium_hpc as ah


# Not forkserver: its server process keeps the environment it started with, which may name the
# socket of an earlier store -- forkserver workers need the initializer (next test).
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_children_reach_the_store_through_the_environment(db_path: Path, method: str) -> None:
    ah.init_db(str(db_path))
    with mp.get_context(method).Pool(2) as pool:  # __exit__ terminates: buffers are flushed on SIGTERM
        assert pool.map(procs.log_range, [(p, 500) for p in range(4)]) == [500] * 4
    ah.shutdown_db()
    assert read(db_path, "SELECT count(*), count(DISTINCT round_number || ':' || epoch_number) FROM training_rows") == [
        (2000, 2000)
    ]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pool_initializer_hands_over_the_store(db_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ah.init_db(str(db_path))
    # Without the environment, only the initializer can tell the workers where the store is.
    args = ah.worker_args()
    monkeypatch.delenv("AETHERIUM_METRICS_ADDR")
    monkeypatch.delenv("AETHERIUM_METRICS_KEY")
    with mp.get_context(method).Pool(2, initializer=ah.worker_initializer, initargs=args) as pool:
        pids = set(pool.map(procs.log_all_kinds, range(6)))
    db = ah.get_db()
    assert db is not None
    assert len(db.query_generation_metrics(operation="signal_injection")) == 6
    assert len(db.query_training_metrics(phase="val")) == 6
    devices = {r["device"] for r in db.query_resource_metrics(metric_type="custom")}
    assert devices == {str(p) for p in pids}


def test_plain_process_children_flush_at_exit(db_path: Path) -> None:
    ah.init_db(str(db_path))
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=procs.log_range, args=((p, 1000),)) for p in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert ah.get_db().get_summary_stats()["training_metrics_count"] == 3000  # type: ignore[union-attr]


def test_unrelated_process_logs_through_the_socket(db_path: Path) -> None:
    db = ah.init_db(str(db_path))
    code = "import aetherium_hpc as ah\nfor i in range(100): ah.log_training_epoch_metric('ext', float(i), 7, i)\n"
    env = dict(os.environ)  # carries AETHERIUM_METRICS_ADDR / _KEY as the runtime would
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert len(db.query_training_metrics(metric_name="ext", round_number=7)) == 100


def test_socket_key_file_is_enough(db_path: Path) -> None:
    """Another srun task on the node knows only the socket path; the key file is beside it (0600)."""
    db = ah.init_db(str(db_path))
    assert db.address is not None
    key_file = db.address.path + ".key"
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert os.stat(db.address.path).st_mode & 0o777 == 0o600
    env = {k: v for k, v in os.environ.items() if k != "AETHERIUM_METRICS_KEY"}
    code = "import aetherium_hpc as ah; ah.log_resource_metric('disk', 'scratch', 3.0, 'GB')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert [r["value"] for r in db.query_resource_metrics(metric_type="disk")] == [3.0]


def test_wrong_key_is_refused_and_nothing_is_written(db_path: Path) -> None:
    db = ah.init_db(str(db_path))
    env = dict(os.environ, AETHERIUM_METRICS_KEY="00" * 32)
    code = "import aetherium_hpc as ah; ah.log_training_epoch_metric('intruder', 1.0)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0  # the pipeline goes on
    assert "not reachable" in proc.stderr
    assert db.query_training_metrics(metric_name="intruder") == []
    assert db.server is not None and db.server.refused >= 1


def test_cli_log_from_a_shell(db_path: Path) -> None:
    db = ah.init_db(str(db_path))
    base = [sys.executable, "-m", "aetherium_hpc", "log"]
    subprocess.run(
        [*base, "training", "loss", "0.25", "--round", "1", "--epoch", "3", "--phase", "val"], check=True, timeout=60
    )
    subprocess.run([*base, "resource", "disk", "scratch_used", "12.5", "--unit", "GB"], check=True, timeout=60)
    subprocess.run([*base, "generation", "download", "--duration", "2.5", "--samples", "10"], check=True, timeout=60)
    assert [(r["metric_value"], r["epoch_number"], r["phase"]) for r in db.query_training_metrics()] == [
        (0.25, 3, "val")
    ]
    assert db.query_resource_metrics(metric_type="disk")[0]["value"] == 12.5
    assert db.query_generation_metrics()[0]["duration_seconds"] == 2.5


def test_cli_log_without_a_store_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIUM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "log", "training", "loss", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "AETHERIUM_METRICS_ADDR is not set" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "log", "training", "loss", "high"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "'high' is not a number" in bad.stderr


def test_eight_processes_fifty_thousand_records_each(db_path: Path) -> None:
    """8 x 50,000 records from fork workers → exact count, no duplicates, nothing dropped."""
    ah.init_db(str(db_path))
    n_proc, n_rec = 8, 50_000
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=procs.log_range, args=((p, n_rec),)) for p in range(n_proc)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
        assert w.exitcode == 0
    ah.shutdown_db()
    rows = read(
        db_path,
        "SELECT count(*), count(DISTINCT round_number * 1000000 + epoch_number), min(epoch_number), max(epoch_number)"
        " FROM training_rows",
    )
    assert rows == [(n_proc * n_rec, n_proc * n_rec, 0, n_rec - 1)]
    per_producer = read(db_path, "SELECT round_number, count(*) FROM training_rows GROUP BY round_number")
    assert per_producer == [(p, n_rec) for p in range(n_proc)]
    assert read(db_path, "SELECT count(*) FROM store_stats WHERE name LIKE 'dropped%' AND value > 0") == [(0,)]


# -- peers that do not play along: the node socket stays bounded --------------------------------
def _stuck_peers(path: str, n: int) -> list[object]:
    import socket

    peers = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)  # and never answers the challenge
        peers.append(s)
    return peers


def test_stuck_handshakes_and_a_huge_length_prefix_neither_lose_records_nor_hold_the_close(
    db_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import socket
    import struct
    import time
    from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

    from aetherium_hpc.store import transport

    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT_S", 1.0)
    store = ah.init_db(str(db_path))
    address = store.address
    assert address is not None
    stuck = _stuck_peers(address.path, 300)  # beyond MAX_HANDSHAKING (256) closed at once, the rest after 1 s
    time.sleep(1.5)
    assert store.server is not None and store.server.refused >= 300
    # An authenticated peer announces a 2**40-byte message.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(address.path)
    huge = Connection(raw.detach())
    answer_challenge(huge, address.key)
    deliver_challenge(huge, address.key)
    os.write(huge.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 2**40))
    # A process that plays along logs meanwhile: nothing of it is lost.
    proc = subprocess.run([sys.executable, "-c", "import aetherium_hpc as ah\nfor i in range(1000): ah.log_training_epoch_metric('ok', float(i), 0, i)"],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert proc.returncode == 0
    stuck += _stuck_peers(address.path, 200)  # and more that are still in their handshake at the close
    started = time.monotonic()
    ah.shutdown_db()
    took = time.monotonic() - started
    assert read(db_path, "SELECT count(*) FROM training_rows WHERE metric_name = 'ok'") == [(1000,)]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "MemoryError" not in err, err[-3000:]
    assert any("announced a message over" in r.getMessage() for r in caplog.records)
    # Bounded by the close's own bounds (collect 5 s + settle 5 s + readers 1 s), whatever the peers do.
    assert took < transport.CLIENT_FLUSH_TIMEOUT_S + 5.0 + transport.READERS_JOIN_S + 5.0, took
    for s in stuck:
        s.close()  # type: ignore[attr-defined]
    huge.close()


def test_a_garbled_batch_is_counted_in_store_stats(db_path: Path) -> None:
    import marshal
    import socket
    import time
    from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

    from aetherium_hpc.store.records import TRAINING

    store = ah.init_db(str(db_path))
    address = store.address
    assert address is not None
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(address.path)
    peer = Connection(raw.detach())
    answer_challenge(peer, address.key)
    deliver_challenge(peer, address.key)
    peer.send_bytes(b"\x00 not marshal data")
    peer.send_bytes(marshal.dumps({"not": "a batch"}))
    peer.send_bytes(marshal.dumps([(TRAINING, time.time(), "after", 1.0, None, None, "train")]))
    assert store.flush()
    peer.close()
    ah.shutdown_db()
    assert read(db_path, "SELECT value FROM store_stats WHERE name = 'bad_batches'") == [(2,)]
    assert read(db_path, "SELECT count(*) FROM training_rows WHERE metric_name = 'after'") == [(1,)]


def test_a_closed_sink_is_not_held_by_its_exit_hooks(db_path: Path) -> None:
    """close() takes back the atexit, multiprocessing and SIGTERM hooks the sink registered."""
    import gc
    import time
    import weakref

    from aetherium_hpc.store.records import TRAINING
    from aetherium_hpc.store.transport import SocketSink

    store = ah.init_db(str(db_path))
    assert store.address is not None
    sink = SocketSink(store.address)
    sink.put((TRAINING, time.time(), "sink", 1.0, None, None, "train"))
    sink.close()
    sink._thread.join(10)
    closed = weakref.ref(sink)
    del sink
    gc.collect()
    assert closed() is None
    ah.shutdown_db()
    assert read(db_path, "SELECT count(*) FROM training_rows WHERE metric_name = 'sink'") == [(1,)]
