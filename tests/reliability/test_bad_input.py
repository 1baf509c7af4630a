"""Bad input: hostile configs through `aetherium-hpc submit`, bad metric values at the call, and
broken / foreign / locked / newer databases given to `merge` and `report`.

Each case: one line that names what is wrong and how to fix it, the documented exit code
(2 for a usage error; `merge` exits 3 when it skipped inputs and merged the rest), nothing lost.
tests/config/test_config.py holds 76 malformed-config cases at the library level (load_config); these
are CLI-level cases, run as a user runs them.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from rel_helpers import ROOT, cli, integrity, one_error_line, read

import aetherium_hpc as ah
from aetherium_hpc.store import SourceInfo

TRAIN = str(ROOT / "configs" / "train.yaml")
BASE = 'name: t\nbackend: local\nworkload:\n  callable: "runtime_workloads:log_rows"\n'

# (id, file text or None for "use train.yaml", extra CLI args, a word the one line must contain)
SUBMIT_CASES = [
    ("yaml-syntax", "name: [unclosed\n", [], "bad.yaml"),
    ("not-a-mapping", "- a\n- b\n", [], "bad.yaml"),
    ("unknown-key", BASE + "resourcez: {}\n", [], "resourcez"),
    ("binary-garbage", b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 20, [], "bad.yaml"),
    ("empty-file", "", [], "bad.yaml"),
    ("negative-timeout", BASE + "resources: {timeout_min: -5}\n", [], "timeout_min"),
    ("string-cpus", BASE + "resources: {cpus_per_task: lots}\n", [], "cpus_per_task"),
    ("callable-without-colon", 'name: t\nworkload:\n  callable: "nocolon"\n', [], "callable"),
    ("sweep-and-params", BASE + "array:\n  sweep: {a: [1]}\n  params: [{a: 1}]\n", [], "array"),
    ("set-without-equals", None, ["--set", "resources.nodes"], "resources.nodes"),
    ("set-unknown-key", None, ["--set", "slurm.partitionz=gpu"], "partitionz"),
    ("set-bad-yaml", None, ["--set", "resources.mem_gb=[1"], "mem_gb"),
    ("config-is-a-folder", "DIR", [], "bad.yaml"),
    ("missing-file", "MISSING", [], "bad.yaml"),
]


@pytest.mark.parametrize(("text", "extra", "word"), [c[1:] for c in SUBMIT_CASES], ids=[c[0] for c in SUBMIT_CASES])
def test_hostile_config_through_submit_is_one_line_and_exit_2(
    tmp_path: Path, text: str | bytes | None, extra: list[str], word: str
) -> None:
    path = tmp_path / "bad.yaml"
    if text is None:
        path = Path(TRAIN)
    elif text == "DIR":
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    elif text != "MISSING":
        path.write_text(text)
    proc = cli(["submit", str(path), "--dry-run", "--set", f"run_dir={tmp_path / 'runs'}", *extra], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert word in line, line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing is created for a bad config"


# -- metric values at the call ------------------------------------------------------------------
def _gen(**kw: object) -> None:
    args = {"start_time": 0.0, "operation": "op", "samples_generated": 1, "round_number": 0, "chunk_number": 0}
    args.update(kw)
    ah.log_data_generation_complete(**args)  # type: ignore[arg-type]


BAD_CALLS = [
    ("value-None", lambda: ah.log_training_epoch_metric("loss", None), TypeError),  # type: ignore[arg-type]
    ("value-str", lambda: ah.log_training_epoch_metric("loss", "0.5"), TypeError),  # type: ignore[arg-type]
    ("value-bool", lambda: ah.log_training_epoch_metric("loss", True), TypeError),
    ("value-complex", lambda: ah.log_training_epoch_metric("loss", 1j), TypeError),  # type: ignore[arg-type]
    ("value-huge-int", lambda: ah.log_training_epoch_metric("loss", 10**400), ValueError),
    ("name-huge", lambda: ah.log_training_epoch_metric("x" * 100_000, 1.0), ValueError),
    ("name-empty", lambda: ah.log_training_epoch_metric("", 1.0), ValueError),
    ("name-int", lambda: ah.log_training_epoch_metric(7, 1.0), TypeError),  # type: ignore[arg-type]
    ("round-float", lambda: ah.log_training_epoch_metric("loss", 1.0, round_number=1.5), TypeError),  # type: ignore[arg-type]
    ("epoch-2**70", lambda: ah.log_training_epoch_metric("loss", 1.0, epoch_number=2**70), ValueError),
    ("phase-list", lambda: ah.log_training_epoch_metric("loss", 1.0, phase=["val"]), TypeError),  # type: ignore[arg-type]
    ("resource-value-str", lambda: ah.log_resource_metric("cpu", "x", "high"), TypeError),  # type: ignore[arg-type]
    ("resource-unit-huge", lambda: ah.log_resource_metric("cpu", "x", 1.0, unit="u" * 10_000), ValueError),
    ("resource-type-None", lambda: ah.log_resource_metric(None, "x", 1.0), TypeError),  # type: ignore[arg-type]
    ("generation-start-str", lambda: _gen(start_time="yesterday"), TypeError),
    ("generation-samples-float", lambda: _gen(samples_generated=1.5), TypeError),
    ("generation-memory-str", lambda: _gen(memory_used_mb="1GB"), TypeError),
    ("generation-operation-huge", lambda: _gen(operation="o" * 5000), ValueError),
    ("generation-start-None", lambda: ah.log_data_generation_start(operation=None), TypeError),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "error"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_metric_value_raises_at_the_call_and_loses_nothing(db_path: Path, call: object, error: type) -> None:
    store = ah.init_db(str(db_path), listen=False)
    for i in range(50):
        ah.log_training_epoch_metric("before", float(i), 0, i)
    with pytest.raises(error) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, "one short line, not the whole huge value"
    for i in range(50):
        ah.log_training_epoch_metric("after", float(i), 0, i)
    stats = store.get_summary_stats()
    assert stats["training_metrics_count"] == 100 and stats["dropped"] == 0
    ah.shutdown_db()
    assert integrity(db_path) == "ok"


def test_nan_inf_and_huge_floats_are_stored_not_refused(db_path: Path) -> None:
    ah.init_db(str(db_path), listen=False)
    values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1.7e308, "tiny": 5e-324, "bigint": 10**30}
    for name, v in values.items():
        ah.log_training_epoch_metric(name, v, 0, 0)
        ah.log_resource_metric("custom", name, v, "u")
    ah.shutdown_db()
    got = dict(read(db_path, "SELECT metric_name, metric_value FROM training_metrics"))  # type: ignore[arg-type]
    assert got["nan"] is None and got["inf"] == math.inf and got["-inf"] == -math.inf
    assert got["huge"] == 1.7e308 and got["tiny"] == 5e-324 and got["bigint"] == 1e30
    res = dict(read(db_path, "SELECT metric_name, value FROM resource_metrics WHERE metric_type = 'custom'"))  # type: ignore[arg-type]
    assert res["nan"] is None and res["inf"] == math.inf and res["-inf"] == -math.inf and len(res) == 6


# -- databases given to merge and report ------------------------------------------------------
@pytest.fixture
def dbs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "dbs"
    folder.mkdir()
    out: dict[str, Path] = {}
    for job in ("1", "2"):
        path = folder / f"good{job}.db"
        ah.init_db(str(path), source=SourceInfo(job_id=job, node="n1"), listen=False)
        for i in range(20):
            ah.log_training_epoch_metric("loss", float(i), 0, i)
        ah.log_job(job_id=job, status="completed", exit_code=0, start_time=1.0, end_time=2.0)
        ah.shutdown_db()
        out[f"good{job}"] = path
    data = out["good1"].read_bytes()
    (folder / "truncated.db").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[4096:8192] = bytes((i * 37 + 11) % 256 for i in range(4096))
    (folder / "corrupt.db").write_bytes(bytes(corrupt))
    noisy = bytearray(data)  # random noise over page 2: exited 0 with a report before the quick_check fix
    noisy[4096:8192] = random.Random(7).randbytes(4096)
    (folder / "noisy.db").write_bytes(bytes(noisy))
    conn = sqlite3.connect(folder / "foreign.db")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    shutil.copy(out["good1"], folder / "newer.db")
    conn = sqlite3.connect(folder / "newer.db")
    conn.execute(f"PRAGMA user_version = {conn.execute('PRAGMA user_version').fetchone()[0] + 1}")
    conn.commit()
    conn.close()
    (folder / "text.db").write_text("not a database\n" * 100)
    (folder / "empty.db").write_bytes(b"")
    for name in ("truncated", "corrupt", "noisy", "foreign", "newer", "text", "empty"):
        out[name] = folder / f"{name}.db"
    return out


REPORT_CASES = [
    ("truncated", "not a readable SQLite database"),
    ("corrupt", "corrupt or truncated|malformed"),
    ("noisy", "corrupt or truncated|malformed"),
    ("foreign", "not one written by aetherium-hpc"),
    ("newer", "newer than this aetherium-hpc"),
    ("text", "not a readable SQLite database"),
    ("empty", "empty file"),
    ("missing", "no such file"),
    ("folder", "merge it first"),
]


@pytest.mark.parametrize(("name", "words"), REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_of_a_bad_database_is_one_line_and_exit_2(
    tmp_path: Path, dbs: dict[str, Path], name: str, words: str
) -> None:
    path = {"missing": tmp_path / "missing.db", "folder": tmp_path / "dbs"}.get(name) or dbs[name]
    before = path.read_bytes() if path.is_file() else None
    proc = cli(["report", str(path), "--html", str(tmp_path / "r.html")], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert str(path) in line and re.search(words, line), line
    assert not (tmp_path / "r.html").exists()
    if before is not None:
        assert path.read_bytes() == before, "report never changes its input"


def test_merge_skips_every_broken_input_keeps_the_rest_and_is_idempotent(tmp_path: Path, dbs: dict[str, Path]) -> None:
    out = tmp_path / "merged.db"
    inputs = [str(p) for p in dbs.values()]
    before = {p: Path(p).read_bytes() for p in inputs}
    proc = cli(["merge", *inputs, "-o", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # documented: 3 = some inputs skipped
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("aetherium-hpc merge: skipped ")]
    assert len(skipped) == 7 and len(proc.stderr.splitlines()) == 7, proc.stderr
    for name in ("truncated", "corrupt", "noisy", "foreign", "newer", "text", "empty"):
        assert any(str(dbs[name]) in ln for ln in skipped), name
    assert read(out, "SELECT count(*) FROM training_metrics") == [(40,)]
    assert {p: Path(p).read_bytes() for p in inputs} == before, "inputs are opened read-only"
    again = cli(["merge", str(dbs["good1"]), str(dbs["good2"]), "-o", str(out), "--no-progress"], tmp_path)
    assert again.returncode == 0 and "0 sources added, 2 already present" in again.stdout, again.stdout
    assert read(out, "SELECT count(*) FROM training_metrics") == [(40,)]
    assert integrity(out) == "ok"


def test_database_held_by_begin_exclusive(tmp_path: Path, dbs: dict[str, Path]) -> None:
    """Another connection holds BEGIN EXCLUSIVE. A node database is WAL: readers still see every
    committed row (report and merge succeed). A rollback-journal input is skipped with 'locked';
    a locked merge output is an error that names the output, not the input."""
    wal = dbs["good1"]
    holder = sqlite3.connect(wal, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = cli(["report", str(wal), "-q"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        merged = cli(["merge", str(wal), "-o", str(tmp_path / "m1.db"), "--no-progress"], tmp_path)
        assert merged.returncode == 0, merged.stderr
        assert read(tmp_path / "m1.db", "SELECT count(*) FROM training_metrics") == [(20,)]
        # The same lock on the output of a merge that has something to add.
        locked_out = cli(["merge", str(dbs["good2"]), "-o", str(wal), "--no-progress"], tmp_path)
        assert locked_out.returncode == 2, locked_out.stdout + locked_out.stderr
        line = one_error_line(locked_out)
        assert str(wal) in line and "locked" in line and "another -o" in line, line
    finally:
        holder.rollback()
        holder.close()
    rollback = tmp_path / "rollback.db"
    shutil.copy(dbs["good2"], rollback)
    holder = sqlite3.connect(rollback, isolation_level=None)
    assert holder.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO store_stats(source_id, name, value) VALUES (1, 'held', 1)")
    try:
        proc = cli(
            ["merge", str(rollback), str(dbs["good1"]), "-o", str(tmp_path / "m2.db"), "--no-progress"], tmp_path
        )
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert f"skipped {rollback}: locked by another process" in proc.stderr, proc.stderr
        assert read(tmp_path / "m2.db", "SELECT count(*) FROM training_metrics") == [(20,)]
    finally:
        holder.rollback()
        holder.close()
    assert integrity(rollback) == "ok" and integrity(wal) == "ok"
