"""The central store at the scale of a lab: 300 node senders against a server of 20 connections.

The server is the small one `.ci/run` starts (``max_connections=20``; the senders log in as a role
with ``CONNECTION LIMIT 10``, as docs/CENTRAL.md advises a lab). While the senders run, another
client (the owner role, as a dashboard or a person would) connects every quarter second and must
never be refused; every node must show up within 3 push intervals; after they stop, every sample
and row of every node must be in PostgreSQL.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from fleet import Feeder, central_counts, local_counts, make_nodes, start_senders, stop_senders
from testenv import server_url

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

SMALL_HOW = (
    "the small server of .ci/run: AETHERIUM_PG_DIR=/tmp/aetherium-pg-small AETHERIUM_PG_PORT=15433"
    " AETHERIUM_PG_MAX_CONNECTIONS=20 AETHERIUM_PG_SENDER_LIMIT=10 AETHERIUM_PG_ENV=AETHERIUM_TEST_PG_SMALL"
    " postgres/server.sh up, then eval its env"
)
NODES = 300
INTERVAL_S = 5.0
SENDER_APP = "aetherium-hpc sender"


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={schema}')}"


@pytest.fixture
def small_server() -> Iterator[tuple[str, str]]:
    """(owner URL, sender URL) of the small server, both on a fresh schema dropped afterwards."""
    owner = server_url("AETHERIUM_TEST_PG_SMALL", SMALL_HOW)
    sender = server_url("AETHERIUM_TEST_PG_SMALL_SENDER", SMALL_HOW)
    schema = "fleet_" + secrets.token_hex(4)
    with psycopg.connect(owner, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_schema(owner, schema), _with_schema(sender, schema)
    finally:
        with psycopg.connect(owner, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


class Probe(threading.Thread):
    """Another client: connects every ``every`` seconds, asks one question, and counts refusals; also
    records the most sender connections the server held at once."""

    def __init__(self, url: str, every: float = 0.25) -> None:
        super().__init__(name="probe", daemon=True)
        self.url = url
        self.every = every
        self.connects = 0
        self.refused: list[str] = []
        self.peak_senders = 0
        self.sources_seen: list[tuple[float, int]] = []  # (monotonic time, sources in PostgreSQL)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    (senders,) = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (SENDER_APP,)
                    ).fetchone()  # type: ignore[misc]
                    try:
                        (sources,) = conn.execute("SELECT count(*) FROM sources").fetchone()  # type: ignore[misc]
                    except psycopg.errors.UndefinedTable:  # no sender has created the schema yet
                        sources = 0
                self.connects += 1
                self.peak_senders = max(self.peak_senders, senders)
                self.sources_seen.append((time.monotonic(), sources))
            except psycopg.Error as exc:
                self.refused.append(" ".join(str(exc).split()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def test_300_senders_share_10_connections_and_others_always_get_in(
    small_server: tuple[str, str], tmp_path: Path
) -> None:
    owner, sender = small_server
    paths = make_nodes(tmp_path, NODES, series=4)
    feeder = Feeder(paths, tick=1.0)
    probe = Probe(owner)
    probe.start()
    feeder.start()
    started = time.monotonic()
    senders = start_senders(paths, sender, interval=INTERVAL_S, final_timeout=30.0)
    try:
        time.sleep(4 * INTERVAL_S)
    finally:
        feeder.stop()
        stop_senders(senders)
        probe.stop()
    assert feeder.error is None, feeder.error
    assert feeder.samples >= NODES * 4 * 10, feeder.samples  # the nodes really grew while the senders ran

    assert probe.refused == [], f"{len(probe.refused)} of {probe.connects + len(probe.refused)}: {probe.refused[:3]}"
    assert probe.connects >= 20, probe.connects
    assert 0 < probe.peak_senders <= 10, probe.peak_senders
    all_in = [t - started for t, n in probe.sources_seen if n == NODES]
    assert all_in and all_in[0] <= 3 * INTERVAL_S, (all_in[:1], probe.sources_seen[-1])

    gave_up = [s.gave_up for s in senders if s.gave_up]
    assert gave_up == [], gave_up[:3]
    assert not any(s.is_alive() for s in senders)
    with psycopg.connect(owner) as conn:
        central = central_counts(conn)
    local = {job: (samples, rows) for job, samples, rows in map(local_counts, paths)}
    missing = {job: (local[job], central.get(job)) for job in local if central.get(job) != local[job]}
    assert not missing, f"{len(missing)} nodes differ, e.g. {list(missing.items())[:3]}"
    busy = sum(s.busy for s in senders)
    pushes = sum(s.pushes for s in senders)
    errors = sum(s.errors for s in senders)
    assert errors == 0, [s for s in senders if s.errors][:1]
    print(f"\n{NODES} senders: {pushes} pushes, {busy} put off busy, peak {probe.peak_senders} sender connections,"
          f" all visible after {all_in[0]:.1f} s, probe connected {probe.connects} times")  # fmt: skip
