"""Open chunks: a flush encodes only the samples that are new, and the text stays that of encode_chunk."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from aetherium_hpc.errors import StoreError
from aetherium_hpc.store import chunks
from aetherium_hpc.store.chunks import OpenChunk
from aetherium_hpc.store.chunks import encode as encode_chunk
from aetherium_hpc.store.options import StoreOptions
from aetherium_hpc.store.records import RESOURCE
from aetherium_hpc.store.writer import StoreWriter


def _flush_points(rng: random.Random, n: int) -> list[int]:
    points = sorted(rng.sample(range(1, n), k=min(n - 1, rng.randint(0, 20))))
    return [*points, n]


def _assert_flushes_encode_as_a_whole(rng: random.Random, ts: list[float], vals: list[float | None]) -> None:
    """Fill an open chunk with the samples over random flushes: after each, its row is encode_chunk's."""
    chunk = OpenChunk()
    done = 0
    for upto in _flush_points(rng, len(ts)):
        chunk.ts.extend(ts[done:upto])
        chunk.vals.extend(vals[done:upto])
        done = upto
        got, want = chunk.row(), encode_chunk(ts[:upto], vals[:upto])
        assert got[:7] == want[:7] and got[8] == want[8]  # text, finite count and maximum: exactly
        assert got[7] == pytest.approx(want[7], rel=1e-12, abs=1e-12)  # the sum, added in another order


@pytest.mark.parametrize("seed", range(30))
def test_incremental_text_is_encode_chunk(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, chunks.CHUNK_SAMPLES)
    interval = rng.choice([0.1, 0.5, 1.0, 2.5])
    jitter = rng.choice([0.0, 0.0005, 0.003, 0.2])  # seconds: none, typical, a loaded node, irregular
    t0 = 1.7e9 + rng.random()
    ts = [t0 + k * interval + rng.uniform(0, jitter) for k in range(n)]
    vals: list[float | None] = [
        rng.choice([rng.uniform(0, 100), float(rng.randint(0, 9)), None, float("inf"), float("nan"), -1e-9])
        for _ in range(n)
    ]
    _assert_flushes_encode_as_a_whole(rng, ts, vals)


@pytest.mark.parametrize("seed", range(20))
def test_incremental_text_is_encode_chunk_for_finite_values_and_a_clock_that_steps_back(seed: int) -> None:
    """Finite values only (formatted in C, ints among them), and timestamps that go back (NTP
    stepping the clock: a negative or zero grid interval)."""
    rng = random.Random(seed)
    n = rng.randint(1, chunks.CHUNK_SAMPLES)
    ts = [1.7e9 + k * 0.5 + rng.uniform(0, 0.003) for k in range(n)]
    if seed % 2:
        ts = ts[::-1] if seed % 4 == 1 else [1.7e9] * n  # backwards; all at one time
    vals: list[float | None] = [
        rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-9, 9), 0.0, -1e-300]) for _ in range(n)
    ]
    _assert_flushes_encode_as_a_whole(rng, ts, vals)


@pytest.mark.parametrize("seed", range(10))
def test_chunk_statistics_are_those_of_its_finite_values(seed: int) -> None:
    """nfin / vsum / vmax: what numpy makes of the finite values -- logged and decoded from the text."""
    import numpy as np

    rng = random.Random(seed)
    n = rng.randint(1, chunks.CHUNK_SAMPLES)
    ts = [1.7e9 + k for k in range(n)]
    vals: list[float | None] = [
        rng.choice([rng.uniform(-1e3, 1e3), rng.randint(0, 9), None, float("inf"), float("-inf"), float("nan")])
        for _ in range(n)
    ]
    *_, nfin, vsum, vmax = encode_chunk(ts, vals)
    logged = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    finite = logged[np.isfinite(logged)]
    assert nfin == finite.size
    assert vsum == pytest.approx(float(finite.sum()), rel=1e-9, abs=1e-9)
    assert vmax == (float(finite.max()) if finite.size else None)
    decoded = chunks.decode(*[encode_chunk(ts, vals)[i] for i in (0, 2, 3, 4, 5)])[1]
    assert chunks.finite_stats(decoded.tolist())[0] == nfin  # the text keeps which values are finite
    if nfin:
        assert chunks.finite_stats(decoded.tolist())[1] == pytest.approx(vsum, rel=1e-6, abs=1e-3)


