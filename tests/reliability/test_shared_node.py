"""Another user on the node: what they plant in shared scratch gets nowhere.

A second real user (``aeprobe``, made with ``useradd`` when missing) prepares its attacks
in a world-writable sticky folder, as ``/tmp`` is: a node folder made in advance with
links to our files, a per-user folder that is theirs, a planted socket folder, links where the
library's database and lock file go. Needs root (to be two users); skipped otherwise with the
reason. ``.ci/run`` runs as root.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import aetherium_hpc as ah
from aetherium_hpc.config import Monitoring
from aetherium_hpc.errors import StoreError, UnsafeFolderError
from aetherium_hpc.identity import JobIdentity
from aetherium_hpc.paths import RunLayout, user_scratch
from aetherium_hpc.runtime.session import connect_to_node_store, run_task
from aetherium_hpc.store.address import socket_dir_for

PROBE = "aeprobe"
SECRET = "root's own file: never written by a job\n"


@pytest.fixture(scope="module")
def probe() -> tuple[int, int]:
    if os.getuid() != 0:
        pytest.skip("acting as a second real user needs root (useradd, setuid); .ci/run runs the suite as root")
    try:
        entry = pwd.getpwnam(PROBE)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE], check=True, timeout=60)
        entry = pwd.getpwnam(PROBE)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-writable sticky folder directly in /tmp, as /tmp itself is."""
    folder = Path(tempfile.mkdtemp(prefix="aeth-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_probe(probe: tuple[int, int], script: str) -> None:
    """Run a shell script as the second user (the paths in it are the test's own, no user input)."""
    uid, gid = probe
    proc = subprocess.run(["sh", "-ec", script], user=uid, group=gid, extra_groups=[], capture_output=True,
                          text=True, timeout=60, cwd="/")  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def _job(dest: Path, scratch: Path) -> None:
    def workload(session: object) -> int:
        ah.log_training_epoch_metric("loss", 0.5)
        return 0

    run_task(
        JobIdentity(job_id="77", node="n1", hostname="n1"),
        workload,
        dest,
        Monitoring(enabled=False, local_dir=str(scratch)),
    )


def test_a_node_folder_another_user_made_in_advance_is_refused_and_nothing_is_written_through_it(
    probe: tuple[int, int], shared: Path, secret: Path, tmp_path: Path
) -> None:
    node = RunLayout.node_folder(str(shared), JobIdentity(job_id="77", node="n1")).path
    bait = shared / "bait"
    # The folder (and the folders above it, down to the shared one) made by the other user, mode
    # 777, with links where the job opens its lock file and its database.
    as_probe(probe, f"""
        mkdir -p '{node}' && chmod 777 '{node}' '{os.path.dirname(node)}'
        ln -s '{secret}' '{node}/metrics.db-writer'
        : > '{bait}' && chmod 666 '{bait}' && ln -s '{bait}' '{node}/metrics.db'
    """)  # fmt: skip
    dest = tmp_path / "run" / "db" / "77_0" / "n1.db"
    with pytest.raises(UnsafeFolderError, match="refused: it belongs to uid") as exc:
        _job(dest, shared)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
    assert secret.read_text() == SECRET  # not truncated, not written through the link
    assert bait.read_bytes() == b""  # not turned into a database
    assert not dest.exists()


@pytest.mark.parametrize("how", ["owned by the other user", "a link to the other user's folder"])
def test_a_per_user_folder_that_is_not_ours_is_refused(
    probe: tuple[int, int], shared: Path, tmp_path: Path, how: str
) -> None:
    base = user_scratch(str(shared))
    if how.startswith("owned"):
        as_probe(probe, f"mkdir -m 700 '{base}'")
        expected = "belongs to uid"
    else:
        as_probe(probe, f"mkdir -m 700 '{shared}/theirs' && ln -s '{shared}/theirs' '{base}'")
        expected = "symbolic link"
    with pytest.raises(UnsafeFolderError, match=expected):
        _job(tmp_path / "run" / "db" / "77_0" / "n1.db", shared)


def test_a_sibling_task_sends_nothing_to_a_socket_another_user_planted(
    probe: tuple[int, int], shared: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local rank 1 looks for the leader's socket: in a folder of another user, it refuses to connect."""
    ctx = JobIdentity(job_id="77", node="n1", local_rank=1, num_tasks=2)
    node = RunLayout.node_folder(str(shared), ctx).path
    sockets = socket_dir_for(node)
    as_probe(probe, f"""
        mkdir -p '{sockets}/aeth-planted' && chmod -R 755 '{user_scratch(str(shared))}'
        : > '{sockets}/aeth-planted/metrics.sock' && echo 00 > '{sockets}/aeth-planted/metrics.sock.key'
    """)  # fmt: skip
    monkeypatch.delenv("AETHERIUM_METRICS_ADDR", raising=False)
    caplog.set_level(logging.WARNING)
    assert connect_to_node_store(ctx, Monitoring(enabled=False, local_dir=str(shared)), wait_s=1.0) is False
    assert "AETHERIUM_METRICS_ADDR" not in os.environ
    assert any("refused" in r.getMessage() and "no records are sent there" in r.getMessage() for r in caplog.records)


def test_links_another_user_planted_for_a_library_store_are_refused(
    probe: tuple[int, int], shared: Path, secret: Path
) -> None:
    db = shared / "metrics.db"
    as_probe(probe, f"ln -s '{secret}' '{db}'")
    with pytest.raises(StoreError, match="a symbolic link that uid"):
        ah.init_db(str(db), listen=False)
    assert secret.read_text() == SECRET
    other = shared / "other.db"
    as_probe(probe, f"ln -s '{secret}' '{other}-writer'")  # the lock file beside a new database
    with pytest.raises(StoreError, match="symbolic link"):
        ah.init_db(str(other), listen=False)
    assert secret.read_text() == SECRET and not other.exists()


@pytest.mark.parametrize("path", ["/dev/null", "/tmp"])
def test_a_path_that_is_not_a_regular_file_is_refused(path: str) -> None:
    journal_before = os.path.exists(path + "-journal")
    with pytest.raises(StoreError, match="a folder|not a regular file"):
        ah.init_db(path, listen=False)
    assert os.path.exists(path + "-journal") == journal_before  # nothing made beside it
    assert not os.path.exists(path + "-writer")
