"""Find the test Slurm cluster started by ``slurm/cluster.sh up``.

Only through an explicit setting: ``SLURM_CONF`` from the environment (``eval "$(slurm/cluster.sh
env)"``), else ``$AETHERIUM_SLURM_DIR/etc/slurm.conf`` when that variable is set -- never a fixed
folder in the temp directory, so two checkouts on one machine cannot pick up each other's
cluster. When no cluster answers, the
tests that need it are skipped with the reason; ``AETHERIUM_REQUIRE_SLURM=1`` turns that skip
into a failure (for CI, where a missing cluster is a broken setup, not an absent feature).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testenv import unavailable

CLIENTS = ("sinfo", "scontrol", "srun", "sbatch", "sacct")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the test cluster of slurm/cluster.sh")


def find_slurm_conf() -> Path | None:
    """The slurm.conf of the test cluster, or None when there is none to be found."""
    from_env = os.environ.get("SLURM_CONF")
    if from_env:
        return Path(from_env)
    folder = os.environ.get("AETHERIUM_SLURM_DIR")
    if not folder:
        return None
    conf = Path(folder) / "etc" / "slurm.conf"
    return conf if conf.is_file() else None


def _unreachable_reason(conf: Path | None) -> str | None:
    if conf is None:
        return (
            "no Slurm cluster: neither SLURM_CONF nor AETHERIUM_SLURM_DIR is set; "
            'run `slurm/cluster.sh up && eval "$(slurm/cluster.sh env)"`'
        )
    if not conf.is_file():
        return f"SLURM_CONF={conf} does not exist; run `slurm/cluster.sh up`"
    missing = [tool for tool in CLIENTS if shutil.which(tool) is None]
    if missing:
        return f"Slurm client commands not installed: {', '.join(missing)}"
    try:
        ping = subprocess.run(
            ["scontrol", "ping"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return f"`scontrol ping` timed out for SLURM_CONF={conf}"
    if "is UP" not in ping.stdout:
        return f"slurmctld for SLURM_CONF={conf} is not up ({(ping.stdout + ping.stderr).strip()})"
    return None


@pytest.fixture(scope="module")
def slurm_conf() -> Iterator[Path]:
    """Points SLURM_CONF at a reachable test cluster for the module, or skips it."""
    conf = find_slurm_conf()
    reason = _unreachable_reason(conf)
    if reason is not None:
        unavailable(reason, "AETHERIUM_REQUIRE_SLURM")
    assert conf is not None
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
