"""Signal policy of every aetherium-hpc process: one module, below the store.

Three rules live here, and only here:

1. **Background threads block the job's signals.** A process-directed signal (SIGTERM from
   scancel or Pool.terminate, USR2 from Slurm) goes to any one thread that does not block it.
   Python runs signal handlers in the main thread only, and a main thread blocked in a C call
   (a lock, a pipe read) is woken by EINTR only when the signal was delivered to it. So every
   thread we start blocks :data:`JOB_SIGNALS` first (:func:`block_job_signals`): the kernel
   then delivers them to the main thread, which wakes up and runs the handler at once.

2. **SIGTERM in a process that logs: save what it holds, then die of SIGTERM -- never hang**
   (:func:`flush_on_sigterm`). ``Pool.terminate()`` (what ``with Pool(...)`` does), ``scancel``
   and the time limit end processes with SIGTERM. A process of ours may hold records not yet
   sent (a worker's socket sink) or not yet committed (a script's own ``init_db``).

   A Python-level SIGTERM handler cannot be trusted with that: CPython runs it in the main
   thread at the next bytecode boundary, and a SIGTERM that lands just before the main thread
   blocks on a lock (a Pool worker waiting for its next task) is never acted on -- the worker
   sleeps forever and ``Pool.__exit__`` with it. Blocking SIGTERM and ``sigwait``-ing for it in
   a thread is no better: the blocked mask is inherited by every program the process starts.

   So the main thread never does anything on SIGTERM. The C-level handler writes the signal
   number to a wakeup pipe (:func:`signal.set_wakeup_fd`) whatever the main thread is doing;
   a watcher thread reads it, runs the flush hooks (bounded by :data:`EXIT_FLUSH_TIMEOUT_S`),
   puts SIGTERM back to its default action and re-raises it on itself: the process ends with
   SIGTERM's status, also when the main thread is stuck in C. Installed only where SIGTERM had
   its default action and nobody else uses the wakeup fd.

3. **What a fork child resets.** A fork child starts without the watcher, without the parent's
   list of childless threads, and -- in a job process whose runtime handles signals -- with
   :data:`FORK_CHILD_ACTIONS`; SIGTERM is blocked across ``fork()`` so that one sent to a
   just-forked child waits for the child's own handlers (see the fork section below). The
   at-fork hooks are registered when this module is first imported, in this order: the
   childless-thread list, then the SIGTERM watcher's (the store's own hooks come after them).

The job runtime's handlers (:mod:`aetherium_hpc.runtime.signal_guard`) are built on these rules.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "CHILDLESS_THREADS",
    "EXIT_FLUSH_TIMEOUT_S",
    "FORK_CHILD_ACTIONS",
    "JOB_SIGNALS",
    "block_job_signals",
    "caught_outside_python",
    "childless",
    "die_of",
    "flush_on_sigterm",
    "forget_sigterm_hook",
    "is_watcher_handler",
    "own_handler",
    "reset_in_fork_child",
    "restore_fork_child_actions",
    "shielded",
    "wait_shielded",
]

# -- background threads --------------------------------------------------------------------------
JOB_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}

#: Native ids (as text, as /proc/<pid>/task lists them) of this process's own threads that never
#: start a process -- the store writer, the monitor, the socket threads -- while they run: the
#: process-tree walk of the monitor does not read their ``children`` files (one open each a tick).
CHILDLESS_THREADS: set[str] = set()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CHILDLESS_THREADS.clear)


def childless(target: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the target of a thread that never starts a process (see :data:`CHILDLESS_THREADS`)."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> Any:
        tid = str(threading.get_native_id())
        CHILDLESS_THREADS.add(tid)
        try:
            return target(*args, **kwargs)
        finally:
            CHILDLESS_THREADS.discard(tid)

    return run


def block_job_signals() -> None:
    """Call first thing in a background thread's target."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    except (AttributeError, OSError, ValueError):  # not POSIX: nothing to do
        pass


# -- work that a signal handler's exception must not cut short -----------------------------------
def wait_shielded(thread: threading.Thread) -> BaseException | None:
    """Wait until ``thread`` ends, whatever is raised into the waiting thread meanwhile; the first
    exception so raised (None: none). Python runs signal handlers in the main thread only, so work
    done in another thread is out of reach of the exceptions they raise (PyTorch's SIGCHLD handler
    raising RuntimeError when DataLoader workers die, a KeyboardInterrupt, a user's own)."""
    raised: BaseException | None = None
    while thread.is_alive():
        try:
            thread.join()
        except BaseException as exc:  # (from a signal handler: the wait goes on)
            if raised is None:
                raised = exc
    return raised


