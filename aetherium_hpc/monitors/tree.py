"""The job's process tree: CPU and RSS of a process and all its descendants, as they start and end.

The collector keeps one entry per pid across ticks; CPU % comes from user + system time deltas.
On Linux each tick costs, per process of the tree, one ``pread`` of ``/proc/<pid>/stat`` on a
descriptor kept open (state, ppid, utime, stime, threads and rss are all on that line; see
:mod:`.procfs`), else psutil's ``cpu_times`` + ``memory_info`` inside ``oneshot()``. A process
whose stat line is the same as at its last reading (a sleeping process) costs nothing more:
its counters did not move. The tree's totals are summed over every process at every tick;
per-process rows go to every process of a small tree and to the largest and the busiest of a
big one (:data:`PER_PROCESS_TOP`), so what the store, the window and the summary do per tick
stays bounded however large the tree.

New descendants are found through ``/proc/<pid>/task/<tid>/children``, the files of each
process's threads kept open (a ``pread`` each); where the kernel lacks them the walk falls back
to psutil's ``children(recursive=True)``, which reads the stat file of every process on the
node. On Linux the walk is skipped on a tick where it cannot find anything new (see
:meth:`ProcessTreeCollector._walk_due`): a new process takes a pid, which moves the last field
of ``/proc/loadavg``, and a process that leaves the tree alive has a new parent, seen in the
stat line read anyway.

The collector splits a tick: :meth:`~.base.Collector.read` takes the bytes of the files at the
tick, :meth:`~.base.Collector.samples_from` parses them when the monitor processes its batch.
"""

from __future__ import annotations

import logging
import operator
import os
import time
from collections.abc import KeysView, Sequence
from itertools import repeat
from typing import Any

import psutil

from ..signal_policy import CHILDLESS_THREADS
from ..store import catalogue
from . import procfs
from .base import Collector, Sample

log = logging.getLogger(__name__)

_MB = catalogue.BYTES_PER_MB
# (metric_type, metric_name, unit) of the rows written every tick: a tuple is cheaper to read than a spec's attributes.
_TREE_CPU, _TREE_RSS, _PROC_CPU, _PROC_RSS = (
    (spec.metric_type, spec.metric_name, spec.unit)
    for spec in (
        catalogue.CPU_PROCESS_TREE,
        catalogue.RAM_PROCESS_TREE_RSS,
        catalogue.PROCESS_CPU,
        catalogue.PROCESS_RSS,
    )
)
#: The tree is walked at least once every this many ticks, even when /proc/loadavg says no
#: process was created since the last walk: the bound on finding a new child should that
#: file ever fail to say so (a pid counter that wrapped around between two ticks).
WALK_EVERY_TICKS = 10
#: Per-process rows of a tree of more than twice this many processes: at each tick, this many
#: processes with the largest RSS and this many that used the most CPU since the last tick.
PER_PROCESS_TOP = 4


