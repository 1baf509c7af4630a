"""16 processes through every transport: exact counts, no duplicates, nothing dropped.

Fork children inherit the socket's address in the environment; spawn Pool workers get it only
through ``worker_initializer``; unrelated subprocesses find it in the environment the runtime
sets. 16 x 5,000 always; 16 x 100,000 behind ``slow`` (AETHERIUM_SLOW=1).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rel_workloads
import testenv
from rel_helpers import integrity, read

import aetherium_hpc as ah

N_PROC = 16
SIZES = [pytest.param(5_000, id="16x5000"), pytest.param(100_000, id="16x100000", marks=pytest.mark.slow)]
JOIN_S = 240  # a hang fails the test instead of stalling the suite
UNRELATED = "import sys, rel_workloads; rel_workloads.log_range((int(sys.argv[1]), int(sys.argv[2])))"


def _check(db: Path, n_rec: int) -> None:
    ah.shutdown_db()
    assert integrity(db) == "ok"
    total = N_PROC * n_rec
    rows = read(db, "SELECT count(*), count(DISTINCT round_number * 10000000 + epoch_number), min(epoch_number),"
                    " max(epoch_number) FROM training_rows")  # fmt: skip
    assert rows == [(total, total, 0, n_rec - 1)]
    assert read(db, "SELECT round_number, count(*) FROM training_rows GROUP BY round_number") == [
        (p, n_rec) for p in range(N_PROC)
    ]
    assert read(db, "SELECT count(*) FROM store_stats WHERE name LIKE 'dropped%' AND value > 0") == [(0,)]


@pytest.mark.parametrize("n_rec", SIZES)
def test_fork_children_inherit_the_environment(tmp_path: Path, n_rec: int) -> None:
    db = tmp_path / "fork.db"
    ah.init_db(str(db), socket_dir=str(tmp_path))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=rel_workloads.log_range, args=((p, n_rec),)) for p in range(N_PROC)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(JOIN_S)
            assert p.exitcode == 0, f"fork child {p.pid}: exit code {p.exitcode} after {JOIN_S} s"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    _check(db, n_rec)


@pytest.mark.parametrize("n_rec", SIZES)
def test_spawn_pool_with_worker_initializer(tmp_path: Path, n_rec: int, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "spawn.db"
    ah.init_db(str(db), socket_dir=str(tmp_path))
    args = ah.worker_args()
    monkeypatch.delenv("AETHERIUM_METRICS_ADDR")  # only the initializer can tell the workers
    monkeypatch.delenv("AETHERIUM_METRICS_KEY")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([testenv.PYTHONPATH, os.environ.get("PYTHONPATH", "")]))
    with mp.get_context("spawn").Pool(N_PROC, initializer=ah.worker_initializer, initargs=args) as pool:
        result = pool.map_async(rel_workloads.log_range, [(p, n_rec) for p in range(N_PROC)], chunksize=1)
        assert result.get(JOIN_S) == [n_rec] * N_PROC
    _check(db, n_rec)


@pytest.mark.parametrize("n_rec", SIZES)
def test_unrelated_subprocesses_through_the_socket(tmp_path: Path, n_rec: int) -> None:
    db = tmp_path / "socket.db"
    ah.init_db(str(db), socket_dir=str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([testenv.PYTHONPATH, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", UNRELATED, str(p), str(n_rec)], env=env) for p in range(N_PROC)]
    try:
        for p in procs:
            assert p.wait(JOIN_S) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    _check(db, n_rec)
