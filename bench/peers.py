"""Measurements of the tools people would use instead, beside the same measurement of aetherium-hpc.

* ingest of training scalars, one process: aetherium ``log_training_epoch_metric`` (until committed)
  vs tensorboardX ``SummaryWriter.add_scalar`` (until flushed and closed) vs MLflow ``log_metric`` /
  ``MlflowClient.log_batch`` into a local SQLite backend (``sqlite:///...``);
* CPU per sample of a live monitor at the same interval, beside a job-like tree of 10 processes (the
  interpreter and :data:`JOB_CHILDREN` Python children, half asleep, half lightly busy): aetherium
  (``init_db`` + ``log_system_resources``, into a real store) vs MLflow's ``SystemMetricsMonitor``
  (into a run of the SQLite backend) vs W&B offline (its system monitor over the process tree,
  counting its ``wandb-core`` and ``wandb-symon`` processes, where it samples), each in a fresh
  interpreter, CPU time over the run minus that of an idle interpreter over as long;
* submit time of a 1,000-task array on Slurm: ``launch.submit`` of a config vs submitit
  ``AutoExecutor.map_array`` of a trivial function (everything submitted is cancelled at once).

Each function returns numbers, or raises :class:`Missing` when the peer is not importable.

    python bench/peers.py live {ours,mlflow,wandb,idle} INTERVAL SECONDS [FLUSH_S]    # used by the suite
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aetherium_hpc as ah  # noqa: E402

SLURM_CONF = "/tmp/aetherium-slurm/etc/slurm.conf"
WARMUP_S = 1.5  # live runs: seconds before the CPU clock starts
JOB_CHILDREN = 9  # live runs: the job-like tree is the interpreter and this many children


class Missing(Exception):
    """A peer (or the cluster) is not available here; the message says which and why."""


def version(module: str) -> str | None:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


# -- ingest, one process ------------------------------------------------------------------------
def ours_single(n: int) -> float:
    """aetherium, main process only: rows/s until every row is committed."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ours.db")
        t0 = time.perf_counter()
        ah.init_db(path, buffer_size=1000, flush_interval=1.0)
        log = ah.log_training_epoch_metric
        for i in range(n):
            log("loss", float(i), 0, i, "train")
        ah.shutdown_db()
        elapsed = time.perf_counter() - t0
        conn = sqlite3.connect(path)
        count = conn.execute("SELECT count(*) FROM training_rows").fetchone()[0]
        conn.close()
    if count != n:
        raise RuntimeError(f"lost records: {count} != {n}")
    return n / elapsed


