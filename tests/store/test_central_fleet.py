"""The central store at the scale of a lab: node senders against a server of 20 connections.

The server is the small one `.ci/run` starts (``max_connections=20``). 300 senders push through
PgBouncer (transaction pooling, a pool of 4: how docs/CENTRAL.md advises a lab to connect many
nodes); 30 push straight to it, logged in as a role with ``CONNECTION LIMIT 8``. While they run,
another client (the owner role, as a dashboard or a person) connects straight to the server every
quarter second and must never be refused; every node must show up within 3 push intervals; after
they stop, every sample and row of every node must be in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import psycopg.conninfo
import pytest
from fleet import Feeder, central_counts, local_counts, make_nodes, start_senders, stop_senders
from testenv import server_url

from aetherium_hpc.store.central.sender import CentralSender

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

SMALL_HOW = (
    "the small server of .ci/run: AETHERIUM_PG_DIR=/tmp/aetherium-pg-small AETHERIUM_PG_PORT=15433"
    " AETHERIUM_PG_MAX_CONNECTIONS=20 AETHERIUM_PG_SENDER_LIMIT=8 AETHERIUM_PG_ENV=AETHERIUM_TEST_PG_SMALL"
    " postgres/server.sh up, and PgBouncer in front of it (the small one in postgres/pgbouncer.sh), then eval their env"
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
    records the most sender sessions the server held at once (established ones: a refused attempt
    shows for a moment too, and takes a slot while it does -- why the role's limit leaves room)."""

    def __init__(self, url: str, every: float = 0.25, *, database: bool = False) -> None:
        super().__init__(name="probe", daemon=True)
        self.url = url
        self.database = database  # count the other client backends of its database (PgBouncer's pool)
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
                        # state is NULL while a backend starts: a sender refused at its role's limit shows so
                        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state IS NOT NULL AND"
                        + (" datname = current_database()" if self.database else " application_name = %s"),
                        () if self.database else (SENDER_APP,),
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


def _run_fleet(
    nodes: int, sender_url: str, probe: Probe, folder: Path
) -> tuple[list[CentralSender], list[Path], float, Feeder]:
    """``nodes`` growing node databases pushed by their senders for 4 intervals while ``probe``
    connects; returns the stopped senders, the databases, the start time and the feeder."""
    paths = make_nodes(folder, nodes, series=4)
    feeder = Feeder(paths, tick=1.0)
    probe.start()
    feeder.start()
    started = time.monotonic()
    senders = start_senders(paths, sender_url, interval=INTERVAL_S, final_timeout=30.0)
    try:
        time.sleep(4 * INTERVAL_S)
    finally:
        feeder.stop()
        stop_senders(senders)
        probe.stop()
    assert feeder.error is None, feeder.error
    assert feeder.samples >= nodes * 4 * 10, feeder.samples  # the nodes really grew while the senders ran
    return senders, paths, started, feeder


def _check(senders: list[CentralSender], paths: list[Path], started: float, probe: Probe, owner: str) -> str:
    """Another client always got in; every node was visible within 3 intervals; every row arrived."""
    assert probe.refused == [], f"{len(probe.refused)} of {probe.connects + len(probe.refused)}: {probe.refused[:3]}"
    assert probe.connects >= 20, probe.connects
    all_in = [t - started for t, n in probe.sources_seen if n == len(paths)]
    assert all_in and all_in[0] <= 3 * INTERVAL_S, (all_in[:1], probe.sources_seen[-1:])
    assert [s.gave_up for s in senders if s.gave_up] == []
    assert not any(s.is_alive() for s in senders)
    assert sum(s.errors for s in senders) == 0, [s for s in senders if s.errors][:1]
    with psycopg.connect(owner, prepare_threshold=None) as conn:
        central = central_counts(conn)
    local = {job: (samples, rows) for job, samples, rows in map(local_counts, paths)}
    missing = {job: (local[job], central.get(job)) for job in local if central.get(job) != local[job]}
    assert not missing, f"{len(missing)} nodes differ, e.g. {list(missing.items())[:3]}"
    return (
        f"{len(paths)} senders: {sum(s.pushes for s in senders)} pushes, {sum(s.busy for s in senders)} put off"
        f" busy, peak {probe.peak_senders} server connections of theirs, all visible after {all_in[0]:.1f} s,"
        f" the other client connected {probe.connects} times"
    )


