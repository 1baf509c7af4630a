"""The monitor's tick in a native thread, where the optional extension ``_ticker`` is built.

A Python thread woken once per tick costs about twice what a native thread does for the same
reads: waking the interpreter and taking the GIL, on caches gone cold since the last tick
(docs/PERFORMANCE.md). With the built-in collectors on Linux, :class:`~.monitor.ResourceMonitor`
therefore lets the extension's thread take the ticks (the bytes of ``/proc/stat``,
``/proc/meminfo`` and the process tree's stat files, the tree walked by the rules of
:class:`~.host.ProcessTreeCollector`) and wakes its own Python thread once per batch to turn the
ticks into samples with the same parsing code as the pure-Python path.

The pure-Python tick runs instead when the extension is not built (``pip install`` builds it
where a C compiler and the Python headers are found, else goes on without it), when
``AETHERIUM_NATIVE_TICK=0``, with collectors of the user's, with GPUs to read (NVML is read by
Python at the tick), with a Prometheus textfile, with ``batch_ticks=1``, or where ``/proc`` lacks
what the native tick reads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..env import NATIVE_TICK
from ..signals import CHILDLESS_THREADS
from .base import Collector
from .gpu import GpuCollector
from .host import MAX_OPEN_STAT_FILES, WALK_EVERY_TICKS, HostCollector, ProcessTreeCollector

if TYPE_CHECKING:
    from ._ticker import Ticker
else:
    try:
        from ._ticker import Ticker
    except ImportError:  # not built: the pure-Python tick
        Ticker = None

#: Why the native tick is off, whatever the monitor: None when the extension can run.
UNAVAILABLE: str | None = (
    "the extension aetherium_hpc.monitors._ticker is not built (reinstall with a C compiler and the Python headers)"
    if Ticker is None
    else None
)


def why_not(collectors: list[Collector], builtin: bool, batch_ticks: int, textfile: object) -> str | None:
    """Why these (started) collectors cannot tick natively; None when they can."""
    if os.environ.get(NATIVE_TICK, "") == "0":
        return f"{NATIVE_TICK}=0"
    if UNAVAILABLE is not None:
        return UNAVAILABLE
    if not builtin:
        return "collectors of the user's are read by Python at the tick"
    if textfile is not None or batch_ticks < 2:
        return "every tick is processed on its own (batch_ticks=1 or a Prometheus textfile)"
    if not any(isinstance(collector, ProcessTreeCollector) for collector in collectors):
        return "no process tree to follow"
    for collector in collectors:
        if isinstance(collector, HostCollector):
            if collector._stat_fd < 0:
                return "/proc/stat or /proc/meminfo is not read directly here"
        elif isinstance(collector, ProcessTreeCollector):
            if not (collector.read_proc and collector._proc_children):
                return "/proc/<pid>/stat or /proc/<pid>/task/<tid>/children is not read directly here"
        elif isinstance(collector, GpuCollector):
            if collector._nvml is not None:
                return "GPUs are read with NVML at the tick"
    return None


def start_ticker(interval: float, tree: ProcessTreeCollector, first_tick: float, capacity: int) -> Ticker:
    """A started :class:`Ticker` that carries on from ``tree``'s state (its pids, already read once)."""
    assert Ticker is not None
    pids, ended = list(tree.pids()), list(tree._ended)
    tree.close()  # its descriptors: the ticker opens its own
    ticker = Ticker(interval, tree.root_pid, pids, ended, skip_tids(), WALK_EVERY_TICKS, MAX_OPEN_STAT_FILES, capacity)
    ticker.start(first_tick)
    return ticker


def skip_tids() -> list[int]:
    """The thread ids whose children files a walk skips (see :data:`~..signals.CHILDLESS_THREADS`)."""
    return [int(tid) for tid in list(CHILDLESS_THREADS)]


def ticker_cpu_s(ticker: Any) -> float:
    """CPU seconds of the ticker's thread so far (also once it has stopped)."""
    return float(ticker.counters()["cpu_s"])
