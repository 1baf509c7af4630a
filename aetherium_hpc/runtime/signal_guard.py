"""Signals inside a job: save the metrics first, then let the previous handler act.

- SIGTERM (``scancel``, the time limit; also what the local controller forwards): status
  ``cancelled``.
- SIGINT (submitit's LocalJob.cancel, Ctrl-C): status ``cancelled``.
- USR2 (submitit's pre-timeout signal, ``--signal=USR2@N``): ``timeout`` or ``preempted``, as
  submitit's own handler decides (its ``has_timed_out()``); ``timeout`` without submitit.

The handler records the status and copies the database back, then chains to the handler it
replaced: submitit's checkpoint-and-requeue for USR2, its logging ``bypass`` for SIGTERM,
Python's KeyboardInterrupt for SIGINT, or the default action (the process dies of the signal).
If the chained handler returns, :class:`JobInterrupted` stops the workload: the store is
closed by then, so going on would log into nothing.

Fork children (a multiprocessing Pool) get :data:`aetherium_hpc.signal_policy.FORK_CHILD_ACTIONS`
(SIGTERM's default action, USR2 ignored) while a guard is installed; should one still run the
handler, it only flushes the child's buffered records to the node socket and then takes the
default action. The signal policy itself (background threads, SIGTERM flush, fork) is
:mod:`aetherium_hpc.signal_policy`; this module is the job runtime's part built on it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .. import scheduler
from ..signal_policy import is_watcher_handler, own_handler, reset_in_fork_child, restore_fork_child_actions, shielded
from ..store.client import shutdown_db

log = logging.getLogger(__name__)

__all__ = ["JobInterrupted", "SignalGuard", "status_for"]

Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class JobInterrupted(Exception):
    """The job was stopped by a signal after its metrics were saved."""

    def __init__(self, status: str, signum: int) -> None:
        super().__init__(f"job {status}: stopped by {signal.Signals(signum).name}; metrics were saved first")
        self.status = status
        self.signum = signum


#: SIGTERM this close to the job's end time (or later) is Slurm's time limit, not a scancel.
TIME_LIMIT_GRACE_S = 30.0


_job_end_time: float | None = None


def remember_job_end_time(timeout: float = 5.0) -> float | None:
    """Learn when Slurm will stop this job, once, at start (never inside a signal handler).

    Slurm >= 23.02 exports SLURM_JOB_END_TIME; 22.05 does not, so ask squeue for the end time.
    """
    global _job_end_time
    end = os.environ.get("SLURM_JOB_END_TIME")
    if end:
        try:
            _job_end_time = float(end)
            return _job_end_time
        except ValueError:
            pass
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    found = scheduler.job_end_time(job_id, timeout)
    if found is not None:
        _job_end_time = found
    return found


def _past_time_limit(now: float | None = None) -> bool:
    """True when a SIGTERM comes from Slurm's time limit rather than from scancel."""
    end = _job_end_time
    if end is None and os.environ.get("SLURM_JOB_END_TIME"):
        try:
            end = float(os.environ["SLURM_JOB_END_TIME"])
        except ValueError:
            end = None
    if end is None:
        return False
    return (time.time() if now is None else now) >= end - TIME_LIMIT_GRACE_S


def status_for(signum: int, previous: Handler) -> str:
    """The jobs.status a signal means.

    SIGTERM/SIGINT: ``cancelled``, unless the job's time limit has come (``timeout``); USR2 asks
    submitit's handler whether the job timed out or was preempted.
    """
    if signum != signal.SIGUSR2:
        return "timeout" if signum == signal.SIGTERM and _past_time_limit() else "cancelled"
    owner = getattr(previous, "__self__", None)
    has_timed_out = getattr(owner, "has_timed_out", None)
    if callable(has_timed_out):
        try:
            return "timeout" if has_timed_out() else "preempted"
        except Exception:  # submitit internals changed: fall back to the common case
            return "timeout"
    return "timeout"


_active: list[SignalGuard] = []