def test_300_senders_through_pgbouncer_hold_4_connections_and_others_always_get_in(
    small_server: tuple[str, str], tmp_path: Path
) -> None:
    """The lab's set-up (docs/CENTRAL.md): the nodes push through PgBouncer, whose pool of 4 is all
    the senders ever hold of the server's 20 connections, whatever their number."""
    bouncer = server_url("AETHERIUM_TEST_PGBOUNCER_SMALL", SMALL_HOW)
    with psycopg.connect(bouncer, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    pool_db = psycopg.conninfo.conninfo_to_dict(bouncer)["dbname"]
    direct = psycopg.conninfo.make_conninfo(server_url("AETHERIUM_TEST_PG_SMALL", SMALL_HOW), dbname=pool_db)
    probe = Probe(direct, database=True)  # straight to the server, as the owner: a dashboard, a person
    senders, paths, started, _ = _run_fleet(NODES, bouncer, probe, tmp_path)
    assert 0 < probe.peak_senders <= 4, probe.peak_senders
    print("\n" + _check(senders, paths, started, probe, probe.url))


def test_30_senders_direct_share_the_role_limit_and_others_always_get_in(
    small_server: tuple[str, str], tmp_path: Path
) -> None:
    """Without PgBouncer, a role with CONNECTION LIMIT 8 for the senders (when each sender held a
    connection for the whole job, 60 of them locked every other client out and lost 6 nodes). Half
    that: past a few dozen senders in this one process on a loaded machine, the attempts refused at
    the limit (each holds a server slot while it is refused) reach the other client's slots --
    measured, and why docs/CENTRAL.md sends more nodes through PgBouncer."""
    owner, sender = small_server
    probe = Probe(owner)
    senders, paths, started, _ = _run_fleet(30, sender, probe, tmp_path)
    assert 0 < probe.peak_senders <= 8, probe.peak_senders
    print("\n" + _check(senders, paths, started, probe, owner))


def test_a_last_push_refused_at_the_role_limit_backs_off_instead_of_taking_slots(
    small_server: tuple[str, str], tmp_path: Path
) -> None:
    """The mechanism behind the margin above: every attempt refused at the role's limit holds a
    server slot until its backend exits. At the job's end a busy server is retried after 0.25, 0.5,
    1 ... s (at most 2 s, each wait 50-100 % of that): over a 6 s last push that is at most 10 attempts.
    It used to retry every 0.05-0.5 s (about 22 attempts, never fewer than 12), so an array ending at
    once kept refused backends alive and took the other clients' slots."""
    _, sender_url = small_server
    (path,) = make_nodes(tmp_path, 1, series=2)
    with contextlib.ExitStack() as held:
        first = held.enter_context(psycopg.connect(sender_url, autocommit=True))
        (limit,) = first.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = session_user").fetchone()  # type: ignore[misc]
        assert 0 < limit <= 10, f"the sender role's CONNECTION LIMIT is {limit}: {SMALL_HOW}"
        for _ in range(limit - 1):  # the role at its limit for the whole last push
            held.enter_context(psycopg.connect(sender_url, autocommit=True))
        (sender,) = start_senders([path], sender_url, interval=3600.0, final_timeout=6.0)
        sender.stop()  # its first attempt is the last push (the first interval's random moment is far off)
        assert not sender.is_alive()
    assert (sender.pushes, sender.errors, sender.gave_up) == (0, 0, None)
    assert 2 <= sender.busy <= 10, f"{sender.busy} attempts refused at the role's limit in 6 s"
