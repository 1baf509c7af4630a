"""The SQLite schema: tables underneath, and the views users query with plain SQL.

Resource samples are stored compactly: one row per *series* (metric_type,
metric_name, unit, node, device) and one row per *chunk* of up to
``CHUNK_SAMPLES`` samples of a series, encoded as :mod:`.chunks` describes.

The view ``resource_metrics`` unpacks chunks with SQLite's built-in ``json_each``,
so ``SELECT ... FROM resource_metrics`` works in the sqlite3 shell. The view is a
single join (no UNION), so SQLite flattens it into the user's query and computes
only the columns asked for: an aggregate over ``value`` never decodes timestamps.
The chunk a writer is still filling is updated in place at each flush.

Every row carries its provenance through ``source_id`` → ``sources`` (job id,
array job/task id, node), so a node database and a merged database have the
same schema. The job's identity is stored there only: ``job_rows`` holds what the
job's row says besides (times, status, exit code, config), and the view ``jobs``
joins the two into the columns users query.
"""

from __future__ import annotations

import sqlite3

from ..errors import ForeignDatabaseError, NewerSchemaError, OlderSchemaError, SchemaError
from . import sqlite_errors
from .chunks import COLUMNS as CHUNK_COLUMNS
from .chunks import TIMESTAMP_SQL

#: Mode of every database file aetherium-hpc writes (the live one, its run-directory copy, a merged
#: one): read and written by its owner, read by the owner's group (a lab's shared group), nothing
#: for others; the umask may take more away.
DB_FILE_MODE = 0o640
#: PRAGMA application_id of every aetherium-hpc database ("AETH").
APPLICATION_ID = 0x41455448
#: PRAGMA user_version: bumped on every incompatible change of the tables below.
#: 2: ``jobs`` is a view over ``job_rows`` and ``sources`` (it was a table repeating the identity).
#: 3: ``sample_chunks`` carries the statistics of its finite values (``nfin``, ``vsum``, ``vmax``).
#: 4: ``resource_metrics.value`` is REAL and the view shows each sample's chunk bounds (``chunk_t0``,
#:    ``chunk_t1``, indexed by ``sample_chunks_by_end``); ``job_rows.user_name`` (who submitted).
SCHEMA_VERSION = 4

