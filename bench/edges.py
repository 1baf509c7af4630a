"""Benchmark: what a job pays at its edges (``aetherium-hpc run -- COMMAND``), locally and on Slurm.

Locally:

* **start-up**: wall time from starting the job's process to the first line of the user's code,
  with the store, socket and monitor up (``aetherium-hpc run -- python -c ...``), against the same
  command started bare; the difference is what aetherium-hpc adds.
* **SIGTERM to disk**: a command that has logged ``--records`` training rows through the node
  socket (``init_db`` joins the node store) and keeps running; SIGTERM to the whole process group
  (what ``scancel`` does to a job step); the time until the runtime has exited, with every record
  in the database it copied to ``--db-dir``.

On the Slurm cluster, when it answers (``SLURM_CONF`` set, ``sinfo`` answers), the same two as
batch jobs, one after the other:

* **start-up**: the batch script's first line takes the job's start time (``date +%s.%N``), then
  ``srun python -m aetherium_hpc run -- python -c ...`` prints the time of the user's first line;
  against the same script with ``srun python -c ...`` (the step launch is in both).
* **SIGTERM to disk**: the logging command above in ``srun python -m aetherium_hpc run --db-dir
  RUN/db -- ...``; once it has said it logged everything, plain ``scancel JOB`` (Slurm sends
  SIGTERM to every process of the job's steps and to the batch script), then the run directory's
  copy is polled read-only until it holds every row and the job's final status (``cancelled``):
  the time from calling ``scancel`` to that.

    python bench/edges.py [--repeat 3] [--records 10000] [--slurm | --local]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import peers  # noqa: E402

FIRST_LINE = "import time; print(repr(time.time()), flush=True)"
LOGGER = """
import sys, time
import aetherium_hpc as ah
ah.init_db(sys.argv[1])
for i in range({n}):
    ah.log_training_epoch_metric("loss", 1.0 / (i + 1), round_number=0, epoch_number=i)
ah.get_db().flush()
print("ready", flush=True)
time.sleep(600)
"""


def _env(folder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_"))}
    env["TMPDIR"] = folder  # node-local storage of the runtime
    env["PYTHONPATH"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    return env


def first_line_delay(command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``command`` to the time printed by its first line."""
    t0 = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True)
    return float(proc.stdout.strip().splitlines()[0]) - t0


def startup(folder: str) -> tuple[float, float]:
    """(with aetherium-hpc run, bare) seconds to the first line of the user's code."""
    env = _env(folder)
    ours = first_line_delay(
        [sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", os.path.join(folder, "db"), "--",
         sys.executable, "-c", FIRST_LINE], env,
    )  # fmt: skip
    bare = first_line_delay([sys.executable, "-c", FIRST_LINE], env)
    return ours, bare


