"""How a config problem is worded: one line, ``FILE:LINE: key.path: problem; how to fix``."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, NoReturn

from ..credentials import mask
from ..errors import ConfigError

__all__ = ["Origin", "one_line", "show"]


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def show(value: Any) -> str:
    """Short, one-line description of a YAML value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        value = mask(value)  # a URL's password is never shown
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"a date ({value})"
    return f"a {type(value).__name__}"


class Origin:
    """Where the config came from, and which keys --set overrides touched: what a message names."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.overrides: list[tuple[str, str]] = []  # (dotted key, full override text)

    def _note(self, path: str) -> str:
        hits = [
            text
            for key, text in self.overrides
            if path == key or path.startswith(key + ".") or path.startswith(key + "[") or key.startswith(path + ".")
        ]
        return "".join(f" (from --set {one_line(t)})" for t in hits)

    def fail(self, line: int, path: str, problem: str, fix: str) -> NoReturn:
        # masked whole: a password may come in through the value, an override or the fix
        raise ConfigError(mask(f"{self.source}:{line}: {path}: {one_line(problem)}{self._note(path)}; {one_line(fix)}"))
