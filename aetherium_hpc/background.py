"""Background threads of aetherium-hpc keep the job's signals away from themselves.

A process-directed signal (SIGTERM from scancel or Pool.terminate, USR2 from Slurm) goes to
any one thread that does not block it. Python runs signal handlers in the main thread only,
and a main thread blocked in a C call (a lock, a pipe read) is woken by EINTR only when the
signal was delivered to it. So every thread we start blocks these signals first: the kernel
then delivers them to the main thread, which wakes up and runs the handler at once.
"""

from __future__ import annotations

import signal

JOB_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}


def block_job_signals() -> None:
    """Call first thing in a background thread's target."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    except (AttributeError, OSError, ValueError):  # not POSIX: nothing to do
        pass