def test_flush_encodes_only_new_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full chunk filled over 180 one-sample flushes encodes each value once (was 1 + 2 + ... + 180)."""
    calls = 0
    real = chunks.encode_value

    def counting(value: float | None) -> str:
        nonlocal calls
        calls += 1
        return real(value)

    monkeypatch.setattr(chunks, "encode_value", counting)
    chunk = OpenChunk()
    for k in range(chunks.CHUNK_SAMPLES):
        chunk.ts.append(1.7e9 + k + 0.0002 * (k % 3))
        chunk.vals.append(None if k % 2 else float("inf"))  # (finite floats are formatted inline)
        chunk.row()
    assert calls == chunks.CHUNK_SAMPLES


def test_restore_drops_what_a_rolled_back_flush_appended() -> None:
    chunk = OpenChunk()
    chunk.ts.extend([10.0, 11.0, 12.0])
    chunk.vals.extend([1.0, 2.0, 3.0])
    chunk.row()
    state = chunk.state()
    chunk.ts.extend([13.0, 14.5])
    chunk.vals.extend([4.0, 5.0])
    chunk.rowid = 7
    assert chunk.row() == encode_chunk([10.0, 11.0, 12.0, 13.0, 14.5], [1.0, 2.0, 3.0, 4.0, 5.0])
    chunk.restore(state)
    assert chunk.rowid is None and chunk.ts == [10.0, 11.0, 12.0] and chunk.vals == [1.0, 2.0, 3.0]
    chunk.ts.append(13.0)
    chunk.vals.append(9.0)
    assert chunk.row() == encode_chunk([10.0, 11.0, 12.0, 13.0], [1.0, 2.0, 3.0, 9.0])


def test_rolled_back_batch_leaves_no_text_behind(tmp_path: Path) -> None:
    """A commit that fails is rolled back; the retried batch is stored once, in order, with no text left over."""
    path = str(tmp_path / "chunks.db")
    writer = StoreWriter(path, options=StoreOptions(flush_interval_s=3600), telemetry=False)
    writer.start_and_wait()
    try:
        for k in range(5):
            writer.queue.put((RESOURCE, 1000.0 + k, "cpu", "system_total", float(k), "%", ""))
        assert writer.flush()
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit fails with "database is locked"
        conn = writer._conn
        assert conn is not None
        conn.execute("PRAGMA busy_timeout = 0")
        for k in range(5, 9):
            writer.queue.put((RESOURCE, 1000.0 + k, "cpu", "system_total", float(k), "%", ""))
        assert not writer.flush(timeout=10)
        blocker.rollback()
        blocker.close()
        writer.queue.put((RESOURCE, 1009.0, "cpu", "system_total", 9.0, "%", ""))
        assert writer.flush()
    finally:
        writer.stop()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT n, jit, vals FROM sample_chunks").fetchall()
    conn.close()
    assert rows == [(10, "[" + ",".join(["0"] * 10) + "]", "[" + ",".join(str(k) for k in range(10)) + "]")]


@pytest.mark.parametrize("seed", range(5))
def test_chunk_codec_round_trips_through_python_and_the_sql_view(seed: int) -> None:
    """encode → decode gives the samples back (7 digits, 1 ms); the view's SQL gives the same times."""
    rng = random.Random(seed)
    n = rng.randint(1, chunks.CHUNK_SAMPLES)
    t = 1_700_000_000.0 + rng.random()
    ts, vals = [], []
    for _ in range(n):
        t += 1.0 + rng.uniform(-0.2, 0.2)
        ts.append(t)
        vals.append(rng.choice([None, float("nan"), float("inf"), -float("inf"), rng.uniform(-1e6, 1e6), 0.0]))
    t0, t1, count, dt_ms, jit, text = chunks.encode(ts, vals)[:6]
    assert (t0, t1, count) == (ts[0], ts[-1], n)
    got_t, got_v = chunks.decode(t0, count, dt_ms, jit, text)
    assert got_t.tolist() == pytest.approx([round((x - t0) * 1000) / 1000 + t0 for x in ts], abs=1e-6)
    for want, v in zip(vals, got_v.tolist(), strict=True):
        if want is None or want != want:
            assert v != v  # missing and NaN read back as NaN
        elif abs(want) == float("inf"):
            assert v == want
        else:
            assert v == pytest.approx(want, rel=1e-6, abs=1e-30)
    assert chunks.decode_values(text) == [v for v in got_v.tolist() if v == v]  # null dropped, not NaN
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE c (t0 REAL, dt_ms INTEGER, jit TEXT, vals TEXT)")
    conn.execute("INSERT INTO c VALUES (?,?,?,?)", (t0, dt_ms, jit, text))
    sql_t = [
        r[0] for r in conn.execute(f"SELECT {chunks.TIMESTAMP_SQL} FROM c JOIN json_each(c.vals) j ORDER BY j.key")
    ]
    assert sql_t == pytest.approx(got_t.tolist(), abs=1e-6)