def sigterm_to_disk(folder: str, records: int) -> tuple[float, int]:
    """(seconds from SIGTERM to the runtime's exit, training rows in the copied database)."""
    env = _env(folder)
    db_dir = os.path.join(folder, "db")
    script = os.path.join(folder, "logger.py")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(LOGGER.format(n=records))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", db_dir, "--", sys.executable, script,
         os.path.join(folder, "joined.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(
                f"the logging command did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
        t0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        took = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rows = 0
    for root, _, files in os.walk(db_dir):
        for name in files:
            if name.endswith(".db"):
                conn = sqlite3.connect(f"file:{os.path.join(root, name)}?mode=ro", uri=True)
                rows += conn.execute("SELECT count(*) FROM training_metrics").fetchone()[0]
                conn.close()
    return took, rows


# -- on the Slurm cluster ------------------------------------------------------------------------
SLURM_TIMEOUT_S = 180.0  # a job that does not start or end within this is an error, not a hang


def _slurm_env(folder: str) -> dict[str, str]:
    """The job's environment (sbatch exports it): as locally, plus the cluster's SLURM_CONF."""
    env = _env(folder)
    if "SLURM_CONF" in os.environ:
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return env


def _batch_script(folder: str, name: str, step: list[str]) -> str:
    """A one-task batch script whose first line records the job's start, then ``srun STEP``."""
    path = os.path.join(folder, f"{name}.sh")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(
            "#!/bin/bash\n"
            f"#SBATCH --job-name=bench-edges-{name} --output={shlex.quote(os.path.join(folder, name + '.out'))}\n"
            "#SBATCH --nodes=1 --ntasks=1 --cpus-per-task=1 --mem=1G --time=5\n"
            'echo "job-start $(date +%s.%N)"\n'
            f"srun --ntasks=1 {shlex.join(step)}\n"
        )
    return path


def _sbatch(script: str, env: dict[str, str], *options: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *options, script], capture_output=True, text=True, env=env,
        timeout=SLURM_TIMEOUT_S, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed ({out.returncode}): {out.stderr.strip()[:300]}")
    return out.stdout.strip().split(";")[0]


def slurm_first_line_delay(folder: str, name: str, step: list[str]) -> float:
    """Seconds from the batch job's first line to the first line of the step's user code."""
    env = _slurm_env(folder)
    _sbatch(_batch_script(folder, name, step), env, "--wait")
    with open(os.path.join(folder, name + ".out"), encoding="utf-8") as fh:
        text = fh.read()
    start = re.search(r"^job-start (\d+\.\d+)$", text, re.MULTILINE)
    first = re.search(r"^(\d+\.\d+)$", text, re.MULTILINE)
    if start is None or first is None:
        raise RuntimeError(f"the {name} job printed no start or first line: {text[-500:]!r}")
    return float(first.group(1)) - float(start.group(1))


def slurm_startup(folder: str) -> tuple[float, float]:
    """(with aetherium-hpc run, bare) seconds from the Slurm job's start to the user's first line."""
    ours = slurm_first_line_delay(
        folder, "startup-ours",
        [sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", os.path.join(folder, "db"), "--",
         sys.executable, "-c", FIRST_LINE],
    )  # fmt: skip
    bare = slurm_first_line_delay(folder, "startup-bare", [sys.executable, "-c", FIRST_LINE])
    return ours, bare


def _copy_state(db_dir: str) -> tuple[int, str | None]:
    """(training rows, the job's status) of the copy in ``db_dir``, read-only; (0, None) while there is none."""
    for root, _, files in os.walk(db_dir):
        for name in files:
            if name.endswith(".db"):
                try:
                    conn = sqlite3.connect(f"file:{os.path.join(root, name)}?mode=ro", uri=True, timeout=0.05)
                    try:
                        rows = conn.execute("SELECT count(*) FROM training_metrics").fetchone()[0]
                        status = conn.execute("SELECT status FROM jobs").fetchone()
                    finally:
                        conn.close()
                except sqlite3.Error:
                    return 0, None  # being written, or not a database yet: read again
                return rows, None if status is None else status[0]
    return 0, None


def _wait_for_line(path: str, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8") as fh:
                if any(x.strip() == line for x in fh):
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} has no line {line!r} after {timeout:.0f} s")


def slurm_sigterm_to_disk(folder: str, records: int, poll_s: float = 0.01) -> tuple[float, int]:
    """(seconds from ``scancel`` to every row and the final status in the run directory's copy, rows there)."""
    env = _slurm_env(folder)
    db_dir = os.path.join(folder, "run", "db")
    script = os.path.join(folder, "logger.py")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(LOGGER.format(n=records))
    job = _sbatch(_batch_script(folder, "sigterm", [
        sys.executable, "-m", "aetherium_hpc", "run", "--db-dir", db_dir, "--", sys.executable, script,
        os.path.join(folder, "joined.db"),
    ]), env)  # fmt: skip
    try:
        _wait_for_line(os.path.join(folder, "sigterm.out"), "ready", SLURM_TIMEOUT_S)
        t0 = time.perf_counter()
        subprocess.run(["scancel", job], check=True, timeout=60, env=env, capture_output=True)
        deadline = t0 + 60
        rows, status = _copy_state(db_dir)
        while not (rows == records and status == "cancelled") and time.perf_counter() < deadline:
            time.sleep(poll_s)
            rows, status = _copy_state(db_dir)
        took = time.perf_counter() - t0
    finally:
        subprocess.run(["scancel", job], check=False, timeout=60, env=env, capture_output=True)
    if status != "cancelled":
        raise RuntimeError(f"no final copy in {db_dir} within 60 s of scancel (rows {rows}, status {status})")
    return took, rows


def slurm_measure(repeat: int = 3, records: int = 10_000, work: str | None = None) -> dict[str, Any]:
    """The Slurm figures; ``work``: a folder every node can reach (the test cluster's nodes share /tmp)."""
    ours: list[float] = []
    bare: list[float] = []
    term: list[float] = []
    rows: list[int] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=work) as d:
            o, b = slurm_startup(d)
            ours.append(o)
            bare.append(b)
        with tempfile.TemporaryDirectory(dir=work) as d:
            t, n = slurm_sigterm_to_disk(d, records)
            term.append(t)
            rows.append(n)
    return {"ours": ours, "bare": bare, "term": term, "rows": rows, "records": records}


def measure(repeat: int = 3, records: int = 10_000) -> dict[str, Any]:
    ours: list[float] = []
    bare: list[float] = []
    term: list[float] = []
    rows: list[int] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as d:
            o, b = startup(d)
            ours.append(o)
            bare.append(b)
        with tempfile.TemporaryDirectory() as d:
            t, n = sigterm_to_disk(d, records)
            term.append(t)
            rows.append(n)
    return {"ours": ours, "bare": bare, "term": term, "rows": rows, "records": records}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--records", type=int, default=10_000)
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--slurm", action="store_true", help="only on the Slurm cluster (an error if it does not answer)"
    )
    where.add_argument("--local", action="store_true", help="only locally")
    args = ap.parse_args()
    why = peers.slurm_ready()
    if args.slurm and why:
        print(f"Slurm not reachable: {why}", file=sys.stderr)
        return 1
    runs = [] if args.slurm else [("locally", measure)]
    if not args.local and not why:
        runs.append(("on Slurm", slurm_measure))
    for label, run in runs:
        m = run(args.repeat, args.records)
        added = [o - b for o, b in zip(m["ours"], m["bare"], strict=True)]
        print(f"start-up, {label}: with the store and monitor {statistics.median(m['ours']):.3f} s, bare "
              f"{statistics.median(m['bare']):.3f} s: added {statistics.median(added):.3f} s (goal <= 0.5 s)")  # fmt: skip
        print(f"SIGTERM to every record on disk, {label}: {statistics.median(m['term']):.3f} s (goal <= 1 s); "
              f"rows on disk {m['rows']} of {m['records']}")  # fmt: skip
    if why and not args.local:
        print(f"not on Slurm: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
