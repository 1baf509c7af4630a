"""The monitor's own telemetry: :class:`MonitorTelemetry`, the collector every monitor runs last."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..store import catalogue
from .base import Collector, Sample
from .window import RecentWindow


class MonitorTelemetry(Collector):
    """The monitor watching itself: CPU per sample, its window's memory, the store's queue depth and drops.

    Its rows are written once per batch of ticks, at the batch's last tick (every tick with
    ``batch_ticks=1``): they describe the monitor, which changes per batch, not per tick, and
    a row per tick would cost more than the figure it repeats. ``monitor/sample_cpu_ms`` is the
    sampling thread's CPU time from one batch to the next (its waking, reading and processing)
    divided by the ticks it read in between (whichever thread processes the batch: a
    ``recent()`` query may); the queue's depth, the drops and the window's size are read as the
    batch is processed."""

    name = "monitor"

    def __init__(self, store_getter: Callable[[], Any] | None = None, window: RecentWindow | None = None) -> None:
        self._store_getter = store_getter
        self._store: Any = None  # the store of the last reading, kept while it is open
        self._window = window
        self._clock = _thread_clock()  # the CPU clock of the thread that samples
        self._cpu0 = time.clock_gettime(self._clock)  # its CPU time when a batch was last charged
        self._reads = 0  # ticks read since then
        self._ticks = 0  # ticks read in all
        self._per_tick_ms = 0.0
        self._dropped_seen = 0
        self.dropped_total = 0

    def begin(self) -> None:
        """Count the CPU time of the calling thread from now (the loop's, or one taking a sample outside it)."""
        self._clock = _thread_clock()
        self._cpu0 = time.clock_gettime(self._clock)
        self._reads = 0

    def charge(self) -> None:
        """Before a batch is processed (in the thread processing it): the CPU time per tick read
        since the last batch, which the batch's row carries."""
        if not self._reads:
            return
        now = time.clock_gettime(self._clock)
        self._per_tick_ms = (now - self._cpu0) * 1000.0 / self._reads
        self._cpu0 = now
        self._reads = 0

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.charge()
        self.samples_from(self.read(timestamp), out, timestamp)

    def read(self, timestamp: float) -> int:
        """The number of this tick: the batch's rows go with the last tick read."""
        self._reads += 1
        self._ticks += 1
        return self._ticks

    def samples_from(self, reading: int, out: list[Sample], timestamp: float) -> None:
        if reading != self._ticks:  # not the last tick read: its batch's rows come with that one
            return
        out.append(catalogue.MONITOR_SAMPLE_CPU.sample(self._per_tick_ms))
        if self._window is not None:
            out.append(catalogue.MONITOR_WINDOW_BYTES.sample(float(self._window.nbytes)))
        store = self._store
        if store is None or store.closed:  # (a forked child's copy of the store is closed too)
            store = self._store = self._store_getter() if self._store_getter is not None else None
            if store is None:
                return
        queue = store.queue
        # The writer moves queue.dropped into store_stats and resets it: add what appeared since.
        dropped = queue.dropped
        self.dropped_total += dropped - self._dropped_seen if dropped >= self._dropped_seen else dropped
        self._dropped_seen = dropped
        out.append(catalogue.STORE_QUEUE_DEPTH.sample(float(len(queue))))
        out.append(catalogue.STORE_DROPPED.sample(float(self.dropped_total)))


def _thread_clock() -> int:
    """The CPU-time clock of the calling thread, readable from any thread."""
    return time.pthread_getcpuclockid(threading.get_ident())
