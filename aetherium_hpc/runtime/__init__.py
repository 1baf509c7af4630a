"""What runs inside a job: the job's identity, the node's store session, signals, copy-back.

Flow (local rank 0 of each node)::

    JobRunner(config, run_dir)(task) -> JobContext.detect()
        -> NodeSession.start(): init_db (node-local), jobs row 'running', monitor, checkpoints
           (every checkpoint_interval_s: what is new since the last copy, store.backup.CopyBack)
        -> workload (callable or command); signals -> status, copy-back, then submitit's handler
        -> NodeSession.finish(): status row, stop monitor, close_store (collects what workers
           hold), last copy to run_dir/db/<job>_<task>/<node>.db

Other local ranks connect to the node socket and just run the workload.
"""

from __future__ import annotations

from .context import JobContext
from .entrypoint import JobRunner
from .session import NodeSession, run_task
from .signals import JobInterrupted, SignalGuard

__all__ = ["JobContext", "JobInterrupted", "JobRunner", "NodeSession", "SignalGuard", "run_task"]
