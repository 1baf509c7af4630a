"""Node CPU and memory, and the job's process tree, with psutil.

The tree collector keeps one entry per pid across ticks; CPU % comes from
user + system time deltas. Each tick costs, per process of the tree, one read of
``/proc/<pid>/stat`` on Linux (state, utime, stime and rss are all on that line),
else psutil's ``cpu_times`` + ``memory_info`` inside ``oneshot()`` -- the Linux
read costs about a quarter of psutil's two (bench/monitor_overhead.py).

New descendants are found through ``/proc/<pid>/task/<tid>/children`` (a few reads for
the tree only); where the kernel lacks that file it falls back to psutil's
``children(recursive=True)``, which reads the stat file of every process on the node and
costs about ten times more. On Linux the walk is skipped on a tick where it cannot find
anything new (see :meth:`ProcessTreeCollector._walk_due`): a new process takes a pid, which
moves the last field of ``/proc/loadavg``, and a process that leaves the tree alive has a new
parent, seen in the stat line read anyway.

Both collectors split a tick: :meth:`~.base.Collector.read` takes the bytes of the files at the
tick, :meth:`~.base.Collector.samples_from` parses them when the monitor processes its batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import KeysView

import psutil

from ..signal_policy import CHILDLESS_THREADS
from ..store import catalogue
from .base import Collector, Sample

log = logging.getLogger(__name__)

_MB = catalogue.BYTES_PER_MB
_LINUX_PROC = os.path.exists(f"/proc/{os.getpid()}/stat")
_CLK_TCK = float(os.sysconf("SC_CLK_TCK")) if _LINUX_PROC else 100.0
_PAGE = float(os.sysconf("SC_PAGE_SIZE")) if _LINUX_PROC else 4096.0
#: /proc/<pid>/stat files a tree collector keeps open (a pread per tick instead of open, read,
#: close); the processes beyond that many are read with an open each tick.
MAX_OPEN_STAT_FILES = 256
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
        self.read_proc = _LINUX_PROC if read_proc is None else read_proc and _LINUX_PROC
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
                _meminfo_kb(os.pread(self._meminfo_fd, 256, 0))  # a kernel without MemAvailable: psutil
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
            total_kb, avail_kb = _meminfo_kb(meminfo)
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
    """One process of the tree, kept across ticks."""

    __slots__ = ("proc", "pid", "device", "cpu", "fd")

    def __init__(self, pid: int, device: str, cpu: float | None, proc: psutil.Process | None = None) -> None:
        self.proc = proc  # None: not needed yet (read from /proc)
        self.pid = pid
        self.device = device
        self.cpu = cpu  # user + system seconds at the previous tick, None before the first
        self.fd = -1  # /proc/<pid>/stat kept open between ticks (pread), -1: not open

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ProcessTreeCollector(Collector):
    """CPU and RSS of ``root_pid`` and all its descendants, followed as they start and end."""

    name = "process_tree"

    def __init__(self, root_pid: int | None = None, *, per_process: bool = True, read_proc: bool | None = None) -> None:
        self.root_pid = os.getpid() if root_pid is None else int(root_pid)
        if not psutil.pid_exists(self.root_pid):
            raise ValueError(f"root_pid={self.root_pid}: no such process; pass the pid of the job's main process")
        self.per_process = per_process
        # read_proc: read /proc/<pid>/stat directly (Linux); False: psutil only.
        self.read_proc = _LINUX_PROC if read_proc is None else read_proc and _LINUX_PROC
        self._procs: dict[int, _Tracked] = {}
        self._root: psutil.Process | None = None
        self._last_mono = 0.0
        self._proc_children = os.path.exists(f"/proc/{self.root_pid}/task/{self.root_pid}/children")
        self._root_gone = False
        self._ended: set[int] = set()  # zombies (and unreadable pids) not to pick up again
        self._open_fds = 0
        self._loadavg_fd = -1  # /proc/loadavg kept open: its last field, the last pid handed out
        self._last_pid = b""  # that field at the last walk
        self._unwalked = 0  # ticks since the last walk

    def _forget(self, tracked: _Tracked) -> None:
        if tracked.fd >= 0:
            tracked.close()
            self._open_fds -= 1

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
        if self._proc_children:
            return _proc_descendants(self.root_pid)
        assert self._root is not None
        return [p.pid for p in self._root.children(recursive=True)]

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
        alive = set(found)
        for pid in [pid for pid in procs if pid not in alive]:
            self._forget(procs.pop(pid))
        ended = self._ended
        if ended:
            ended.intersection_update(alive)  # zombies still listed by their parent
        for pid in found:
            if pid in procs or pid in ended:
                continue
            try:
                proc = self._root if pid == self.root_pid and self._root is not None else psutil.Process(pid)
                device = f"{pid}:{proc.name()}"
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            procs[pid] = _Tracked(pid, device, baseline, proc)

    # -- sampling ---------------------------------------------------------------------------
    def _read(self, tracked: _Tracked) -> tuple[float, float, int] | None:
        """(cpu seconds, rss bytes, parent pid) of one process, or None once it is gone or a zombie."""
        if self.read_proc:
            fd = tracked.fd
            if fd < 0:
                if self._open_fds >= MAX_OPEN_STAT_FILES:
                    return _read_proc_stat(tracked.pid)
                try:
                    fd = tracked.fd = os.open(f"/proc/{tracked.pid}/stat", os.O_RDONLY)
                except OSError:
                    return None
                self._open_fds += 1
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:  # the process has ended (ESRCH): the descriptor stays tied to it
                return None
            return _parse_proc_stat(data)
        proc = tracked.proc
        if proc is None:
            proc = tracked.proc = psutil.Process(tracked.pid)
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                times = proc.cpu_times()
                rss = proc.memory_info().rss
                ppid = proc.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None
        return times.user + times.system, float(rss), ppid

    def collect(self, out: list[Sample], timestamp: float) -> None:
        self.samples_from(self.read(timestamp), out, timestamp)

    def read(self, timestamp: float) -> tuple[float, list[tuple[_Tracked, bytes | tuple[float, float, int] | None]]]:
        """Walk the tree if due, then read every process of it: (seconds since the last reading,
        [(process, the bytes of its stat file, or its parsed reading, or None once gone)])."""
        now = time.monotonic()
        elapsed = now - self._last_mono
        self._last_mono = now
        if self._walk_due():
            self._update_tree(0.0)
        raws: list[tuple[_Tracked, bytes | tuple[float, float, int] | None]] = []
        for tracked in self._procs.values():
            fd = tracked.fd
            if fd >= 0:  # _read's common case, inline: a descriptor kept open
                try:
                    raws.append((tracked, os.pread(fd, 4096, 0)))
                except OSError:  # the process has ended (ESRCH): the descriptor stays tied to it
                    raws.append((tracked, None))
            else:
                raws.append((tracked, self._read(tracked)))
        return elapsed, raws

    def samples_from(
        self,
        reading: tuple[float, list[tuple[_Tracked, bytes | tuple[float, float, int] | None]]],
        out: list[Sample],
        timestamp: float,
    ) -> None:
        elapsed, raws = reading
        parse = _parse_proc_stat
        readings: list[tuple[_Tracked, float, float, int]] = []
        gone: list[_Tracked] = []
        for tracked, raw in raws:
            if raw.__class__ is bytes:
                raw = parse(raw)
            if raw is None:
                gone.append(tracked)
            else:
                readings.append((tracked, *raw))
        if not self._root_gone:
            readings = self._still_in_tree(readings)
        per_process = self.per_process
        scale = 100.0 / elapsed if elapsed > 0 else 0.0
        cpu_type, cpu_name, cpu_unit = _PROC_CPU
        rss_type, rss_name, rss_unit = _PROC_RSS
        cpu_total = 0.0
        rss_total = 0.0
        timed = 0  # processes with a CPU baseline
        for tracked, cpu, rss, _ in readings:
            rss_total += rss
            previous = tracked.cpu
            tracked.cpu = cpu
            if per_process:
                out.append((rss_type, rss_name, rss / _MB, rss_unit, tracked.device))
            if previous is None or cpu < previous:  # no baseline yet (or a reused pid)
                continue
            timed += 1
            percent = (cpu - previous) * scale
            cpu_total += percent
            if per_process:
                out.append((cpu_type, cpu_name, percent, cpu_unit, tracked.device))
        for tracked in gone:
            pid = tracked.pid
            self._drop(tracked)
            self._ended.add(pid)
            if pid == self.root_pid and not self._root_gone:
                self._root_gone = True
                log.info(
                    "aetherium-hpc: monitored process %d has ended; only its remaining descendants are sampled", pid
                )
        if readings:
            if timed:
                out.append((_TREE_CPU[0], _TREE_CPU[1], cpu_total, _TREE_CPU[2], ""))
            out.append((_TREE_RSS[0], _TREE_RSS[1], rss_total / _MB, _TREE_RSS[2], ""))

    def _still_in_tree(
        self, readings: list[tuple[_Tracked, float, float, int]]
    ) -> list[tuple[_Tracked, float, float, int]]:
        """The readings whose process was still in the tree: its parent among the processes read
        at that tick. One whose parent is not has left the tree alive since the last walk (its
        parent ended, it was re-parented): it is left out, with its descendants, and forgotten,
        and the next tick walks the tree (a process that leaves the tree takes no new pid)."""
        root = self.root_pid
        tick = {tracked.pid for tracked, *_ in readings}
        left = {tracked.pid for tracked, _, _, ppid in readings if ppid not in tick and tracked.pid != root}
        if not left:
            return readings
        grew = True
        while grew:  # their descendants left with them
            more = {t.pid for t, _, _, ppid in readings if ppid in left and t.pid not in left}
            left |= more
            grew = bool(more)
        for tracked, *_ in readings:
            if tracked.pid in left:
                self._drop(tracked)
        self._unwalked = WALK_EVERY_TICKS
        return [r for r in readings if r[0].pid not in left]

    def _drop(self, tracked: _Tracked) -> None:
        """Forget a process, unless a walk since its reading already has."""
        if self._procs.get(tracked.pid) is tracked:
            self._forget(self._procs.pop(tracked.pid))


def _meminfo_kb(data: bytes) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in kB from the head of /proc/meminfo, as psutil.virtual_memory() takes them."""
    head = data.split(b"\n", 3)
    if len(head) < 4 or not head[0].startswith(b"MemTotal:") or not head[2].startswith(b"MemAvailable:"):
        raise ValueError(f"unexpected /proc/meminfo: {data[:40]!r}")
    total_kb = int(head[0].split()[1])
    avail_kb = int(head[2].split()[1])
    if avail_kb > total_kb:  # a container that shows the host's figures: psutil uses MemFree
        avail_kb = int(head[1].split()[1])
    return total_kb, avail_kb


