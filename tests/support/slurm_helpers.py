"""Driving the test cluster as an operator would: requeue a running job."""

from __future__ import annotations

import subprocess
import time


def requeue_now(job_id: str) -> None:
    """``scontrol requeue`` a running job, then let it start again at once."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    start_requeued_now(job_id)


def start_requeued_now(job_id: str, timeout: float = 60.0) -> None:
    """Once ``job_id`` is pending again (requeued), let it start in 2 s: Slurm would hold a
    requeued job for about two minutes (BeginTime). Not at once: a batch job started in the
    second its previous attempt's credential was revoked is killed ("Job credential revoked")."""
    deadline = time.monotonic() + timeout
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if state.stdout.strip() == "PENDING":
            break
        assert time.monotonic() < deadline, f"job {job_id} not pending again (requeued): {state.stdout!r}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"], check=True, timeout=30)