def test_decode_many_is_each_chunk_decoded_and_joined() -> None:
    """Several chunks parsed at once give what decoding them one by one gives; the grid leaves the jitter out."""
    rng = random.Random(7)
    rows, want_t, want_v = [], [], []
    t = 1_700_000_000.0
    for size in (1, 180, 37, 2):
        ts = [t := t + 1.0 + rng.uniform(-0.1, 0.1) for _ in range(size)]
        vals = [rng.choice([None, rng.uniform(-5, 5)]) for _ in range(size)]
        t0, _, n, dt_ms, jit, text = chunks.encode(ts, vals)[:6]
        rows.append((t0, n, dt_ms, jit, text))
        one_t, one_v = chunks.decode(t0, n, dt_ms, jit, text)
        want_t += one_t.tolist()
        want_v += one_v.tolist()
    got_t, got_v = chunks.decode_many(rows)
    assert got_t.tolist() == want_t
    assert [v if v == v else None for v in got_v.tolist()] == [v if v == v else None for v in want_v]
    grid_t, _ = chunks.decode_many([(t0, n, dt, None, v) for t0, n, dt, _, v in rows], jitter=False)
    grid = [t0 + k * dt / 1000.0 for t0, n, dt, _, _ in rows for k in range(n)]
    assert grid_t.tolist() == pytest.approx(grid, abs=1e-6)
    with pytest.raises(StoreError, match="values do not match"):
        chunks.decode_many([(t0, 3, 1000, "[0,0,0]", "[1,2]")])


def test_series_that_share_their_timestamps_share_the_jitter_text_and_no_other_does() -> None:
    """The jitter text is kept for the next series with the same timestamps (a monitor's tick
    stamps all its samples alike); timestamps that differ in one sample, or a chunk that started
    elsewhere, get their own text: each chunk's row is encode_chunk's."""
    base = [1.7e9 + k * 0.5 + 0.001 * (k % 3) for k in range(30)]
    other = list(base)
    other[17] += 0.004  # one late tick
    shifted = [t + 0.25 for t in base]
    for ts in (base, other, base, shifted, base[5:], other):
        for vals in ([float(k) for k in range(len(ts))], [None] * len(ts)):
            chunk = OpenChunk()
            for upto in (1, 10, 20, len(ts)):
                chunk.ts.extend(ts[len(chunk.ts) : upto])
                chunk.vals.extend(vals[len(chunk.vals) : upto])
                assert chunk.row()[:6] == encode_chunk(ts[:upto], vals[:upto])[:6]


def test_a_batch_past_a_chunk_s_size_fills_chunks_in_time_order(tmp_path: Path) -> None:
    """One flush of 2.5 chunks' worth of one series, its records out of order: full chunks of
    CHUNK_SAMPLES samples, then the rest, every sample once and in time order; a record refused
    alone (a value that is no number) leaves no series behind."""
    path = str(tmp_path / "fill.db")
    n = chunks.CHUNK_SAMPLES * 5 // 2
    writer = StoreWriter(path, options=StoreOptions(flush_interval_s=3600), telemetry=False)
    writer.start_and_wait()
    try:
        order = list(range(n))
        random.Random(1).shuffle(order)
        writer.queue.put_many([(RESOURCE, 1000.0 + k, "cpu", "system_total", float(k), "%", "") for k in order])
        writer.queue.put((RESOURCE, 5000.0, "gpu", "util", "not a number", "%", "0"))
        assert writer.flush()
    finally:
        writer.stop()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT t0, n, dt_ms, jit, vals FROM sample_chunks ORDER BY t0").fetchall()
    names = conn.execute("SELECT metric_name FROM series").fetchall()
    conn.close()
    assert [r[1] for r in rows] == [chunks.CHUNK_SAMPLES, chunks.CHUNK_SAMPLES, n - 2 * chunks.CHUNK_SAMPLES]
    ts, vals = chunks.decode_many(rows)
    assert ts.tolist() == [1000.0 + k for k in range(n)] and vals.tolist() == [float(k) for k in range(n)]
    assert names == [("system_total",)]


def test_write_soon_writes_at_once_only_a_flush_interval_s_worth(tmp_path: Path) -> None:
    """write_soon(span): records spanning less than the flush interval wait for the timer; a
    flush interval's worth (the monitor's batch) is written at once, with no barrier to wait on."""
    import time

    writer = StoreWriter(str(tmp_path / "soon.db"), options=StoreOptions(flush_interval_s=3600), telemetry=False)
    writer.start_and_wait()
    try:
        writer.queue.put((RESOURCE, 1000.0, "cpu", "system_total", 1.0, "%", ""))
        writer.write_soon(60.0)
        assert not writer.queue.wake.is_set() and writer.stats.batches == 0
        writer.write_soon(3600.0)
        deadline = time.monotonic() + 30  # (the timer would write it in an hour)
        while writer.stats.batches == 0:
            assert time.monotonic() < deadline, "write_soon(3600) did not write within 30 s"
            time.sleep(0.01)
        assert writer.stats.written == 1
    finally:
        writer.stop()
