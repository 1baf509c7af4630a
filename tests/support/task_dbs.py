"""Small task databases written through the real store API, as tasks write them (merge, sweep, watch tests)."""

from __future__ import annotations

import time
from pathlib import Path

import aetherium_hpc
from aetherium_hpc.store import SourceInfo

N_SAMPLES = 12


def write_task_db(
    path: Path, task: int, *, job: str = "777", node: str | None = None, t0: float | None = None, attempt: int = 0
) -> None:
    """One small node database, written with init_db / log_* / shutdown_db like a real task."""
    path.parent.mkdir(parents=True, exist_ok=True)
    node = node or f"n{task % 3}"
    src = SourceInfo(job_id=f"{job}_{task}", array_job_id=job, array_task_id=task, node=node, hostname=node,
                     attempt=attempt)  # fmt: skip
    aetherium_hpc.init_db(path, source=src, listen=False)
    now = t0 if t0 is not None else time.time()
    for k in range(N_SAMPLES):
        aetherium_hpc.log_resource_samples(
            [("cpu", "system_total", 10.0 + k, "%", ""), ("ram", "process_tree_rss", 100.0 + task, "MB", "")],
            timestamp=now + k,
        )
    aetherium_hpc.log_training_epoch_metric("loss", 1.0 / (task + 1), round_number=0, epoch_number=0)
    aetherium_hpc.log_data_generation_complete(
        now - 1.0, operation="signal_injection", samples_generated=100, round_number=0, chunk_number=task
    )
    aetherium_hpc.log_job(status="completed", exit_code=0, start_time=now, end_time=now + N_SAMPLES)
    aetherium_hpc.shutdown_db()


#: (learning_rate, seed, status, final val loss, final val accuracy) per task.
TASKS = [
    (0.01, 0, "completed", 0.30, 0.80),
    (0.01, 1, "completed", 0.20, 0.70),  # lowest val loss
    (0.05, 0, "cancelled", 0.10, 0.60),  # lower still, but cancelled: ranked, not the winner
    (0.05, 1, "completed", 0.40, 0.90),  # highest accuracy
    (0.10, 0, "failed", None, None),  # died before its first epoch
]


def write_task(path: Path, task: int) -> None:
    lr, seed, status, val_loss, acc = TASKS[task]
    path.parent.mkdir(parents=True, exist_ok=True)
    src = SourceInfo(job_id=f"77_{task}", array_job_id="77", array_task_id=task, node="n1", hostname="n1")
    aetherium_hpc.init_db(path, source=src, listen=False)
    t0 = time.time() - 30
    aetherium_hpc.log_resource_samples([("ram", "process_tree_rss", 100.0 + task, "MB", "")], timestamp=t0)
    if val_loss is not None:
        for epoch in range(3):
            late = 2 - epoch  # the final epoch has the task's value; earlier ones are worse
            aetherium_hpc.log_training_epoch_metric("loss", val_loss + 0.1 * late, round_number=0, epoch_number=epoch,
                                                    phase="val")  # fmt: skip
            aetherium_hpc.log_training_epoch_metric("loss", val_loss + 0.05 * late, round_number=0,
                                                    epoch_number=epoch, phase="train")  # fmt: skip
            aetherium_hpc.log_training_epoch_metric("learning_rate", lr * 0.9**epoch, round_number=0,
                                                    epoch_number=epoch, phase="train")  # fmt: skip
        aetherium_hpc.log_training_epoch_metric("accuracy", acc or 0.0, round_number=0, epoch_number=2, phase="val")
    aetherium_hpc.log_job(status=status, exit_code=0 if status == "completed" else 1, start_time=t0,
                          end_time=t0 + 10 + task, config={"name": "sweep", "task_params": {"learning_rate": lr,
                                                                                            "seed": seed}})  # fmt: skip
    aetherium_hpc.shutdown_db()
