"""Where a password could be shown, it is masked: ``postgresql://user:***@host/db``.

The one place that knows what a password looks like in a connection string: in a URL's user
info (``user:secret@``), as a URL parameter (``?password=secret``) and as a libpq key=value
(``password=secret``). Logs, error lines, the run directory and the HTML show :func:`mask` of it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_URL_PASSWORD = re.compile(r"""(postgres(?:ql)?://[^:@/?#\s"']*:)([^@/?#\s"']*)(@)""", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s\"']*)(=)([^&#\s\"']*)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&\"']+)", re.IGNORECASE)


def _is_password_key(key: str) -> bool:
    """A URL parameter libpq reads as the password: ``password``, also percent-encoded (``pass%77ord``)."""
    return unquote(key).strip().lower() == "password"


def _mask_param(m: re.Match[str]) -> str:
    return f"{m[1]}{m[2]}={'***' if _is_password_key(m[2]) else m[4]}"


def mask(text: str) -> str:
    """``text`` with any password in it replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _QUERY_PARAM.sub(_mask_param, text)
    return _KV_PASSWORD.sub(r"\1***", text)


def has_password(url: str) -> bool:
    """True when ``url`` itself holds a password, in the spellings :func:`mask` knows (the central
    store's check asks libpq itself: :func:`aetherium_hpc.store.central.url.has_password`)."""
    return mask(url) != url


def scrub(message: str, url: str) -> str:
    """``message`` on one line, with the password of ``url`` (and any other) masked."""
    line = " ".join(str(message).split())
    secrets = [m[2] for m in _URL_PASSWORD.finditer(url)]
    for m in _QUERY_PARAM.finditer(url):
        if _is_password_key(m[2]):
            secrets += [m[4], unquote(m[4])]
    for secret in secrets:
        if len(secret) > 2:
            line = line.replace(secret, "***")
    return mask(line)