def tensorboardx(n: int) -> float:
    """tensorboardX SummaryWriter.add_scalar, rows/s until the event file is flushed and closed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise Missing(f"tensorboardX not importable ({exc}); pip install -e '.[bench]'") from None
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        writer = SummaryWriter(logdir=d)
        add = writer.add_scalar
        for i in range(n):
            add("train/loss", float(i), i)
        writer.close()
        return n / (time.perf_counter() - t0)


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise Missing(f"mlflow not importable ({exc}); pip install -e '.[bench]'") from None
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise Missing(f"mlflow's SQLite backend needs sqlalchemy and alembic ({exc})") from None
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def mlflow_ingest(n_metric: int, n_batch: int, db_dir: str) -> tuple[float, float]:
    """(log_metric rows/s, log_batch rows/s, 1,000 metrics a batch) into ``sqlite:///db_dir/mlflow.db``.

    The backend (schema migrations) is created before the clock starts; a run is started per side.
    """
    mlflow = _mlflow()
    from mlflow.entities import Metric

    mlflow.set_tracking_uri("sqlite:///" + os.path.join(db_dir, "mlflow.db"))
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("bench")
    exp_id = exp.experiment_id if exp is not None else client.create_experiment("bench")
    run = client.create_run(exp_id)
    t0 = time.perf_counter()
    for i in range(n_metric):
        client.log_metric(run.info.run_id, "loss", float(i), step=i)
    single = n_metric / (time.perf_counter() - t0)
    client.set_terminated(run.info.run_id)
    run = client.create_run(exp_id)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for start in range(0, n_batch, 1000):
        batch = [Metric("loss", float(i), now, i) for i in range(start, min(n_batch, start + 1000))]
        client.log_batch(run.info.run_id, metrics=batch)
    batched = n_batch / (time.perf_counter() - t0)
    client.set_terminated(run.info.run_id)
    return single, batched


# -- live monitor CPU per sample ----------------------------------------------------------------
def live_cpu(
    kind: str, interval: float, seconds: float, flush: float = 1.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run in a fresh interpreter (``python bench/peers.py live ...``): process CPU s over ``seconds``.

    ``flush``: the store's ``flush_interval`` (kind ``ours``); 5 s is what a job runs with.
    ``env``: added to the interpreter's environment.
    """
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "live", kind, str(interval), str(seconds), str(flush)],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
        env={**os.environ, **(env or {})},
    )
    if out.returncode == 3:
        raise Missing(out.stdout.strip().splitlines()[-1])
    if out.returncode != 0:
        raise RuntimeError(f"live {kind} failed: {out.stderr.strip()[-800:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _live_child(kind: str, interval: float, seconds: float, flush: float = 1.0) -> int:
    import psutil

    from bench.monitor_overhead import process_tree

    # Every kind runs beside the same job-like tree: this process and JOB_CHILDREN children.
    with tempfile.TemporaryDirectory() as d, process_tree(JOB_CHILDREN):
        samples = 0.0
        extra: dict[str, Any] = {}
        if kind == "ours":
            ah.init_db(os.path.join(d, "ours.db"), flush_interval=flush)
            monitor = ah.log_system_resources(d + "/", interval=interval)
            time.sleep(WARMUP_S)  # steady state: collectors started, first samples taken
            n0, c0 = monitor.samples_taken, time.process_time()
            time.sleep(seconds)
            cpu = time.process_time() - c0
            samples = float(monitor.samples_taken - n0)
            monitor.stop()
            ah.shutdown_db()
        elif kind == "mlflow":
            try:
                mlflow = _mlflow()
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            except (Missing, ImportError) as exc:
                print(f"mlflow system metrics monitor not importable: {exc}")
                return 3
            mlflow.set_tracking_uri("sqlite:///" + os.path.join(d, "mlflow.db"))
            client = mlflow.tracking.MlflowClient()
            run = client.create_run(client.create_experiment("bench"))
            monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval, samples_before_logging=1)
            monitor.start()
            time.sleep(WARMUP_S)
            w0, c0 = time.time(), time.process_time()
            time.sleep(seconds)
            cpu = time.process_time() - c0
            w1 = time.time()
            monitor.finish()
            conn = sqlite3.connect(os.path.join(d, "mlflow.db"))
            # one logged step per sample: the steps of one system metric logged inside the window
            row = conn.execute(
                "SELECT count(DISTINCT step) FROM metrics WHERE key = 'system/cpu_utilization_percentage'"
                " AND timestamp >= ? AND timestamp < ?",
                (int(w0 * 1000), int(w1 * 1000)),
            ).fetchone()
            conn.close()
            samples = float(row[0] or 0) or seconds / interval
        elif kind == "wandb":
            return _live_wandb(d, interval, seconds)
        else:  # idle: same interpreter, nothing running
            time.sleep(WARMUP_S)
            c0 = time.process_time()
            time.sleep(seconds)
            cpu = time.process_time() - c0
        print(json.dumps({"cpu_s": cpu, "samples": samples, "threads": psutil.Process().num_threads(), **extra}))
    return 0


WANDB_HELPERS = ("wandb-core", "wandb-symon")


def _live_wandb(folder: str, interval: float, seconds: float) -> int:
    """W&B offline, its system monitor at ``interval`` over the process tree: this process's CPU
    plus that of its ``wandb-core`` and ``wandb-symon`` processes, where W&B samples."""
    try:
        import wandb
    except ImportError as exc:
        print(f"wandb not importable ({exc}); pip install -e '.[bench]'")
        return 3
    os.environ["WANDB_SILENT"] = "true"
    settings = wandb.Settings(x_stats_sampling_interval=interval, x_stats_track_process_tree=True, console="off")
    try:
        run = wandb.init(mode="offline", dir=folder, project="bench", settings=settings)
    except Exception as exc:  # (W&B's own errors have no common base class)
        print(f"wandb cannot run offline here: {type(exc).__name__}: {exc}")
        return 3
    time.sleep(WARMUP_S)
    before = _helper_cpu()
    w0, c0 = time.time(), time.process_time()
    time.sleep(seconds)
    cpu = time.process_time() - c0
    w1 = time.time()
    after = _helper_cpu()
    helpers = sum(v - before.get(pid, (name, 0.0))[1] for pid, (name, v) in after.items())
    run.finish()
    found = sorted({name for name, _ in after.values()})
    if not found:
        print(f"wandb started none of {', '.join(WANDB_HELPERS)}: its sampling was not measured")
        return 3
    samples = _wandb_stats_between(folder, w0, w1) or seconds / interval
    print(json.dumps({"cpu_s": cpu + helpers, "samples": samples, "helpers_cpu_s": helpers, "helpers": found}))
    return 0


