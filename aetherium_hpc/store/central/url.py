"""``postgresql://`` URLs: recognised, shown with the password masked, opened with one clear line.

A URL's password is never shown: :func:`mask` turns ``postgresql://user:secret@host/db`` into
``postgresql://user:***@host/db`` (and ``password=secret`` in a key=value string into
``password=***``). Without a password in the URL, libpq finds one in ``PGPASSWORD``, in the file
``PGPASSFILE`` names, or in ``~/.pgpass``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ...errors import CentralStoreError

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")
#: Seconds a connection attempt may take (libpq's connect_timeout; the job never waits on it).
CONNECT_TIMEOUT_S = 5
_URL_PASSWORD = re.compile(r"""(postgres(?:ql)?://[^:@/?#\s"']*:)([^@/?#\s"']*)(@)""", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)
INSTALL_HINT = "pip install 'aetherium-hpc[central]' (psycopg 3)"


def is_central_url(text: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(text, str) and text.lower().startswith(SCHEMES)


def mask(text: str) -> str:
    """``text`` with any password in it replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    return _KV_PASSWORD.sub(r"\1***", text)


def secret_of(url: str) -> str | None:
    """The password written in ``url``, if any (to scrub it from error messages)."""
    m = _URL_PASSWORD.search(url) or _QUERY_PASSWORD.search(url)
    return m.group(2) if m and m.group(2) else None


def scrub(message: str, url: str) -> str:
    """One line of ``message`` with the password of ``url`` (and any other) masked."""
    line = " ".join(str(message).split())
    secret = secret_of(url)
    if secret:
        line = line.replace(secret, "***")
    return mask(line)


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
        return psycopg.connect(url, connect_timeout=max(1, int(timeout)), application_name=application)
    except psycopg.Error as exc:
        raise CentralStoreError(f"central store {mask(url)}: {scrub(str(exc), url)}") from None
    except Exception as exc:  # a malformed URL (psycopg.ProgrammingError is a psycopg.Error; others are ValueError)
        raise CentralStoreError(f"central store {mask(url)}: {scrub(str(exc), url)}") from None
