"""The sampling loop: a daemon thread that asks each collector for samples once per interval.

The :class:`ResourceMonitor` stamps each tick's samples with its time, hands them to the store
(through its public API) and into its window of the last minute, whose buckets feed a
:class:`~.summary.SampleSummary` for the end-of-run JSON file as they leave it; its last collector is a
:class:`~.telemetry.MonitorTelemetry`, the monitor watching itself and the store's queue.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..envvars import NODE_MONITOR
from ..signal_policy import block_job_signals, childless
from ..store import (
    StoreOptions,
    add_close_hook,
    get_db,
    log_builtin_ticks,
    log_resource_samples,
    remove_close_hook,
    set_recent_source,
)
from ..store.reader import Recent
from .base import Collector, Sample, SampleSink
from .gpu import GpuCollector
from .host import HostCollector, ProcessTreeCollector
from .summary import SampleSummary, write_summary
from .telemetry import MonitorTelemetry
from .window import WINDOW_S, RecentWindow

if TYPE_CHECKING:
    from .prometheus import PrometheusTextfile

log = logging.getLogger(__name__)

_FAILED = object()  # the reading of a collector whose read() raised (reported once)

#: How long :meth:`ResourceMonitor.start` waits for the first tick (a hanging NVML is not waited out).
FIRST_TICK_WAIT_S = 5.0
#: ``stop()`` takes a last tick unless the last one is more recent than this (seconds).
FINAL_TICK_GAP_S = 0.01


def default_collectors(*, gpu: bool = True, root_pid: int | None = None, per_process: bool = True) -> list[Collector]:
    """Host CPU/RAM, the process tree of ``root_pid``, and (if ``gpu``) the job's GPUs."""
    tree = ProcessTreeCollector(root_pid, per_process=per_process)
    collectors: list[Collector] = [HostCollector(), tree]
    if gpu:
        collectors.append(GpuCollector(tree_pids=tree.pids))
    return collectors


def _store_now() -> Any:
    """The telemetry's store: the process's open store, never waiting for the store's lock."""
    return get_db(wait=False)


