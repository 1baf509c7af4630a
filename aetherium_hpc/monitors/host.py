"""Node CPU and memory, and the job's process tree.

The tree collector keeps one entry per pid across ticks; CPU % comes from user + system time
deltas. On Linux each tick costs, per process of the tree, one ``pread`` of
``/proc/<pid>/stat`` on a descriptor kept open (state, ppid, utime, stime, threads and rss
are all on that line; see :mod:`.procfs`), else psutil's ``cpu_times`` + ``memory_info``
inside ``oneshot()``. A process whose stat line is the same as at its last reading (a
sleeping process) costs nothing more: its counters did not move. The tree's totals are summed
over every process at every tick; per-process rows go to every process of a small tree and
to the largest and the busiest of a big one (:data:`PER_PROCESS_TOP`), so what the store,
the window and the summary do per tick stays bounded however large the tree.

New descendants are found through ``/proc/<pid>/task/<tid>/children``: for a process never
seen with a second thread, its one file on a descriptor kept open; for the others, every
thread's. Where the kernel lacks that file the walk falls back to psutil's
``children(recursive=True)``, which reads the stat file of every process on the node. On
Linux the walk is skipped on a tick where it cannot find anything new (see
:meth:`ProcessTreeCollector._walk_due`): a new process takes a pid, which moves the last field
of ``/proc/loadavg``, and a process that leaves the tree alive has a new parent, seen in the
stat line read anyway.

Both collectors split a tick: :meth:`~.base.Collector.read` takes the bytes of the files at the
tick, :meth:`~.base.Collector.samples_from` parses them when the monitor processes its batch.
"""

from __future__ import annotations

import heapq
import logging
import operator
import os
import time
from collections.abc import KeysView, Sequence
from typing import Any

import psutil

from ..store import catalogue
from .base import Collector, Sample
from .procfs import LINUX_PROC, comm_of, meminfo_kb, open_file_budget, parse_stat, pread_all, read_file, thread_children

log = logging.getLogger(__name__)

_MB = catalogue.BYTES_PER_MB
# (metric_type, metric_name, unit) of the rows written every tick: a tuple is cheaper to read than a spec's attributes.
_CPU_TOTAL, _RAM_USED, _RAM_PERCENT, _TREE_CPU, _TREE_RSS, _PROC_CPU, _PROC_RSS = (
    (spec.metric_type, spec.metric_name, spec.unit)
    for spec in (
        catalogue.CPU_SYSTEM_TOTAL, catalogue.RAM_SYSTEM_USED, catalogue.RAM_SYSTEM_PERCENT, catalogue.CPU_PROCESS_TREE,
        catalogue.RAM_PROCESS_TREE_RSS, catalogue.PROCESS_CPU, catalogue.PROCESS_RSS,
    )
)  # fmt: skip
#: The tree is walked at least once every this many ticks, even when /proc/loadavg says no
#: process was created since the last walk: the bound on finding a new child should that
#: file ever fail to say so (a pid counter that wrapped around between two ticks).
WALK_EVERY_TICKS = 10
#: Per-process rows of a tree of more than twice this many processes: at each tick, this many
#: processes with the largest RSS and this many that used the most CPU since the last tick.
PER_PROCESS_TOP = 8


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
        self.read_proc = LINUX_PROC if read_proc is None else read_proc and LINUX_PROC
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
                meminfo_kb(os.pread(self._meminfo_fd, 256, 0))  # a kernel without MemAvailable: psutil
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
        return [int(x) for x in line[1:9]]  # user .. steal; guest and guest_nice are already in user and nice

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
                deltas = [a - b if a > b else 0 for a, b in zip(now, before, strict=False)]  # went back: 0
                total = sum(deltas)
                if total > 0:  # (no clock tick of the kernel's since the last reading: no figure)
                    cpu = round((total - deltas[3] - deltas[4]) / total * 100.0, 1)  # less idle, iowait
            # psutil.virtual_memory(): used = total - available, percent to one decimal.
            total_kb, avail_kb = meminfo_kb(meminfo)
            used = total_kb - avail_kb
            used_mb, percent = used / 1024.0, round(used / total_kb * 100.0, 1) if total_kb > 0 else 0.0
        else:
            cpu, used_b, percent = reading
            used_mb = used_b / _MB
        if cpu is not None:
            out.append((_CPU_TOTAL[0], _CPU_TOTAL[1], cpu, _CPU_TOTAL[2], ""))
        out.append((_RAM_USED[0], _RAM_USED[1], used_mb, _RAM_USED[2], ""))
        out.append((_RAM_PERCENT[0], _RAM_PERCENT[1], percent, _RAM_PERCENT[2], ""))


