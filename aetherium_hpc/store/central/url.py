"""``postgresql://`` URLs: recognised, shown with the password masked, opened with one clear line.

A URL's password is never shown: ``mask`` turns ``postgresql://user:secret@host/db`` into
``postgresql://user:***@host/db`` (:mod:`aetherium_hpc.credentials`). Without a password in the URL, libpq finds one in ``PGPASSWORD``, in the file
``PGPASSFILE`` names, or in ``~/.pgpass``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ... import credentials
from ...credentials import mask, scrub
from ...errors import CentralBusyError, CentralStoreError

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")
#: Seconds a connection attempt may take (libpq's connect_timeout; the job never waits on it).
CONNECT_TIMEOUT_S = 5
INSTALL_HINT = "pip install 'aetherium-hpc[central]' (psycopg 3)"
#: SQLSTATE of "too many connections": the server's ``max_connections``, a role's ``CONNECTION LIMIT``,
#: the slots reserved for superusers.
TOO_MANY_CONNECTIONS = "53300"
#: How a refused connection reads when no SQLSTATE came with it (libpq, PgBouncer's own refusals).
_BUSY_TEXT = (
    "too many clients", "too many connections", "remaining connection slots are reserved",
    "no more connections allowed", "query_wait_timeout", "server login has been failing",
)  # fmt: skip


def is_central_url(text: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(text, str) and text.lower().startswith(SCHEMES)


def has_password(url: str) -> bool:
    """True when ``url`` holds a password libpq would use: asked of libpq's own parser (every
    spelling that authenticates: ``user:pw@``, ``?password=``, ``?pass%77ord=``); without psycopg,
    the spellings :func:`aetherium_hpc.credentials.has_password` knows."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return credentials.has_password(url)
    try:
        return bool(conninfo_to_dict(url).get("password"))
    except Exception:  # libpq cannot parse it (so it cannot authenticate with it): the text decides
        return credentials.has_password(url)


def psycopg_module() -> Any:
    """psycopg, or a :class:`CentralStoreError` that says how to install it."""
    try:
        import psycopg
    except ImportError:
        raise CentralStoreError(f"a postgresql:// central store needs psycopg: {INSTALL_HINT}") from None
    return psycopg


def connect(url: str, *, timeout: float = CONNECT_TIMEOUT_S, application: str = "aetherium-hpc") -> psycopg.Connection:
    """A connection to ``url`` (autocommit off), or a :class:`CentralStoreError` in one line, password masked."""
    psycopg = psycopg_module()
    if not is_central_url(url):
        raise CentralStoreError(f"{mask(url)}: not a postgresql:// URL; write postgresql://USER@HOST:PORT/DATABASE")
    try:
        # prepare_threshold=None: no server-side prepared statement, which PgBouncer's transaction
        # pooling (before 1.21) cannot follow from one server connection to the next
        return psycopg.connect(
            url, connect_timeout=max(1, int(timeout)), application_name=application, prepare_threshold=None
        )
    except psycopg.Error as exc:
        error = CentralBusyError if is_busy(exc) else CentralStoreError
        raise error(f"central store {mask(url)}: {scrub(str(exc), url)}") from None
    except Exception as exc:  # a malformed URL (psycopg.ProgrammingError is a psycopg.Error; others are ValueError)
        raise CentralStoreError(f"central store {mask(url)}: {scrub(str(exc), url)}") from None


def is_busy(exc: BaseException) -> bool:
    """True when ``exc`` says the server (or PgBouncer) has no connection to give now."""
    if getattr(exc, "sqlstate", None) == TOO_MANY_CONNECTIONS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _BUSY_TEXT)