class _Tracked:
    """One process of the tree, kept across ticks: its descriptors and its last reading."""

    __slots__ = (
        "pid", "device", "proc", "fd", "slot", "raw", "cpu", "rss", "ppid", "pct", "tick",
        "threads", "walk_raw", "thread_fds", "listed", "listed_at",
    )  # fmt: skip

    def __init__(self, pid: int, cpu: float | None) -> None:
        self.pid = pid
        self.device = ""  # "<pid>:<name>", found the first time the process gets rows of its own
        self.proc: psutil.Process | None = None  # made when needed (psutil reads, names)
        self.fd = -1  # /proc/<pid>/stat kept open between ticks (pread), -1: not open
        self.slot = -1  # its place in the collector's tuple of processes
        self.raw: bytes | tuple[float, float, int, int] | None = b""  # the last reading that was parsed
        self.cpu = cpu  # user + system seconds at the last reading, None before the first
        self.rss = 0.0  # bytes, at the last reading
        self.ppid: int | None = None  # at the last reading
        self.pct: float | None = None  # CPU % at tick ``tick`` (None: no baseline then)
        self.tick = 0  # the tick of the collector at which the reading last moved
        # The walk: the thread count of the reading ``walk_raw``; the children files of the threads
        # kept open ({tid: fd}; None: not listed), listed at read ``listed_at`` with ``listed`` threads.
        self.threads = 0
        self.walk_raw: bytes | tuple[float, float, int, int] | None = None
        self.thread_fds: dict[str, int] | None = None
        self.listed = 0
        self.listed_at = 0


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
        self.read_proc = procfs.LINUX_PROC if read_proc is None else read_proc and procfs.LINUX_PROC
        self._procs: dict[int, _Tracked] = {}
        self._members: tuple[_Tracked, ...] | None = None  # _procs' values, until the tree changes
        self._fds: tuple[int, ...] = ()  # their stat descriptors, when every one is open
        # The walk's processes of one thread with its children file open: (pids, descriptors), and the others.
        self._kept: tuple[tuple[int, ...], tuple[int, ...], tuple[_Tracked, ...]] | None = None
        self._root: psutil.Process | None = None
        self._last_mono = 0.0
        self._proc_children = os.path.exists(f"/proc/{self.root_pid}/task/{self.root_pid}/children")
        self._root_gone = False
        self._ended: set[int] = set()  # zombies (and unreadable pids) not to pick up again
        self._open_fds = 0
        self._max_open_fds = procfs.open_file_budget()
        self._loadavg_fd = -1  # /proc/loadavg kept open: its last field, the last pid handed out
        self._last_pid = b""  # that field at the last walk
        self._unwalked = 0  # ticks since the last walk
        self._reads = 0  # readings taken so far
        self._tick = 0  # readings turned into samples so far

    def _forget(self, tracked: _Tracked) -> None:
        if tracked.fd >= 0:
            os.close(tracked.fd)
            self._open_fds -= 1
            tracked.fd = -1
        self._close_thread_fds(tracked)
        self._members = None

    def _close_thread_fds(self, tracked: _Tracked) -> None:
        for fd in (tracked.thread_fds or {}).values():
            os.close(fd)
            self._open_fds -= 1
        tracked.thread_fds = None

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

    def _descendants(
        self, members: Sequence[_Tracked], raws: list[Any], new: dict[int, tuple[_Tracked, Any]], baseline: float | None
    ) -> list[int]:
        """The pids of the tree, the root's first. ``members``, ``raws``: the processes known and
        this tick's reading of each; a process found that is not known yet is read now (its stat
        file opened) and put in ``new`` with its reading."""
        root = self.root_pid
        if not self._proc_children:
            assert self._root is not None
            return [root, *(p.pid for p in self._root.children(recursive=True))]
        procs, ended = self._procs, self._ended
        children = self._known_children(members, raws)
        found: list[int] = []
        seen = {root}
        stack = [root]
        while stack:
            pid = stack.pop()
            found.append(pid)
            data = children.get(pid)
            if data is None:
                if pid in procs or pid in ended:  # (no children; a zombie's have been handed on)
                    continue
                tracked = _Tracked(pid, baseline)
                raw = self._read(tracked)
                new[pid] = tracked, raw
                data = self._children(tracked, raw)
            for child in data.split():
                cpid = int(child)
                if cpid not in seen:
                    seen.add(cpid)
                    stack.append(cpid)
        return found

    def _known_children(self, members: Sequence[_Tracked], raws: list[Any]) -> dict[int, bytes]:
        """{pid: its children} of the processes known that have any. A process of one thread
        whose children file is open costs a ``pread`` in one list (the thread counts come from
        this tick's readings: only the lines that moved since the last walk are parsed); the
        others go through :meth:`_children`."""
        for tracked, raw in [(t, raw) for t, raw in zip(members, raws, strict=True) if raw != t.walk_raw]:
            single = tracked.threads == 1
            if raw is None or not self._count_threads(tracked, raw) or single != (tracked.threads == 1):
                self._kept = None
        if self._kept is None:
            one = [t for t in members if t.threads == 1 == t.listed and t.thread_fds and len(t.thread_fds) == 1]
            kept = set(one)
            self._kept = (
                tuple(t.pid for t in one),
                tuple(fd for t in one for fd in (t.thread_fds or {}).values()),
                tuple(t for t in members if t not in kept),
            )
        pids, fds, others = self._kept
        out: dict[int, bytes] = {}
        try:
            pread = os.pread
            out = {
                pid: data for pid, data in zip(pids, list(map(pread, fds, _CHILDREN_SIZE, _ZERO)), strict=True) if data
            }
        except OSError:  # one has ended: one by one
            others = tuple(members)
        for pid, data in out.items():
            if len(data) >= 65536:  # (more than a pread's worth of children)
                out[pid] = procfs.pread_all(fds[pids.index(pid)])
        for tracked in others:
            data = self._children(tracked, raws[tracked.slot])
            if data:
                out[tracked.pid] = data
        return out

    def _count_threads(self, tracked: _Tracked, raw: bytes | tuple[float, float, int, int]) -> bool:
        """Take a process's thread count from a reading; False if the line is cut short."""
        try:
            tracked.threads = procfs.threads_of(raw) if isinstance(raw, bytes) else raw[3]
        except (ValueError, IndexError):
            return False
        tracked.walk_raw = raw
        return True

    def _children(self, tracked: _Tracked, raw: bytes | tuple[float, float, int, int] | None) -> bytes:
        """A process's children, from the ``/proc/<pid>/task/<tid>/children`` files of its threads
        (this process's childless helpers left out), kept open: a ``pread`` each. The threads are
        listed again when the process's thread count (at this tick's reading) has changed, and, for
        a process of several threads, every :data:`WALK_EVERY_TICKS` readings (a thread that ended
        and one that started since leave the count as it was)."""
        if raw is None:  # ended
            return b""
        if raw != tracked.walk_raw and not self._count_threads(tracked, raw):
            return procfs.thread_children(tracked.pid)
        threads = tracked.threads
        fds = tracked.thread_fds
        if (
            fds is None
            or threads != tracked.listed
            or (threads > 1 and self._reads - tracked.listed_at >= WALK_EVERY_TICKS)
        ):
            fds = self._list_threads(tracked)
            if fds is None:
                return procfs.thread_children(tracked.pid)
        try:
            return b" ".join([procfs.pread_all(fd) for fd in fds.values()])
        except OSError:  # the process has ended
            return b""

    def _list_threads(self, tracked: _Tracked) -> dict[str, int] | None:
        """Open the children files of the process's threads; None where they are not kept open (its
        stat file is not, the descriptors would pass the budget, or the process has ended)."""
        self._close_thread_fds(tracked)
        pid = tracked.pid
        if tracked.fd < 0:  # (the stat files are kept open first)
            return None
        try:  # one thread: the process's own (its tid is its pid)
            tids = [str(pid)] if tracked.threads == 1 else os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        tids = [tid for tid in tids if tid not in CHILDLESS_THREADS]
        if self._open_fds + len(tids) > self._max_open_fds:
            return None
        fds: dict[str, int] = {}
        tracked.thread_fds, tracked.listed, tracked.listed_at = fds, tracked.threads, self._reads
        self._kept = None
        for tid in tids:
            try:
                fds[tid] = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
            except OSError:
                continue  # (a thread that has just ended)
            self._open_fds += 1
        return fds

    def _update_tree(
        self, baseline: float | None, members: Sequence[_Tracked] = (), raws: list[Any] | None = None
    ) -> list[tuple[_Tracked, Any]]:
        """Add processes that appeared since the last walk, forget those that are gone; the
        processes added, each with its reading. ``members``, ``raws``: the processes known and
        this tick's reading of each.

        A pid absent from the previous walk can only be a process born since (a process
        cannot join a tree later), so ``baseline=0.0`` charges it all of its CPU time.
        """
        if self._root_gone:
            return []
        raws = [] if raws is None else raws
        new: dict[int, tuple[_Tracked, Any]] = {}
        try:
            found = self._descendants(members, raws, new, baseline)
        except (psutil.Error, OSError):
            for tracked, _ in new.values():
                self._forget(tracked)
            return []  # keep the tree as it was; the next tick tries again
        procs = self._procs
        if not new and len(found) == len(procs) and all(pid in procs for pid in found):
            return []  # the same tree
        alive = set(found)
        for pid in [pid for pid in procs if pid not in alive]:
            self._forget(procs.pop(pid))
        ended = self._ended
        if ended:
            ended.intersection_update(alive)  # zombies still listed by their parent
        for pid in found:  # (found by psutil: not read yet)
            if pid not in procs and pid not in ended and pid not in new:
                tracked = _Tracked(pid, baseline)
                new[pid] = tracked, self._read(tracked)
        added = list(new.values())
        for tracked, _ in added:
            procs[tracked.pid] = tracked
        self._members = None
        return added

    # -- reading ----------------------------------------------------------------------------
    def _read(self, tracked: _Tracked) -> bytes | tuple[float, float, int, int] | None:
        """One process's reading: the bytes of its stat file (Linux), else psutil's (cpu seconds,
        rss bytes, parent pid, threads); None once it is gone (or a zombie, from psutil)."""
        if self.read_proc:
            fd = tracked.fd
            if fd < 0:
                if self._open_fds >= self._max_open_fds:
                    return procfs.read_file(f"/proc/{tracked.pid}/stat")
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
        try:
            proc = tracked.proc = tracked.proc or psutil.Process(tracked.pid)
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
        """Read every process of the tree, then walk it if due (the readings tell each process's
        thread count) and read the processes the walk found: (seconds since the last reading, the
        processes, the reading of each: see :meth:`_read`)."""
        now = time.monotonic()
        elapsed = now - self._last_mono
        self._last_mono = now
        self._reads += 1
        members = self._members
        raws: list[Any] | None = None
        if members is None:
            members = self._members = tuple(self._procs.values())
            self._kept = None
            for slot, tracked in enumerate(members):
                tracked.slot = slot
            fds = tuple(t.fd for t in members)
            self._fds = fds if self.read_proc and all(fd >= 0 for fd in fds) else ()
        if self._fds:
            pread = os.pread
            try:  # every stat file open: one pread each
                raws = list(map(pread, self._fds, _STAT_SIZE, _ZERO))  # (the loop in C)
            except OSError:  # one has ended (ESRCH): read one by one
                pass
        if raws is None:
            raws = [self._read(tracked) for tracked in members]
        if self._walk_due():
            added = self._update_tree(0.0, members, raws)
            if added:
                members = (*members, *(tracked for tracked, _ in added))
                raws += [raw for _, raw in added]
        return elapsed, members, raws

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
        parse = procfs.parse_stat
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
            cpu, rss, ppid, _ = parsed
            tracked.raw = raw
            tracked.rss = rss
            rss_total += rss
            if ppid != tracked.ppid:
                tracked.ppid = ppid
                check = True
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
            # (sorted in C: heapq.nlargest is a loop in Python over every process)
            chosen = sorted(alive, key=_BY_RSS, reverse=True)[:top]
            if busy:
                chosen += [t for t in sorted(busy, key=_BY_PCT, reverse=True)[:top] if t not in chosen]
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
            tracked.device = f"{pid}:{procfs.comm_of(raw) if raw.__class__ is bytes and raw else '?'}"
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
# pread's size and offset arguments, for map(): a stat line, a children file (more: read on)
_STAT_SIZE, _CHILDREN_SIZE, _ZERO = repeat(4096), repeat(65536), repeat(0)