_CHUNK_COLUMNS = """
    series_id INTEGER NOT NULL REFERENCES series(series_id),
    t0        REAL    NOT NULL,   -- epoch seconds of the first sample
    t1        REAL    NOT NULL,   -- epoch seconds of the last sample
    n         INTEGER NOT NULL,   -- number of samples
    dt_ms     INTEGER NOT NULL,   -- nominal interval of the grid, milliseconds
    jit       TEXT    NOT NULL,   -- JSON array: offset of each sample from the grid, ms
    vals      TEXT    NOT NULL,   -- JSON array: values
    nfin      INTEGER NOT NULL,   -- how many of the values are finite
    vsum      REAL    NOT NULL,   -- their sum
    vmax      REAL                -- their maximum (NULL when none is finite)
"""

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS sources (
    source_id     INTEGER PRIMARY KEY,
    job_id        TEXT,
    array_job_id  TEXT,
    array_task_id INTEGER,
    node          TEXT,
    hostname      TEXT,
    source_path   TEXT,
    attempt       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    series_id   INTEGER PRIMARY KEY,
    source_id   INTEGER NOT NULL DEFAULT 1 REFERENCES sources(source_id),
    metric_type TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    unit        TEXT NOT NULL DEFAULT '',
    node        TEXT NOT NULL DEFAULT '',
    device      TEXT NOT NULL DEFAULT '',
    UNIQUE (source_id, metric_type, metric_name, unit, node, device)
);
CREATE INDEX IF NOT EXISTS series_by_name ON series(metric_type, metric_name);
CREATE TABLE IF NOT EXISTS sample_chunks ({_CHUNK_COLUMNS});
CREATE INDEX IF NOT EXISTS sample_chunks_by_series ON sample_chunks(series_id, t0);
CREATE INDEX IF NOT EXISTS sample_chunks_by_end ON sample_chunks(series_id, t1);
CREATE TABLE IF NOT EXISTS generation_rows (
    id                INTEGER PRIMARY KEY,
    source_id         INTEGER NOT NULL DEFAULT 1 REFERENCES sources(source_id),
    timestamp         REAL NOT NULL,
    operation         TEXT NOT NULL,
    round_number      INTEGER,
    chunk_number      INTEGER,
    duration_seconds  REAL,
    samples_generated INTEGER,
    memory_used_mb    REAL,
    pid               INTEGER
);
CREATE TABLE IF NOT EXISTS training_rows (
    id            INTEGER PRIMARY KEY,
    source_id     INTEGER NOT NULL DEFAULT 1 REFERENCES sources(source_id),
    timestamp     REAL NOT NULL,
    metric_name   TEXT NOT NULL,
    metric_value  REAL,
    round_number  INTEGER,
    epoch_number  INTEGER,
    phase         TEXT
);
CREATE TABLE IF NOT EXISTS job_rows (
    source_id     INTEGER PRIMARY KEY REFERENCES sources(source_id),
    start_time    REAL,
    end_time      REAL,
    status        TEXT NOT NULL DEFAULT 'running',
    exit_code     INTEGER,
    config        TEXT,      -- JSON snapshot of the resolved configuration
    requested     TEXT,      -- JSON: what was asked of the scheduler (mem, cpus, time, gpus)
    detail        TEXT,
    user_name     TEXT       -- who submitted the job (SLURM_JOB_USER, else the process's user)
);
CREATE TABLE IF NOT EXISTS store_stats (
    source_id INTEGER NOT NULL DEFAULT 1,
    name      TEXT NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (source_id, name)
);

CREATE VIEW IF NOT EXISTS resource_metrics AS
SELECT {TIMESTAMP_SQL} AS timestamp,
       s.metric_type, s.metric_name, CAST(j.value AS REAL) AS value, s.unit, s.node, s.device,
       src.job_id, src.array_job_id, src.array_task_id, s.source_id, c.t0 AS chunk_t0, c.t1 AS chunk_t1
FROM series s
JOIN sources src ON src.source_id = s.source_id
JOIN sample_chunks c ON c.series_id = s.series_id
JOIN json_each(c.vals) j;

CREATE VIEW IF NOT EXISTS generation_metrics AS
SELECT g.timestamp, g.operation, g.round_number, g.chunk_number, g.duration_seconds,
       g.samples_generated, g.memory_used_mb, g.pid,
       src.job_id, src.array_job_id, src.array_task_id, src.node, g.source_id
FROM generation_rows g JOIN sources src ON src.source_id = g.source_id;

CREATE VIEW IF NOT EXISTS training_metrics AS
SELECT t.timestamp, t.metric_name, t.metric_value, t.round_number, t.epoch_number, t.phase,
       src.job_id, src.array_job_id, src.array_task_id, src.node, t.source_id
FROM training_rows t JOIN sources src ON src.source_id = t.source_id;

CREATE VIEW IF NOT EXISTS jobs AS
SELECT j.source_id, src.job_id, src.array_job_id, src.array_task_id, src.node,
       j.start_time, j.end_time, j.status, j.exit_code, j.config, j.requested, j.detail, j.user_name
FROM job_rows j JOIN sources src ON src.source_id = j.source_id;
"""

#: The columns of each table, in the order of its CREATE TABLE (the central store's differences are
#: declared in :data:`.central.schema.COLUMNS`; tests/store/test_store_schema.py checks both databases
#: against them). Every copy of rows between databases -- the writer, merge, the central push and
#: pull, the report's reads -- names columns from here, so a new column is written once.
COLUMNS: dict[str, tuple[str, ...]] = {
    "sources": ("source_id", "job_id", "array_job_id", "array_task_id", "node", "hostname", "source_path", "attempt"),
    "series": ("series_id", "source_id", "metric_type", "metric_name", "unit", "node", "device"),
    "sample_chunks": ("series_id", *CHUNK_COLUMNS),
    "generation_rows": (
        "id",
        "source_id",
        "timestamp",
        "operation",
        "round_number",
        "chunk_number",
        "duration_seconds",
        "samples_generated",
        "memory_used_mb",
        "pid",
    ),  # fmt: skip
    "training_rows": (
        "id",
        "source_id",
        "timestamp",
        "metric_name",
        "metric_value",
        "round_number",
        "epoch_number",
        "phase",
    ),  # fmt: skip
    "job_rows": (
        "source_id",
        "start_time",
        "end_time",
        "status",
        "exit_code",
        "config",
        "requested",
        "detail",
        "user_name",
    ),  # fmt: skip
    "store_stats": ("source_id", "name", "value"),
}


def columns(table: str, *, without: tuple[str, ...] = (), prefix: str = "") -> str:
    """``table``'s columns as an SQL list (``"a, b, c"``), leaving out ``without``, each after ``prefix``."""
    return ", ".join(prefix + c for c in COLUMNS[table] if c not in without)


#: Tables and views every aetherium-hpc database answers (the schema contract).
CONTRACT_NAMES = ("resource_metrics", "generation_metrics", "training_metrics", "jobs")


def connect(path: str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open ``path`` to write it (autocommit; transactions are explicit). To read, see :mod:`.reader`."""
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)


def check_version(conn: sqlite3.Connection, path: str, db: str = "main") -> bool:
    """Return True if ``conn`` holds an aetherium-hpc database of this schema, False if empty.

    ``db``: the schema name of the database on ``conn`` (an attached one). Raises a
    :class:`SchemaError` for a foreign file, an unreadable file, or another version.
    """
    try:
        app_id = conn.execute(f"PRAGMA {db}.application_id").fetchone()[0]
        version = conn.execute(f"PRAGMA {db}.user_version").fetchone()[0]
        n_tables = conn.execute(f"SELECT count(*) FROM {db}.sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if sqlite_errors.primary_code(exc) in (sqlite_errors.BUSY, sqlite_errors.LOCKED):
            raise SchemaError(
                f"{path}: locked by another process ({exc}); wait until it ends, or work on a copy"
            ) from exc
        raise SchemaError(f"{path}: not a readable SQLite database ({exc}); pass an aetherium-hpc .db file") from exc
    if app_id == 0 and version == 0 and n_tables == 0:
        return False
    if app_id != APPLICATION_ID:
        raise ForeignDatabaseError(
            f"{path}: an SQLite database, but not one written by aetherium-hpc "
            f"(application_id={app_id:#x}); choose another path so it is not overwritten"
        )
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path}: schema version {version} is newer than this aetherium-hpc understands "
            f"({SCHEMA_VERSION}); upgrade with `pip install -U aetherium-hpc`"
        )
    if version < SCHEMA_VERSION:
        raise OlderSchemaError(
            f"{path}: schema version {version} is older than {SCHEMA_VERSION} and is not rewritten; "
            "read it with the aetherium-hpc version that wrote it, or write to a new path"
        )
    return True


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database (inside one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in _split(DDL):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('application', 'aetherium-hpc')")
    conn.execute("COMMIT")


def index_statements() -> list[str]:
    """The ``CREATE INDEX`` statements of :data:`DDL`."""
    return [s for s in _split(DDL) if s.lstrip().upper().startswith("CREATE INDEX")]


def create_indexes(conn: sqlite3.Connection) -> None:
    """Create the indexes of :data:`DDL` that are missing (a merge drops one while it runs)."""
    for statement in index_statements():
        conn.execute(statement)


def _split(script: str) -> list[str]:
    """Split the DDL into statements (sqlite3.complete_statement finds the boundaries)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    return out