class _Tracked:
    """One process of the tree, kept across ticks: its descriptors and its last reading."""

    __slots__ = ("pid", "device", "proc", "fd", "children_fd", "raw", "cpu", "rss", "ppid", "threaded", "pct", "tick")

    def __init__(self, pid: int, cpu: float | None) -> None:
        self.pid = pid
        self.device = ""  # "<pid>:<name>", found the first time the process gets rows of its own
        self.proc: psutil.Process | None = None  # made when needed (psutil reads, names)
        self.fd = -1  # /proc/<pid>/stat kept open between ticks (pread), -1: not open
        self.children_fd = -1  # /proc/<pid>/task/<pid>/children kept open, -1: not open
        self.raw: bytes | tuple[float, float, int, int] = b""  # the last reading that was parsed
        self.cpu = cpu  # user + system seconds at the last reading, None before the first
        self.rss = 0.0  # bytes, at the last reading
        self.ppid: int | None = None  # at the last reading
        self.threaded: bool | None = None  # ever seen with more than one thread (None: not read yet)
        self.pct: float | None = None  # CPU % at tick ``tick`` (None: no baseline then)
        self.tick = 0  # the tick of the collector at which the reading last moved


class ProcessTreeCollector(Collector):
    """CPU and RSS of ``root_pid`` and all its descendants, followed as they start and end.

    The tree's totals (``cpu/process_tree``, ``ram/process_tree_rss``) sum every process at
    every tick. Per-process rows go to every process while the tree has at most ``2 x top``
    processes; past that, at each tick, to the ``top`` processes with the largest RSS and the
    ``top`` that used the most CPU since the last tick. ``top=None``: every process, always;
    ``per_process=False``: none.
    """

    name = "process_tree"

    def __init__(
        self,
        root_pid: int | None = None,
        *,
        per_process: bool = True,
        top: int | None = PER_PROCESS_TOP,
        read_proc: bool | None = None,
    ) -> None:
        self.root_pid = os.getpid() if root_pid is None else int(root_pid)
        if not psutil.pid_exists(self.root_pid):
            raise ValueError(f"root_pid={self.root_pid}: no such process; pass the pid of the job's main process")
        if top is not None and (type(top) is not int or top < 1):
            raise ValueError(f"top={top!r}: must be an int >= 1, or None for every process")
        self.per_process = per_process
        self.top = top
        # read_proc: read /proc/<pid>/stat directly (Linux); False: psutil only.
        self.read_proc = LINUX_PROC if read_proc is None else read_proc and LINUX_PROC
        self._procs: dict[int, _Tracked] = {}
        self._members: tuple[_Tracked, ...] | None = None  # _procs' values, until the tree changes
        self._fds: tuple[int, ...] = ()  # their stat descriptors, when every one is open
        self._root: psutil.Process | None = None
        self._last_mono = 0.0
        self._proc_children = os.path.exists(f"/proc/{self.root_pid}/task/{self.root_pid}/children")
        self._root_gone = False
        self._ended: set[int] = set()  # zombies (and unreadable pids) not to pick up again
        self._open_fds = 0
        self._max_open_fds = open_file_budget()
        self._loadavg_fd = -1  # /proc/loadavg kept open: its last field, the last pid handed out
        self._last_pid = b""  # that field at the last walk
        self._unwalked = 0  # ticks since the last walk
        self._tick = 0  # readings turned into samples so far

    def _forget(self, tracked: _Tracked) -> None:
        for fd in (tracked.fd, tracked.children_fd):
            if fd >= 0:
                os.close(fd)
                self._open_fds -= 1
        tracked.fd = tracked.children_fd = -1
        self._members = None

    def close(self) -> None:
        for tracked in self._procs.values():
            self._forget(tracked)
        if self._loadavg_fd >= 0:
            os.close(self._loadavg_fd)
            self._loadavg_fd = -1

    def pids(self) -> KeysView[int]:
        """The pids of the tree at the last tick (a live view)."""
        return self._procs.keys()

    def start(self) -> None:
        self._root = psutil.Process(self.root_pid)
        self._last_mono = time.monotonic()
        if self.read_proc and self._proc_children:
            try:
                self._loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
            except OSError:
                pass
            self._walk_due()  # the pid counter before the first walk
        self._update_tree(None)  # (the first tick reads the CPU baselines of these: no CPU figure then)

    # -- finding the tree -------------------------------------------------------------------
    def _walk_due(self) -> bool:
        """Whether this tick walks the tree: True unless no pid was handed out on the node since
        the last walk (the last field of ``/proc/loadavg``: every process and thread created in
        this pid namespace or one below it takes a pid of this namespace) and the last walk is
        fewer than :data:`WALK_EVERY_TICKS` ticks ago. Costs one ``pread``; where the file is
        missing or says something else, the tree is walked every tick."""
        fd = self._loadavg_fd
        if fd < 0:
            return True
        try:
            last = os.pread(fd, 128, 0).rsplit(None, 1)[-1]
        except (OSError, IndexError):
            last = b""
        if not last.isdigit():
            os.close(fd)
            self._loadavg_fd = -1
            return True
        if last == self._last_pid and self._unwalked < WALK_EVERY_TICKS:
            self._unwalked += 1
            return False
        self._last_pid = last  # read before the walk: a process created during it moves it again
        self._unwalked = 0
        return True

    def _descendants(self) -> list[int]:
        if not self._proc_children:
            assert self._root is not None
            return [p.pid for p in self._root.children(recursive=True)]
        procs = self._procs
        found: list[int] = []
        seen = {self.root_pid}
        stack = [self.root_pid]
        while stack:
            pid = stack.pop()
            for child in self._children(pid, procs.get(pid)).split():
                cpid = int(child)
                if cpid not in seen:
                    seen.add(cpid)
                    found.append(cpid)
                    stack.append(cpid)
        return found

    def _children(self, pid: int, tracked: _Tracked | None) -> bytes:
        """The children of a process, from ``/proc/<pid>/task/<tid>/children``: of every thread but
        this process's childless helpers, or, for a process never seen with a second thread, of
        its one thread on a descriptor kept open (one ``pread``)."""
        if tracked is None or tracked.threaded is not False:
            return thread_children(pid)
        fd = tracked.children_fd
        if fd < 0:
            if tracked.fd < 0 or self._open_fds >= self._max_open_fds:  # (stat files come first)
                return thread_children(pid)
            try:
                fd = tracked.children_fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
            except OSError:
                return b""
            self._open_fds += 1
        try:
            return pread_all(fd)
        except OSError:  # the process has ended
            return b""

    def _update_tree(self, baseline: float | None) -> None:
        """Add processes that appeared since the last tick, forget those that are gone.

        A pid absent from the previous walk can only be a process born since (a process
        cannot join a tree later), so ``baseline=0.0`` charges it all of its CPU time.
        """
        if self._root_gone:
            return
        try:
            found = self._descendants()
        except (psutil.Error, OSError):
            return  # keep the tree as it was; the next tick tries again
        found.append(self.root_pid)
        procs = self._procs
        if len(found) == len(procs) and all(pid in procs for pid in found):
            return  # the same tree
        alive = set(found)
        for pid in [pid for pid in procs if pid not in alive]:
            self._forget(procs.pop(pid))
        ended = self._ended
        if ended:
            ended.intersection_update(alive)  # zombies still listed by their parent
        for pid in found:
            if pid not in procs and pid not in ended:
                procs[pid] = _Tracked(pid, baseline)
                self._members = None

    # -- reading ----------------------------------------------------------------------------
    def _read(self, tracked: _Tracked) -> bytes | tuple[float, float, int, int] | None:
        """One process's reading: the bytes of its stat file (Linux), else psutil's (cpu seconds,
        rss bytes, parent pid, threads); None once it is gone (or a zombie, from psutil)."""
        if self.read_proc:
            fd = tracked.fd
            if fd < 0:
                if self._open_fds >= self._max_open_fds:
                    return read_file(f"/proc/{tracked.pid}/stat")
                try:
                    fd = tracked.fd = os.open(f"/proc/{tracked.pid}/stat", os.O_RDONLY)
                except OSError:
                    return None
                self._open_fds += 1
                self._members = None  # (the descriptors to read change)
            try:
                return os.pread(fd, 4096, 0)
            except OSError:  # the process has ended (ESRCH): the descriptor stays tied to it
                return None
        proc = tracked.proc
        if proc is None:
            proc = tracked.proc = psutil.Process(tracked.pid)
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                times = proc.cpu_times()
                return times.user + times.system, float(proc.memory_info().rss), proc.ppid(), proc.num_threads()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.samples_from(self.read(timestamp), out, timestamp)

    def read(self, timestamp: float) -> tuple[float, tuple[_Tracked, ...], list[Any]]:
        """Walk the tree if due, then read every process of it: (seconds since the last reading,
        the processes, the reading of each: see :meth:`_read`)."""
        now = time.monotonic()
        elapsed = now - self._last_mono
        self._last_mono = now
        if self._walk_due():
            self._update_tree(0.0)
        members = self._members
        if members is None:
            members = self._members = tuple(self._procs.values())
            fds = tuple(t.fd for t in members)
            self._fds = fds if self.read_proc and all(fd >= 0 for fd in fds) else ()
        elif self._fds:
            pread = os.pread
            try:  # every stat file open: one pread each
                return elapsed, members, [pread(fd, 4096, 0) for fd in self._fds]
            except OSError:  # one has ended (ESRCH): read one by one
                pass
        return elapsed, members, [self._read(tracked) for tracked in members]

    # -- samples ----------------------------------------------------------------------------
    def samples_from(
        self, reading: tuple[float, tuple[_Tracked, ...], list[Any]], out: list[Sample], timestamp: float
    ) -> None:
        """The tree's totals over every process read, and the rows of the processes chosen (see
        the class). A process whose reading is the same as its last does no work beyond adding
        its RSS: its counters did not move."""
        elapsed, members, raws = reading
        self._tick += 1
        tick = self._tick
        scale = 100.0 / elapsed if elapsed > 0 else 0.0
        parse = parse_stat
        cpu_total = rss_total = 0.0
        timed = False  # a process with a CPU baseline: the tree's CPU has a figure
        busy: list[_Tracked] = []  # processes that used CPU since their last reading
        gone: list[_Tracked] = []
        check = False  # a parent changed, or a process ended: see _left
        for tracked, raw in zip(members, raws, strict=True):
            if raw == tracked.raw:
                rss_total += tracked.rss
                timed = True  # (it was read before)
                continue
            parsed = raw if raw.__class__ is not bytes else parse(raw)
            if parsed is None:
                gone.append(tracked)
                continue
            cpu, rss, ppid, threads = parsed
            tracked.raw = raw
            tracked.rss = rss
            rss_total += rss
            if ppid != tracked.ppid:
                tracked.ppid = ppid
                check = True
            if threads > 1 or tracked.threaded is None:
                tracked.threaded = threads > 1
            previous = tracked.cpu
            tracked.cpu = cpu
            tracked.tick = tick
            if previous is None or cpu < previous:  # no baseline yet (or a reused pid)
                tracked.pct = None
                continue
            pct = tracked.pct = (cpu - previous) * scale
            timed = True
            cpu_total += pct
            if pct > 0.0:
                busy.append(tracked)
        alive: Sequence[_Tracked] = members
        if gone:
            check = True
            self._forget_ended(gone)
            alive = [t for t in members if t not in gone]
        if check and not self._root_gone:
            left = self._left(alive)
            if left:
                alive = [t for t in alive if t.pid not in left]
                cpu_total = sum(t.pct or 0.0 for t in alive if t.tick == tick)
                rss_total = sum(t.rss for t in alive)
                timed = any(t.tick != tick or t.pct is not None for t in alive)
                busy = [t for t in busy if t.pid not in left]
        if self.per_process:
            self._process_rows(alive, busy, tick, out)
        if alive:
            if timed:
                out.append((_TREE_CPU[0], _TREE_CPU[1], cpu_total, _TREE_CPU[2], ""))
            out.append((_TREE_RSS[0], _TREE_RSS[1], rss_total / _MB, _TREE_RSS[2], ""))

    def _process_rows(self, alive: Sequence[_Tracked], busy: list[_Tracked], tick: int, out: list[Sample]) -> None:
        """The rows of the processes that get their own: see the class."""
        top = self.top
        chosen: Sequence[_Tracked] = alive
        if top is not None and len(alive) > 2 * top:
            chosen = heapq.nlargest(top, alive, key=_BY_RSS)
            if busy:
                chosen += [t for t in heapq.nlargest(top, busy, key=_BY_PCT) if t not in chosen]
        cpu_type, cpu_name, cpu_unit = _PROC_CPU
        rss_type, rss_name, rss_unit = _PROC_RSS
        for tracked in chosen:
            device = tracked.device or self._label(tracked)
            out.append((rss_type, rss_name, tracked.rss / _MB, rss_unit, device))
            pct = tracked.pct if tracked.tick == tick else 0.0  # (not moved: no CPU used)
            if pct is not None:
                out.append((cpu_type, cpu_name, pct, cpu_unit, device))

    def _label(self, tracked: _Tracked) -> str:
        """A process's device label, "<pid>:<name>": psutil's name while the process runs (the
        executable's name where the kernel's 15-character ``comm`` cut it), else that ``comm``."""
        pid = tracked.pid
        try:
            proc = tracked.proc = tracked.proc or psutil.Process(pid)
            tracked.device = f"{pid}:{proc.name()}"
        except (psutil.Error, OSError):
            raw = tracked.raw
            tracked.device = f"{pid}:{comm_of(raw) if raw.__class__ is bytes and raw else '?'}"
        return tracked.device

    def _forget_ended(self, gone: list[_Tracked]) -> None:
        for tracked in gone:
            pid = tracked.pid
            self._drop(tracked)
            self._ended.add(pid)
            if pid == self.root_pid and not self._root_gone:
                self._root_gone = True
                log.info(
                    "aetherium-hpc: monitored process %d has ended; only its remaining descendants are sampled", pid
                )

    def _left(self, alive: Sequence[_Tracked]) -> set[int]:
        """The processes read at this tick that were no longer in the tree: their parent is not
        among the processes alive at that tick. Such a process has left the tree alive since the
        last walk (its parent ended, it was re-parented): it is left out, with its descendants,
        and forgotten, and the next tick walks the tree (a process that leaves the tree takes no
        new pid)."""
        root = self.root_pid
        tick = {t.pid for t in alive}
        left = {t.pid for t in alive if t.ppid not in tick and t.pid != root}
        if not left:
            return left
        grew = True
        while grew:  # their descendants left with them
            more = {t.pid for t in alive if t.ppid in left and t.pid not in left}
            left |= more
            grew = bool(more)
        for tracked in alive:
            if tracked.pid in left:
                self._drop(tracked)
        self._unwalked = WALK_EVERY_TICKS
        return left

    def _drop(self, tracked: _Tracked) -> None:
        """Forget a process, unless a walk since its reading already has."""
        if self._procs.get(tracked.pid) is tracked:
            self._forget(self._procs.pop(tracked.pid))


_BY_RSS = operator.attrgetter("rss")
_BY_PCT = operator.attrgetter("pct")
