"""A fleet of node databases growing as live jobs grow them, each with a real :class:`CentralSender`.

The lab-scale test (tests/store/test_central_fleet.py) and bench/central_scale.py use it: hundreds of
nodes in one process. Each node database is a real store file: one is written with the store
API (schema, source, job row, its series), then copied per node with its identity rewritten. A
:class:`Feeder` thread then does what a node's writer does at each flush, with ``sqlite3``:
one transaction per node that appends one sample to each series (the open chunk grows in place
until :data:`CHUNK_SAMPLES`, then a new one starts) and one training row. The senders read the
files as they read a job's.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aetherium_hpc
from aetherium_hpc.store import SourceInfo, client
from aetherium_hpc.store.central.sender import CentralSender
from aetherium_hpc.store.chunks import CHUNK_SAMPLES, OpenChunk

ARRAY_JOB = "900"


def make_nodes(folder: Path, n: int, *, series: int = 20) -> list[Path]:
    """``n`` node databases ``folder/900_<i>/n<i>.db`` of array job 900, each with ``series`` resource
    series and a running job row, no samples yet."""
    template = folder / "template.db"
    aetherium_hpc.init_db(str(template), source=SourceInfo(job_id="template"), listen=False)
    client.log_job(status="running", start_time=time.time(), requested={"cpus": 4, "mem_mb": 16000})
    aetherium_hpc.shutdown_db()
    conn = sqlite3.connect(template)
    conn.executemany(
        "INSERT INTO series(source_id, metric_type, metric_name, unit) VALUES (1, ?, ?, '%')",
        [("cpu", f"core_{k}") for k in range(series)],
    )
    conn.commit()
    conn.close()
    paths = []
    for i in range(n):
        path = folder / f"{ARRAY_JOB}_{i}" / f"n{i}.db"
        path.parent.mkdir()
        shutil.copyfile(template, path)
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE sources SET job_id = ?, array_job_id = ?, array_task_id = ?, node = ?, hostname = ?,"
            " source_path = ? WHERE source_id = 1",
            (f"{ARRAY_JOB}_{i}", ARRAY_JOB, i, f"n{i}", f"n{i}", str(path)),
        )
        conn.commit()
        conn.close()
        paths.append(path)
    template.unlink()
    return paths


class Feeder(threading.Thread):
    """Every ``tick`` seconds, one sample per series and one training row into every node database."""

    def __init__(self, paths: Sequence[Path], tick: float = 1.0) -> None:
        super().__init__(name="fleet-feeder", daemon=True)
        self.paths = list(paths)
        self.tick = tick
        self.samples = 0  # written so far, all nodes
        self.rows = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the test reads it
            self.error = exc

    def _run(self) -> None:
        conns = [sqlite3.connect(p, isolation_level=None, check_same_thread=False) for p in self.paths]
        for conn in conns:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        series = [[sid for (sid,) in c.execute("SELECT series_id FROM series ORDER BY series_id")] for c in conns]
        open_chunks: list[dict[int, OpenChunk]] = [{sid: OpenChunk() for sid in ids} for ids in series]
        k = 0
        next_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                ts = time.time()
                for conn, chunks in zip(conns, open_chunks, strict=True):
                    self._flush(conn, chunks, ts, k)
                k += 1
                next_at += self.tick
                self.stopping.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for conn in conns:
                conn.close()

    def _flush(self, conn: sqlite3.Connection, chunks: dict[int, OpenChunk], ts: float, k: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for sid, chunk in chunks.items():
            if len(chunk.ts) >= CHUNK_SAMPLES:
                chunk = chunks[sid] = OpenChunk()
            chunk.ts.append(ts)
            chunk.vals.append(float((k * 7 + sid) % 100))
            row = chunk.row()
            if chunk.rowid is None:
                cur = conn.execute(
                    "INSERT INTO sample_chunks(series_id, t0, t1, n, dt_ms, jit, vals, nfin, vsum, vmax)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, *row),
                )
                chunk.rowid = cur.lastrowid
            else:
                conn.execute(
                    "UPDATE sample_chunks SET t0 = ?, t1 = ?, n = ?, dt_ms = ?, jit = ?, vals = ?, nfin = ?,"
                    " vsum = ?, vmax = ? WHERE rowid = ?",
                    (*row, chunk.rowid),
                )
        conn.execute(
            "INSERT INTO training_rows(source_id, timestamp, metric_name, metric_value, round_number, epoch_number,"
            " phase) VALUES (1, ?, 'loss', ?, 0, ?, 'train')",
            (ts, 1.0 / (k + 1), k),
        )
        conn.execute("COMMIT")
        self.samples += len(chunks)
        self.rows += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


def start_senders(
    paths: Sequence[Path], url: str, *, interval: float, final_timeout: float = 10.0
) -> list[CentralSender]:
    senders = [
        CentralSender(str(p), url, counters=lambda delta: None, interval=interval, final_timeout=final_timeout)
        for p in paths
    ]
    for s in senders:
        s.start()
    return senders


def stop_senders(senders: Sequence[CentralSender]) -> None:
    """All of them at once (an array whose tasks end together), each with its last push."""
    stoppers = [threading.Thread(target=s.stop) for s in senders]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(120)


def local_counts(path: Path) -> tuple[str, int, int]:
    """(job id, samples, training rows) of one node database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (job,) = conn.execute("SELECT job_id FROM sources").fetchone()
        (samples,) = conn.execute("SELECT coalesce(sum(n), 0) FROM sample_chunks").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM training_rows").fetchone()
        return job, samples, rows
    finally:
        conn.close()


def central_counts(pg: Any) -> dict[str, tuple[int, int]]:
    """job id -> (samples, training rows) in the central store (one source per node here)."""
    out: dict[str, list[int]] = {}
    for job, samples in pg.execute(
        "SELECT src.job_id, coalesce(sum(c.n), 0) FROM sources src JOIN series s USING (source_id)"
        " JOIN sample_chunks c USING (series_id) GROUP BY src.job_id"
    ):
        out.setdefault(job, [0, 0])[0] = int(samples)
    for job, rows in pg.execute(
        "SELECT src.job_id, count(*) FROM sources src JOIN training_rows t USING (source_id) GROUP BY src.job_id"
    ):
        out.setdefault(job, [0, 0])[1] = int(rows)
    return {job: (v[0], v[1]) for job, v in out.items()}
