"""Export tables and views of a metrics database as CSV or JSON.

Without a table name, the contract views (resource_metrics, generation_metrics,
training_metrics) plus ``jobs`` and ``sources`` are written. Rows are streamed, so a
large merged database does not have to fit in memory.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from ..errors import AetheriumError, StoreError
from ..store import reader, schema

#: Exported when no --table is given.
DEFAULT_TABLES = ("sources", "jobs", "resource_metrics", "generation_metrics", "training_metrics")
FORMATS = ("csv", "json")


class ExportError(AetheriumError):
    """The export cannot be done as asked."""


def _names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )]  # fmt: skip


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    return v


@contextmanager
def _target(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"{path}: folder {folder} does not exist; create it or choose another -o path")
    with open(path, "w", encoding="utf-8", newline="") as fh:
        yield fh


def _write_csv(conn: sqlite3.Connection, table: str, out: IO[str]) -> int:
    cur = conn.execute(f"SELECT * FROM {_quote(table)}")
    w = csv.writer(out)
    w.writerow([d[0] for d in cur.description])
    n = 0
    for row in cur:
        w.writerow(row)
        n += 1
    return n


def _write_json_rows(conn: sqlite3.Connection, table: str, out: IO[str]) -> int:
    cur = conn.execute(f"SELECT * FROM {_quote(table)}")
    names = [d[0] for d in cur.description]
    out.write("[")
    n = 0
    for row in cur:
        out.write(
            ("," if n else "")
            + "\n  "
            + json.dumps(dict(zip(names, map(_json_value, row), strict=True)), allow_nan=False)
        )
        n += 1
    out.write("\n]" if n else "]")
    return n


def export(db: str, *, fmt: str = "csv", tables: Sequence[str] | None = None, output: str | None = None) -> list[str]:
    """Write ``tables`` (default :data:`DEFAULT_TABLES`) of ``db`` as ``fmt``; returns the files written.

    CSV of one table goes to ``output`` (a file) or stdout; CSV of several tables needs
    ``output`` to be a folder (one ``NAME.csv`` each). JSON of one table is a list of row
    objects; of several tables an object ``{name: [rows]}``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if not os.path.isfile(db):
        raise StoreError(f"{db}: no such database file")
    conn = reader.open_readonly(db)
    try:
        if not schema.check_version(conn, db):
            raise StoreError(f"{db}: empty file, nothing to export")
        known = _names(conn)
        wanted = list(tables) if tables else [t for t in DEFAULT_TABLES if t in known]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise ExportError(f"unknown table or view {', '.join(unknown)}; choose from {', '.join(known)}")
        written: list[str] = []
        if fmt == "csv" and len(wanted) > 1:
            if output is None or not os.path.isdir(output):
                raise ExportError(
                    f"CSV of {len(wanted)} tables needs -o to be an existing folder (one NAME.csv each), "
                    "or name one --table"
                )
            for t in wanted:
                path = os.path.join(output, f"{t}.csv")
                with _target(path) as fh:
                    _write_csv(conn, t, fh)
                written.append(path)
            return written
        with _target(output) as fh:
            if fmt == "csv":
                _write_csv(conn, wanted[0], fh)
            elif len(wanted) == 1:
                _write_json_rows(conn, wanted[0], fh)
            else:
                fh.write("{")
                for i, t in enumerate(wanted):
                    fh.write(("," if i else "") + "\n" + json.dumps(t) + ": ")
                    _write_json_rows(conn, t, fh)
                fh.write("\n}")
            if fmt == "json":
                fh.write("\n")
        if output is not None:
            written.append(output)
        return written
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{db}: cannot be read ({exc})") from exc
    finally:
        conn.close()
