"""The live sender: a node store streaming into PostgreSQL, through an outage and a wrong password."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import testenv
from central_helpers import pg_counts, pg_rows, private_schema, sqlite_counts
from launch_helpers import aetherium_cli
from testenv import ROOT

import aetherium_hpc
from aetherium_hpc.config import parse_config
from aetherium_hpc.errors import ConfigError
from aetherium_hpc.store import catalogue, client
from aetherium_hpc.store.central import sender as sender_module

SERVER = ROOT / "postgres" / "server.sh"


@pytest.fixture
def central(pg_url: str) -> Iterator[str]:
    with private_schema(pg_url) as url:
        yield url


def server(command: str) -> None:
    out = subprocess.run(["bash", str(SERVER), command], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def stats(path: Path) -> dict[str, float]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, value FROM store_stats WHERE name LIKE 'central/%'").fetchall())
    finally:
        conn.close()


@pytest.mark.postgres
def test_the_store_streams_through_a_20_s_outage_without_loss_or_duplicates(
    central: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sender_module, "INTERVAL_S", 0.5)
    monkeypatch.setattr(sender_module, "BACKOFF_CAP_S", 2.0)
    monkeypatch.setenv("AETHERIUM_CENTRAL", central)
    db = tmp_path / "node.db"
    store = aetherium_hpc.init_db(str(db), flush_interval=0.2, listen=False)
    monitor = aetherium_hpc.log_system_resources(interval=0.2)
    logged = 0
    try:

        def work(seconds: float) -> None:
            nonlocal logged
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                aetherium_hpc.log_training_epoch_metric("loss", 1.0 / (logged + 1), epoch_number=logged)
                logged += 1
                time.sleep(0.01)

        work(3.0)
        server("down")
        try:
            work(20.0)  # the job goes on: its log calls never wait for PostgreSQL
        finally:
            server("up")
        work(4.0)
    finally:
        monitor.stop()
        aetherium_hpc.shutdown_db()
    assert store.sender is not None and store.sender.gave_up is None
    local = sqlite_counts(db)
    assert local["training_rows"] == logged  # the local store is complete
    assert pg_counts(central) == local  # and everything arrived, once
    got = stats(db)
    assert got[catalogue.CENTRAL_ERRORS] >= 1 and got[catalogue.CENTRAL_SENT_ROWS] > logged
    assert got[catalogue.CENTRAL_PENDING] == 0 and got[catalogue.CENTRAL_DROPPED] == 0
    assert got[catalogue.CENTRAL_LAST_OK] > time.time() - 60
    err = capfd.readouterr().err
    outage = [line for line in err.splitlines() if "central store" in line]
    assert len(outage) == 2 and "retrying with back-off" in outage[0], err  # one line per outage ...
    assert "reachable again" in outage[1]  # ... and one when it is over
    assert urlsplit(central).password not in err
    print(f"outage test: {logged} training rows, counts {local}, store_stats {got}", file=sys.stderr)


@pytest.mark.postgres
def test_a_wrong_password_is_one_line_and_the_job_runs_on(pg_url: str, tmp_path: Path) -> None:
    parts = urlsplit(pg_url)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-pw@{parts.hostname}:{parts.port}"))
    script = "import aetherium_hpc as a; [a.log_training_epoch_metric('loss', 1.0, epoch_number=e) for e in range(50)]"
    proc = aetherium_cli(
        ["run", "--no-gpu", "--db-dir", str(tmp_path / "db"), "--", sys.executable, "-c", script],
        tmp_path,
        AETHERIUM_CENTRAL=wrong,
    )
    assert proc.returncode == 0, proc.stderr
    assert "streaming" in proc.stderr and ":***@" in proc.stderr  # where it streams, password masked
    lines = [line for line in proc.stderr.splitlines() if "central" in line and "streaming" not in line]
    assert len(lines) == 1, proc.stderr
    assert "password authentication failed" in lines[0] and "local store only" in lines[0]
    assert "not-the-pw" not in proc.stderr + proc.stdout and ":***@" in lines[0]
    (db,) = (tmp_path / "db").glob("*.db")
    assert sqlite_counts(db)["training_rows"] == 50
    assert pg_rows(pg_url, "SELECT 1")  # the server itself is fine


def test_a_password_in_the_yaml_url_is_refused_in_one_line() -> None:
    text = 'name: x\nworkload: {command: ["true"]}\nmonitoring:\n  central: postgresql://lab:hunter2@db/aeth\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    message = str(err.value)
    assert "monitoring.central" in message and "PGPASSFILE" in message and "hunter2" not in message


def test_a_password_given_with_set_is_refused_and_never_echoed(tmp_path: Path) -> None:
    """The one-line error names the --set override it came from: with the password masked there too."""
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(testenv.ROOT / "configs" / "train.yaml"), "--dry-run",
         "--set", "monitoring.central=postgresql://lab:hunter2@db.example.org/aeth"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": testenv.PYTHONPATH},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "monitoring.central" in proc.stderr and "--set monitoring.central=postgresql://lab:***@" in proc.stderr


def test_yaml_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AETHERIUM_CENTRAL", "postgresql://env@h/db")
    from aetherium_hpc.store.options import StoreOptions, central_url

    assert central_url(StoreOptions()) == "postgresql://env@h/db"
    assert central_url(StoreOptions(central="postgresql://yaml@h/db")) == "postgresql://yaml@h/db"
    monkeypatch.setenv("AETHERIUM_CENTRAL", "")
    assert central_url(StoreOptions()) is None


def test_no_server_at_all_costs_the_job_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the port: the store works, the sender retries in the background, and the
    end of the job waits at most its final attempt."""
    monkeypatch.setattr(sender_module, "FINAL_TIMEOUT_S", 1.0)
    monkeypatch.setenv("AETHERIUM_CENTRAL", "postgresql://nobody@127.0.0.1:9/none")
    client.init_db(str(tmp_path / "n.db"), flush_interval=0.1, listen=False)
    for e in range(20):
        aetherium_hpc.log_training_epoch_metric("loss", 1.0, epoch_number=e)
    started = time.monotonic()
    aetherium_hpc.shutdown_db()
    assert time.monotonic() - started < 30  # bounded (generous: a loaded machine), not a speed check
    assert sqlite_counts(tmp_path / "n.db")["training_rows"] == 20
    assert stats(tmp_path / "n.db").get(catalogue.CENTRAL_ERRORS, 0) >= 1
    assert os.environ["AETHERIUM_CENTRAL"].endswith("/none")
