"""Benchmark: what a job pays at its edges, locally (``aetherium-hpc run -- COMMAND``).

* **start-up**: wall time from starting the job's process to the first line of the user's code,
  with the store, socket and monitor up (``aetherium-hpc run -- python -c ...``), against the same
  command started bare; the difference is what aetherium-hpc adds.
* **SIGTERM to disk**: a command that has logged ``--records`` training rows through the node
  socket (``init_db`` joins the node store) and keeps running; SIGTERM to the whole process group
  (what ``scancel`` does to a job step); the time until the runtime has exited, with every record
  in the database it copied to ``--db-dir``.

    python bench/edges.py [--repeat 3] [--records 10000]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

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
    args = ap.parse_args()
    m = measure(args.repeat, args.records)
    added = [o - b for o, b in zip(m["ours"], m["bare"], strict=True)]
    print(f"start-up: with the store and monitor {statistics.median(m['ours']):.3f} s, bare "
          f"{statistics.median(m['bare']):.3f} s: added {statistics.median(added):.3f} s (goal <= 0.5 s)")  # fmt: skip
    print(f"SIGTERM to every record on disk: {statistics.median(m['term']):.3f} s (goal <= 1 s); "
          f"rows on disk {m['rows']} of {m['records']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
