"""One task of a job, from start to the copied-back database.

On local rank 0 of each node a :class:`NodeSession` opens the node-local store (with its
socket in a folder derived from job, task and node), writes the ``jobs`` row, starts the
resource monitor and a checkpoint thread, and at the end (or on a signal) records the status,
closes the store and copies the database into the run directory. Other local ranks connect to
that socket. :func:`run_task` drives both, around a workload function.

Copy-back (:class:`..store.backup.CopyBack`): every ``checkpoint_interval_s`` (30 s by
default) and at the end, the run-directory copy gets what is new since the previous copy, in
one transaction; the first copy is a full one. A SIGKILL, the OOM killer or a lost node thus
lose at most one interval. A copy that fails at the end is reported in one line naming the
node-local database, which is then kept; the workload's exit status is not changed.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import envvars
from ..config import Monitoring
from ..errors import UnsafeFolderError
from ..identity import JobIdentity
from ..paths import RunLayout, private_folder
from ..signal_policy import block_job_signals, shielded
from ..store import CopyBack, address, client, copy_database, source_of
from .signal_guard import JobInterrupted, SignalGuard

log = logging.getLogger(__name__)

__all__ = ["NodeSession", "connect_to_node_store", "run_command", "run_task"]

#: How long a non-leader task waits for rank 0's socket to appear.
SIBLING_WAIT_S = 60.0
#: How long a workload's failure waits for a termination signal that may have caused it (the
#: DataLoader workers of the same scancel died first) before it is recorded as ``failed``.
SIGNAL_GRACE_S = 1.0


class NodeSession:
    """The store, monitor, status row and copy-back of one node of one task."""

    def __init__(
        self,
        ctx: JobIdentity,
        dest: str | os.PathLike[str],
        monitoring: Monitoring | None = None,
        *,
        config: dict[str, Any] | None = None,
        requested: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.dest = Path(dest)
        self.monitoring = monitoring or Monitoring()
        self.config = config
        self.requested = requested
        folder = self._folder = RunLayout.node_folder(self.monitoring.local_dir or envvars.local_scratch_dir(), ctx)
        self.local_dir = folder.path
        self.local_db = folder.database
        self.socket_dir = address.socket_dir_for(self.local_dir)
        self.child: subprocess.Popen[bytes] | None = None
        #: The node store :func:`client.init_db` opened in :meth:`start` (None before).
        self.store: client.MetricsStore | client.JoinedStore | None = None
        self.status: str | None = None
        self._monitor: Any = None
        self._stop = threading.Event()
        self._copy_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._copier = CopyBack(self.local_db, self.dest)
        self._finishing = False
        self.finished = threading.Event()
        #: Why the copy at the end failed (None: it succeeded, or has not run yet).
        self.copy_error: str | None = None

    # -- start ------------------------------------------------------------------------------
    def start(self) -> NodeSession:
        self._folder.create()  # private (0700, this uid's), or refused: other users share node-local scratch
        if self.socket_dir != self.local_dir:
            private_folder(self.socket_dir, with_parent=True)
        address.remove_stale_sockets(self.socket_dir)  # a requeued job's old socket
        if self.dest.exists() and not os.path.exists(self.local_db):
            # A requeued job (preempted, timed out with checkpointing): go on from the copy of
            # the previous attempt, so that its records are not overwritten at the next copy.
            copy_database(self.dest, self.local_db)
        ctx, mon = self.ctx, self.monitoring
        self.store = client.init_db(
            self.local_db,
            options=mon.store_options(),
            source=source_of(ctx),
            socket_dir=self.socket_dir,
            join=False,  # this is the node store the job's other processes join
        )
        # The job's identity (job, array task, node) is the store's source, given above.
        client.log_job(status="running", start_time=time.time(), config=self.config, requested=self.requested)
        if mon.enabled:
            from ..monitors import gpu as gpu_monitor
            from ..monitors import log_system_resources

            if self.config is not None and "workload" in self.config:  # submitted from a YAML config
                gpu_monitor.set_off_hint("set monitoring.gpu: false in the config (or --set monitoring.gpu=false)")
            else:  # aetherium-hpc run
                gpu_monitor.set_off_hint("add --no-gpu to aetherium-hpc run")
            self._monitor = log_system_resources(interval=mon.interval_s, gpu=mon.gpu, textfile=self._textfile())
        if mon.checkpoint_interval_s and mon.checkpoint_interval_s > 0:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="aetherium-checkpoint", daemon=True
            )
            self._checkpointer.start()
        return self

    def _textfile(self) -> Any:
        """The node_exporter textfile of ``monitoring.prometheus_textfile`` (None: not asked for). The
        launcher and ``aetherium-hpc run`` refuse a missing folder before the job; a Slurm node
        without it gets one warning and the job runs on without the file."""
        path = self.monitoring.prometheus_textfile
        if not path:
            return None
        from ..monitors.prometheus import KEY, PrometheusTextfile
        from ..paths import textfile_problem

        problem = textfile_problem(path)
        if problem is not None:
            log.warning(
                "aetherium-hpc: %s: %r: %s (no textfile on %s; the job runs on)", KEY, path, problem, self.ctx.node
            )
            return None
        return PrometheusTextfile.for_job(path, self.ctx)

    def _checkpoint_loop(self) -> None:
        block_job_signals()
        failing: str | None = None
        while not self._stop.wait(self.monitoring.checkpoint_interval_s):
            try:
                self.checkpoint()
            except Exception as exc:  # a failed checkpoint must not end the job; said once per distinct error
                text = str(exc) or type(exc).__name__
                if text != failing:
                    log.warning(
                        "aetherium-hpc: checkpoint copy to %s failed: %s; the node-local database %s keeps "
                        "everything and the copy is retried every %g s",
                        self.dest, text, self.local_db, self.monitoring.checkpoint_interval_s,
                    )  # fmt: skip
                failing = text
            else:
                if failing is not None:
                    log.warning("aetherium-hpc: checkpoint copy to %s works again", self.dest)
                failing = None

    def checkpoint(self) -> None:
        """Commit what was logged so far and bring the run-directory copy up to date."""
        with self._copy_lock:
            store = self.store
            if self._finishing or store is None or store.closed:  # (closed at exit, without finish)
                return
            store.flush(timeout=30.0)
            self._copier.copy()

    # -- end --------------------------------------------------------------------------------
    def on_signal(self, status: str, signum: int) -> bool:
        """Signal path: stop the command (if any), then finish with ``status``.

        Returns False while an earlier finish is still running (the caller lets it complete);
        True once the metrics are saved, so that a repeated signal takes its usual effect."""
        if self._finishing:
            return self.finished.is_set()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except OSError:
                pass
            _reap(child, timeout=10.0)
        code = 128 + signum
        if child is not None and child.returncode is not None:
            code = _exit_code(child.returncode)
        self.finish(status, code, detail=f"signal {signal.Signals(signum).name}")
        return True

    def wait_for_siblings(self, timeout: float) -> bool:
        """Before closing: wait (bounded) until the node's other tasks have disconnected."""
        store = self.store
        if not isinstance(store, client.MetricsStore) or store.server is None:
            return True
        done = store.server.wait_for_disconnect(timeout)
        if not done:
            log.warning("aetherium-hpc: other tasks of this node still connected after %.0f s; closing", timeout)
        return done

    def finish(self, status: str, exit_code: int | None, detail: str | None = None) -> None:
        """Record the status, stop the monitor, close the store, copy back. Runs once.

        The work runs in a thread of its own while the main thread waits (:func:`..signals.shielded`):
        Python runs signal handlers in the main thread only, so an exception a handler raises
        meanwhile -- PyTorch's SIGCHLD handler when the DataLoader workers die of the same
        ``scancel``, a KeyboardInterrupt, a user's own -- lands in the wait, never half-way
        through the copy-back. It is reported in one line once the metrics are saved."""
        if self._finishing:
            return
        self._finishing = True
        self.status = status
        self._stop.set()
        raised = shielded(self._finish, status, exit_code, detail, name="aetherium-finish")
        if raised is not None:
            log.warning(
                "aetherium-hpc: %s: %s was raised while the metrics were being saved (status %s); they were "
                "saved first", type(raised).__name__, str(raised).strip() or "-", status,
            )  # fmt: skip

    def _finish(self, status: str, exit_code: int | None, detail: str | None) -> None:
        block_job_signals()
        try:
            client.log_job(status=status, end_time=time.time(), exit_code=exit_code, detail=detail)
            if self._monitor is not None:
                self._monitor.stop(timeout=5.0)
            client.close_store()
            if self._copy_back():
                self._remove_local()
            elif self.socket_dir != self.local_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
        finally:
            self.finished.set()

    def _copy_back(self) -> bool:
        """The final copy (incremental, cheap enough for the SIGTERM path). On failure: one line on
        stderr naming the node-local database that still holds everything, and False."""
        if not self._copy_lock.acquire(timeout=60.0):  # a checkpoint hangs on the run directory
            self._report_copy_failure("a checkpoint copy did not finish within 60 s")
            return False
        try:
            for attempt in (1, 2):
                try:
                    self._copier.copy(final=True)
                    return True
                except Exception as exc:
                    if attempt == 1 and "locked" in str(exc):  # a reader of the copy held it: once more
                        continue
                    self._report_copy_failure(str(exc) or type(exc).__name__)
                    break
            return False
        finally:
            self._copy_lock.release()

    def _report_copy_failure(self, why: str) -> None:
        self.copy_error = why
        last = self._copier.last_success
        held = (
            f"that file holds the data up to {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last))}"
            if last is not None and self.dest.exists()
            else "nothing was written there"
        )
        command = f"python -m aetherium_hpc.store.backup {shlex.quote(self.local_db)} {shlex.quote(str(self.dest))}"
        where = self.ctx.hostname or self.ctx.node
        if os.path.isfile(self.local_db):
            kept = (f"ALL metrics are kept in {self.local_db} on {where}: when {self.dest.parent} is writable and "
                    f"has room, run `{command}` on that node, before its scratch space is cleaned")  # fmt: skip
        else:
            kept = f"the node-local database {self.local_db} on {where} is gone too (removed or renamed during the run)"
        print(
            f"aetherium-hpc: could not copy the metrics database to {self.dest} ({' '.join(why.split())}); {held}. "
            + kept,
            file=sys.stderr,
            flush=True,
        )

    def _remove_local(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.local_db + suffix)
            except OSError:
                pass
        shutil.rmtree(self.local_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def connect_to_node_store(
    ctx: JobIdentity, monitoring: Monitoring | None = None, wait_s: float = SIBLING_WAIT_S
) -> bool:
    """Non-leader task: point the log calls at the leader's socket (waits for it to appear)."""
    mon = monitoring or Monitoring()
    local = RunLayout.node_folder(mon.local_dir or envvars.local_scratch_dir(), ctx)
    folder = address.socket_dir_for(local.path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = address.find_socket(folder)
        except UnsafeFolderError as exc:
            log.warning("aetherium-hpc: %s; this task logs nothing", exc)
            return False
        if found is not None:
            address.publish(found, local.database)
            return True
        if time.monotonic() > deadline:
            log.warning(
                "aetherium-hpc: no metrics socket under %s after %.0f s; this task logs nothing", folder, wait_s
            )
            return False
        time.sleep(0.2)


def _reap(child: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for ``child`` from a signal handler.

    Not ``child.wait()``: the handler usually interrupted that very call, which holds the Popen's
    wait lock, so a nested wait would spin until its timeout. ``os.waitpid`` needs no lock.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return
        time.sleep(0.02)


def _end_after_failure(session: NodeSession, guard: SignalGuard, exc: BaseException) -> None:
    """The workload raised ``exc``: record ``failed`` -- unless a signal is what ended it.

    A workload that fails as the job is being ended failed because of the signal: ``scancel``
    signals every process of the step, the DataLoader workers die first and PyTorch's SIGCHLD
    handler raises in the main thread (once per worker, at any moment). So this waits up to
    :data:`SIGNAL_GRACE_S` for a handled signal, shielded from such exceptions: its handler runs
    in the main thread meanwhile and records what Slurm did (then ends the process, or raises
    :class:`JobInterrupted`, which is raised here in place of ``exc``). A handler cut short before
    it could save is completed here."""

    def wait_then_fail() -> None:
        deadline = time.monotonic() + SIGNAL_GRACE_S
        while guard.received is None and guard.installed and time.monotonic() < deadline:
            time.sleep(0.02)
        if guard.received is None:
            session.finish("failed", 1, detail=f"{type(exc).__name__}: {exc}"[:2000])

    raised = shielded(wait_then_fail, name="aetherium-failed")
    guard.complete_interrupted()
    if isinstance(raised, JobInterrupted):
        raise raised from exc


def system_exit_code(exc: SystemExit) -> int:
    """The exit status Python gives ``raise SystemExit(code)``: None 0, an int itself, anything else 1."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    return 1


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_command(argv: Sequence[str], session: NodeSession | None, cwd: str | None = None) -> int:
    """Run ``argv`` (a list, never through a shell) with this process's environment, which
    holds the store's address; returns its exit code (128+N when killed by signal N)."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd)
    except OSError as exc:
        from ..errors import LaunchError

        raise LaunchError(f"cannot start {argv[0]!r}: {exc.strerror}; check the command and PATH") from None
    if session is not None:
        session.child = proc
    try:
        return _exit_code(proc.wait())
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
        raise


def run_task(
    ctx: JobIdentity,
    workload: Callable[[NodeSession | None], Any],
    dest: str | os.PathLike[str],
    monitoring: Monitoring | None = None,
    *,
    config: dict[str, Any] | None = None,
    requested: dict[str, Any] | None = None,
    exit_code_of: Callable[[Any], int] = lambda result: 0,
) -> Any:
    """Run ``workload(session)`` inside a store session (leader) or connected to it (others)."""
    session: NodeSession | None = None
    if ctx.is_node_leader:
        session = NodeSession(ctx, dest, monitoring, config=config, requested=requested).start()
        guard = SignalGuard(session.on_signal).install()
    else:
        connect_to_node_store(ctx, monitoring)
        guard = SignalGuard(lambda status, signum: client.shutdown_db()).install()
    try:
        try:
            result = workload(session)
        except JobInterrupted:
            raise
        except KeyboardInterrupt:
            if session is not None:
                session.finish("cancelled", 130, detail="KeyboardInterrupt")
            raise
        except SystemExit as exc:
            if session is not None:
                code = system_exit_code(exc)
                session.finish(
                    "completed" if code == 0 else "failed",
                    code,
                    detail=None if code == 0 else f"SystemExit: {exc.code}"[:2000],
                )
            raise
        except BaseException as exc:
            if session is not None:
                _end_after_failure(session, guard, exc)
            raise
        code = exit_code_of(result)
        if session is not None:
            if ctx.num_tasks > ctx.num_nodes:
                # Other srun tasks on this node log through our socket: let them finish sending.
                session.wait_for_siblings(SIBLING_WAIT_S)
            session.finish("completed" if code == 0 else "failed", code)
        else:
            client.shutdown_db()
        return result
    finally:
        guard.uninstall()