def _device_of(pid: int, stat: bytes | None) -> str:
    """A process's device label, "<pid>:<name>": psutil's name while the process runs (the
    executable's name where the kernel's 15-character ``comm`` cut it), else that ``comm``."""
    try:
        return f"{pid}:{psutil.Process(pid).name()}"
    except (psutil.Error, OSError):
        comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace") if stat else "?"
        return f"{pid}:{comm}"


def _read_proc_stat(pid: int) -> tuple[float, float, int] | None:
    """(utime + stime seconds, rss bytes, parent pid) from one read of /proc/<pid>/stat; None if gone or a zombie."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _parse_proc_stat(data)


def _parse_proc_stat(data: bytes) -> tuple[float, float, int] | None:
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 22 or fields[0] in (b"Z", b"X"):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[21]) * _PAGE, int(fields[1])


def _proc_descendants(root: int) -> list[int]:
    """All descendants of ``root`` from /proc/<pid>/task/<tid>/children (Linux >= 3.5)."""
    found: list[int] = []
    skip = CHILDLESS_THREADS  # this process's own helper threads (their tids are unique on the node)
    seen = {root}
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            if tid in skip:
                continue
            try:
                fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
            except OSError:
                continue
            try:
                data = b""
                while chunk := os.read(fd, 8192):  # procfs may return less than asked: read to EOF
                    data += chunk
            except OSError:
                data = b""
            finally:
                os.close(fd)
            for child in data.split():
                cpid = int(child)
                if cpid not in seen:
                    seen.add(cpid)
                    found.append(cpid)
                    stack.append(cpid)
    return found
