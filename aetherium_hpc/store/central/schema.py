"""The PostgreSQL schema: the SQLite schema's tables and views, for many sources at once.

The same names as :mod:`..schema` (``sources``, ``series``, ``sample_chunks``, ``generation_rows``,
``training_rows``, ``job_rows``, ``store_stats``; views ``resource_metrics``, ``generation_metrics``,
``training_metrics``, ``jobs``), with what a central database needs besides:

* **Sources** get a surrogate ``source_id`` local to PostgreSQL and a unique ``source_key``, the
  JSON of the natural key ``[job_id, array_job_id, array_task_id, node, hostname, attempt]``
  (``attempt`` left out when 0, so a first attempt's key is the one written before attempts were
  told apart). Each attempt of a requeued job is a source of its own, as in SQLite.
* **Idempotent keys.** A series is unique per source and (type, name, unit, node, device); a
  chunk per series and ``k0``, the ordinal of its first sample in the series (the samples of a
  series are the same sequence in the live database, its run-directory copy and a merged one,
  only cut into chunks differently); a generation or training row per source and its logged
  fields. So streaming live and loading the finished files later store everything once.
* **Chunks** hold native arrays (``jit integer[]``, ``vals double precision[]``) rather than the
  SQLite JSON text: ``unnest ... WITH ORDINALITY`` reads them without parsing, ±inf are native,
  and they take less room; ``resource_metrics`` computes the same timestamps as SQLite's view.
* ``meta`` records the schema version; a database of a newer version is refused in one line.
"""

from __future__ import annotations

from typing import Any

from ...errors import CentralStoreError
from ..schema import COLUMNS as LOCAL_COLUMNS

#: Version of the PostgreSQL schema below (``meta.schema_version``).
#: 2: ``job_rows.config`` and ``requested`` are ``jsonb``; ``job_rows.user_name``; ``resource_metrics``
#: shows its chunk bounds (``chunk_t0``, ``chunk_t1``, indexed by ``sample_chunks_by_end``).
PG_SCHEMA_VERSION = 2
#: pg_advisory_xact_lock key held while the schema is created (many nodes start at once).
_LOCK_KEY = 0x41455448

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   text PRIMARY KEY,
    value text
);
CREATE TABLE IF NOT EXISTS sources (
    source_id     bigserial PRIMARY KEY,
    source_key    text NOT NULL UNIQUE,
    job_id        text,
    array_job_id  text,
    array_task_id bigint,
    node          text,
    hostname      text,
    source_path   text,
    attempt       bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    series_id   bigserial PRIMARY KEY,
    source_id   bigint NOT NULL REFERENCES sources(source_id),
    metric_type text NOT NULL,
    metric_name text NOT NULL,
    unit        text NOT NULL DEFAULT '',
    node        text NOT NULL DEFAULT '',
    device      text NOT NULL DEFAULT '',
    UNIQUE (source_id, metric_type, metric_name, unit, node, device)
);
CREATE INDEX IF NOT EXISTS series_by_name ON series(metric_type, metric_name);
CREATE TABLE IF NOT EXISTS sample_chunks (
    series_id bigint NOT NULL REFERENCES series(series_id),
    k0        bigint NOT NULL,              -- ordinal of the chunk's first sample in its series
    t0        double precision NOT NULL,
    t1        double precision NOT NULL,
    n         integer NOT NULL,
    dt_ms     integer NOT NULL,
    jit       integer[] NOT NULL,
    vals      double precision[] NOT NULL,  -- NULL elements: missing values (NaN)
    PRIMARY KEY (series_id, k0)
);
CREATE INDEX IF NOT EXISTS sample_chunks_by_end ON sample_chunks(series_id, t1);
CREATE TABLE IF NOT EXISTS generation_rows (
    id                bigserial PRIMARY KEY,
    source_id         bigint NOT NULL REFERENCES sources(source_id),
    timestamp         double precision NOT NULL,
    operation         text NOT NULL,
    round_number      bigint,
    chunk_number      bigint,
    duration_seconds  double precision,
    samples_generated bigint,
    memory_used_mb    double precision,
    pid               bigint
);
CREATE UNIQUE INDEX IF NOT EXISTS generation_rows_key ON generation_rows (source_id, timestamp, operation,
    coalesce(round_number, -1), coalesce(chunk_number, -1), coalesce(pid, -1));
CREATE TABLE IF NOT EXISTS training_rows (
    id            bigserial PRIMARY KEY,
    source_id     bigint NOT NULL REFERENCES sources(source_id),
    timestamp     double precision NOT NULL,
    metric_name   text NOT NULL,
    metric_value  double precision,
    round_number  bigint,
    epoch_number  bigint,
    phase         text
);
CREATE UNIQUE INDEX IF NOT EXISTS training_rows_key ON training_rows (source_id, timestamp, metric_name,
    coalesce(round_number, -1), coalesce(epoch_number, -1), coalesce(phase, ''));
CREATE TABLE IF NOT EXISTS job_rows (
    source_id   bigint PRIMARY KEY REFERENCES sources(source_id),
    start_time  double precision,
    end_time    double precision,
    status      text NOT NULL DEFAULT 'running',
    exit_code   bigint,
    config      jsonb,
    requested   jsonb,
    detail      text,
    user_name   text
);
CREATE TABLE IF NOT EXISTS store_stats (
    source_id bigint NOT NULL REFERENCES sources(source_id),
    name      text NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (source_id, name)
);

