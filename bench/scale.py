"""Benchmark: the merge at the scale of a real cluster -- a 1,000-task array on 2 nodes, 2,000 databases.

Builds ``--tasks`` x 2 node databases (each ``--minutes`` of 42 metrics at 1 Hz, with generation
and training rows; one is built, the others are copies with their own job, task and node), then
merges the first 100, 500 and all of them, each in one pass (one ``merge`` call) in a fresh
interpreter, and reports for each: seconds per input (linear time: flat), peak RSS of that
interpreter and the most file descriptors it held open at once (both bounded: flat).

With ``--report N``, it also times ``aetherium-hpc report --quiet --html`` (fresh interpreter,
plots included) on the merge of every input against the same on the merge of the first 100
tasks (200 node databases), alternately, N times each: the report of a large array summarises
across tasks, so it should cost at most 3x the report of 100 tasks for 10x the data.

    python bench/scale.py                       # 1,000 tasks x 2 nodes, 5 min each (about 600 MB)
    python bench/scale.py --tasks 100 --steps 20,100,200
    python bench/scale.py --steps 2000 --report 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc.store.chunks import finite_stats  # noqa: E402
from bench.merge import build_task_db, report_command  # noqa: E402

STEPS = (100, 500, 2000)
#: Tasks (x 2 nodes) of the merged database whose report the report of every task is compared with.
REPORT_BASE_TASKS = 100


#: Series of the template renamed to what the monitors write, so that the report draws them:
#: (series_id in bench.merge's template, metric type, name, unit, device, per-task value scale).
REAL_SERIES = (
    (1, "cpu", "process_tree", "%", "", (150.0, 750.0)),
    (5, "cpu", "system_total", "%", "", None),
    (2, "ram", "process_tree_rss", "MB", "", (1500.0, 12000.0)),
    (6, "ram", "system_used", "MB", "", None),
    (3, "gpu", "utilization", "%", "GPU-0", (20.0, 95.0)),
    (7, "gpu", "memory_used", "MB", "GPU-0", None),
)


def build(folder: str, tasks: int, minutes: float) -> list[str]:
    """``tasks`` x 2 node databases under ``folder``/db/<job>_<task>/<node>.db, in merge order.

    One template is built and copied; each copy gets its job, task and node, and its own level of
    CPU, memory and GPU use, runtime and final loss (seeded by the task), so that the report of
    the merged database has distributions to show."""
    template = os.path.join(folder, "template.db")
    build_task_db(template, 0, minutes / 60.0, random.Random(1))
    conn = sqlite3.connect(template, isolation_level=None)
    for sid, mtype, name, unit, device, _ in REAL_SERIES:
        conn.execute("UPDATE series SET metric_type = ?, metric_name = ?, unit = ?, device = ? WHERE series_id = ?",
                     (mtype, name, unit, device, sid))  # fmt: skip
    conn.execute(
        "UPDATE job_rows SET requested = ?",
        (json.dumps({"mem_gb": 16, "cpus": 8, "timeout_min": max(5, round(minutes * 2)), "gpus": 1}),),
    )
    shapes = {sid: conn.execute("SELECT rowid, t0, n FROM sample_chunks WHERE series_id = ? ORDER BY t0",
                                (sid,)).fetchall() for sid, *_, level in REAL_SERIES if level}  # fmt: skip
    start, end = conn.execute("SELECT start_time, end_time FROM job_rows").fetchone()
    conn.close()
    files = []
    for task in range(tasks):
        rng = random.Random(task)
        levels = {sid: rng.uniform(*level) for sid, *_, level in REAL_SERIES if level}
        runtime = (end - start) * rng.uniform(0.6, 1.0)
        loss_scale = rng.uniform(0.5, 1.5)
        vals = []
        for sid, rows in shapes.items():
            for cid, t0, n in rows:
                values = [levels[sid] * (0.8 + 0.2 * math.sin((t0 + k) / 20.0)) for k in range(n)]
                vals.append((f"[{','.join(f'{v:.7g}' for v in values)}]", *finite_stats(values), cid))
        for node in ("n1", "n2"):
            path = os.path.join(folder, "db", f"4242_{task}", f"{node}.db")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(template, path)
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN")
            conn.execute(
                "UPDATE sources SET job_id = ?, array_task_id = ?, node = ?, hostname = ?, source_path = ?",
                (f"4242_{task}", task, node, node, path),
            )
            conn.execute("UPDATE series SET node = ?", (node,))
            conn.executemany("UPDATE sample_chunks SET vals = ?, nfin = ?, vsum = ?, vmax = ? WHERE rowid = ?", vals)
            conn.execute("UPDATE job_rows SET end_time = start_time + ?", (runtime,))
            conn.execute("UPDATE training_rows SET metric_value = metric_value * ? WHERE metric_name = 'loss'",
                         (loss_scale,))  # fmt: skip
            conn.execute("COMMIT")
            conn.close()
            files.append(path)
    os.remove(template)
    return files


def _child(list_file: str, output: str) -> int:
    """Merge the inputs listed in ``list_file`` into ``output`` in one pass; print JSON figures."""
    import importlib

    merge_mod = importlib.import_module("aetherium_hpc.analysis.merge")
    with open(list_file, encoding="utf-8") as fh:
        files = fh.read().split("\n")
    most_fds = [0]
    done = threading.Event()

    def watch_fds() -> None:
        while not done.is_set():
            most_fds[0] = max(most_fds[0], len(os.listdir("/proc/self/fd")))
            done.wait(0.005)

    watcher = threading.Thread(target=watch_fds, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    result = merge_mod.merge(files, output, progress=False)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    if result.skipped or result.sources_added != len(files):
        print(result.summary(), file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "fds": most_fds[0], "inputs": len(files), "rss_mib": _peak_rss_mib()}))
    return 0


def _peak_rss_mib() -> float:
    """This interpreter's peak RSS since exec (VmHWM; a child's ru_maxrss counts its parent's memory
    at fork)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def merge_in_child(files: Sequence[str], output: str) -> dict[str, float]:
    """One merge of ``files`` in a fresh interpreter: seconds, peak RSS (MiB), most open fds."""
    list_file = output + ".inputs"
    with open(list_file, "w", encoding="utf-8") as fh:
        fh.write("\n".join(files))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "child", list_file, output],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"merge of {len(files)} inputs failed: {proc.stderr.strip()[-800:]}")
    figures = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    os.remove(list_file)
    return figures


