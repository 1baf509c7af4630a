"""Driving the test cluster as an operator would: requeue a running job."""

from __future__ import annotations

import subprocess
import time


def requeue_now(job_id: str) -> None:
    """``scontrol requeue`` a running job, then let it start again at once (Slurm would hold it
    for about two minutes: BeginTime)."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if state.stdout.strip() == "PENDING":
            break
        assert time.monotonic() < deadline, f"job {job_id} not pending after the requeue: {state.stdout!r}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
