"""One database file, one writer -- and pipeline code's own init_db joins the job's store.

- Two unrelated processes opening the same file at the same moment: one writes, the other is
  refused at init_db with the holder's pid and host (before, one writer's rows were lost with
  advice to free disk space, and exit code 0).
- `init_db(path)` + `log_system_resources(out)` in a command run by `aetherium-hpc run`: the
  rows go to the job's node store (with its job id), one line names both paths, no second
  database and no second monitor; `get_db()` reads in that process.
- `get_db()` in a worker process returns a handle whose reads see what the worker logged.
- Outside any runtime, init_db takes its provenance from the Slurm environment.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import testenv
from rel_helpers import child_env, read

import aetherium_hpc as ah
from aetherium_hpc.errors import StoreError

CHILD = testenv.SUPPORT / "one_writer_child.py"


@pytest.mark.parametrize("round_no", range(5))
def test_two_processes_opening_one_file_at_once_never_lose_rows(tmp_path: Path, round_no: int) -> None:
    db, go = tmp_path / "metrics.db", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, str(CHILD), "race", str(go), str(db), "300"], env=child_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    go.touch()
    results = [(p.wait(120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3], results
    (winner,) = [p.pid for p, (code, _, _) in zip(procs, results, strict=True) if code == 0]
    (refusal,) = [out for code, out, _ in results if code == 3]
    assert f"pid {winner} on {socket.gethostname()}" in refusal and "one writer" in refusal
    assert "disk" not in refusal
    assert read(db, "SELECT round_number, count(*) FROM training_rows GROUP BY 1") == [(winner, 300)]
    assert not Path(f"{db}-writer").exists()  # the lock file goes with its writer


def test_a_second_init_db_in_this_process_while_another_process_writes_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, aetherium_hpc as a; a.init_db(sys.argv[1]); print('ok', flush=True); "
         "time.sleep(60)", str(db)],
        env=child_env(tmp_path), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError, match=rf"being written by pid {holder.pid} on "):
            ah.init_db(db)
    finally:
        holder.kill()
        holder.wait(30)
    store = ah.init_db(db)  # the lock died with its process: the next writer gets it
    assert isinstance(store, ah.MetricsStore)


def test_pipeline_init_db_under_aetherium_run_joins_the_node_store(tmp_path: Path) -> None:
    out, summary_dir, work = tmp_path / "dbs", tmp_path / "summary", tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", str(out), "--",
         sys.executable, str(CHILD), "pipeline", str(summary_dir), "40"],
        cwd=work, env=child_env(tmp_path, SLURM_JOB_ID="4242"), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "training_metrics_count=40" in proc.stdout  # get_db() read it, in the command's process
    assert not (work / "metrics.db").exists()  # no second, separate database
    joined = [ln for ln in proc.stderr.splitlines() if "init_db(" in ln]
    assert len(joined) == 1 and "metrics.db" in joined[0] and "node store is" in joined[0], proc.stderr
    assert any("not starting a second one" in ln for ln in proc.stderr.splitlines()), proc.stderr
    (db,) = out.glob("*.db")
    assert read(db, "SELECT count(*) FROM training_rows") == [(40,)]
    assert read(db, "SELECT job_id, status FROM jobs") == [("4242", "completed")]
    assert read(db, "SELECT job_id FROM sources") == [("4242",)]
    # One monitor: one series per metric (a second monitor would double the per-sample cost
    # rows of the self-telemetry).
    assert read(db, "SELECT count(*) FROM series WHERE metric_type = 'monitor' AND metric_name = 'sample_cpu_ms'") == [
        (1,)
    ]


def _worker_reads(n: int) -> int:
    for i in range(n):
        ah.log_training_epoch_metric("worker", float(i), 9, i, "train")
    db = ah.get_db()
    assert db is not None, "get_db() in a worker process"
    return int(db.get_summary_stats()["training_metrics_count"])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_get_db_reads_in_a_worker_process(tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", testenv.PYTHONPATH)
    ah.init_db(tmp_path / "w.db", socket_dir=str(tmp_path), flush_interval=60.0)
    with mp.get_context(method).Pool(1) as pool:
        assert pool.apply(_worker_reads, (25,)) >= 25  # its own rows, committed for the read


def test_init_db_outside_the_runtime_takes_provenance_from_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"SLURM_JOB_ID": "1207", "SLURM_ARRAY_JOB_ID": "1200", "SLURM_ARRAY_TASK_ID": "7",
                        "SLURMD_NODENAME": "n2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    db = tmp_path / "lib.db"
    ah.init_db(db)
    ah.log_training_epoch_metric("loss", 0.1, 0, 0)
    ah.shutdown_db()
    assert read(db, "SELECT job_id, array_job_id, array_task_id, node FROM sources") == [("1207", "1200", 7, "n2")]
