"""Tables and views as CSV or JSON, streamed row by row."""

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

from ...paths import replaced_atomically
from .output import ExportError, output_folder, quote


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
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ExportError(f"-o {path}: a folder; name a file to write, or leave -o out for stdout")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"{path}: folder {folder} does not exist; create it or choose another -o path")
    with replaced_atomically(path) as part, open(part, "w", encoding="utf-8", newline="") as fh:
        yield fh


def _write_csv(conn: sqlite3.Connection, table: str, out: IO[str]) -> int:
    cur = conn.execute(f"SELECT * FROM {quote(table)}")
    w = csv.writer(out)
    w.writerow([d[0] for d in cur.description])
    n = 0
    for row in cur:
        w.writerow(row)
        n += 1
    return n


def _write_json_rows(conn: sqlite3.Connection, table: str, out: IO[str]) -> int:
    cur = conn.execute(f"SELECT * FROM {quote(table)}")
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


def write_tables(conn: sqlite3.Connection, fmt: str, tables: Sequence[str], output: str | None) -> list[str]:
    """CSV or JSON of ``tables``; returns the files written.

    CSV of one table goes to ``output`` (a file) or stdout; CSV of several tables goes to the
    folder ``output`` (created if missing), one ``NAME.csv`` each. JSON of one table is a list of
    row objects; of several tables an object ``{name: [rows]}``.
    """
    written: list[str] = []
    if fmt == "csv" and len(tables) > 1:
        if output is None:
            raise ExportError(
                f"CSV of {len(tables)} tables writes a folder (one NAME.csv each): add -o OUT_DIR "
                "(created if missing), or name one --table"
            )
        folder = output_folder(output, fmt)
        for t in tables:
            path = os.path.join(folder, f"{t}.csv")
            with _target(path) as fh:
                _write_csv(conn, t, fh)
            written.append(path)
        return written
    with _target(output) as fh:
        if fmt == "csv":
            _write_csv(conn, tables[0], fh)
        elif len(tables) == 1:
            _write_json_rows(conn, tables[0], fh)
        else:
            fh.write("{")
            for i, t in enumerate(tables):
                fh.write(("," if i else "") + "\n" + json.dumps(t) + ": ")
                _write_json_rows(conn, t, fh)
            fh.write("\n}")
        if fmt == "json":
            fh.write("\n")
    if output is not None:
        written.append(output)
    return written
