"""The chunk codec: how a series' samples are stored, in one place.

A chunk holds up to :data:`CHUNK_SAMPLES` samples of one series as two JSON arrays:

* ``vals`` -- the values (7 significant digits; NaN as ``null``, ±inf as ``±9e999``);
* ``jit``  -- per sample, the offset in milliseconds from the regular grid
  ``t0 + k * dt_ms`` (mostly ``0``), so a timestamp is ``t0 + (k * dt_ms + jit[k]) / 1000``.

:func:`encode` writes a chunk, :func:`decode` reads one back, and :data:`TIMESTAMP_SQL` is the
same formula for SQLite's ``json_each`` (the ``resource_metrics`` view).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Samples per closed chunk (about 3 minutes at 1 Hz).
CHUNK_SAMPLES = 180

#: A sample's timestamp in SQL, for chunk alias ``c`` and ``json_each(c.vals)`` alias ``j``.
TIMESTAMP_SQL = "c.t0 + (j.key * c.dt_ms + json_extract(c.jit, '$[' || j.key || ']')) / 1000.0"


def encode_value(value: float | None) -> str:
    """JSON text of one sample value: 7 significant digits, NaN → null, ±inf → ±9e999."""
    if value is None or value != value:
        return "null"
    if math.isinf(value):
        return "9e999" if value > 0 else "-9e999"
    return "%.7g" % value  # noqa: UP031 -- fastest formatting on the writer path


def encode(ts: list[float], vals: list[float | None]) -> tuple[float, float, int, int, str, str]:
    """(t0, t1, n, dt_ms, jit, vals) of a chunk of samples at times ``ts``."""
    t0 = ts[0]
    n = len(ts)
    dt_ms = round((ts[-1] - t0) * 1000.0 / (n - 1)) if n > 1 else 0
    jit = ",".join([str(round((t - t0) * 1000.0) - k * dt_ms) for k, t in enumerate(ts)])
    return t0, ts[-1], n, dt_ms, "[" + jit + "]", "[" + ",".join([encode_value(v) for v in vals]) + "]"


def decode(t0: float, n: int, dt_ms: int, jit: str, vals: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of a stored chunk as float64 arrays (``null`` → NaN)."""
    import numpy as np  # only readers pay for numpy; the writer path never decodes

    k = np.arange(n, dtype=np.float64)
    ts = t0 + (k * dt_ms + np.asarray(json.loads(jit), dtype=np.float64)) / 1000.0
    return ts, np.asarray(json.loads(vals), dtype=np.float64)


def decode_values(vals: str) -> list[float]:
    """The values of a stored chunk, without its missing ones (``null``)."""
    return [float(v) for v in json.loads(vals) if v is not None]