def _reset_in_fork_child() -> None:
    # A fork child (a Pool worker) is not the job's main process: the guards are the parent's.
    if not _active:
        return
    _active.clear()
    restore_fork_child_actions()


# Run by the signal policy's at-fork hook, before SIGTERM (blocked across fork) is unblocked in the child.
reset_in_fork_child(_reset_in_fork_child)


def _flush_child_and_die(signum: int) -> None:
    try:
        shutdown_db()  # in a fork child: sends this process's buffered records (it has no store object)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class SignalGuard:
    """Installs the handlers in the main thread; ``on_signal(status, signum)`` saves the metrics."""

    def __init__(self, on_signal: Callable[[str, int], bool | None], signals: tuple[int, ...] = HANDLED) -> None:
        self.on_signal = on_signal
        self.signals = signals
        self.owner_pid = os.getpid()
        self.previous: dict[int, Handler] = {}
        self.received: int | None = None
        self._saving: threading.Event | None = None  # set once the first signal's save is done
        self._saved: bool | None = None  # what on_signal answered
        self._chained = False

    def install(self) -> SignalGuard:
        remember_job_end_time()
        if threading.current_thread() is not threading.main_thread():
            log.warning("aetherium-hpc: not in the main thread; signals will not save the metrics")
            return self
        for signum in self.signals:
            self.previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        _active.append(self)
        return self

    @property
    def installed(self) -> bool:
        """Whether the handlers are in place (the main thread installed them, not yet uninstalled)."""
        return bool(self.previous)

    def uninstall(self) -> None:
        if os.getpid() != self.owner_pid or threading.current_thread() is not threading.main_thread():
            return
        if self in _active:
            _active.remove(self)
        for signum, prev in self.previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        self.previous.clear()

    @own_handler
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # first: should another handler's exception cut this one short, the
        # workload's end (run_task) sees the signal and completes its work (complete_interrupted)
        if os.getpid() != self.owner_pid:
            _flush_child_and_die(signum)
            return
        self._complete(signum, frame)

    def complete_interrupted(self) -> None:
        """After the workload ended with an exception: if a handled signal came and its handler was
        cut short (an exception that another signal handler raised in the main thread landed in it),
        save the metrics for it and act on it now, as the handler would have."""
        signum = self.received
        if signum is not None and not self._chained and os.getpid() == self.owner_pid:
            self._complete(signum, None)

    def _complete(self, signum: int, frame: FrameType | None) -> None:
        """Save the metrics in a thread of their own (out of reach of other handlers' exceptions;
        a repeated signal waits for the same save), then let the previous handler act."""
        if self._saving is None:
            self._saving = threading.Event()
            raised = shielded(self._save, signum, name="aetherium-save")
        else:  # a repeated signal while the first one's save runs: wait for it, shielded too
            raised = shielded(self._saving.wait)
        if raised is not None:
            log.warning(
                "aetherium-hpc: %s: %s was raised while the metrics were being saved; they were saved first",
                type(raised).__name__, str(raised).strip() or "-",
            )  # fmt: skip
        if self._saved is False:  # the metrics were being saved already (the workload's own end): let
            self._saving = None  # that finish; a signal after it asks again (and then takes effect)
            return
        self._chain(signum, frame)

    def _save(self, signum: int) -> None:
        try:
            prev = self.previous.get(signum, signal.SIG_DFL)
            status = status_for(signum, prev)
            log.warning("aetherium-hpc: %s received: saving metrics (status %s)", signal.Signals(signum).name, status)
            self._saved = self.on_signal(status, signum) is not False
        finally:
            if self._saving is not None:
                self._saving.set()

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        self._chained = True
        prev = self.previous.get(signum, signal.SIG_DFL)
        if callable(prev) and not is_watcher_handler(prev):
            prev(signum, frame)  # submitit's requeue (may exit), its bypass, or KeyboardInterrupt
        elif prev in (signal.SIG_DFL, None) or is_watcher_handler(prev):  # (the store's stands for SIG_DFL)
            self.uninstall()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise JobInterrupted(status_for(signum, prev), signum)
