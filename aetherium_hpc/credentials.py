"""Where a password could be shown, it is masked: ``postgresql://user:***@host/db``.

The one place that knows what a password looks like in a connection string: in a URL's user
info (``user:secret@``), as a URL parameter (``?password=secret``) and as a libpq key=value
(``password=secret``). Logs, error lines, the run directory and the HTML show :func:`mask` of it.
"""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"""(postgres(?:ql)?://[^:@/?#\s"']*:)([^@/?#\s"']*)(@)""", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#\s\"']*)", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&\"']+)", re.IGNORECASE)


def mask(text: str) -> str:
    """``text`` with any password in it replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    return _KV_PASSWORD.sub(r"\1***", text)


def has_password(url: str) -> bool:
    """True when ``url`` itself holds a password."""
    return mask(url) != url


def scrub(message: str, url: str) -> str:
    """``message`` on one line, with the password of ``url`` (and any other) masked."""
    line = " ".join(str(message).split())
    for pattern in (_URL_PASSWORD, _QUERY_PASSWORD):
        found = pattern.search(url)
        if found and found.group(2) and len(found.group(2)) > 2:
            line = line.replace(found.group(2), "***")
    return mask(line)
