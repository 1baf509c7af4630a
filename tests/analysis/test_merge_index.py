"""merge of many inputs defers the series_by_name index; it is always there once a merge ends."""

from __future__ import annotations

import importlib
import sqlite3
import time
from pathlib import Path

from task_dbs import write_task_db

from aetherium_hpc.analysis.merge import merge

merge_mod = importlib.import_module("aetherium_hpc.analysis.merge")


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()


def test_index_deferred_during_a_large_merge_is_built_at_the_end(tmp_path: Path) -> None:
    t0 = time.time()
    files = []
    for task in range(merge_mod.DEFER_INDEX_MIN_INPUTS):
        path = tmp_path / "db" / f"9_{task}" / "n1.db"
        write_task_db(path, task, job="9", node="n1", t0=t0)
        files.append(path)
    out = tmp_path / "merged.db"
    result = merge(files, out)
    assert result.sources_added == len(files) and not result.skipped
    assert {merge_mod.DEFERRED_INDEX, "sample_chunks_by_series"} <= _indexes(out)
    conn = sqlite3.connect(out)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT avg(value) FROM resource_metrics WHERE metric_type = 'cpu' AND metric_name = 'system_total'"
    ))  # fmt: skip
    conn.close()
    assert merge_mod.DEFERRED_INDEX in plan


def test_an_index_a_killed_merge_left_missing_is_rebuilt_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "db" / "9_0" / "n1.db"
    write_task_db(path, 0, job="9", node="n1")
    out = tmp_path / "merged.db"
    merge([path], out)
    conn = sqlite3.connect(out)
    conn.execute(f"DROP INDEX {merge_mod.DEFERRED_INDEX}")  # what a merge killed half-way leaves
    conn.commit()
    conn.close()
    assert merge_mod.DEFERRED_INDEX not in _indexes(out)
    again = merge([path], out)
    assert again.sources_added == 0 and again.sources_present == 1
    assert merge_mod.DEFERRED_INDEX in _indexes(out)
