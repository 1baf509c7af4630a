"""Worker pools and shutdown orders real pipelines use: nothing hangs, nothing logged is lost.

- ``with Pool(...)`` (terminate) many times over, for fork, spawn and forkserver: no hang, every
  row stored (``slow``: 500 teardowns each; run it with the cores busy, see docs/RELIABILITY.md).
- SIGTERM that CPython's main thread cannot act on (it sits in a lock): the process still flushes
  and dies of SIGTERM.
- SIGTERM while the exit flush runs off the main thread: the process dies of SIGTERM.
- ``shutdown_db()`` while joblib's loky workers, a ``ProcessPoolExecutor`` or a ``Pool`` are still
  alive: what they logged before the call is in the database when it returns.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pool_teardown
import pytest
import rel_workloads
import testenv
from rel_helpers import child_env, integrity, read

import aetherium_hpc as ah

TEARDOWNS = [pytest.param(25, id="25"), pytest.param(500, id="500", marks=pytest.mark.slow)]
CHILD_LIMIT_S = 120


@pytest.mark.parametrize("n", TEARDOWNS)
# forkserver workers always get worker_initializer (the forkserver keeps the environment it
# started with); fork and spawn both without it (the environment) and with it.
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver", "fork+initializer", "spawn+initializer"])
def test_with_pool_teardowns_never_hang_and_lose_nothing(tmp_path: Path, method: str, n: int) -> None:
    db = tmp_path / "pool.db"
    script = testenv.SUPPORT / "pool_teardown.py"
    start_method, _, init = method.partition("+")
    proc = subprocess.run(
        [sys.executable, str(script), start_method, str(n), str(db), *(["--initializer"] if init else [])],
        env=child_env(tmp_path), capture_output=True, text=True, timeout=n * pool_teardown.ROUND_LIMIT_S,
    )  # fmt: skip
    # A hung teardown ends the child through faulthandler, with every thread's stack on stderr.
    assert proc.returncode == 0, f"exit {proc.returncode}; stack dump:\n{proc.stderr[-6000:]}"
    expected = n * pool_teardown.TASKS * pool_teardown.ROWS_PER_TASK
    assert f"teardowns={n} rows_expected={expected}" in proc.stdout
    assert integrity(db) == "ok"
    assert read(db, "SELECT count(*), count(DISTINCT round_number * 100000 + epoch_number) FROM training_rows") == [
        (expected, expected)
    ]


@pytest.mark.parametrize(
    ("mode", "rows"),
    [
        # The Pool-worker race made certain: SIGTERM's C handler runs in another thread while the
        # main thread sits in a lock nobody releases (before: a hang).
        pytest.param("stuck-in-lock", 500, id="main-thread-stuck-in-a-lock"),
        # SIGTERM while the exit flush (shutdown_db) runs off the main thread (before: exit 0).
        pytest.param("exit-flush-off-main", 300, id="exit-flush-off-the-main-thread"),
    ],
)
def test_sigterm_flushes_and_the_process_dies_of_sigterm(tmp_path: Path, mode: str, rows: int) -> None:
    db = tmp_path / f"{mode}.db"
    store = ah.init_db(str(db), socket_dir=str(tmp_path))
    assert isinstance(store, ah.MetricsStore) and store.address is not None
    child = subprocess.Popen(
        [sys.executable, str(testenv.SUPPORT / "sigterm_children.py"), mode, str(rows)],
        env={**child_env(tmp_path), **store.address.to_environ()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.poll() is not None else ""
    child.send_signal(signal.SIGTERM)
    try:
        code = child.wait(CHILD_LIMIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"the child did not end within {CHILD_LIMIT_S} s of SIGTERM: it swallowed or missed it")
    assert code == -signal.SIGTERM, f"exit status {code}, not SIGTERM's; stderr: {child.stderr.read()[-3000:]}"
    ah.shutdown_db()
    assert read(db, "SELECT count(*) FROM training_rows WHERE metric_name = 'sigterm'") == [(rows,)]


# -- shutdown_db() while the workers are still alive --------------------------------------------
TASKS, ROWS = 20, 50


def _executor(kind: str) -> cf.Executor | None:
    if kind == "loky":
        return None  # joblib's Parallel makes its own executor, which outlives the call
    method = kind.split("-")[1]
    if method == "forkserver":  # the forkserver keeps the environment it started with
        return cf.ProcessPoolExecutor(
            2, mp_context=mp.get_context(method), initializer=ah.worker_initializer, initargs=ah.worker_args()
        )
    return cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method))


@pytest.mark.parametrize("kind", ["loky", "executor-spawn", "executor-forkserver", "executor-fork"])
def test_shutdown_db_collects_what_live_workers_still_hold(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "live.db"
    ah.init_db(str(db), socket_dir=str(tmp_path), flush_interval=30.0)
    os.environ["PYTHONPATH"] = os.pathsep.join([testenv.PYTHONPATH, os.environ.get("PYTHONPATH", "")])
    pool = _executor(kind)
    try:
        if kind == "loky":
            from joblib import Parallel, delayed

            done = Parallel(n_jobs=2, backend="loky")(delayed(rel_workloads.log_range)((p, ROWS)) for p in range(TASKS))
        else:
            assert pool is not None
            done = list(pool.map(rel_workloads.log_range, [(p, ROWS) for p in range(TASKS)], timeout=CHILD_LIMIT_S))
        assert done == [ROWS] * TASKS
        ah.shutdown_db()  # the workers are alive and may hold the last rows in their buffers
        assert integrity(db) == "ok"
        assert read(db, "SELECT count(*), count(DISTINCT round_number * 1000 + epoch_number) FROM training_rows") == [
            (TASKS * ROWS, TASKS * ROWS)
        ]
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        else:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor(max_workers=2).shutdown(wait=True, kill_workers=True)


def test_shutdown_db_collects_from_a_pool_kept_open(tmp_path: Path) -> None:
    db = tmp_path / "open-pool.db"
    ah.init_db(str(db), socket_dir=str(tmp_path), flush_interval=30.0)
    pool = mp.get_context("fork").Pool(2)
    try:
        assert pool.map(rel_workloads.log_range, [(p, ROWS) for p in range(TASKS)]) == [ROWS] * TASKS
        ah.shutdown_db()
        assert read(db, "SELECT count(*) FROM training_rows") == [(TASKS * ROWS,)]
    finally:
        pool.terminate()
        pool.join()
