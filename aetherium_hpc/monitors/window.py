"""The last 60 seconds of the node's resource samples, in memory: what ``get_db().recent()`` answers.

The monitor folds each tick into a :class:`RecentWindow`: per series (metric type, name, device)
one ``array('f')`` of 13 five-second buckets (sum, max, count each) and the last value. The
monitor's batch of ticks costs a dict lookup and four array stores per series, its values summed
in C (:meth:`RecentWindow.add_many`); memory does not depend on the sampling
interval (the buckets hold sums, not samples), and a series that has had no sample for 60 s
(a process that ended) is dropped within the next 65 s. For the default ~24 series that is about 7 KB
(:attr:`RecentWindow.nbytes`, written as the ``monitor/window_bytes`` self-telemetry metric).

Values are kept as 32-bit floats (about 7 significant digits, what the store keeps too). Each
bucket goes, as it leaves the window, into the monitor's end-of-run summary
(:class:`~.summary.SampleSummary`), which so costs a tick nothing of its own.
"""

from __future__ import annotations

import math
import operator
import sys
import threading
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..store import RECENT_WINDOW_S, catalogue
from ..store.reader import Recent
from .base import Sample

if TYPE_CHECKING:
    from .summary import Bucket, SampleSummary

#: How far back the window reaches, and the width of one bucket (seconds).
WINDOW_S = RECENT_WINDOW_S
BUCKET_S = 5.0
#: Buckets kept: the full span plus the one being filled, so the last 60 s are always covered.
SLOTS = int(WINDOW_S / BUCKET_S) + 1
_LAST = 3 * SLOTS  # where a series' last value is, from its offset
_SERIES_LEN = _LAST + 1
_EMPTY = array("f", [0.0, -math.inf, 0.0])  # an empty bucket: sum, max, count
_NEW_SERIES = _EMPTY * SLOTS + array("f", [math.nan])

_CATALOGUE_UNITS = {(m.metric_type, m.metric_name): m.unit for m in catalogue.METRICS}
_SERIES = operator.itemgetter(0, 1, 4)  # a sample's (metric_type, metric_name, device)
_VALUE = operator.itemgetter(2)