def report_seconds(db: str, html: str) -> float:
    """Seconds of ``aetherium-hpc report --quiet --html`` on ``db`` in a fresh interpreter (as a user runs it)."""
    t = time.perf_counter()
    subprocess.run(report_command(db, html), check=True, capture_output=True)
    return time.perf_counter() - t


def measure(tasks: int = 1000, minutes: float = 5.0, steps: Sequence[int] = STEPS, repeat: int = 1,
            work_dir: str | None = None, log: Callable[[str], None] = print, report_repeat: int = 0,
            report_base_tasks: int = REPORT_BASE_TASKS) -> dict[str, Any]:  # fmt: skip
    """Build once; per step n: ``repeat`` merges of the first n inputs into a fresh output.

    With ``report_repeat``: also the report of the merge of every input against the report of the
    merge of the first ``report_base_tasks`` tasks (both nodes), alternately, that many times each."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        t = time.perf_counter()
        files = build(tmp, tasks, minutes)
        size = sum(os.path.getsize(f) for f in files)
        log(f"built {len(files)} node databases ({minutes:g} min x 42 metrics x 1 Hz each, "
            f"{size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")  # fmt: skip
        rows: dict[int, list[dict[str, float]]] = {}
        merged_bytes = 0
        full = os.path.join(tmp, "merged-all.db")
        for n in steps:
            n = min(n, len(files))
            for r in range(repeat):
                out = os.path.join(tmp, f"merged-{n}-{r}.db")
                fig = merge_in_child(files[:n], out)
                fig["per_input_ms"] = fig["seconds"] / n * 1000.0
                rows.setdefault(n, []).append(fig)
                merged_bytes = os.path.getsize(out)
                if report_repeat and n == len(files) and not os.path.exists(full):
                    os.replace(out, full)
                else:
                    os.remove(out)
                log(f"  {n} inputs: {fig['seconds']:.2f} s ({fig['per_input_ms']:.1f} ms an input), "
                    f"peak RSS {fig['rss_mib']:.0f} MiB, at most {fig['fds']:.0f} open files")  # fmt: skip
        report: dict[str, list[float]] = {"base": [], "full": []}
        if report_repeat and os.path.exists(full):
            base = os.path.join(tmp, "merged-base.db")
            merge_in_child(files[: 2 * report_base_tasks], base)
            for _ in range(report_repeat):  # alternately, so that both see the same machine
                report["base"].append(report_seconds(base, os.path.join(tmp, "base.html")))
                report["full"].append(report_seconds(full, os.path.join(tmp, "full.html")))
            log(f"  report of {report_base_tasks} tasks: {', '.join(f'{x:.2f}' for x in report['base'])} s; "
                f"of {tasks} tasks: {', '.join(f'{x:.2f}' for x in report['full'])} s")  # fmt: skip
    return {"files": len(files), "input_bytes": size, "merged_bytes": merged_bytes, "steps": rows, "report": report,
            "report_base_tasks": report_base_tasks}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000, help="array tasks, 2 node databases each [1000]")
    ap.add_argument("--minutes", type=float, default=5.0, help="minutes of 1 Hz samples per database [5]")
    ap.add_argument("--steps", default=",".join(map(str, STEPS)), help="input counts merged [100,500,2000]")
    ap.add_argument("--dir", default=None, help="work folder [a temporary one]")
    ap.add_argument("--report", type=int, default=0, metavar="N",
                    help="also time N reports of the merge of every input against N of the first "
                         f"{REPORT_BASE_TASKS} tasks [0]")  # fmt: skip
    args = ap.parse_args()
    steps = [int(x) for x in args.steps.split(",")]
    m = measure(args.tasks, args.minutes, steps, work_dir=args.dir, report_repeat=args.report)
    first, last = m["steps"][min(m["steps"])][0], m["steps"][max(m["steps"])][0]
    print(f"per-input cost at {max(m['steps'])} / at {min(m['steps'])}: "
          f"{last['per_input_ms'] / first['per_input_ms']:.2f}x (linear: about 1)")  # fmt: skip
    if m["report"]["full"]:
        ratio = statistics.median(m["report"]["full"]) / statistics.median(m["report"]["base"])
        print(f"report of {args.tasks} tasks / of {REPORT_BASE_TASKS} tasks: {ratio:.2f}x (target: at most 3x)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2], sys.argv[3]))
    sys.exit(main())
