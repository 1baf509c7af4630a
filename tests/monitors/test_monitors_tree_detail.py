"""Per-process detail of the process-tree collector on real processes: the tree's totals are
exact whichever processes get their own rows, and a big tree gives rows to its largest and
busiest processes only."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest
from monitor_helpers import python, wait_for

from aetherium_hpc.monitors import host, procfs
from aetherium_hpc.monitors.base import Sample
from aetherium_hpc.monitors.host import ProcessTreeCollector
from aetherium_hpc.store import catalogue

MB = catalogue.BYTES_PER_MB
BURN = "while True: pass"
SLEEP = "import time; time.sleep(120)"
BIG = "import time; b = bytearray(96 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(120)"
JOB = (
    "import subprocess, sys\n"
    "kids = [subprocess.Popen([sys.executable, '-c', code]) for code in sys.argv[1:]]\n"
    "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
    "sys.stdin.readline()\n"
    "for k in kids: k.kill()\n"
)


@pytest.fixture
def job() -> Iterator[list[int]]:
    """A job-like tree of 8 processes: a parent, 2 busy children, one holding 96 MB and 4 asleep;
    yields every pid, the parent's first."""
    codes = [BURN, BURN, BIG, SLEEP, SLEEP, SLEEP, SLEEP]
    parent = subprocess.Popen([*python(JOB), *codes], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdin is not None
    pids = [parent.pid, *map(int, parent.stdout.readline().split())]
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.wait()


def _freeze(pids: list[int], stop: bool) -> None:
    """SIGSTOP (and wait until each is stopped) or SIGCONT every process of the tree."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP if stop else signal.SIGCONT)
    if stop:
        wait_for(lambda: all(psutil.Process(p).status() == psutil.STATUS_STOPPED for p in pids), what="stopped")


def _counters(pids: list[int], read_proc: bool) -> dict[int, tuple[float, float]]:
    """(user + system seconds, rss bytes) of each process, from the source the collector reads:
    /proc/<pid>/stat, or psutil (whose RSS comes from /proc/<pid>/statm: on recent kernels the
    exact count, where stat's is the kernel's running count, a few pages apart)."""
    out = {}
    for pid in pids:
        if read_proc:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                cpu, rss, *_ = procfs.parse_stat(fh.read()) or (0.0, 0.0)
            out[pid] = (cpu, rss)
        else:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            out[pid] = (times.user + times.system, float(proc.memory_info().rss))
    return out


def _tick(tree: ProcessTreeCollector) -> tuple[float, list[Sample]]:
    """One reading turned into samples: (the seconds it spans, its samples)."""
    ts = time.time()
    reading = tree.read(ts)
    out: list[Sample] = []
    tree.samples_from(reading, out, ts)
    return reading[0], out


@pytest.mark.parametrize("read_proc", [True, False], ids=["proc-stat", "psutil-oneshot"])
@pytest.mark.parametrize("top", [2, None], ids=["top-2", "every-process"])
def test_tree_totals_are_the_sum_over_every_process_whoever_gets_rows(
    job: list[int], top: int | None, read_proc: bool
) -> None:
    tree = ProcessTreeCollector(job[0], top=top, read_proc=read_proc)
    tree.start()
    try:
        wait_for(lambda: tree.read(time.time()) and set(tree.pids()) == set(job), what="the whole tree")
        # Frozen, the counters a test reads are those the collector reads.
        _freeze(job, stop=True)
        before = _counters(job, read_proc)
        _tick(tree)
        _freeze(job, stop=False)
        time.sleep(0.3)
        _freeze(job, stop=True)
        after = _counters(job, read_proc)
        elapsed, out = _tick(tree)
    finally:
        _freeze(job, stop=False)
        tree.close()
    cpu = {pid: (after[pid][0] - before[pid][0]) * 100.0 / elapsed for pid in job}
    rss = {pid: after[pid][1] for pid in job}
    totals = {s[:2]: s[2] for s in out if s[4] == ""}
    assert totals["cpu", "process_tree"] == pytest.approx(sum(cpu.values()), abs=1e-9)
    assert totals["ram", "process_tree_rss"] == pytest.approx(sum(rss.values()) / MB, rel=1e-12)
    assert min(cpu[pid] for pid in job[1:3]) > 0.0, "the busy children used CPU"

    rows: dict[int, dict[str, float]] = {}
    for mtype, name, value, _, device in out:
        if mtype == "process":
            rows.setdefault(int(device.split(":", 1)[0]), {})[name] = value
    for pid, values in rows.items():  # each process's own rows: its own figures
        assert values == {"rss_mb": pytest.approx(rss[pid] / MB), "cpu_percent": pytest.approx(cpu[pid], abs=1e-9)}
    if top is None:
        assert set(rows) == set(job)
        return
    # 8 processes > 2 x top: rows for the 2 largest and the 2 busiest only.
    assert 2 <= len(rows) <= 2 * top < len(job)
    third_rss = sorted(rss.values(), reverse=True)[top]
    third_cpu = sorted(cpu.values(), reverse=True)[top]
    assert {pid for pid in job if rss[pid] > third_rss} <= set(rows)
    assert {pid for pid in job if cpu[pid] > third_cpu} <= set(rows)
    assert job[3] in rows, "the process holding 96 MB has rows"
    busiest = max(cpu.values())  # (a busy child, unless the machine starved both: then a tie)
    assert any(cpu[pid] == busiest for pid in rows), "the busiest process has rows"


def test_a_small_tree_gives_every_process_rows_and_a_big_one_a_bounded_number(job: list[int]) -> None:
    small = ProcessTreeCollector(job[0])  # the default: PER_PROCESS_TOP
    big = ProcessTreeCollector(job[0], top=1)
    for tree in (small, big):
        tree.start()
    try:
        wait_for(lambda: all(t.read(time.time()) and set(t.pids()) == set(job) for t in (small, big)), what="trees")
        for tree in (small, big):
            _tick(tree)
        time.sleep(0.2)
        devices = [{s[4] for s in _tick(tree)[1] if s[0] == "process"} for tree in (small, big)]
    finally:
        for tree in (small, big):
            tree.close()
    assert len(job) <= 2 * host.PER_PROCESS_TOP
    assert {int(d.split(":", 1)[0]) for d in devices[0]} == set(job)
    assert 1 <= len(devices[1]) <= 2
    assert all(d == f"{int(d.split(':')[0])}:{psutil.Process(int(d.split(':')[0])).name()}" for d in devices[0])


def test_a_grandchild_of_a_single_threaded_process_is_found_on_its_kept_children_file(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc children files here: psutil walks the tree")
    # A shell that starts its child only when told: by then the shell has been read (one thread).
    shell = subprocess.Popen(["/bin/sh", "-c", "read x; sleep 60 & wait"], stdin=subprocess.PIPE)
    children.append(shell)
    assert shell.stdin is not None
    tree = ProcessTreeCollector(read_proc=True)
    tree.start()
    try:
        monkeypatch.setattr(tree, "_walk_due", lambda: True)
        for _ in range(2):  # read, then walked with what the reading said
            _tick(tree)
        tracked = tree._procs[shell.pid]
        assert tracked.threads == 1 and tracked.thread_fds is not None
        assert list(tracked.thread_fds) == [str(shell.pid)], "its one children file, kept open"
        shell.stdin.write(b"go\n")
        shell.stdin.close()
        grandchild = wait_for(lambda: psutil.Process(shell.pid).children(), what="the grandchild")[0].pid
        tree.read(time.time())
        assert grandchild in tree.pids()
    finally:
        tree.close()


def test_parse_stat_takes_the_fields_used() -> None:
    line = b"123 (a (b) c) S 45 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 999 1000 77 1844 0"
    assert procfs.parse_stat(line) == (300 / os.sysconf("SC_CLK_TCK"), 77 * os.sysconf("SC_PAGE_SIZE"), 45, 3)
    assert procfs.parse_stat(line.replace(b") S ", b") Z ")) is None
    assert procfs.parse_stat(line[:40]) is None


THREAD_SPAWNS = (  # on a line read: a thread starts a child and stays; on the next, a second one does and ends
    "import subprocess, sys, threading\n"
    "def spawn(stay):\n"
    "    print(subprocess.Popen(['sleep', '60']).pid, flush=True)\n"
    "    stay and threading.Event().wait()\n"
    "for stay in (True, False):\n"
    "    sys.stdin.readline()\n"
    "    threading.Thread(target=spawn, args=(stay,), daemon=True).start()\n"
    "threading.Event().wait()\n"
)


def test_a_child_started_by_a_new_thread_is_found_at_the_next_walk(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc children files here: psutil walks the tree")
    # A process read and walked with one thread; then threads of its start children.
    worker = subprocess.Popen(python(THREAD_SPAWNS), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(worker)
    assert worker.stdin is not None and worker.stdout is not None
    tree = ProcessTreeCollector(read_proc=True)
    tree.start()
    grandchildren: list[int] = []
    try:
        monkeypatch.setattr(tree, "_walk_due", lambda: True)
        for _ in range(2):
            _tick(tree)
        tracked = tree._procs[worker.pid]
        assert tracked.thread_fds is not None and len(tracked.thread_fds) == 1
        for _ in range(2):
            worker.stdin.write(b"go\n")
            worker.stdin.flush()
            grandchildren.append(int(worker.stdout.readline()))
            _tick(tree)
            assert grandchildren[-1] in tree.pids()
        # The first: a child of a thread that stays (the thread count moved: its threads listed
        # again). The second: its thread may have ended, handing it to a thread of the process.
        assert len(tracked.thread_fds) >= 2
    finally:
        for pid in grandchildren:
            os.kill(pid, signal.SIGKILL)
        tree.close()