class RecentWindow:
    """Sums, maxima and counts of the last :data:`WINDOW_S` seconds, in :data:`BUCKET_S` buckets.

    :meth:`add` runs in the monitor thread once per tick; :meth:`summary` may run in any thread
    (the node socket's reader answering another process): a lock keeps a tick whole.
    """

    def __init__(self, summary: SampleSummary | None = None) -> None:
        self._run_summary = summary  # where each bucket goes as it leaves the window, if anywhere
        # Every series' figures in one array, _SERIES_LEN floats each (one array header in all).
        self._data = array("f")
        self._offsets: dict[tuple[str, str, str], int] = {}  # series -> its first index in _data
        self._units: dict[tuple[str, str], str] = {}  # only units the catalogue does not give
        self._bucket = -1  # absolute index (time // BUCKET_S) of the bucket being filled
        self._lock = threading.Lock()
        self.nbytes = 0
        self._measure()

    def add(self, samples: Sequence[Sample], timestamp: float) -> None:
        """Fold one tick's samples (taken at ``timestamp``, Unix seconds) into the window."""
        bucket = int(timestamp // BUCKET_S)
        with self._lock:
            if bucket > self._bucket:
                self._advance(bucket)
            # (a clock stepped back: the tick goes into the current bucket)
            self._fold_tick(samples)

    def add_many(self, ticks: Iterable[tuple[float, Sequence[Sample]]]) -> None:
        """Fold ticks (timestamp, samples), in time order, into the window.

        Consecutive ticks of one bucket whose samples name the same series in the same order (a
        monitor's batch, but for a process that came or went) are folded together: their values
        taken out and turned into columns in C, each series' column then summed in C, so that a
        sample costs no Python of its own."""
        with self._lock:
            keys: list[tuple[str, str, str]] | None = None  # the series of the run of ticks being gathered
            first: Sequence[Sample] = ()  # (its first tick's samples: the units of new series)
            rows: list[list[float]] = []  # the values of each tick of the run
            for timestamp, samples in ticks:
                bucket = int(timestamp // BUCKET_S)
                names = list(map(_SERIES, samples))
                if bucket > self._bucket or names != keys:
                    if rows:
                        self._fold_run(keys or [], first, rows)
                        rows = []
                    if bucket > self._bucket:
                        self._advance(bucket)
                    # (a clock stepped back: the tick goes into the current bucket)
                    keys, first = names, samples
                rows.append(list(map(_VALUE, samples)))
            if rows:
                self._fold_run(keys or [], first, rows)

    def _fold_tick(self, samples: Sequence[Sample]) -> None:
        """Add one tick's samples to the current bucket, sample by sample (fewer steps than
        :meth:`_fold_run` for one tick)."""
        at = (self._bucket % SLOTS) * 3
        offsets = self._offsets
        data = self._data
        for mtype, mname, value, unit, device in samples:
            if value != value:  # NaN: not a measurement
                continue
            o = offsets.get((mtype, mname, device))
            if o is None:
                o = self._new_series(mtype, mname, device, unit)
                data = self._data
            data[o + _LAST] = value
            o += at
            data[o] += value
            if value > data[o + 1]:
                data[o + 1] = value
            data[o + 2] += 1.0

    def _fold_run(self, keys: list[tuple[str, str, str]], first: Sequence[Sample], rows: list[list[float]]) -> None:
        """Add ticks ``rows`` (their values, in the order of ``keys``; ``first``: the first tick's
        samples) to the current bucket: a column per series, summed in C."""
        if len(rows) == 1:
            self._fold_tick(first)
            return
        at = (self._bucket % SLOTS) * 3
        offsets = self._offsets
        data = self._data
        for key, values in zip(keys, zip(*rows, strict=True), strict=True):
            total = sum(values)
            if total != total:  # a NaN among them (not a measurement: left out), or +inf and -inf
                values = tuple(v for v in values if v == v)
                if not values:
                    continue
                total = sum(values)
            o = offsets.get(key)
            if o is None:
                o = self._new_series(*key, first[keys.index(key)][3])
                data = self._data
            data[o + _LAST] = values[-1]
            o += at
            data[o] += total
            peak = max(values)
            if peak > data[o + 1]:
                data[o + 1] = peak
            data[o + 2] += len(values)

    def _new_series(self, mtype: str, mname: str, device: str, unit: str) -> int:
        offset = len(self._data)
        self._data.extend(_NEW_SERIES)
        self._offsets[(mtype, mname, device)] = offset
        if _CATALOGUE_UNITS.get((mtype, mname)) != unit:
            self._units[(mtype, mname)] = unit
        self._measure()
        return offset

    def _advance(self, bucket: int) -> None:
        """Empty the buckets between the current one and ``bucket``; once a window, drop the series
        gone quiet (no sample in any bucket: a process that ended)."""
        first = max(self._bucket + 1, bucket - SLOTS + 1)
        slots = [(b % SLOTS) * 3 for b in range(first, bucket + 1)]
        prune = bucket // SLOTS != self._bucket // SLOTS
        self._bucket = bucket
        data = self._data
        summary = self._run_summary
        for key, o in self._offsets.items():
            for at in slots:
                i = o + at
                if summary is not None and data[i + 2]:  # a bucket leaving the window: into the summary
                    summary.fold(self._bucket_of(key, i))
                data[i : i + 3] = _EMPTY
        if prune:
            alive = [(key, o) for key, o in self._offsets.items() if any(data[o + 2 : o + _LAST : 3])]
            if len(alive) < len(self._offsets):
                self._keep(alive)

    def _keep(self, alive: list[tuple[tuple[str, str, str], int]]) -> None:
        """Copy the series ``alive`` into an array of their size."""
        data = self._data
        kept = _NEW_SERIES * len(alive)
        self._offsets = {}
        for i, (key, o) in enumerate(alive):
            kept[i * _SERIES_LEN : (i + 1) * _SERIES_LEN] = data[o : o + _SERIES_LEN]
            self._offsets[key] = i * _SERIES_LEN
        self._data = kept
        names = {(t, n) for t, n, _ in self._offsets}
        self._units = {k: u for k, u in self._units.items() if k in names}
        self._measure()

    def _measure(self) -> None:
        """Bytes held: the array, the dicts and their key tuples (the strings in the keys are the
        collectors' and the catalogue's, not counted)."""
        size = sys.getsizeof
        held = [self._data, self._offsets, self._units, *self._offsets, *self._units]
        self.nbytes = sum(size(o) for o in held)

    def summary(self, seconds: float = WINDOW_S, now: float | None = None) -> Recent:
        """Average, maximum, last value, count and unit of each series over the last ``seconds``
        (at most :data:`WINDOW_S`).

        The buckets that overlap ``[now - seconds, now]`` are read: the span covered is
        ``seconds`` plus at most :data:`BUCKET_S` (the start of the oldest bucket). A series with
        no sample in it is left out; ``{}`` when none has one. ``now``: Unix seconds, default now.
        """
        seconds = min(seconds, WINDOW_S)
        if now is None:
            now = time.time()
        with self._lock:
            current = self._bucket
            first = max(int((now - seconds) // BUCKET_S), current - SLOTS + 1)
            slots = [(b % SLOTS) * 3 for b in range(first, current + 1)]
            data = self._data
            out: Recent = {}
            for key, o in self._offsets.items():
                total = peak = n = 0.0
                for at in slots:
                    count = data[o + at + 2]
                    if count:
                        if not n or data[o + at + 1] > peak:
                            peak = data[o + at + 1]
                        n += count
                        total += data[o + at]
                if n:
                    out[key] = {
                        "avg": _digits(total / n),
                        "max": _digits(peak),
                        "last": _digits(data[o + _LAST]),
                        "n": int(n),
                        "unit": self._unit(key),
                    }
            return out

    def buckets(self) -> list[Bucket]:
        """Every bucket of every series in the window that holds samples (see :data:`~.summary.Bucket`)."""
        with self._lock:
            data = self._data
            return [
                self._bucket_of(key, o + at)
                for key, o in self._offsets.items()
                for at in range(0, _LAST, 3)
                if data[o + at + 2]
            ]

    def _bucket_of(self, key: tuple[str, str, str], i: int) -> Bucket:
        """The bucket of series ``key`` whose (sum, max, count) start at index ``i``."""
        data = self._data
        return key, self._unit(key), data[i + 2], data[i], data[i + 1]

    def _unit(self, key: tuple[str, str, str]) -> str:
        unit = self._units.get(key[:2])
        return _CATALOGUE_UNITS.get(key[:2], "") if unit is None else unit

    def __len__(self) -> int:
        """Series in the window."""
        return len(self._offsets)


def _digits(value: float) -> float:
    """A 32-bit float as the number it stands for (7 significant digits, as the store writes it)."""
    return value if math.isinf(value) else float(f"{value:.7g}")
