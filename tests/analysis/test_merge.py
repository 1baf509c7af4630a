"""merge: many node databases written through the real store API into one of the same schema."""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from task_dbs import N_SAMPLES, write_task_db

import aetherium_hpc
from aetherium_hpc.analysis import commands
from aetherium_hpc.analysis.merge import SKIPPED_EXIT_CODE, MergeInputError, merge
from aetherium_hpc.errors import SchemaError
from aetherium_hpc.store import SourceInfo


def q(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _break(run: Path, good: Path) -> list[Path]:
    """Three broken inputs, each broken another way."""
    truncated = run / "db" / "777_90" / "trunc.db"
    truncated.parent.mkdir(parents=True)
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = run / "db" / "777_91" / "garbage.db"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00garbage, not SQLite\xff" * 300)
    foreign = run / "db" / "777_92" / "foreign.db"
    foreign.parent.mkdir(parents=True)
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes(x TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()
    return [truncated, garbage, foreign]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    t0 = time.time()
    for task in range(17):
        write_task_db(run / "db" / f"777_{task}" / f"n{task % 3}.db", task, t0=t0)
    _break(run, run / "db" / "777_0" / "n0.db")
    return run


def test_merge_20_inputs_3_broken(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.db"
    result = merge([run_dir], out)
    assert len(result.inputs) == 20
    assert len(result.merged) == 17 and result.sources_added == 17
    assert sorted(Path(s.path).name for s in result.skipped) == ["foreign.db", "garbage.db", "trunc.db"]
    assert result.exit_code == SKIPPED_EXIT_CODE
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert "not one written by aetherium-hpc" in reasons["foreign.db"]
    assert "\n" not in "".join(reasons.values())
    assert "17 of 20" in result.summary() and "3 skipped" in result.summary()

    assert q(out, "SELECT count(*) FROM sources") == [(17,)]
    assert q(out, "SELECT count(*) FROM jobs") == [(17,)]
    assert q(out, "SELECT count(*) FROM training_metrics") == [(17,)]
    assert q(out, "SELECT count(*) FROM generation_metrics") == [(17,)]
    assert q(out, "SELECT count(*) FROM resource_metrics WHERE metric_type IN ('cpu', 'ram')") == [
        (17 * 2 * N_SAMPLES,)
    ]
    # Same schema: application id and version, so the merged file merges again.
    assert q(out, "PRAGMA application_id")[0][0] == aetherium_hpc.store.schema.APPLICATION_ID
    # Provenance on every row of every view, pointing at the right input.
    for view in ("resource_metrics", "generation_metrics", "training_metrics"):
        assert q(out, f"SELECT count(*) FROM {view} WHERE job_id IS NULL OR array_task_id IS NULL OR node IS NULL"
                 " OR node = '' OR array_job_id IS NULL") == [(0,)]  # fmt: skip
    rows = q(out, "SELECT DISTINCT t.array_task_id, t.node, s.source_path FROM training_metrics t"
                  " JOIN sources s USING (source_id)")  # fmt: skip
    assert len(rows) == 17
    for task, node, source_path in rows:
        assert str(source_path).endswith(f"777_{task}/n{int(str(task)) % 3}.db") and node == f"n{int(str(task)) % 3}"
    # Values of one task arrive intact.
    assert q(
        out, "SELECT max(value) FROM resource_metrics WHERE array_task_id = 5 AND metric_name = 'process_tree_rss'"
    ) == [(105.0,)]


def test_merge_twice_adds_nothing(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.db"
    merge([run_dir], out)
    counts = q(out, "SELECT (SELECT count(*) FROM sources), (SELECT count(*) FROM sample_chunks),"
                    " (SELECT count(*) FROM training_rows), (SELECT count(*) FROM generation_rows)")  # fmt: skip
    again = merge([run_dir], out)
    assert again.sources_added == 0 and again.sources_present == 17 and len(again.skipped) == 3
    assert q(out, "SELECT (SELECT count(*) FROM sources), (SELECT count(*) FROM sample_chunks),"
                  " (SELECT count(*) FROM training_rows), (SELECT count(*) FROM generation_rows)") == counts  # fmt: skip
    # The output inside the run directory is not read as an input.
    inside = run_dir / "merged.db"
    merge([run_dir], inside)
    second = merge([run_dir], inside)
    assert len(second.inputs) == 20 and second.sources_added == 0
    # A merged database merges again, into the same rows.
    twice = tmp_path / "twice.db"
    r = merge([out, inside], twice)
    assert r.sources_added == 17 and r.sources_present == 17
    assert q(twice, "SELECT count(*) FROM resource_metrics") == q(out, "SELECT count(*) FROM resource_metrics")
    # A merged input of which only some sources are new: only those are copied.
    partial = tmp_path / "partial.db"
    merge(sorted(run_dir.glob("db/777_[0-4]/*.db")), partial)
    r = merge([out], partial)
    assert r.sources_added == 12 and r.sources_present == 5
    for view in ("resource_metrics", "training_metrics", "generation_metrics", "jobs"):
        sql = f"SELECT array_task_id, count(*) FROM {view} GROUP BY array_task_id ORDER BY 1"
        assert q(partial, sql) == q(out, sql)


def test_requeued_task_keeps_both_attempts(tmp_path: Path) -> None:
    first = tmp_path / "a1" / "n0.db"
    write_task_db(first, 4, node="n0")
    # The requeued task goes on from the copy of attempt 0 (SLURM_RESTART_COUNT=1): a source of its own.
    requeued = tmp_path / "a2" / "n0.db"
    requeued.parent.mkdir()
    shutil.copy(first, requeued)
    write_task_db(requeued, 4, node="n0", t0=time.time() + 100, attempt=1)
    assert q(requeued, "SELECT source_id, attempt FROM sources") == [(1, 0), (2, 1)]
    out = tmp_path / "merged.db"
    result = merge([first, requeued], out)
    assert not result.skipped
    assert q(out, "SELECT array_task_id, node, attempt FROM sources ORDER BY attempt") == [(4, "n0", 0), (4, "n0", 1)]
    by_attempt = q(out, "SELECT s.attempt, count(*) FROM training_metrics t JOIN sources s USING (source_id)"
                        " GROUP BY s.attempt ORDER BY s.attempt")  # fmt: skip
    assert by_attempt == [(0, 1), (1, 1)]  # each attempt's rows once


def test_newer_copy_replaces_older(tmp_path: Path) -> None:
    db = tmp_path / "run" / "n0.db"
    write_task_db(db, 1, node="n0")
    snapshot = tmp_path / "snap" / "n0.db"
    snapshot.parent.mkdir()
    shutil.copy(db, snapshot)
    out = tmp_path / "merged.db"
    merge([snapshot], out)
    # The job goes on: more rows in the same attempt (same identity, new fingerprint).
    aetherium_hpc.init_db(db, source=SourceInfo(job_id="777_1", array_job_id="777", array_task_id=1, node="n0",
                                                hostname="n0"), listen=False)  # fmt: skip
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sources SET attempt = 0")  # as if the same writer had written on
    conn.commit()
    conn.close()
    aetherium_hpc.log_training_epoch_metric("loss", 0.1, round_number=0, epoch_number=1)
    aetherium_hpc.shutdown_db()
    r = merge([db], out)
    assert r.sources_replaced == 1 and r.sources_added == 0
    assert q(out, "SELECT count(*) FROM sources") == [(1,)]
    assert q(out, "SELECT count(*) FROM training_metrics") == [(2,)]
    # The older copy merged afterwards changes nothing.
    r = merge([snapshot], out)
    assert r.sources_outdated == 1 and q(out, "SELECT count(*) FROM training_metrics") == [(2,)]


def test_newer_schema_and_empty_inputs_skipped(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    write_task_db(good, 0)
    newer = tmp_path / "newer.db"
    shutil.copy(good, newer)
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    out = tmp_path / "out" / "merged.db"
    out.parent.mkdir()
    result = merge([good, newer, empty], out)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert set(reasons) == {"newer.db", "empty.db"}
    assert "newer than this aetherium-hpc" in reasons["newer.db"]
    assert "empty" in reasons["empty.db"]
    assert result.sources_added == 1


def test_bad_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(MergeInputError, match="no such file"):
        merge([tmp_path / "missing"], tmp_path / "o.db")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(MergeInputError, match="no \\*.db"):
        merge([tmp_path / "emptydir"], tmp_path / "o.db")
    foreign_out = tmp_path / "foreign.db"
    sqlite3.connect(foreign_out).execute("CREATE TABLE x(y)").connection.commit()
    good = tmp_path / "good.db"
    write_task_db(good, 0)
    with pytest.raises(SchemaError, match="not one written by aetherium-hpc"):
        merge([good], foreign_out)


def test_merge_command_exit_codes(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["merge", str(run_dir), "-o", str(tmp_path / "m.db")])
    assert args.handler(args) == SKIPPED_EXIT_CODE
    captured = capsys.readouterr()
    assert captured.err.count("skipped ") == 3
    assert "17 of 20" in captured.out
    good = sorted(run_dir.glob("db/777_1/*.db"))
    args = parser.parse_args(["merge", *map(str, good), "-o", str(tmp_path / "m2.db")])
    assert args.handler(args) == 0


@pytest.mark.parametrize(
    ("table", "column", "bad"),
    [("training_rows", "timestamp", "x"), ("generation_rows", "timestamp", "x")],
)
def test_an_input_with_bad_values_is_skipped_by_name_and_the_rest_merged(
    tmp_path: Path, table: str, column: str, bad: str
) -> None:
    for task in range(3):
        write_task_db(tmp_path / "in" / f"t{task}.db", task)
    conn = sqlite3.connect(tmp_path / "in" / "t1.db")
    conn.execute(f"UPDATE {table} SET {column} = ?", (bad,))
    conn.commit()
    conn.close()
    result = merge([tmp_path / "in"], tmp_path / "out.db")
    assert [Path(s.path).name for s in result.skipped] == ["t1.db"], result.summary()
    assert result.sources_added == 2 and result.exit_code == SKIPPED_EXIT_CODE
    out = sqlite3.connect(tmp_path / "out.db")
    try:
        assert out.execute("SELECT count(*) FROM sources").fetchone() == (2,)
        assert out.execute("SELECT count(*) FROM training_rows").fetchone() == (2,)
    finally:
        out.close()
