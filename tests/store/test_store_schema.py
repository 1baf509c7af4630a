"""The one table of columns (store.schema.COLUMNS and its central twin) is what the databases hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from aetherium_hpc.store import schema
from aetherium_hpc.store.central import schema as central_schema


def test_sqlite_tables_have_the_declared_columns(tmp_path: Path) -> None:
    conn = schema.connect(str(tmp_path / "s.db"))
    schema.create(conn)
    for table, cols in schema.COLUMNS.items():
        found = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
        assert found == cols, table
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(schema.COLUMNS) | {"meta"}


def test_columns_lists_leave_out_and_prefix() -> None:
    assert schema.columns("store_stats") == "source_id, name, value"
    assert schema.columns("series", without=("series_id",), prefix="s.") == (
        "s.source_id, s.metric_type, s.metric_name, s.unit, s.node, s.device"
    )
    with pytest.raises(KeyError):
        schema.columns("no_such_table")


@pytest.mark.postgres
def test_postgresql_tables_have_the_declared_columns(pg_url: str) -> None:
    from central_helpers import private_schema

    from aetherium_hpc.store.central.url import connect

    with private_schema(pg_url) as url, connect(url) as conn:
        central_schema.ensure(conn, "test")
        for table, cols in central_schema.COLUMNS.items():
            found = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
            )
            assert found == cols, table