class ResourceMonitor:
    """Samples CPU, memory, the process tree and the GPUs into the store, once per ``interval``.

    A daemon thread runs a drift-free loop: tick k happens at start + k x interval;
    a tick that could not run on time is skipped (counted in ``missed_ticks``), never
    bunched up. ``stop()`` returns at once (the stop event's wait is the sleep),
    writes the JSON summary to ``output_path`` if given (a folder: to
    :data:`~.summary.SUMMARY_FILE_NAME` inside it), and is safe to call twice;
    it is also called at interpreter exit. Use as a context manager or call
    ``start()`` / ``stop()``.

    Every tick also goes into :attr:`window`, the last 60 s in memory; ``start()`` makes it what
    ``get_db().recent()`` answers in every process of the node (until another monitor starts; after
    ``stop()`` its samples age out).

    ``start()`` returns once the first tick is in the store's queue and the window (``recent()``
    answers at once; CPU shares need two readings, so they start at the second tick). ``stop()``
    takes a last tick at the moment of the call. A monitor that logs into the process's store
    (the default sink) stops by itself when that store is closed (``shutdown_db()``), before the
    store's queue is drained, so its last sample is stored.

    The loop reads at each tick only what must be read then (the ``/proc`` files, NVML) and turns
    every :attr:`batch_ticks` ticks into samples in one go: for the store, the window and the
    summary. Work done once for several ticks runs on warm caches; a tick on its own wakes to
    cold ones and costs several times more. ``batch_ticks`` defaults to the ticks in the store's
    default ``flush_interval`` (at least 1; 1 with a ``textfile``): the samples reach the database
    no later than they would tick by tick. A batch that spans the store's flush interval asks the
    store's writer to write it at once (``write_soon``), while it is still in the CPU's caches;
    the writer's next timed write then comes an interval later, so each batch costs one
    transaction. ``get_db().recent()``, ``stop()`` and
    ``sample_once()`` process the ticks read so far first, so nothing they see is late. Only
    this monitor's threads and the caller of those methods run monitor code: never a thread of
    the store.

    ``textfile``: a :class:`~.prometheus.PrometheusTextfile` rewritten after every tick with its
    values (node_exporter's textfile collector) and removed by ``stop()``.
    """

    def __init__(
        self,
        interval: float = 1.0,
        *,
        gpu: bool = True,
        root_pid: int | None = None,
        output_path: str | os.PathLike[str] | None = None,
        per_process: bool = True,
        collectors: Sequence[Collector] | None = None,
        sink: SampleSink | None = None,
        store_getter: Callable[[], Any] | None = _store_now,
        textfile: PrometheusTextfile | None = None,
        batch_ticks: int | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval={interval!r}: must be a number of seconds > 0")
        if batch_ticks is not None and (type(batch_ticks) is not int or batch_ticks < 1):
            raise ValueError(f"batch_ticks={batch_ticks!r}: must be an int >= 1 (1: every tick on its own)")
        self.interval = float(interval)
        if batch_ticks is None:
            batch_ticks = (
                1 if textfile is not None else max(1, int(StoreOptions.flush_interval_s / self.interval + 1e-9))
            )
        self.batch_ticks = batch_ticks
        self.output_path = None if output_path is None else os.fspath(output_path)
        self.root_pid = os.getpid() if root_pid is None else int(root_pid)
        builtin = collectors is None
        if collectors is None:
            collectors = default_collectors(gpu=gpu, root_pid=self.root_pid, per_process=per_process)
        self.summary = SampleSummary()
        self.window = RecentWindow(self.summary)  # (the summary is fed by the window's buckets)
        self.telemetry = MonitorTelemetry(store_getter, self.window)
        self.collectors: list[Collector] = [*collectors, self.telemetry]
        self._ticking = tuple(self.collectors)  # those read at a tick: the active ones, once started
        #: Whether the samples go to the process's store (then its closing stops this monitor first).
        self.into_store = sink is None
        if sink is None and not builtin:  # collectors of the user's: every field checked at the call
            sink = log_resource_samples
        # None: the built-in collectors into the store, a batch as one record (log_builtin_ticks)
        self._sink: SampleSink | None = sink
        self.textfile = textfile
        self._taken = 0  # ticks read
        self._missed = 0
        self._last_tick = 0.0  # time.monotonic() of the last tick read
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.thread_cpu_s = 0.0
        # The loop's sleep: a lock held from the start, released by stop(). acquire(timeout) is one
        # C call, where Event.wait builds a Condition waiter each tick.
        self._stop_gate = threading.Lock()
        self._stop_gate.acquire()
        self._first_tick = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._result: dict[str, Any] | None = None
        self._failed: set[str] = set()
        self._owner_pid = os.getpid()
        # Ticks read, not yet turned into samples: (timestamp, one reading per collector). The
        # lock keeps reading and processing in tick order whichever thread processes.
        self._pending: list[tuple[float, list[Any]]] = []
        self._tick_lock = threading.Lock()

    @property
    def samples_taken(self) -> int:
        """Ticks read so far (processed or not)."""
        return self._taken

    @property
    def missed_ticks(self) -> int:
        """Ticks skipped because the one before ran past them."""
        return self._missed

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> ResourceMonitor:
        """Start the sampling thread (once) and wait for its first tick; returns self."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return self
            self.started_at = time.time()
            self._thread = threading.Thread(target=childless(self._run), name="aetherium-resource-monitor", daemon=True)
            self._thread.start()
        set_recent_source(self.recent)
        atexit.register(self._stop_at_exit)
        if self.into_store:
            add_close_hook(self._stop_at_exit)
        if not self._first_tick.wait(FIRST_TICK_WAIT_S):
            log.warning(
                "aetherium-hpc: the resource monitor's first tick took over %.0f s (often NVML); going on without it",
                FIRST_TICK_WAIT_S,
            )
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop sampling (a last tick now), write the summary (if ``output_path``) and return it. Idempotent."""
        with self._lock:
            if self._stopped:
                return self._result or self._summary_dict()
            self._stopped = True
        atexit.unregister(self._stop_at_exit)
        remove_close_hook(self._stop_at_exit)
        if os.environ.get(NODE_MONITOR) == str(os.getpid()):
            del os.environ[NODE_MONITOR]  # processes started from now on may monitor for themselves
        self._stop_gate.release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "aetherium-hpc: the resource monitor did not stop within %.0f s (a sample is hanging, "
                    "often in NVML); leaving it behind as a daemon thread", timeout,
                )  # fmt: skip
        self.stopped_at = time.time()
        if self.textfile is not None:  # the job's values leave node_exporter with the job
            self.textfile.remove()
        self._result = self._summary_dict()
        if self.output_path is not None:
            write_summary(self.output_path, self._result)
        return self._result

    def _stop_at_exit(self) -> None:
        """At interpreter exit, and as the store's close hook (while the store still takes the last
        samples): stop, bounded (a hanging NVML read is left behind rather than holding either up)."""
        if os.getpid() == self._owner_pid:
            self.stop(timeout=2.0)

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        block_job_signals()
        cpu_start = time.thread_time()
        try:
            for collector in self.collectors:
                self._guard(collector, collector.start)
            with self._tick_lock:  # (nothing is pending: ticks read so far were processed at once)
                self._ticking = tuple(c for c in self.collectors if c.active)
            self.telemetry.begin()
            self._tick(process=True)  # the first sample, before start() returns
        except Exception as exc:
            self._report_failure(None, exc, "the first tick")
        finally:
            self._first_tick.set()
        interval = self.interval
        next_tick = self._last_tick + interval
        gate = self._stop_gate
        monotonic = time.monotonic
        try:
            while not gate.acquire(True, max(0.0, next_tick - monotonic())):
                self._tick()
                next_tick += interval
                now = monotonic()
                if now > next_tick:  # this tick overran the next one: skip what was missed
                    missed = math.ceil((now - next_tick) / interval)
                    self._missed += missed
                    next_tick += missed * interval
            if monotonic() - self._last_tick > FINAL_TICK_GAP_S:
                self._tick(process=True)  # stopped: the last sample, at the moment of stop()
        finally:
            try:
                self.process_pending()
            except Exception as exc:  # (the store's sink raising is reported inside; this is the rest)
                self._report_failure(None, exc, "processing the last ticks")
            for collector in self.collectors:
                self._guard(collector, collector.close)
            self.thread_cpu_s = time.thread_time() - cpu_start

    def _tick(self, process: bool = False) -> None:
        """One tick of the loop: read, and every :attr:`batch_ticks` ticks (or now, ``process``)
        process what was read."""
        ts = time.time()
        self._last_tick = time.monotonic()
        with self._tick_lock:
            self._pending.append((ts, self._read(ts)))
            self._taken += 1
            full = len(self._pending) >= self.batch_ticks
            if process or full:
                self._process_locked()
        if full and self.into_store:  # a batch's samples in the store's queue: written while warm
            store = get_db(wait=False)
            if store is not None:
                store.write_soon(self.batch_ticks * self.interval)

    def sample_once(self, timestamp: float | None = None) -> list[Sample]:
        """Take one sample from every collector, send it to the store and return it (the ticks
        the loop has read but not processed yet go first)."""
        ts = time.time() if timestamp is None else timestamp
        with self._tick_lock:
            self._process_locked()
            loop = self._thread
            if loop is None or not loop.is_alive() or loop is threading.current_thread():
                self.telemetry.begin()  # (while the loop runs, its clock is the one counted)
            readings = self._read(ts)
            self.telemetry.charge()
            out = self._samples(ts, readings)
            self._to_window([(ts, out)])
            self._send([(ts, out)])
            self._taken += 1
        return out

    def process_pending(self) -> None:
        """Turn the ticks read so far into samples: into the store, the window and the summary."""
        with self._tick_lock:
            self._process_locked()

    def recent(self, seconds: float = WINDOW_S) -> Recent:
        """:meth:`RecentWindow.summary` of the last ``seconds``, the ticks read so far included."""
        if self._pending:
            self.process_pending()
        return self.window.summary(seconds)

    def _read(self, ts: float) -> list[Any]:
        readings: list[Any] = []
        for collector in self._ticking:
            try:
                readings.append(collector.read(ts))
            except Exception as exc:  # one failing collector never stops the others
                self._report_failure(collector, exc)
                readings.append(_FAILED)
        return readings

    def _process_locked(self) -> list[Sample]:
        """Process the ticks read so far; the samples of the last."""
        pending, self._pending = self._pending, []
        out: list[Sample] = []
        if pending:
            self.telemetry.charge()
            # The window takes the batch in one go, but for its last tick: the telemetry's rows (at
            # that tick) tell the window's size with the ticks before it folded in. Then the store
            # takes the whole batch (one record of columns for the built-in collectors).
            *head, (ts, readings) = pending
            ticks = [(t, self._samples(t, r)) for t, r in head]
            if ticks:
                self._to_window(ticks)
            out = self._samples(ts, readings)
            self._to_window([(ts, out)])
            ticks.append((ts, out))
            self._send(ticks)
        return out

    def _samples(self, ts: float, readings: list[Any]) -> list[Sample]:
        """One tick's samples, from its readings."""
        out: list[Sample] = []
        for collector, reading in zip(self._ticking, readings, strict=True):
            if reading is _FAILED:
                continue
            try:
                collector.samples_from(reading, out, ts)
            except Exception as exc:
                self._report_failure(collector, exc)
        return out

    def _send(self, ticks: list[tuple[float, list[Sample]]]) -> None:
        """Ticks' samples to the store (the built-in collectors' as one record) and the textfile."""
        sink = self._sink
        try:
            if sink is None:
                log_builtin_ticks(ticks)
            else:
                for ts, out in ticks:
                    sink(out, ts)
        except Exception as exc:
            self._report_failure(None, exc)
        if self.textfile is not None:
            try:
                for ts, out in ticks:
                    self.textfile.write(out, ts)
            except Exception as exc:  # (its folder removed, the disk full): said once, sampling goes on
                self._report_failure(None, exc, f"the Prometheus textfile {self.textfile.path}")

    def _to_window(self, ticks: list[tuple[float, list[Sample]]]) -> None:
        try:
            self.window.add_many(ticks)
        except Exception as exc:  # (a collector of the user's that gives something not a number)
            self._report_failure(None, exc, "window")

    def _guard(self, collector: Collector, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:
            self._report_failure(collector, exc)

    def _report_failure(self, collector: Collector | None, exc: Exception, what: str = "store") -> None:
        what = what if collector is None else collector.name
        if what not in self._failed:
            self._failed.add(what)
            log.warning(
                "aetherium-hpc: resource monitor: %s failed: %s: %s (reported once; the monitor carries on)",
                what, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG),
            )  # fmt: skip

    # -- summary ----------------------------------------------------------------------------
    def _summary_dict(self) -> dict[str, Any]:
        end = self.stopped_at if self.stopped_at is not None else time.time()
        duration = 0.0 if self.started_at is None else max(0.0, end - self.started_at)
        return {
            "started": self.started_at,
            "stopped": self.stopped_at,
            "duration_s": round(duration, 3),
            "interval_s": self.interval,
            "samples": self.samples_taken,
            "missed_ticks": self.missed_ticks,
            "monitor_cpu_s": round(self.thread_cpu_s, 6),
            "monitor_cpu_percent_of_one_core": round(100.0 * self.thread_cpu_s / duration, 4) if duration else 0.0,
            "root_pid": self.root_pid,
            "metrics": self.summary.as_dict(self.window.buckets()),
        }
