"""Where the tests' support code lives, and the PYTHONPATH their child processes get.

tests/support/ is on pytest's path (pyproject.toml: ``pythonpath``); a job, a spawned worker or
a child script started by a test imports the same modules through :data:`PYTHONPATH`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

#: tests/support/: the helpers, the workloads jobs import, the child scripts, the fake NVML.
SUPPORT = Path(__file__).resolve().parent
#: The repository root (the aetherium_hpc package).
ROOT = SUPPORT.parent.parent
#: PYTHONPATH for a child process: the support modules and the package under test.
PYTHONPATH = os.pathsep.join([str(SUPPORT), str(ROOT)])


def unavailable(reason: str, require: str) -> NoReturn:
    """Skip a test whose server is not there -- or fail it when the environment variable ``require``
    is 1 (CI, where a missing server is a broken setup, not an absent feature)."""
    import pytest

    if os.environ.get(require) == "1":
        pytest.fail(f"{require}=1 but {reason}")
    pytest.skip(reason)


def _pg_unreachable_reason(url: str | None, var: str, how: str) -> str | None:
    if not url:
        return f"no server: {var} is not set; run {how}"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install -e '.[test]' (or '.[central]')"
    from aetherium_hpc.store.central.url import mask

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {mask(url)} does not answer: {' '.join(str(exc).split())}"
    return None


def server_url(var: str, how: str = '`postgres/server.sh up && eval "$(postgres/server.sh env)"`') -> str:
    """The URL in ``$var`` (printed by the ``env`` of ``postgres/server.sh`` or ``postgres/pgbouncer.sh``),
    or a skip with the reason; ``AETHERIUM_REQUIRE_POSTGRES=1`` (CI) turns that skip into a failure."""
    url = os.environ.get(var)
    reason = _pg_unreachable_reason(url, var, how)
    if reason is not None:
        unavailable(reason, "AETHERIUM_REQUIRE_POSTGRES")
    assert url is not None
    return url
