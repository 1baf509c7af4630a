"""Copy-back to the run directory (store/backup.py, runtime/session.py): incremental copies
equal the node database, a hard kill leaves the data up to the last checkpoint, a kill in the
middle of an incremental copy leaves a consistent copy, and a copy that fails at the end is one
line naming the kept node-local database, with no ``.tmp`` and the workload's exit status kept.

Real SQLite files, real processes and signals. Every wait is bounded; every child process ends
by itself after a limit, so that no test can hang.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testenv
from launch_helpers import aetherium_cli
from rel_helpers import chunk_stats, cli, integrity, read, same_stats

import aetherium_hpc as ah
from aetherium_hpc.config import Monitoring
from aetherium_hpc.errors import StoreError
from aetherium_hpc.identity import JobIdentity
from aetherium_hpc.paths import RunLayout
from aetherium_hpc.runtime import run_task
from aetherium_hpc.store import backup
from aetherium_hpc.store.backup import CopyBack, copy_database, has_hot_journal, readable_copy, recover
from aetherium_hpc.store.client import log_resource_samples

CHILD = testenv.SUPPORT / "copyback_child.py"
T0 = 1_790_000_000.0


def _env(local: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_"))}
    env["PYTHONPATH"] = testenv.PYTHONPATH
    env["AETHERIUM_LOCAL_DIR"] = str(local)
    return env


def _start(mode: str, args: dict[str, Any], local: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, json.dumps(args)], env=_env(local), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _kill(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)


def _wait_until(
    what: str, check: Any, timeout: float = 120.0, proc: subprocess.Popen[str] | None = None, poll: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"child ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(poll)


def _views(path: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """The four contract views, in a stable order (resource rows sorted by series and time)."""
    return {
        "resource_metrics": read(
            path,
            "SELECT metric_type, metric_name, device, unit, node, timestamp, value, job_id FROM resource_metrics"
            " ORDER BY metric_type, metric_name, device, timestamp",
        ),
        "generation_metrics": read(path, "SELECT * FROM generation_metrics ORDER BY timestamp, chunk_number"),
        "training_metrics": read(path, "SELECT * FROM training_metrics ORDER BY timestamp, epoch_number"),
        "jobs": read(path, "SELECT * FROM jobs ORDER BY source_id"),
    }


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def assert_same_content(node: Path | str, copy: Path | str) -> None:
    """Every view answers alike; resource timestamps to 1 µs (a copied chunk tail gets its own t0:
    float rounding of that sum, the stored resolution is 1 ms), everything else exactly."""
    a, b = _views(node), _views(copy)
    for name in ("generation_metrics", "training_metrics", "jobs"):
        assert a[name] == b[name], name
    ra, rb = a["resource_metrics"], b["resource_metrics"]
    assert len(ra) == len(rb), (len(ra), len(rb))
    for x, y in zip(ra, rb, strict=True):
        assert x[:5] == y[:5] and x[7] == y[7], (x, y)
        assert abs(x[5] - y[5]) < 1e-6, (x, y)
        assert _same_value(x[6], y[6]), (x, y)


# -- content --------------------------------------------------------------------------------------
SPECS = [("cpu", "system_total", "%", ""), ("ram", "system_used", "MB", ""), ("gpu", "power", "W", "GPU-0")]


def test_incremental_copies_equal_the_node_database(tmp_path: Path) -> None:
    """200 checkpoints of irregular amounts (none, a few samples, several full chunks; samples out of
    order, NaN, ±inf, series that start late), each compared with the node database."""
    node, dest = tmp_path / "node" / "metrics.db", tmp_path / "run" / "db" / "1_0" / "n1.db"
    node.parent.mkdir()
    store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, socket_dir=str(tmp_path))
    try:
        ah.log_job(job_id="1", node="n1", status="running", start_time=T0, config={"a": 1})
        rnd = random.Random(5)
        copier = CopyBack(node, dest)
        kinds: list[str] = []
        k = 0
        for step in range(200):
            n = rnd.choice([0, 1, 7, 30, 30, 30, 179, 181, 400])
            for _ in range(n):
                specs = SPECS + ([("process", "rss_mb", "MB", "123:w")] if k > 500 else [])
                vals = [rnd.choice([rnd.uniform(0, 1e5), float("nan"), math.inf, -math.inf, 0.0]) if rnd.random() < 0.05
                        else round(rnd.uniform(0, 100), 1) for _ in specs]  # fmt: skip
                ts = T0 + k + rnd.random() * 0.005 - (0.8 if rnd.random() < 0.02 else 0)  # some out of order
                log_resource_samples(
                    [(t, m, v, u, d) for (t, m, u, d), v in zip(specs, vals, strict=True)], timestamp=ts
                )
                if k % 13 == 0:
                    ah.log_training_epoch_metric("loss", rnd.random(), 0, k, "train")
                if k % 29 == 0:
                    ah.log_data_generation_complete(ts - 1.5, "signal_injection", 10, 0, k, memory_used_mb=1.5)
                k += 1
            if step == 150:
                ah.log_job(status="completed", end_time=T0 + k, exit_code=0)
            assert store.flush()
            kinds.append(copier.copy(final=step == 199).kind)
            if step % 20 == 0 or step == 199:
                assert_same_content(node, dest)
        assert kinds[0] == "full" and set(kinds[1:]) == {"incremental"}
        assert integrity(dest) == "ok"
        conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            assert conn.execute("PRAGMA page_size").fetchone()[0] == backup.DEST_PAGE_SIZE
        finally:
            conn.close()
        assert not list(dest.parent.glob("*.tmp")) and not has_hot_journal(dest)
        assert read(dest, "SELECT value FROM store_stats WHERE name = 'records_written'") == read(
            node, "SELECT value FROM store_stats WHERE name = 'records_written'"
        )  # the final copy brings every counter up to date
    finally:
        ah.shutdown_db()
    merged = cli(["merge", str(dest), "-o", str(tmp_path / "merged.db")], tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert read(tmp_path / "merged.db", "SELECT count(*) FROM resource_metrics") == read(
        node, "SELECT count(*) FROM resource_metrics"
    )
    # The chunks' statistics: those of their text in every copy, and the same per series in all three
    # (a copy's chunks hold the samples of a node chunk in several pieces).
    at_node = chunk_stats(node)
    for copy in (dest, tmp_path / "merged.db"):
        got = chunk_stats(copy)
        assert got.keys() == at_node.keys() and all(same_stats(got[k], at_node[k]) for k in got)


def test_a_copy_changed_or_removed_behind_our_back_gets_a_full_copy(tmp_path: Path) -> None:
    node, dest = tmp_path / "metrics.db", tmp_path / "run" / "n1.db"
    store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, socket_dir=str(tmp_path))
    try:
        copier = CopyBack(node, dest)

        def more(i: int) -> str:
            for j in range(50):
                log_resource_samples([(t, m, float(j), u, d) for t, m, u, d in SPECS], timestamp=T0 + i * 50 + j)
            ah.log_training_epoch_metric("loss", 0.5, 0, i)
            assert store.flush()
            return copier.copy().kind

        assert [more(0), more(1)] == ["full", "incremental"]
        old = tmp_path / "old.db"
        shutil.copyfile(dest, old)
        assert more(2) == "incremental"
        dest.unlink()
        assert more(3) == "full"
        assert more(4) == "incremental"
        shutil.copyfile(old, dest)  # an older copy put back
        assert more(5) == "full"
        conn = sqlite3.connect(dest)  # someone else writes into the copy
        conn.execute("INSERT INTO training_rows(timestamp, metric_name) VALUES (1, 'intruder')")
        conn.commit()
        conn.close()
        assert more(6) == "full"
        dest.write_bytes(b"not a database at all" * 100)
        assert more(7) == "full"
        assert_same_content(node, dest)
    finally:
        ah.shutdown_db()


def test_a_failing_full_copy_waits_before_the_next_try_except_the_final_one(tmp_path: Path) -> None:
    """A full copy that fails (here: the run directory's parent is a file) is not tried again at
    every checkpoint -- on a full shared file system each try would fill it up again -- but the
    final copy always tries; once it can be written the copy succeeds."""
    node = tmp_path / "metrics.db"
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")
    store = ah.init_db(node, buffer_size=10**9, flush_interval=10**6, max_queue=10**9, socket_dir=str(tmp_path))
    try:
        ah.log_training_epoch_metric("loss", 0.5, 0, 0)
        assert store.flush()
        copier = CopyBack(node, blocker / "db" / "n1.db")
        with pytest.raises(OSError) as first:
            copier.copy()
        calls: list[str] = []
        real_full = copier._full

        def counted(index: bool) -> Any:
            calls.append("full")
            return real_full(index)

        copier._full = counted  # type: ignore[method-assign]
        with pytest.raises(StoreError) as deferred:
            copier.copy()
        assert calls == [] and str(deferred.value) == str(first.value), "deferred, with the same message"
        with pytest.raises(OSError):
            copier.copy(final=True)
        assert calls == ["full"], "the final copy tries anyway"
        blocker.unlink()
        assert copier.copy(final=True).kind == "full" and integrity(blocker / "db" / "n1.db") == "ok"
    finally:
        ah.shutdown_db()


# -- SIGKILL --------------------------------------------------------------------------------------
def _training(db: Path) -> list[int]:
    rows: list[tuple[Any, ...]] = read(
        db, "SELECT epoch_number FROM training_rows WHERE metric_name = 'seq' ORDER BY id"
    )
    return [int(r[0]) for r in rows]


def test_sigkill_of_a_running_job_leaves_the_data_of_the_last_checkpoint(tmp_path: Path) -> None:
    """run_task (NodeSession, monitor on, a checkpoint every 0.3 s) in a plain process, SIGKILLed
    after the copy in the run directory has grown twice while the job logs."""
    dest = tmp_path / "run" / "db" / "77_0" / "n1.db"
    marker = tmp_path / "started"
    proc = _start("job", {"dest": str(dest), "interval": 0.3, "marker": str(marker), "limit_s": 120}, tmp_path)
    try:
        _wait_until("the job starts", marker.exists, proc=proc)

        def copied() -> int:
            try:
                return len(_training(dest))
            except sqlite3.Error:  # not there yet, or being written this very moment
                return 0

        first = _wait_until("a first checkpoint with rows", copied, proc=proc)
        second = _wait_until("a later checkpoint", lambda: copied() > first and copied(), proc=proc)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    if has_hot_journal(dest):  # the kill landed inside a copy (rare): what any read-write open does
        recover(dest)
    assert integrity(dest) == "ok"
    epochs = _training(dest)
    assert len(epochs) >= second, "the copy lost rows it held before the kill"
    assert epochs == list(range(len(epochs))), "the copied rows are a gap-free prefix"
    assert read(dest, "SELECT count(*) > 0 FROM resource_metrics") == [(1,)]
    assert read(dest, "SELECT status FROM jobs") == [("running",)]
    local = Path(RunLayout.node_folder(str(tmp_path), JobIdentity(job_id="77", node="n1")).path) / "metrics.db"
    assert local.exists(), "the node-local database is not removed by a kill"
    merged = cli(["merge", str(dest), "-o", str(tmp_path / "merged.db")], tmp_path)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert read(tmp_path / "merged.db", "SELECT count(*) FROM training_metrics")[0][0] == len(epochs)


def test_a_requeued_task_continues_from_the_copy_of_a_killed_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 SIGKILLed after checkpoints; attempt 2 (same job, task, node; its node-local files
    gone, as on another node) starts from the run-directory copy: 4 KiB pages and both chunk indexes
    again on node-local disk, attempt 1's rows kept, its own rows added, the final copy complete."""
    dest = tmp_path / "run" / "db" / "77_0" / "n1.db"
    marker = tmp_path / "started"
    proc = _start("job", {"dest": str(dest), "interval": 0.3, "marker": str(marker), "limit_s": 120}, tmp_path)
    try:
        _wait_until("the job starts", marker.exists, proc=proc)
        _wait_until("a checkpoint with rows", lambda: dest.exists() and _count_or_zero(dest) >= 20, proc=proc)
    finally:
        _kill(proc)
    shutil.rmtree(
        RunLayout.node_folder(str(tmp_path), JobIdentity(job_id="77", node="n1")).path
    )  # attempt 2 runs on a node without them
    if has_hot_journal(dest):
        recover(dest)
    kept = _count_or_zero(dest)
    seen: dict[str, Any] = {}

    def workload(session: Any) -> int:
        conn = sqlite3.connect(f"file:{session.local_db}?mode=ro", uri=True)
        try:
            seen["page_size"] = conn.execute("PRAGMA page_size").fetchone()[0]
            seen["index"] = sorted(r[1] for r in conn.execute("PRAGMA index_list(sample_chunks)"))
        finally:
            conn.close()
        for i in range(100):
            ah.log_training_epoch_metric("again", float(i), 1, i)
        return 0

    monkeypatch.setenv("AETHERIUM_LOCAL_DIR", str(tmp_path))
    ctx = JobIdentity(job_id="77", node="n1", hostname="h1", attempt=1)  # SLURM_RESTART_COUNT=1
    run_task(ctx, workload, dest, Monitoring(enabled=False))
    assert seen == {"page_size": 4096, "index": ["sample_chunks_by_end", "sample_chunks_by_series"]}
    assert integrity(dest) == "ok"
    assert _count_or_zero(dest) == kept
    assert read(dest, "SELECT count(*) FROM training_rows WHERE metric_name = 'again'") == [(100,)]
    # Each attempt its own source: the killed one still says running (report and merge settle it).
    assert read(dest, "SELECT status, attempt FROM jobs JOIN sources USING (source_id) ORDER BY attempt") == [
        ("running", 0), ("completed", 1)
    ]  # fmt: skip
    assert read(dest, "SELECT DISTINCT s.attempt FROM training_rows t JOIN sources s USING (source_id)"
                      " WHERE metric_name = 'again'") == [(1,)]  # fmt: skip


def _count_or_zero(db: Path) -> int:
    try:
        return len(_training(db))
    except sqlite3.Error:
        return 0


TRIGGERS = [("journal", 0.0), ("hot", 0.0), ("hot", 0.0), ("hot", 0.01), ("hot", 0.05)]


@pytest.mark.parametrize(
    ("trigger", "delay"), TRIGGERS, ids=["at-journal", "at-hot", "at-hot-2", "hot+10ms", "hot+50ms"]
)
def test_sigkill_in_the_middle_of_an_incremental_copy_leaves_a_consistent_copy(
    tmp_path: Path, trigger: str, delay: float
) -> None:
    """A large increment (megabytes: SQLite spills pages into the file before COMMIT), SIGKILLed
    as soon as its journal appears, or once the journal is hot (pages of the file changed), or a
    little later. The copy then holds the state before or after that increment, never a mix.
    Read-only readers (merge) get SQLITE_READONLY_ROLLBACK until the hot journal is rolled back
    (recover, or any read-write open, e.g. the copier's next copy); readable_copy reads it
    without changing it; copy_database (a requeue) rolls it back first."""
    node, dest = tmp_path / "node" / "metrics.db", tmp_path / "run" / "n1.db"
    node.parent.mkdir()
    expect = tmp_path / "expect.json"
    journal = Path(f"{dest}-journal")
    done = Path(f"{expect}.done")
    args = {"node": str(node), "dest": str(dest), "expect": str(expect), "seconds": 60_000}
    proc = _start("increment", args, tmp_path)
    try:
        _wait_until("the large increment is logged", expect.exists, timeout=240, proc=proc)
        seen = journal.exists if trigger == "journal" else (lambda: has_hot_journal(dest))
        _wait_until("the copy starts", lambda: seen() or done.exists(), timeout=60, proc=proc, poll=0.0002)
        time.sleep(delay)
    finally:
        _kill(proc)
    want = json.loads(expect.read_text())
    hot = has_hot_journal(dest)
    if trigger == "hot" and delay == 0.0:
        assert hot or done.exists(), "killed right after the journal turned hot"
    if hot:
        with pytest.raises(sqlite3.OperationalError) as err:  # what `merge` (mode=ro) meets before a recovery
            read(dest, "SELECT count(*) FROM training_rows")
        assert getattr(err.value, "sqlite_errorname", "SQLITE_READONLY_ROLLBACK") == "SQLITE_READONLY_ROLLBACK"
        before = dest.read_bytes()
        (tmp_path / "readable").mkdir()
        readable = readable_copy(dest, tmp_path / "readable")
        assert dest.read_bytes() == before and has_hot_journal(dest), "readable_copy changed its input"
        assert integrity(readable) == "ok"
        assert [list(r) for r in read(readable, _COUNTS)] == [want["before"]]
        # NodeSession.start at requeue copies the run-directory copy back: on a copy of both files.
        (tmp_path / "requeue").mkdir()
        again = tmp_path / "requeue" / "n1.db"
        shutil.copyfile(dest, again)
        shutil.copyfile(journal, f"{again}-journal")
        requeued = copy_database(again, tmp_path / "requeue" / "metrics.db")
        assert integrity(requeued) == "ok" and [list(r) for r in read(requeued, _COUNTS)] == [want["before"]]
        # merge and report read it as it is: its last complete state, the file left untouched.
        hot_merged = cli(["merge", str(dest), "-o", str(tmp_path / "hot-merged.db")], tmp_path)
        assert hot_merged.returncode == 0, hot_merged.stdout + hot_merged.stderr
        assert [list(r) for r in read(tmp_path / "hot-merged.db", _COUNTS)] == [want["before"]]
        hot_report = cli(["report", str(dest)], tmp_path)
        assert hot_report.returncode == 0, hot_report.stderr
        assert dest.read_bytes() == before and has_hot_journal(dest), "merge or report changed the copy"
        assert recover(dest) and not has_hot_journal(dest)
    assert integrity(dest) == "ok"
    got = [list(r) for r in read(dest, _COUNTS)][0]
    assert got in (want["before"], want["after"]), (got, want, hot)
    if hot:
        assert got == want["before"], "a copy killed before its COMMIT holds the previous state"
    merged = cli(["merge", str(dest), "-o", str(tmp_path / "merged.db")], tmp_path)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    # The next copy (a new copier, as after a requeue) starts with a full copy and is complete.
    copier = CopyBack(node, dest)
    assert copier.copy().kind == "full" and copier.copy().kind == "incremental"
    assert_same_content(node, dest)


_COUNTS = "SELECT (SELECT sum(n) FROM sample_chunks), (SELECT count(*) FROM training_rows)"


# -- a copy that fails at the end (item 7) --------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs as the run directory's file system (needs root to mount)."""
    mnt = tmp_path / "runfs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 512 KiB tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=60)


def _finish_fail(
    tmp_path: Path, mount: Path, how: str, code: int, checkpoint: bool
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    dest = mount / "run" / "db" / "88_0" / "n1.db"
    local_dir = tmp_path / "local"
    local_dir.mkdir(exist_ok=True)
    args = {"dest": str(dest), "mount": str(mount), "how": how, "code": code, "checkpoint": checkpoint}
    proc = subprocess.run(
        [sys.executable, str(CHILD), "finish_fail", json.dumps(args)], env=_env(local_dir), capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    local = Path(RunLayout.node_folder(str(local_dir), JobIdentity(job_id="88", node="n1")).path) / "metrics.db"
    return proc, dest, local


def _check_one_line(proc: subprocess.CompletedProcess[str], local: Path, dest: Path, code: int, root: Path) -> str:
    assert proc.returncode == code, f"exit code {proc.returncode}, expected {code}:\n{proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "Traceback" not in proc.stderr
    assert line.startswith(f"aetherium-hpc: could not copy the metrics database to {dest} ("), line
    assert f"ALL metrics are kept in {local} on " in line, line
    assert str(local) in line and "python -m aetherium_hpc.store.backup" in line and str(dest) in line, line
    assert not [p for p in root.rglob("*") if p.name.endswith((".tmp", ".tmp-journal"))], "no .tmp is left"
    assert local.exists() and integrity(local) == "ok", "the node-local database is kept when the copy failed"
    assert read(local, "SELECT count(*), max(epoch_number) FROM training_rows") == [(5500, 5499)]
    assert read(local, "SELECT status, exit_code FROM jobs") == [("completed" if code == 0 else "failed", code)]
    return line


def _run_the_advice(line: str, tmp_path: Path, dest: Path, code: int) -> None:
    match = re.search(r"`(python -m aetherium_hpc\.store\.backup [^`]+)`", line)
    assert match, line
    argv = shlex.split(match.group(1))
    fixed = subprocess.run([sys.executable, *argv[1:]], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    assert integrity(dest) == "ok"
    assert read(dest, "SELECT count(*) FROM training_rows") == [(5500,)]
    assert read(dest, "SELECT status, exit_code FROM jobs") == [("completed" if code == 0 else "failed", code)]


@pytest.mark.parametrize(("how", "code"), [("full", 0), ("full", 3), ("readonly", 0)])
def test_a_failed_final_copy_is_one_line_keeps_the_local_database_and_the_exit_code(
    tmp_path: Path, small_fs: Path, how: str, code: int
) -> None:
    proc, dest, local = _finish_fail(tmp_path, small_fs, how, code, checkpoint=True)
    line = _check_one_line(proc, local, dest, code, small_fs)
    assert "that file holds the data up to" in line
    assert integrity(dest) == "ok" and read(dest, "SELECT count(*) FROM training_rows") == [(500,)], (
        "the copy of the last checkpoint is intact"
    )
    assert not has_hot_journal(dest)
    if how == "full":
        (small_fs / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True, timeout=60)
    _run_the_advice(line, tmp_path, dest, code)


def test_a_full_run_directory_before_any_copy_leaves_no_tmp_file(tmp_path: Path, small_fs: Path) -> None:
    proc, dest, local = _finish_fail(tmp_path, small_fs, "full", 0, checkpoint=False)
    line = _check_one_line(proc, local, dest, 0, small_fs)
    assert "nothing was written there" in line and not dest.exists()
    assert not list(small_fs.rglob("*.tmp"))
    (small_fs / "filler").unlink()
    _run_the_advice(line, tmp_path, dest, 0)


def test_an_unwritable_run_directory_for_a_user(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through chmod 0500; the tmpfs tests (full, read-only) cover root")
    proc, dest, local = _finish_fail(tmp_path, tmp_path / "runfs", "chmod", 0, checkpoint=True)
    try:
        line = _check_one_line(proc, local, dest, 0, tmp_path / "runfs")
    finally:
        os.chmod(dest.parent, 0o700)
    _run_the_advice(line, tmp_path, dest, 0)


# -- on the real cluster ----------------------------------------------------------------------------
def _submit_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # the job imports copyback_child
    return aetherium_cli(args, cwd, drop=("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_"), timeout=timeout)


def _squeue_empty(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and not out.stdout.strip()


@pytest.mark.slurm
@pytest.mark.parametrize("target", ["step", "batch"])
def test_scancel_signal_kill_on_slurm_leaves_the_last_checkpoint(tmp_path: Path, slurm_conf: Path, target: str) -> None:
    """`scancel --signal=KILL JOB.0` (the step that runs the workload: no handler runs) or
    `--batch` (the batch step): the run directory still holds what the checkpoints (every 1 s
    here) copied while the job ran, and `merge` reads it."""
    marker, local = tmp_path / "started", tmp_path / "local"
    local.mkdir()
    config = tmp_path / "kill.yaml"
    config.write_text(
        "name: kill-me\nworkload:\n  callable: copyback_child:log_until_killed\n"
        f"  kwargs: {{marker: {json.dumps(str(marker))}, limit_s: 200}}\n"
        "resources: {timeout_min: 5, mem_gb: 1, cpus_per_task: 1}\n"
        f"monitoring: {{interval_s: 0.2, flush_interval_s: 0.2, checkpoint_interval_s: 1, local_dir: {json.dumps(str(local))}}}\n"
    )
    proc = _submit_cli(
        ["submit", str(config), "--set", f"run_dir={tmp_path / 'runs'}", "--set", "backend=slurm"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"^run directory: (.+)$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    run = Path(match.group(1))
    job_id = json.loads((run / "jobs.json").read_text())["job_ids"][0]
    try:
        _wait_until("the job starts", marker.exists, timeout=180)

        def copied() -> int:
            found = sorted(run.glob("db/*/*.db"))
            try:
                return len(_training(found[0])) if found else 0
            except sqlite3.Error:  # being written this very moment
                return 0

        first = _wait_until("a first checkpoint with rows", copied, timeout=120)
        second = _wait_until("a later checkpoint", lambda: copied() > first and copied(), timeout=120)
        what = [f"{job_id}.0"] if target == "step" else ["--batch", job_id]
        subprocess.run(["scancel", "--signal=KILL", *what], check=True, timeout=30)
        _wait_until("the job ends", lambda: _squeue_empty(job_id), timeout=180, poll=0.5)
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)
    (db,) = sorted(run.glob("db/*/*.db"))
    if has_hot_journal(db):  # the kill landed inside a copy (rare): what any read-write open does
        recover(db)
    assert integrity(db) == "ok"
    epochs = _training(db)
    assert len(epochs) >= second and epochs == list(range(len(epochs)))
    # SIGKILL of the step: no handler runs, no final status. Killing the batch step ends the job,
    # and Slurm then stops the workload's step with SIGTERM: its handler records "cancelled".
    (status,) = (r[0] for r in read(db, "SELECT status FROM jobs"))
    assert status in ({"running"} if target == "step" else {"running", "cancelled"}), status
    assert read(db, "SELECT count(*) > 0 FROM resource_metrics") == [(1,)]
    merged = _submit_cli(["merge", str(db), "-o", str(tmp_path / "merged.db")], tmp_path)
    assert merged.returncode in (0, 3) and "skipped" not in merged.stdout + merged.stderr, merged.stdout + merged.stderr
    assert read(tmp_path / "merged.db", "SELECT count(*) FROM training_metrics")[0][0] == len(epochs)
