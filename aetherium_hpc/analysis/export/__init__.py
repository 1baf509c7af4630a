"""Export a metrics database to the tools people already use.

* ``csv`` / ``json`` (:mod:`.tables`) and ``parquet`` (:mod:`.parquet`, with pyarrow): tables and
  views; without a table name, the contract views (resource_metrics, generation_metrics,
  training_metrics) plus ``jobs`` and ``sources``;
* ``tensorboard`` (:mod:`.tensorboard`, with tensorboardX): event files, one run per task.

Rows are streamed, so a large merged database does not have to fit in memory. The packages of
the optional formats are imported only when asked for; a missing one is one line saying which
extra installs it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...errors import StoreError
from .output import ExportError, open_database, output_folder

#: Exported when no --table is given.
DEFAULT_TABLES = ("sources", "jobs", "resource_metrics", "generation_metrics", "training_metrics")
FORMATS = ("csv", "json", "parquet", "tensorboard")

__all__ = ["DEFAULT_TABLES", "FORMATS", "ExportError", "export"]


def _names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )]  # fmt: skip


def export(db: str, *, fmt: str = "csv", tables: Sequence[str] | None = None, output: str | None = None) -> list[str]:
    """Write ``tables`` (default :data:`DEFAULT_TABLES`) of ``db`` as ``fmt``; returns the files
    written (for ``tensorboard``: the run folders).

    ``csv``/``json``: see :func:`.tables.write_tables`. ``parquet``: ``output`` is a folder, one
    ``NAME.parquet`` per table. ``tensorboard``: ``output`` is the log folder, one run folder per
    task (``tables`` does not apply). Raises :class:`~aetherium_hpc.errors.AetheriumError` for
    what the user can fix.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown format; use one of {', '.join(FORMATS)}")
    if fmt == "tensorboard" and tables:
        raise ExportError(
            "--table does not apply to --format tensorboard (it writes the training and resource metrics "
            "of every task); leave --table out"
        )
    if fmt == "tensorboard":
        from . import tensorboard

        tensorboard.require()
    elif fmt == "parquet":
        from . import parquet

        parquet.require()
    conn = open_database(db)
    try:
        if fmt == "tensorboard":
            return tensorboard.write_runs(conn, output_folder(output, fmt))
        known = _names(conn)
        wanted = list(tables) if tables else [t for t in DEFAULT_TABLES if t in known]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise ExportError(f"unknown table or view {', '.join(unknown)}; choose from {', '.join(known)}")
        if fmt == "parquet":
            return parquet.write_tables(conn, wanted, output_folder(output, fmt))
        from .tables import write_tables

        return write_tables(conn, fmt, wanted, output)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{db}: cannot be read ({exc}); is it a complete aetherium-hpc database?") from exc
    finally:
        conn.close()
