"""How the report writes numbers, memory, durations and shares: one place for text, HTML and JSON.

The advice sentences (which also go to JSON) and the tables use these same functions, so a
figure reads the same wherever it appears and the percentage beside it is computed from the
same values (``peak 54 MB of the 1 GB requested (5%)``, never ``0.1 GB ... (5%)``).
"""

from __future__ import annotations

import math
import re
from typing import Any, TextIO

__all__ = ["EscapedStream", "duration", "memory_gb", "memory_mb", "minutes", "num", "pct", "printable", "requeued",
           "slurm_time", "unescaped"]  # fmt: skip


def num(x: Any, digits: int = 3) -> str:
    """``digits`` significant digits (integers above that as they are); "-" for missing or not finite."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        short = f"{x:.{digits}g}"
        if abs(float(short)) >= 10**digits:  # 999.6 rounds to "1e+03": write it whole instead
            return f"{x:.0f}"
        return short
    return str(x)


def memory_mb(mb: float | None) -> str:
    """Memory given in MB: ``54 MB`` below 1 GB, else GB with 3 significant digits (``1.93 GB``, ``13.0 GB``,
    ``128 GB``), trailing zeros kept."""
    if mb is None or not math.isfinite(mb):
        return "-"
    if abs(mb) < 1024:
        return f"{mb:.0f} MB" if abs(mb) >= 10 else f"{mb:.2g} MB"
    gb = mb / 1024.0
    return f"{gb:.2f} GB" if gb < 10 else f"{gb:.1f} GB" if gb < 100 else f"{gb:.0f} GB"


def memory_gb(gb: float | None) -> str:
    """Memory given in GB (a request): ``1 GB``, ``0.5 GB``, ``16 GB``."""
    return "-" if gb is None else memory_mb(gb * 1024.0) if gb < 1 else f"{gb:g} GB"


def duration(seconds: float | None) -> str:
    """``0.3 s``, ``42.1 s``, ``12m05s``, ``3h02m10s``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def minutes(limit_min: float | None) -> str:
    """A time limit given in minutes: ``7 min``, ``90 min``, ``4 h``, ``36.5 h``."""
    if limit_min is None:
        return "-"
    return f"{num(float(limit_min))} min" if limit_min <= 180 else f"{num(limit_min / 60.0)} h"


def pct(part: float, whole: float) -> str:
    """``part`` as a share of ``whole``: ``5%``; ``<1%`` above zero; ``-`` for no whole."""
    if not whole:
        return "-"
    share = 100.0 * part / whole
    return "<1%" if 0 < share < 1 else f"{share:.0f}%"


def slurm_time(minutes: float) -> str:
    """``--time`` value (D-HH:MM:SS or HH:MM:SS) for ``minutes``."""
    total = int(math.ceil(minutes)) * 60
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def requeued(attempt: int, end: str | None = None) -> str:
    """``requeued once (attempt 2 completed)``: a task whose last attempt is ``attempt`` (0-based,
    Slurm's SLURM_RESTART_COUNT), ``end`` the status of that attempt."""
    times = {1: "once", 2: "twice"}.get(attempt, f"{attempt} times")
    return f"requeued {times} (attempt {attempt + 1}" + (f" {end})" if end else ")")


# -- what reaches a terminal ----------------------------------------------------------------------
#: Control characters a terminal acts on: C0 but tab, line feed and carriage return; DEL; C1.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character a terminal acts on written out (``\\x1b``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapedStream:
    """A text stream that writes :func:`printable` text, and is otherwise the stream: the
    ``aetherium-hpc`` command writes through it, so a name stored in a database never drives the
    terminal. What draws the terminal on purpose (``watch``'s live table) writes to
    :func:`unescaped` and passes its cells through :func:`printable` itself."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(printable(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def unescaped(stream: Any) -> Any:
    """The stream under an :class:`EscapedStream` (else ``stream``)."""
    return stream.stream if isinstance(stream, EscapedStream) else stream
