"""Node CPU and memory: :class:`HostCollector`.

On Linux the collector reads ``/proc/stat`` and ``/proc/meminfo`` on descriptors kept open (see
:mod:`.procfs`); elsewhere it asks psutil. It splits a tick: :meth:`~.base.Collector.read` takes
the bytes of the files at the tick, :meth:`~.base.Collector.samples_from` parses them when the
monitor processes its batch. The job's process tree is :mod:`.tree`'s collector, imported here
too (``host.ProcessTreeCollector``).
"""

from __future__ import annotations

import operator
import os

import psutil

from ..store import catalogue
from . import procfs
from .base import Collector, Sample
from .tree import PER_PROCESS_TOP, WALK_EVERY_TICKS, ProcessTreeCollector

__all__ = ["PER_PROCESS_TOP", "WALK_EVERY_TICKS", "HostCollector", "ProcessTreeCollector"]

_MB = catalogue.BYTES_PER_MB
# (metric_type, metric_name, unit) of the rows written every tick: a tuple is cheaper to read than a spec's attributes.
_CPU_TOTAL, _RAM_USED, _RAM_PERCENT = (
    (spec.metric_type, spec.metric_name, spec.unit)
    for spec in (catalogue.CPU_SYSTEM_TOTAL, catalogue.RAM_SYSTEM_USED, catalogue.RAM_SYSTEM_PERCENT)
)


class HostCollector(Collector):
    """System-wide CPU % and memory of the node.

    On Linux it reads the first line of ``/proc/stat`` and the first lines of
    ``/proc/meminfo`` with ``pread`` on descriptors kept open between ticks: the same
    figures as ``psutil.cpu_percent()`` and ``psutil.virtual_memory()`` (used = total -
    available, percent to one decimal) for about a third of their cost. Elsewhere, or
    when those files say something unexpected at the start, it asks psutil. The files are read
    at the tick (:meth:`read`) and parsed when the monitor processes its batch of ticks.
    """

    name = "host"

    def __init__(self, read_proc: bool | None = None) -> None:
        self.read_proc = procfs.LINUX_PROC if read_proc is None else read_proc and procfs.LINUX_PROC
        self._stat_fd = -1
        self._meminfo_fd = -1
        self._cpu: list[int] | None = None  # the previous tick's /proc/stat "cpu" fields

    def start(self) -> None:
        # psutil keeps the cpu_percent baseline per calling thread: prime it in the monitor thread.
        psutil.cpu_percent(None)
        if self.read_proc:
            try:
                self._stat_fd = os.open("/proc/stat", os.O_RDONLY)
                self._meminfo_fd = os.open("/proc/meminfo", os.O_RDONLY)
                self._cpu_fields()  # (a file that says something unexpected: psutil)
                procfs.meminfo_kb(os.pread(self._meminfo_fd, 256, 0))  # a kernel without MemAvailable: psutil
            except (OSError, ValueError, IndexError):
                self.close()

    def close(self) -> None:
        for fd in (self._stat_fd, self._meminfo_fd):
            if fd >= 0:
                os.close(fd)
        self._stat_fd = self._meminfo_fd = -1
        self._cpu = None

    def _cpu_fields(self, data: bytes | None = None) -> list[int]:
        if data is None:
            data = os.pread(self._stat_fd, 512, 0)
        line = data.split(b"\n", 1)[0].split()
        if line[0] != b"cpu" or len(line) < 5:
            raise ValueError(f"unexpected /proc/stat: {data[:40]!r}")
        return list(map(int, line[1:9]))  # user .. steal; guest and guest_nice are already in user and nice

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.samples_from(self.read(timestamp), out, timestamp)

    def read(self, timestamp: float) -> tuple[bytes, bytes] | tuple[float, float, float]:
        """The bytes of /proc/stat and /proc/meminfo; elsewhere (or once a read failed) psutil's
        (cpu %, used bytes, used %)."""
        if self._stat_fd >= 0:
            try:
                return os.pread(self._stat_fd, 512, 0), os.pread(self._meminfo_fd, 256, 0)
            except OSError:
                self.close()  # ask psutil from now on
                psutil.cpu_percent(None)
        vm = psutil.virtual_memory()
        return psutil.cpu_percent(None), float(vm.used), float(vm.percent)

    def samples_from(
        self, reading: tuple[bytes, bytes] | tuple[float, float, float], out: list[Sample], timestamp: float
    ) -> None:
        # One method on the /proc path: it runs on caches gone cold since the last batch, where
        # every call and line costs more than it does in a loop.
        if len(reading) == 2:
            stat, meminfo = reading
            # psutil.cpu_percent(None): the busy share of the ticks since the last reading.
            # The first reading is the baseline: no CPU sample (a share of no time is no figure).
            now = self._cpu_fields(stat)
            before = self._cpu
            self._cpu = now
            cpu: float | None = None
            if before is not None:
                deltas = list(map(operator.sub, now, before))
                if min(deltas) < 0:  # a counter went back: 0
                    deltas = [d if d > 0 else 0 for d in deltas]
                total = sum(deltas)
                if total > 0:  # (no clock tick of the kernel's since the last reading: no figure)
                    cpu = round((total - deltas[3] - deltas[4]) / total * 100.0, 1)  # less idle, iowait
            # psutil.virtual_memory(): used = total - available, percent to one decimal.
            total_kb, avail_kb = procfs.meminfo_kb(meminfo)
            used = total_kb - avail_kb
            used_mb, percent = used / 1024.0, round(used / total_kb * 100.0, 1) if total_kb > 0 else 0.0
        else:
            cpu, used_b, percent = reading
            used_mb = used_b / _MB
        if cpu is not None:
            out.append((_CPU_TOTAL[0], _CPU_TOTAL[1], cpu, _CPU_TOTAL[2], ""))
        out.append((_RAM_USED[0], _RAM_USED[1], used_mb, _RAM_USED[2], ""))
        out.append((_RAM_PERCENT[0], _RAM_PERCENT[1], percent, _RAM_PERCENT[2], ""))
