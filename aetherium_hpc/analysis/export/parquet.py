"""Tables and views as Parquet files (pyarrow), one per table, written in record batches.

A column's Arrow type comes from the type SQLite declares for it (``INTEGER`` → int64, ``REAL``
→ float64, ``TEXT`` → string, ``BLOB`` → binary, by SQLite's affinity rules). A column without a
declared type (a view's computed column: ``resource_metrics.timestamp`` and ``value``) takes the
type of its first value, numbers as float64 (SQLite hands a JSON ``40`` back as an integer and
``40.5`` as a real in the same column). The columns of :data:`TIME_COLUMNS` (epoch seconds in
SQLite) are Parquet timestamps, microseconds in UTC (``timestamp[us, tz=UTC]``), so DuckDB,
Spark, pandas and Grafana read them as times. A file is written under a temporary name and
renamed when complete, so a failed export leaves no half-written ``NAME.parquet``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from ...paths import replaced_atomically
from .output import ExportError, missing_extra, quote

#: Rows per record batch (and per Parquet row group at most).
BATCH_ROWS = 65_536
#: The columns that hold a time as seconds since the epoch (UTC) in an aetherium-hpc database.
TIME_COLUMNS = frozenset({"timestamp", "start_time", "end_time", "chunk_t0", "chunk_t1", "t0", "t1"})


def require() -> None:
    """:class:`ExportError` with the install line when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise missing_extra("parquet", "pyarrow", "parquet") from None


def _arrow_type(conn: sqlite3.Connection, table: str, column: str, declared: str) -> Any:
    import pyarrow as pa

    if column in TIME_COLUMNS:
        return pa.timestamp("us", tz="UTC")
    decl = declared.upper()
    if "INT" in decl:
        return pa.int64()
    if any(k in decl for k in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if any(k in decl for k in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if "BLOB" in decl:
        return pa.binary()
    first = conn.execute(
        f"SELECT typeof({quote(column)}) FROM {quote(table)} WHERE {quote(column)} IS NOT NULL LIMIT 1"
    ).fetchone()
    kind = first[0] if first else "null"
    return {"integer": pa.float64(), "real": pa.float64(), "text": pa.string(), "blob": pa.binary()}.get(
        kind, pa.string()
    )


def _array(values: Sequence[Any], type_: Any) -> Any:
    """``values`` as an Arrow array of ``type_``; a timestamp from epoch seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_timestamp(type_):
        return pa.array(values, type=type_)
    seconds = pa.array(values, type=pa.float64())
    return pc.round(pc.multiply(seconds, 1e6)).cast(pa.int64()).cast(type_)


def _write_one(conn: sqlite3.Connection, table: str, path: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    declared = {r[1]: r[2] or "" for r in conn.execute(f"PRAGMA table_info({quote(table)})")}
    cur = conn.execute(f"SELECT * FROM {quote(table)}")
    names = [d[0] for d in cur.description]
    schema = pa.schema([pa.field(n, _arrow_type(conn, table, n, declared.get(n, ""))) for n in names])
    schema = schema.with_metadata({"aetherium_hpc.table": table})
    n = 0
    with replaced_atomically(path) as part:
        with pq.ParquetWriter(part, schema) as writer:
            while rows := cur.fetchmany(BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                arrays = []
                for name, field, values in zip(names, schema, columns, strict=True):
                    try:
                        arrays.append(_array(values, field.type))
                    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                        raise ExportError(
                            f"{table}.{name}: a value does not fit the column's type {field.type} ({exc}); "
                            f"export this table as CSV: --format csv --table {table}"
                        ) from None
                writer.write_batch(pa.record_batch(arrays, schema=schema))
                n += len(rows)
    return n


def write_tables(conn: sqlite3.Connection, tables: Sequence[str], folder: str) -> list[str]:
    """``folder/NAME.parquet`` for each of ``tables``; returns the files written."""
    written = []
    for table in tables:
        path = os.path.join(folder, f"{table}.parquet")
        _write_one(conn, table, path)
        written.append(path)
    return written