def own_handler(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a signal handler of ours: :func:`shielded` leaves it in place."""
    func._aetherium_own = True  # type: ignore[attr-defined]
    return func


def _defer_foreign_handlers(replaced: dict[int, Any]) -> None:
    """In the main thread: replace every Python-level signal handler that is not ours by one that
    drops the signal (said at debug level); ``replaced`` gets each one replaced, to put back."""
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        if callable(handler) and not getattr(handler, "_aetherium_own", False) and handler is not _python_handler:
            try:
                signal.signal(signum, _dropped)
            except (ValueError, OSError, RuntimeError):
                continue
            replaced[signum] = handler


def _dropped(signum: int, frame: object) -> None:
    log.debug(
        "aetherium-hpc: %s while the metrics are being saved: its handler is not run", signal.Signals(signum).name
    )


def shielded(work: Callable[..., object], *args: Any, name: str = "aetherium-shielded") -> BaseException | None:
    """Run ``work(*args)`` out of reach of other signal handlers' exceptions (PyTorch's SIGCHLD
    handler raising RuntimeError as DataLoader workers die, a user's own).

    Called from the main thread: the Python-level handlers that are not ours (:func:`own_handler`)
    are set aside for the duration (a signal they would have handled is dropped, said at debug
    level), ``work`` runs in a thread of its own and the main thread waits for it; anything still
    raised into the wait is returned (the first one), never into ``work``. From another thread
    (which no signal handler runs in) ``work`` runs directly. An exception of ``work`` itself is
    logged by its thread, as any thread's is."""
    if threading.current_thread() is not threading.main_thread():
        work(*args)
        return None
    raised: BaseException | None = None
    replaced: dict[int, Any] = {}
    try:
        _defer_foreign_handlers(replaced)
    except BaseException as exc:  # (raised before the handlers were all set aside)
        raised = exc
        _defer_foreign_handlers(replaced)
    try:
        thread = threading.Thread(target=work, args=args, name=name, daemon=True)
        thread.start()
        first = wait_shielded(thread)
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
    return raised or first


# -- SIGTERM: flush, then die -------------------------------------------------------------------

#: Longest a process waits for its flush hooks after SIGTERM before it dies anyway (Slurm's
#: KillWait, 30 s by default, must leave time for the job's own status and copy-back).
EXIT_FLUSH_TIMEOUT_S = 10.0


class _Watch:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.pid = os.getpid()
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.hooks: list[Callable[[], object]] = []
        self.thread = threading.Thread(target=childless(self._run), name="aetherium-sigterm", daemon=True)

    def _run(self) -> None:
        block_job_signals()
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data and is_watcher_handler(signal.getsignal(signal.SIGTERM)):
                break  # (a handler installed since, e.g. the job runtime's, acts instead of us)
        flush = threading.Thread(target=_run_hooks, args=(list(self.hooks),), name="aetherium-exit-flush", daemon=True)
        flush.start()
        flush.join(EXIT_FLUSH_TIMEOUT_S)
        die_of(signal.SIGTERM)


_watch: _Watch | None = None
_lock = threading.Lock()


def _python_handler(signum: int, frame: object) -> None:
    """Installed for SIGTERM so that the C handler writes to the wakeup pipe; the watcher acts."""


def is_watcher_handler(handler: object) -> bool:
    """True for the placeholder handler of this module (it stands for SIGTERM's default action)."""
    return handler is _python_handler


def flush_on_sigterm(hook: Callable[[], object]) -> bool:
    """Run ``hook`` when this process gets SIGTERM, then die of SIGTERM. False if not installed
    (SIGTERM has another handler, not in the main thread, or the wakeup fd is taken)."""
    global _watch
    with _lock:
        if _watch is not None and _watch.pid == os.getpid():
            _watch.hooks.append(hook)
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
                return False  # the job's runtime, submitit or the user handles SIGTERM: leave it
        except ValueError:
            return False
        if caught_outside_python(signal.SIGTERM):
            return False  # a library's C handler (PyTorch's DataLoader workers): leave it
        read_fd, write_fd = os.pipe()  # non-inheritable: programs started later do not get them
        os.set_blocking(write_fd, False)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read_fd)
            os.close(write_fd)
            return False
        if previous != -1:  # asyncio (or another library) owns the wakeup fd: give it back
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            log.debug("aetherium-hpc: the signal wakeup fd is in use; no flush on SIGTERM in pid %d", os.getpid())
            return False
        signal.signal(signal.SIGTERM, _python_handler)
        watch = _Watch(read_fd, write_fd)
        watch.hooks.append(hook)
        _watch = watch
        watch.thread.start()
        return True


