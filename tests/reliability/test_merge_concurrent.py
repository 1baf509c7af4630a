"""Two `aetherium-hpc merge … -o same.db` at once give the result of one.

Each round starts two real merge processes into one fresh output at the same moment; both must
exit 0 and the output must hold exactly what a single merge of the same inputs holds: the same
sources (no identity twice), the same row counts per table. A merge that cannot get the output's
lock within its bound says so in one line and exits 2, leaving the output as it was. The lock
file is removed by the merge that holds it last: none is left after a merge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rel_helpers import ROOT, integrity, read

import aetherium_hpc as ah
from aetherium_hpc.store import SourceInfo

ROUNDS = 10
TASKS = 6
SAMPLES = 600  # per series: enough rows that a merge takes a while and two overlap
TABLES = ("sources", "series", "sample_chunks", "generation_rows", "training_rows", "jobs", "store_stats")
IDENTITY = "job_id, array_job_id, array_task_id, node, hostname, attempt"


def _write_task(path: Path, task: int, t0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = SourceInfo(job_id=f"900_{task}", array_job_id="900", array_task_id=task, node=f"n{task % 2}",
                     hostname=f"n{task % 2}")  # fmt: skip
    ah.init_db(path, source=src, listen=False)
    for k in range(SAMPLES):
        ah.log_resource_samples(
            [("cpu", f"core{c}", float(k + c), "%", "") for c in range(8)]
            + [("ram", "process_tree_rss", 1.0 * k, "MB", "")],
            timestamp=t0 + k,
        )
    for e in range(200):
        ah.log_training_epoch_metric("loss", 1.0 / (e + 1), round_number=0, epoch_number=e)
    for c in range(100):
        ah.log_data_generation_complete(
            t0 + c, operation="inject", samples_generated=10, round_number=0, chunk_number=c
        )
    ah.log_job(status="completed", exit_code=0, start_time=t0, end_time=t0 + SAMPLES)
    ah.shutdown_db()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("concurrent") / "run"
    t0 = time.time() - 3600
    for task in range(TASKS):
        _write_task(run / "db" / f"900_{task}" / f"n{task % 2}.db", task, t0)
    return run


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_METRICS"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _merge_argv(run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "aetherium_hpc", "merge", str(run), "-o", str(out), "--no-progress"]


def _counts(db: Path) -> dict[str, int]:
    return {t: int(read(db, f"SELECT count(*) FROM {t}")[0][0]) for t in TABLES}


def _duplicate_sources(db: Path) -> list[tuple[object, ...]]:
    return read(db, f"SELECT {IDENTITY}, count(*) FROM sources GROUP BY {IDENTITY} HAVING count(*) > 1")


def test_two_merges_at_once_give_the_result_of_one(run_dir: Path, tmp_path: Path) -> None:
    single = tmp_path / "single.db"
    one = subprocess.run(_merge_argv(run_dir, single), env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    expected = _counts(single)
    assert expected["sources"] == TASKS
    for r in range(ROUNDS):
        out = tmp_path / f"round{r}" / "merged.db"
        out.parent.mkdir()
        procs = [
            subprocess.Popen(
                _merge_argv(run_dir, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )  # fmt: skip
            for _ in range(2)
        ]
        results = []
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
            results.append((p.returncode, stdout, stderr))
        for code, stdout, stderr in results:
            assert code == 0, f"round {r}: exit {code}\n{stdout}\n{stderr}"
        added = sorted(int(stdout.split(": ")[1].split(" sources added")[0]) for _, stdout, _ in results)
        assert added == [0, TASKS], f"round {r}: {[s for _, s, _ in results]}"
        assert _counts(out) == expected, f"round {r}"
        assert _duplicate_sources(out) == [], f"round {r}"
        assert integrity(out) == "ok"
        assert sorted(p.name for p in out.parent.iterdir()) == ["merged.db"], f"round {r}"  # no lock file left


def test_a_merge_that_cannot_get_the_lock_says_so_and_exits_2(run_dir: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "held.db"
    first = subprocess.run(_merge_argv(run_dir, out), env=_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    before = _counts(out)
    lock_path = Path(str(out) + ".lock")
    with open(lock_path, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another merge holds the output
        proc = subprocess.run(
            [*_merge_argv(run_dir, out), "--wait", "1"], env=_env(), capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("aetherium-hpc: error:") and str(out) in lines[-1], proc.stderr
    assert "another merge" in lines[-1]
    assert _counts(out) == before
    assert lock_path.exists()  # a merge that never held the lock leaves its holder's file alone


def test_merges_that_wait_for_the_lock_then_find_everything_merged(run_dir: Path, tmp_path: Path) -> None:
    """Deterministic overlap: the lock is held while two merges start; both say they wait, then
    both finish once it is released, and the output is that of one merge."""
    import fcntl

    single = tmp_path / "single.db"
    assert subprocess.run(_merge_argv(run_dir, single), env=_env(), capture_output=True, timeout=120).returncode == 0
    out = tmp_path / "waited.db"
    with open(str(out) + ".lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                _merge_argv(run_dir, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )  # fmt: skip
            for _ in range(2)
        ]
        guards = [threading.Timer(120, p.kill) for p in procs]  # bounds the blocking reads below
        for g in guards:
            g.start()
        try:
            for p in procs:  # each says it waits
                assert p.stderr is not None
                line = p.stderr.readline()
                assert "waiting for another merge" in line, line
        except BaseException:
            for p in procs:
                p.kill()
            raise
        finally:
            for g in guards:
                g.cancel()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert _counts(out) == _counts(single)
    assert _duplicate_sources(out) == []
    assert not Path(str(out) + ".lock").exists()  # the last merge to hold it removed it
