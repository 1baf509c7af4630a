"""What runs inside a job: the job's identity, the node's store session, signals, copy-back.

Flow (local rank 0 of each node)::

    JobRunner(config, run_dir)(task) -> detect_job() (an identity.JobIdentity)
        -> NodeSession.start(): init_db (node-local), jobs row 'running', monitor, checkpoints
           (every checkpoint_interval_s: what is new since the last copy, store.backup.CopyBack)
        -> workload (callable or command); signals -> status, copy-back, then submitit's handler
        -> NodeSession.finish(): status row, stop monitor, close_store (collects what workers
           hold), last copy to run_dir/db/<job>_<task>/<node>.db

Other local ranks connect to the node socket and just run the workload.
"""

from __future__ import annotations

from .entrypoint import JobRunner, detect_job
from .session import NodeSession, run_task
from .signal_guard import JobInterrupted, SignalGuard

__all__ = ["JobInterrupted", "JobRunner", "NodeSession", "SignalGuard", "detect_job", "run_task"]