def _helper_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds)} of this process's wandb-core and wandb-symon descendants, from
    each thread's ``schedstat`` (nanoseconds; ``cpu_times`` counts 10-ms ticks)."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
            if name not in WANDB_HELPERS:
                continue
            total = 0
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                with open(f"/proc/{proc.pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                    total += int(fh.read().split()[0])
            out[proc.pid] = (name, total / 1e9)
        except (psutil.Error, OSError, ValueError, IndexError):
            continue
    return out


def _wandb_stats_between(folder: str, t0: float, t1: float) -> int:
    """How many system-metrics records (``stats``) of the offline run's ``.wandb`` file were taken
    between ``t0`` and ``t1``: the file is a LevelDB-style log (32-KiB blocks of records with a
    7-byte header: CRC, length, type) of ``wandb_internal_pb2.Record`` protobufs. 0 if unreadable."""
    import glob
    import struct

    try:
        from wandb.proto import wandb_internal_pb2 as pb

        path = glob.glob(os.path.join(folder, "wandb", "offline-run-*", "run-*.wandb"))[0]
        with open(path, "rb") as fh:
            data = fh.read()
    except (ImportError, IndexError, OSError):
        return 0
    pos, block, whole, part, count = 7, 32768, [], b"", 0  # (after the file's 7-byte header)
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # a whole record; 2, 3, 4: its first, middle and last pieces
            whole.append(chunk)
        elif kind in (2, 3):
            part = chunk if kind == 2 else part + chunk
        elif kind == 4:
            whole.append(part + chunk)
    for raw in whole:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "stats":
            ts = rec.stats.timestamp.seconds + rec.stats.timestamp.nanos / 1e9
            count += t0 <= ts < t1
    return count


# -- Slurm array submit -------------------------------------------------------------------------
def _trivial(x: int) -> int:
    return x


def slurm_ready() -> str | None:
    """None when the Slurm cluster answers, else why not (sets SLURM_CONF to the test cluster's)."""
    if "SLURM_CONF" not in os.environ and os.path.exists(SLURM_CONF):
        os.environ["SLURM_CONF"] = SLURM_CONF
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer ({exc})"
    if out.returncode != 0 or not out.stdout.strip():
        return f"sinfo failed: {out.stderr.strip()[:200]}"
    return None


def _scancel(job_ids: list[str]) -> None:
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=60)


def ours_submit(n_tasks: int, work: str) -> tuple[float, float]:
    """launch.submit of a config with an ``n_tasks``-entry array; (wall, this process's CPU) seconds;
    submitted held (``--hold``, on both sides: no task starts and loads the CPUs while the next
    submit is measured) and cancelled at once."""
    from aetherium_hpc import launch
    from aetherium_hpc.config import load_config

    os.makedirs(work, exist_ok=True)
    params = "\n".join(f"    - {{seed: {i}}}" for i in range(n_tasks))
    path = os.path.join(work, "array.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(
            "name: bench-submit\nbackend: slurm\n"
            f"run_dir: {os.path.join(work, 'runs')}\n"
            "workload:\n  callable: aetherium_hpc.demo.pipeline:run\n"
            f"array:\n  params:\n{params}\n"
            "resources:\n  timeout_min: 1\n  cpus_per_task: 1\n  mem_gb: 1\n"
            "slurm:\n  additional_parameters: {hold: true}\n"
            "report:\n  auto: false\n"
        )
    t0, c0 = time.perf_counter(), time.process_time()
    config = load_config(path)
    sub = launch.submit(config)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    _scancel(sub.array_job_ids or sub.job_ids)
    if len(sub.jobs) != n_tasks:
        raise RuntimeError(f"launch.submit made {len(sub.jobs)} jobs, not {n_tasks}")
    return elapsed, cpu


def submitit_submit(n_tasks: int, work: str) -> tuple[float, float]:
    """submitit AutoExecutor.map_array of a trivial function; (wall, this process's CPU) seconds;
    held and cancelled at once, as :func:`ours_submit`."""
    import submitit

    t0, c0 = time.perf_counter(), time.process_time()
    executor = submitit.AutoExecutor(folder=os.path.join(work, "submitit", "%j"), cluster="slurm")
    executor.update_parameters(name="bench-submitit", timeout_min=1, cpus_per_task=1, mem_gb=1,
                               slurm_additional_parameters={"hold": True})  # fmt: skip
    jobs = executor.map_array(_trivial, range(n_tasks))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    _scancel([str(j.job_id) for j in jobs])
    if len(jobs) != n_tasks:
        raise RuntimeError(f"map_array made {len(jobs)} jobs, not {n_tasks}")
    return elapsed, cpu


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "live":
        sys.exit(_live_child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float((sys.argv + ["1"])[5])))
    print(__doc__)
    sys.exit(2)
