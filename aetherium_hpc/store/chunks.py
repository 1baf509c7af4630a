"""The chunk codec: how a series' samples are stored, in one place.

A chunk holds up to :data:`CHUNK_SAMPLES` samples of one series as two JSON arrays:

* ``vals`` -- the values (7 significant digits; NaN as ``null``, ±inf as ``±9e999``);
* ``jit``  -- per sample, the offset in milliseconds from the regular grid
  ``t0 + k * dt_ms`` (mostly ``0``), so a timestamp is ``t0 + (k * dt_ms + jit[k]) / 1000``;

and, beside them, the statistics of its finite values (``nfin`` how many, ``vsum`` their sum,
``vmax`` their maximum or NULL when there are none), so that a mean or a peak over many chunks
is one SQL aggregate, with no JSON parsed (the report of a large array reads its series that it
does not draw that way). They are the values as logged; the text holds them to 7 significant
digits, so the two agree to about 5e-8 relative.

:func:`encode` writes a chunk (:func:`encode_gridded` one whose grid is known: a central store's
arrays), :class:`OpenChunk` writes the chunk a writer is still filling
(the same text, encoded incrementally), :func:`decode` reads one back, and :data:`TIMESTAMP_SQL`
is the same formula for SQLite's ``json_each`` (the ``resource_metrics`` view).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING

from ..errors import StoreError

if TYPE_CHECKING:
    import numpy as np

#: Samples per closed chunk (about 3 minutes at 1 Hz).
CHUNK_SAMPLES = 180

#: A sample's timestamp in SQL, for chunk alias ``c`` and ``json_each(c.vals)`` alias ``j``.
TIMESTAMP_SQL = "c.t0 + (j.key * c.dt_ms + json_extract(c.jit, '$[' || j.key || ']')) / 1000.0"

#: How far past its chunk's ``t1`` a sample's timestamp as the views compute it (:data:`TIMESTAMP_SQL`)
#: may lie: ``t1`` is the last sample's time as logged, its offset is rounded to whole milliseconds
#: (up to 0.5 ms later). Never before ``t0`` (the first offset is 0). A time-range question reads the
#: chunks with ``t1 >= :from - T1_SLACK_S AND t0 <= :to`` (docs/CENTRAL.md, "Time-range questions").
T1_SLACK_S = 0.001


def encode_value(value: float | None) -> str:
    """JSON text of one sample value: 7 significant digits, NaN → null, ±inf → ±9e999."""
    if value is None or value != value:
        return "null"
    if math.isinf(value):
        return "9e999" if value > 0 else "-9e999"
    return "%.7g" % value  # noqa: UP031 -- fastest formatting on the writer path


#: A chunk row's columns after ``series_id``, in the order :func:`encode` and :meth:`OpenChunk.row` give them.
COLUMNS = ("t0", "t1", "n", "dt_ms", "jit", "vals", "nfin", "vsum", "vmax")

#: A new chunk row: ``series_id`` then :data:`COLUMNS`.
INSERT_SQL = f"INSERT INTO sample_chunks(series_id, {', '.join(COLUMNS)}) VALUES (?{', ?' * len(COLUMNS)})"
#: A chunk rewritten in place: :data:`COLUMNS` then its ``rowid`` (the row keeps its place in the table).
UPDATE_SQL = f"UPDATE sample_chunks SET {', '.join(c + ' = ?' for c in COLUMNS)} WHERE rowid = ?"

#: One encoded chunk: (t0, t1, n, dt_ms, jit, vals, nfin, vsum, vmax), as :data:`COLUMNS` names them.
Row = tuple[float, float, int, int, str, str, int, float, "float | None"]


def finite_stats(vals: Sequence[float | None]) -> tuple[int, float, float | None]:
    """(count, sum, maximum) of the finite values of ``vals`` (None, NaN and ±inf left out)."""
    total: float
    try:
        total = sum(vals)  # type: ignore[arg-type]
    except TypeError:  # a None
        total = math.nan
    if total - total == 0:  # (0 for a finite sum only): every value finite, summed in C
        return len(vals), float(total), (float(max(vals)) if vals else None)  # type: ignore[type-var, arg-type]
    fin = [v for v in vals if v is not None and v - v == 0]  # v - v is 0 for finite numbers only
    return len(fin), float(sum(fin)), (float(max(fin)) if fin else None)


def encode(ts: list[float], vals: list[float | None]) -> Row:
    """The row (:data:`COLUMNS`) of a chunk of samples at times ``ts``."""
    t0 = ts[0]
    n = len(ts)
    dt_ms = round((ts[-1] - t0) * 1000.0 / (n - 1)) if n > 1 else 0
    return encode_gridded(t0, ts[-1], n, dt_ms, [round((t - t0) * 1000.0) - k * dt_ms for k, t in enumerate(ts)], vals)


def encode_gridded(t0: float, t1: float, n: int, dt_ms: int, jit: Sequence[int], vals: Sequence[float | None]) -> Row:
    """The row (:data:`COLUMNS`) of a chunk already on its grid (``jit`` in milliseconds, as
    :func:`encode` computes it): also a central store's arrays back into the same text, with the
    statistics of its values."""
    if len(jit) != n or len(vals) != n:
        raise StoreError(f"a chunk of {n} samples holds {len(jit)} offsets and {len(vals)} values")
    return (t0, t1, n, dt_ms, "[" + ",".join([str(int(j)) for j in jit]) + "]",
            "[" + ",".join([encode_value(v) for v in vals]) + "]", *finite_stats(vals))  # fmt: skip


def tail(t0: float, t1: float, n: int, dt_ms: int, jit: str, vals: str, done: int) -> Row:
    """The samples ``done:`` of a stored chunk as a chunk of their own, in the same encoding.

    Offsets stay integers (milliseconds from the chunk's t0), so every timestamp is the
    original's to within floating-point rounding of the new t0 (< 1 µs); values are copied as
    text, and their statistics computed from it (the original's cover the whole chunk)."""
    offsets_jit = jit[1:-1].split(",")
    offsets = [k * dt_ms + int(offsets_jit[k]) for k in range(done, n)]
    base = offsets[0]
    m = n - done
    new_dt = round((offsets[-1] - base) / (m - 1)) if m > 1 else 0
    new_jit = ",".join([str(o - base - k * new_dt) for k, o in enumerate(offsets)])
    text = "[" + ",".join(vals[1:-1].split(",")[done:]) + "]"
    return (t0 + base / 1000.0, t1, m, new_dt, "[" + new_jit + "]", text, *finite_stats(json.loads(text)))


#: What :meth:`OpenChunk.state` saves and :meth:`OpenChunk.restore` puts back.
State = tuple[int, "int | None", int, str, str, int, tuple[int, float, "float | None"]]


class OpenChunk:
    """The chunk of one series being filled, with its encoded text kept between flushes.

    ``jit`` and ``vals`` hold the JSON arrays' contents (no brackets) for the first
    ``n_enc`` samples, encoded with grid interval ``dt_ms``. A flush encodes only the
    samples added since (:meth:`row`); only when the grid interval of the chunk changes
    (``dt_ms`` is the mean interval, rounded to the millisecond: with a drift-free sampler
    that is rare once a chunk holds a few samples) is the ``jit`` array re-encoded whole.
    The text is always byte for byte what :func:`encode` gives for the same samples.
    """

    __slots__ = ("ts", "vals", "rowid", "dt_ms", "jit", "enc", "n_enc", "stats")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.vals: list[float | None] = []
        self.rowid: int | None = None  # its row in sample_chunks once written
        self.dt_ms = 0
        self.jit = ""
        self.enc = ""
        self.n_enc = 0
        self.stats: tuple[int, float, float | None] = (0, 0.0, None)  # finite_stats of the first n_enc

    def state(self) -> State:
        """What a rollback restores (O(1): the lists only grow, the texts and stats are immutable)."""
        return len(self.ts), self.rowid, self.dt_ms, self.jit, self.enc, self.n_enc, self.stats

    def restore(self, state: State) -> None:
        n, self.rowid, self.dt_ms, self.jit, self.enc, self.n_enc, self.stats = state
        del self.ts[n:]
        del self.vals[n:]

    def row(self) -> Row:
        """The chunk's row (:data:`COLUMNS`), encoding only the samples new since the last call."""
        ts = self.ts
        n = len(ts)
        t0 = ts[0]
        dt_ms = round((ts[-1] - t0) * 1000.0 / (n - 1)) if n > 1 else 0
        start = self.n_enc
        if start and dt_ms == self.dt_ms:
            if start < n:
                self.jit += "," + _jitter(ts, t0, dt_ms, start)
        else:
            self.jit = _jitter(ts, t0, dt_ms, 0)
            self.dt_ms = dt_ms
        if start < n:
            vals = self.vals[start:]
            count, total, peak = finite_stats(vals)
            if count == len(vals):  # every value finite: formatted in C (ints too: "%.7g" is encode_value's)
                new = ",".join(map("%.7g".__mod__, vals))
            else:
                new = ",".join([encode_value(v) for v in vals])
            self.enc = self.enc + "," + new if start else new
            if count:
                c0, s0, p0 = self.stats
                self.stats = (c0 + count, s0 + total, peak if p0 is None or peak > p0 else p0)  # type: ignore[operator]
        self.n_enc = n
        return t0, ts[-1], n, dt_ms, "[" + self.jit + "]", "[" + self.enc + "]", *self.stats


def _jitter(ts: list[float], t0: float, dt_ms: int, start: int) -> str:
    """The ``jit`` text of samples ``start:`` (without brackets): ``round((t - t0) * 1000) - k * dt_ms``
    for the k-th timestamp ``t``, computed in C (``map``), as :func:`encode` does it in a loop.

    The series of one monitor share their timestamps (a tick's samples carry the tick's time), so a
    writer's flush asks for the same text once per series: it is kept (:data:`_JITTER_MEMO`) and
    handed out again while the same timestamps ask for it."""
    tail = ts[start:]
    key = (t0, dt_ms, start, len(ts))
    hit = _JITTER_MEMO.get(key)
    if hit is not None and hit[0] == tail:
        return hit[1]
    offsets = map(round, map((1000.0).__mul__, map((-t0).__add__, tail)))  # t + -t0 is t - t0, exactly
    grid = range(start * dt_ms, len(ts) * dt_ms, dt_ms) if dt_ms else repeat(0)
    text = ",".join(map(str, map(operator.sub, offsets, grid)))
    if len(_JITTER_MEMO) >= _JITTER_MEMO_SIZE:
        _JITTER_MEMO.clear()
    _JITTER_MEMO[key] = (tail, text)
    return text


#: :func:`_jitter`'s texts: (t0, dt_ms, start, samples) -> (the timestamps ``start:``, their text).
#: A dict's get and set are atomic under the GIL: writers of several stores may share it.
_JITTER_MEMO: dict[tuple[float, int, int, int], tuple[list[float], str]] = {}
_JITTER_MEMO_SIZE = 64  # (a flush of a monitor asks for a few: one per tick its series started at)


def decode(t0: float, n: int, dt_ms: int, jit: str, vals: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of a stored chunk as float64 arrays (``null`` → NaN)."""
    return decode_many([(t0, n, dt_ms, jit, vals)])


def decode_many(
    rows: Sequence[tuple[float, int, int, str | None, str]], *, jitter: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of consecutive chunks ``(t0, n, dt_ms, jit, vals)``, concatenated and
    parsed with one JSON parse for all. Without ``jitter`` a timestamp is its chunk's grid
    ``t0 + k * dt_ms`` (``jit``, a few milliseconds, is not read and may be None). A chunk whose arrays do not hold its ``n``
    samples raises :class:`StoreError`."""
    import numpy as np  # only readers pay for numpy; the writer path never decodes

    n = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    total = int(n.sum())
    vals = np.asarray(_parse_arrays(r[4] for r in rows), dtype=np.float64)
    if vals.size != total:
        raise StoreError(f"a chunk's values do not match its {total} samples")
    offsets = np.repeat(np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)), n)
    offsets *= np.arange(total, dtype=np.float64) - np.repeat(np.cumsum(n) - n, n)  # k * dt_ms
    if jitter:
        jit = np.asarray(_parse_arrays(r[3] or "[]" for r in rows), dtype=np.float64)
        if jit.size != total:
            raise StoreError(f"a chunk's jitter does not match its {total} samples")
        offsets += jit
    t0 = np.repeat(np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows)), n)
    return t0 + offsets / 1000.0, vals


def _parse_arrays(texts: Iterable[str]) -> list[float | None]:
    """The JSON arrays ``texts`` as one list (one parse; empty arrays left out)."""
    return json.loads("[" + ",".join([body for text in texts if (body := text[1:-1])]) + "]")


def decode_values(vals: str) -> list[float]:
    """The values of a stored chunk, without its missing ones (``null``)."""
    return [float(v) for v in json.loads(vals) if v is not None]