CREATE OR REPLACE VIEW resource_metrics AS
SELECT c.t0 + (((u.k - 1) * c.dt_ms + c.jit[u.k])::double precision / 1000.0::double precision) AS timestamp,
       s.metric_type, s.metric_name, u.value, s.unit, s.node, s.device,
       src.job_id, src.array_job_id, src.array_task_id, s.source_id, c.t0 AS chunk_t0, c.t1 AS chunk_t1
FROM series s
JOIN sources src ON src.source_id = s.source_id
JOIN sample_chunks c ON c.series_id = s.series_id
CROSS JOIN LATERAL unnest(c.vals) WITH ORDINALITY AS u(value, k);

CREATE OR REPLACE VIEW generation_metrics AS
SELECT g.timestamp, g.operation, g.round_number, g.chunk_number, g.duration_seconds,
       g.samples_generated, g.memory_used_mb, g.pid,
       src.job_id, src.array_job_id, src.array_task_id, src.node, g.source_id
FROM generation_rows g JOIN sources src ON src.source_id = g.source_id;

CREATE OR REPLACE VIEW training_metrics AS
SELECT t.timestamp, t.metric_name, t.metric_value, t.round_number, t.epoch_number, t.phase,
       src.job_id, src.array_job_id, src.array_task_id, src.node, t.source_id
FROM training_rows t JOIN sources src ON src.source_id = t.source_id;

CREATE OR REPLACE VIEW jobs AS
SELECT j.source_id, src.job_id, src.array_job_id, src.array_task_id, src.node,
       j.start_time, j.end_time, j.status, j.exit_code, j.config, j.requested, j.detail, j.user_name
FROM job_rows j JOIN sources src ON src.source_id = j.source_id;
"""

#: The columns of each table here: those of the SQLite tables (:data:`...schema.COLUMNS`) but for
#: ``sources.source_key`` (the natural key that makes a push idempotent) and ``sample_chunks``, which
#: keys a chunk by its first sample's ordinal ``k0`` and holds arrays, without the statistics columns.
COLUMNS: dict[str, tuple[str, ...]] = {
    **LOCAL_COLUMNS,
    "sources": ("source_id", "source_key", *LOCAL_COLUMNS["sources"][1:]),
    "sample_chunks": ("series_id", "k0", "t0", "t1", "n", "dt_ms", "jit", "vals"),
}


#: From version 1 to 2 (run under the schema lock; the views are created again by :data:`DDL`, whose
#: other statements leave the tables as they are).
UPGRADE_1_TO_2 = """
DROP VIEW IF EXISTS jobs;
DROP VIEW IF EXISTS resource_metrics;
ALTER TABLE job_rows ALTER COLUMN config TYPE jsonb USING config::jsonb;
ALTER TABLE job_rows ALTER COLUMN requested TYPE jsonb USING requested::jsonb;
ALTER TABLE job_rows ADD COLUMN IF NOT EXISTS user_name text;
"""

#: The statements that bring a database of an older version to this one, by that version.
UPGRADES = {1: UPGRADE_1_TO_2}


def ensure(conn: Any, where: str) -> None:
    """Create the schema if it is missing, upgrade an older one, check its version; commits.
    ``where``: the masked URL, for the message of a :class:`CentralStoreError`."""
    version = _version(conn)
    if version is None or version in UPGRADES:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        version = _version(conn)  # another node may have created or upgraded it while we waited
        if version is None or version in UPGRADES:
            if version is not None:
                conn.execute(UPGRADES[version])
            conn.execute(DDL)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', %s), ('application', 'aetherium-hpc')"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(PG_SCHEMA_VERSION),),
            )
            version = PG_SCHEMA_VERSION
    conn.commit()
    _refuse_other(version, where)


def check(conn: Any, where: str) -> None:
    """Check, without creating anything, that ``conn`` holds this schema (a reader's check); ends the
    transaction. A database without it, or of another version: a :class:`CentralStoreError`."""
    version = _version(conn)
    conn.rollback()
    if version is None:
        raise CentralStoreError(
            f"central store {where}: no aetherium-hpc tables there; fill it with `aetherium-hpc merge RUN_DIR "
            "--into URL` or monitoring.central, or check the database name and search_path in the URL"
        )
    _refuse_other(version, where)


def _refuse_other(version: int, where: str) -> None:
    if version != PG_SCHEMA_VERSION:
        newer = version > PG_SCHEMA_VERSION
        raise CentralStoreError(
            f"central store {where}: schema version {version} is "
            + (
                f"newer than this aetherium-hpc understands ({PG_SCHEMA_VERSION}); upgrade with "
                "`pip install -U aetherium-hpc`"
                if newer
                else f"older than {PG_SCHEMA_VERSION}; the next sender or `aetherium-hpc merge RUN_DIR --into URL` "
                "upgrades it"
                if version in UPGRADES
                else f"not {PG_SCHEMA_VERSION}; point monitoring.central at another database"
            )
        )


def _version(conn: Any) -> int | None:
    """The schema version recorded in ``meta``; None when there is no aetherium-hpc schema yet."""
    if not conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        return -1
