"""The signal policy of every aetherium-hpc process, each rule on its own in a fresh process.

A background thread blocks the job's signals; SIGTERM runs the flush hooks and the process dies
of SIGTERM even while its main thread is stuck in C; the policy steps aside where SIGTERM or the
wakeup fd is someone else's; work in :func:`shielded` is out of reach of foreign handlers'
exceptions; a fork child neither keeps the parent's watcher nor the list of childless threads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from testenv import PYTHONPATH

PRELUDE = """
import os, signal, sys, threading, time
from aetherium_hpc import signal_policy as policy
"""


def _child(body: str, *, wait_for: Path | None = None, kill: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter; with ``kill``, send it that signal once ``wait_for`` exists."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
    )
    if kill is not None:
        assert wait_for is not None
        deadline = time.monotonic() + 60
        while not wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert wait_for.exists(), proc.communicate(timeout=5)
        proc.send_signal(kill)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_runs_the_hooks_and_the_process_dies_of_it_while_the_main_thread_is_stuck(tmp_path: Path) -> None:
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    done = _child(
        f"""
        assert policy.flush_on_sigterm(lambda: open({str(saved)!r}, "w").write("first"))
        assert policy.flush_on_sigterm(lambda: 1 / 0)  # a failing hook does not stop the next
        assert policy.flush_on_sigterm(lambda: open({str(saved)!r}, "a").write(" second"))
        lock = threading.Lock(); lock.acquire()
        open({str(ready)!r}, "w").close()
        lock.acquire()  # blocked in C, as a Pool worker waiting for a task
        print("not reached")
        """,
        wait_for=ready,
        kill=signal.SIGTERM,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert saved.read_text() == "first second"
    assert "not reached" not in done.stdout
    assert "flush on SIGTERM failed" in done.stderr and "division by zero" in done.stderr


def test_a_hook_that_hangs_is_bounded(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    done = _child(
        f"""
        policy.EXIT_FLUSH_TIMEOUT_S = 0.5
        assert policy.flush_on_sigterm(lambda: time.sleep(3600))
        open({str(ready)!r}, "w").close()
        time.sleep(3600)
        """,
        wait_for=ready,
        kill=signal.SIGTERM,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr


def test_the_policy_steps_aside_where_sigterm_or_the_wakeup_fd_is_taken() -> None:
    done = _child(
        """
        import socket
        signal.signal(signal.SIGTERM, lambda *a: None)
        print("handler", policy.flush_on_sigterm(print))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        a, b = socket.socketpair(); a.setblocking(False)
        signal.set_wakeup_fd(a.fileno())
        print("wakeup", policy.flush_on_sigterm(print), signal.set_wakeup_fd(-1) == a.fileno())
        print("thread", threading.Thread(target=lambda: print("in thread", policy.flush_on_sigterm(print))).start())
        time.sleep(0.2)
        print("free", policy.flush_on_sigterm(print), signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["handler False", "wakeup False True"]
    assert "in thread False" in done.stdout
    assert "free True True" in done.stdout


def test_background_threads_block_the_job_signals_and_childless_threads_are_listed() -> None:
    done = _child(
        """
        def blocked_mask():
            tid = threading.get_native_id()
            with open(f"/proc/self/task/{tid}/status") as fh:
                line = next(l for l in fh if l.startswith("SigBlk:"))
            mask = int(line.split()[1], 16)
            return sorted(s for s in range(1, 65) if mask >> (s - 1) & 1)

        out = {}
        def target():
            policy.block_job_signals()
            out["mask"] = blocked_mask()
            out["listed"] = str(threading.get_native_id()) in policy.CHILDLESS_THREADS
            out["tid"] = str(threading.get_native_id())
        t = threading.Thread(target=policy.childless(target)); t.start(); t.join()
        print(out["mask"] == sorted(int(s) for s in policy.JOB_SIGNALS), out["listed"],
              out["tid"] in policy.CHILDLESS_THREADS, blocked_mask() == [])
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False", "True"]


def test_shielded_work_is_out_of_reach_of_a_foreign_handler_and_the_handler_comes_back() -> None:
    done = _child(
        """
        def foreign(signum, frame):
            raise RuntimeError("DataLoader worker exited unexpectedly")
        signal.signal(signal.SIGUSR1, foreign)
        steps = []
        def work():
            os.kill(os.getpid(), signal.SIGUSR1)  # lands while the work runs
            time.sleep(0.3)
            steps.append("saved")
        print(policy.shielded(work), steps, signal.getsignal(signal.SIGUSR1) is foreign)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None ['saved'] True"


def test_a_fork_child_has_neither_the_watcher_nor_the_parents_threads(tmp_path: Path) -> None:
    parent_hook = tmp_path / "parent-hook"
    done = _child(
        f"""
        assert policy.flush_on_sigterm(lambda: open({str(parent_hook)!r}, "w").close())
        policy.CHILDLESS_THREADS.add("12345")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not policy.CHILDLESS_THREADS
            os.write(w, b"1" if ok else b"0")
            time.sleep(3600)
        print("child", os.read(r, 1).decode())
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        time.sleep(0.5)  # the parent's watcher would act by now had the child's SIGTERM reached it
        print("killed", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        print("parent alive", "12345" in policy.CHILDLESS_THREADS)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["child 1", "killed True", "parent alive True"]
    assert not parent_hook.exists()


def test_die_of_from_another_thread_ends_the_process_with_that_signal() -> None:
    done = _child(
        """
        threading.Thread(target=policy.die_of, args=(signal.SIGTERM,)).start()
        time.sleep(30)
        print("not reached")
        """
    )
    assert done.returncode == -signal.SIGTERM
    assert "not reached" not in done.stdout


def test_a_handler_installed_from_c_is_seen_and_left_alone() -> None:
    done = _child(
        """
        import ctypes
        print(policy.caught_outside_python(signal.SIGTERM))
        handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda signum: None)
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal(signal.SIGTERM, ctypes.cast(handler, ctypes.c_void_p))
        print(policy.caught_outside_python(signal.SIGTERM), policy.flush_on_sigterm(print))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False"]