def forget_sigterm_hook(hook: Callable[[], object]) -> None:
    """Take back a ``hook`` given to :func:`flush_on_sigterm` in this process (nothing if it is not there)."""
    with _lock:
        if _watch is not None and _watch.pid == os.getpid() and hook in _watch.hooks:
            _watch.hooks.remove(hook)


def caught_outside_python(signum: int) -> bool:
    """True when the kernel says this process catches ``signum`` while Python's record says it does
    not: a handler installed from C with ``sigaction`` (PyTorch's DataLoader workers catch SIGTERM
    that way, to exit quietly when their parent ends them), which ``signal.getsignal`` cannot see
    and ``signal.signal`` would silently replace. Read from ``SigCgt`` in /proc/self/status; False
    where that is not there."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"SigCgt:"):
                    caught = int(line.split()[1], 16) >> (signum - 1) & 1
                    break
            else:
                return False
    except (OSError, ValueError, IndexError):
        return False
    return bool(caught) and signal.getsignal(signum) in (signal.SIG_DFL, signal.SIG_IGN, None)


def _run_hooks(hooks: list[Callable[[], object]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # the process is about to die: say what was lost, keep going
            log.warning("aetherium-hpc: flush on SIGTERM failed in pid %d: %s", os.getpid(), exc)


def die_of(signum: int) -> None:
    """End this process with ``signum``'s default action, from any thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, signal.SIG_DFL)
    else:
        # signal.signal() is for the main thread only; sigaction(2) is not.
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.signal.restype = ctypes.c_void_p
            libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
            libc.signal(signum, None)  # SIG_DFL is the null handler
        except (OSError, AttributeError):
            os._exit(128 + signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    signal.pthread_kill(threading.get_ident(), signum)
    os._exit(128 + signum)  # not reached: the default action ended the process


# -- fork ----------------------------------------------------------------------------------------
# A fork child starts with its parent's Python-level SIGTERM handler (ours, or the job runtime's)
# until the at-fork hooks below put SIGTERM back to its default action. A SIGTERM landing in
# that window (``with Pool(...)`` terminating a worker it has only just forked) would run the
# inherited C handler: the signal is swallowed (CPython drops signals pending at fork) and, with
# our wakeup pipe, the byte lands in the *parent's* watcher, which then ends the parent. So the
# forking thread blocks SIGTERM across fork(); the child unblocks it once its handlers are reset,
# and a SIGTERM that came meanwhile then takes its default action.
_child_resets: list[Callable[[], None]] = []
_mask_before_fork: set[int] | None = None


def reset_in_fork_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in every fork child before SIGTERM is unblocked there (signal handlers)."""
    _child_resets.append(reset)


#: What a fork child (a Pool worker) of a job process does on the signals the job runtime
#: handles. It is not the job's main process. SIGTERM: the default action (not the parent's
#: handler: submitit's SIGTERM "bypass" would make the worker ignore Pool.terminate()), so that
#: the store client's own SIGTERM flush installs there. USR2 is a "save now" notice for the main
#: process; its default action would kill a worker that may hold the pool's queue lock, and
#: Pool.terminate() would then wait for it forever.
FORK_CHILD_ACTIONS: dict[int, Any] = {
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGINT: signal.default_int_handler,
    signal.SIGUSR2: signal.SIG_IGN,
}


def restore_fork_child_actions() -> None:
    """Put :data:`FORK_CHILD_ACTIONS` in place (in a fork child, from a :func:`reset_in_fork_child` hook)."""
    for signum, action in FORK_CHILD_ACTIONS.items():
        try:
            signal.signal(signum, action)
        except (ValueError, OSError):
            pass


def _before_fork() -> None:
    global _mask_before_fork
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return
    if callable(handler):
        _mask_before_fork = set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}))


def _restore_mask() -> None:
    global _mask_before_fork
    mask, _mask_before_fork = _mask_before_fork, None
    if mask is not None and signal.SIGTERM not in mask:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _after_fork_in_child() -> None:
    # The watcher thread does not exist here, and the pipe is the parent's: a SIGTERM to this
    # child must not reach the parent's watcher.
    global _watch, _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at fork
    watch, _watch = _watch, None
    try:
        if watch is not None:
            try:
                if is_watcher_handler(signal.getsignal(signal.SIGTERM)):
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError):
                pass
            for fd in (watch.read_fd, watch.write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for reset in _child_resets:
            try:
                reset()
            except Exception as exc:  # never let one reset keep SIGTERM blocked in the child
                log.warning("aetherium-hpc: signal reset after fork failed: %s", exc)
    finally:
        _restore_mask()


os.register_at_fork(before=_before_fork, after_in_parent=_restore_mask, after_in_child=_after_fork_in_child)
