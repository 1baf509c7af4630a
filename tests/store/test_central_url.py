"""postgresql:// URLs: the password is masked everywhere it could be shown; connecting fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from testenv import ROOT

from aetherium_hpc.errors import CentralStoreError
from aetherium_hpc.store.central import url as central_url


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:s3cr%40t@db.example:5432/lab", "postgresql://u:***@db.example:5432/lab"),
        ("postgres://u:pw@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
        ("host=h dbname=db password='a b' user=u", "host=h dbname=db password=*** user=u"),
    ],
)
def test_mask_hides_the_password(text: str, masked: str) -> None:
    assert central_url.mask(text) == masked


def test_not_a_url_is_one_line() -> None:
    with pytest.raises(CentralStoreError, match="not a postgresql:// URL"):
        central_url.connect("mysql://u:pw@h/db")


def test_unknown_host_is_one_line_without_the_password() -> None:
    with pytest.raises(CentralStoreError) as err:
        central_url.connect("postgresql://u:topsecret@no-such-host.invalid:5432/db", timeout=2)
    text = str(err.value)
    assert "\n" not in text and "topsecret" not in text and "u:***@no-such-host.invalid" in text


@pytest.mark.postgres
def test_server_env_prints_the_url(pg_url: str) -> None:
    out = subprocess.run(["bash", str(ROOT / "postgres" / "server.sh"), "env"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("export AETHERIUM_TEST_PG=postgresql://"), out.stderr


@pytest.mark.postgres
def test_wrong_password_is_refused_in_one_masked_line(pg_url: str) -> None:
    parts = urlsplit(pg_url)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:wrong-pw@{parts.hostname}:{parts.port}"))
    with pytest.raises(CentralStoreError) as err:
        central_url.connect(wrong)
    text = str(err.value)
    assert "password authentication failed" in text and "wrong-pw" not in text and "\n" not in text


@pytest.mark.postgres
def test_password_file_works(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL without a password: libpq reads it from PGPASSFILE."""
    parts = urlsplit(pg_url)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{parts.hostname}:{parts.port}:{parts.path[1:]}:{parts.username}:{parts.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    conn = central_url.connect(bare)
    try:
        assert conn.execute("SELECT current_user").fetchone() == (parts.username,)
    finally:
        conn.close()
    assert os.environ["PGPASSFILE"] == str(passfile)


PASSWORD_URLS = (ROOT / "tests" / "data" / "hostile" / "password_urls.txt").read_text().split()


@pytest.mark.parametrize("url", PASSWORD_URLS)
def test_every_spelling_of_a_password_in_monitoring_central_is_refused_and_never_shown(
    url: str, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg.conninfo", reason="libpq's own parser comes with psycopg (the test extra)")
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(url).get("password") == "pw"  # libpq would authenticate with it
    config = ROOT / "configs" / "train.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "aetherium_hpc", "submit", str(config), "--dry-run", "--set", f"monitoring.central={url}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "must not hold a password" in line and "=pw" not in line and ":pw@" not in line, line
