"""Workloads for launcher/runtime tests, imported inside jobs (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import aetherium_hpc as ah


def _chunk(c: int) -> int:
    t = ah.log_data_generation_start(operation="signal_injection", round_number=0, chunk_number=c)
    ah.log_data_generation_complete(start_time=t, operation="signal_injection", samples_generated=1,
                                    round_number=0, chunk_number=c, memory_used_mb=1.0)  # fmt: skip
    return c


def log_then_wait(
    marker: str, n: int = 50, chunks: int = 4, sleep_s: float = 120.0, first_attempt_only: bool = False
) -> int:
    """Log ``n`` training rows and ``chunks`` generation rows (from Pool workers), announce the
    pid in ``marker``, then sleep in a Pool wait so that a signal finds work in progress
    (``first_attempt_only``: a requeued attempt does not sleep)."""
    if first_attempt_only and os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        sleep_s = 0.0
    for i in range(n):
        ah.log_training_epoch_metric("loss", float(i), round_number=0, epoch_number=i)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        assert sorted(pool.map(_chunk, range(chunks))) == list(range(chunks))
        tmp = Path(marker + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)
        pool.apply(time.sleep, (sleep_s,))  # the main process waits on the pool: a signal lands here
    return n


def log_rows(n: int = 5, label: str = "x", learning_rate: float = 0.0, seed: int = 0) -> dict[str, object]:
    """Log ``n`` training rows; returns its arguments (for array tests)."""
    for i in range(n):
        ah.log_training_epoch_metric(label, float(i), round_number=seed, epoch_number=i)
    return {"label": label, "learning_rate": learning_rate, "seed": seed, "pid": os.getpid()}


def log_slowly(seconds: float = 12.0, learning_rate: float = 0.0, seed: int = 0) -> int:
    """Log a training row and a generation chunk every 0.1 s for ``seconds`` (a job long enough
    for the central sender's periodic pushes)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        t = ah.log_data_generation_start(operation="gen", round_number=seed, chunk_number=n)
        ah.log_data_generation_complete(t, operation="gen", samples_generated=10, round_number=seed,
                                        chunk_number=n)  # fmt: skip
        ah.log_training_epoch_metric("loss", learning_rate + 1.0 / (n + 1), epoch_number=n)
        n += 1
        time.sleep(0.1)
    return 0


def _worker_logs_then_waits(i: int) -> None:
    ah.log_training_epoch_metric("worker", float(i), round_number=1, epoch_number=i)
    ah.get_db().flush()  # type: ignore[union-attr]  (committed before the test signals)
    time.sleep(300)


def torch_like_workers(marker: str, n: int = 20) -> int:
    """Two fork workers and a SIGCHLD handler that raises in the main thread when one of them dies of
    a signal, exactly as PyTorch's DataLoader does (torch/utils/data/_utils/signal_handling.py:
    ``waitid(WNOHANG | WNOWAIT)`` on each worker, then ``RuntimeError("DataLoader worker (pid(s)
    ...) exited unexpectedly")``). Announces ``"<main pid> <worker pid> <worker pid>"`` in
    ``marker`` once every row is committed, then trains (sleeps) until a signal ends it; creates
    ``marker + ".raised"`` each time the handler raises."""
    import signal

    for i in range(n):
        ah.log_training_epoch_metric("loss", float(i), round_number=0, epoch_number=i)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker_logs_then_waits, args=(i,), daemon=True) for i in range(2)]
    for w in workers:
        w.start()
    pids = [w.pid for w in workers]
    previous = signal.getsignal(signal.SIGCHLD)

    def handler(signum: int, frame: object) -> None:
        for pid in pids:
            assert pid is not None
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            if info is not None and info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                Path(marker + ".raised").touch()  # the test's cue: the workload is failing now
                raise RuntimeError(
                    f"DataLoader worker (pid(s) {pid}) exited unexpectedly: killed by signal {info.si_status}"
                )
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGCHLD, handler)
    db = ah.get_db()
    assert db is not None
    deadline = time.monotonic() + 60
    while len(db.query_training_metrics(metric_name="worker")) < 2:
        assert time.monotonic() < deadline, "the workers' rows were not committed within 60 s"
        time.sleep(0.05)
    tmp = Path(marker + ".tmp")
    tmp.write_text(" ".join(str(p) for p in [os.getpid(), *pids]))
    os.replace(tmp, marker)
    while True:  # the training loop: a signal ends it
        time.sleep(0.01)


def exit_with(code: object) -> None:
    """Log a row, then ``raise SystemExit(code)`` (a callable that ends with sys.exit)."""
    ah.log_training_epoch_metric("loss", 1.0, epoch_number=0)
    raise SystemExit(code)


class _LoggedItems:
    """A map-style dataset whose every item is logged from the DataLoader worker that loads it."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> float:
        ah.log_training_epoch_metric("item", float(i), round_number=0, epoch_number=i)
        return float(i)


def torch_dataloader_train(
    marker: str, epochs: int = 100_000, sleep_s: float = 0.05, epochs_when_requeued: int | None = None
) -> int:
    """A training loop over a PyTorch DataLoader with 2 persistent workers that log; after the
    first epoch (its rows committed) announces ``"<pid> <rows committed>"`` in ``marker``. A requeued
    attempt (SLURM_RESTART_COUNT > 0) runs ``epochs_when_requeued`` epochs, when given."""
    from torch.utils.data import DataLoader

    if epochs_when_requeued is not None and os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        epochs = epochs_when_requeued

    loader = DataLoader(_LoggedItems(), batch_size=4, num_workers=2, persistent_workers=True)  # type: ignore[arg-type]
    for epoch in range(epochs):
        for _batch in loader:
            time.sleep(sleep_s)
        ah.log_training_epoch_metric("loss", 1.0 / (epoch + 1), round_number=1, epoch_number=epoch)
        if epoch == 0:
            db = ah.get_db()
            assert db is not None
            db.flush()
            tmp = Path(marker + ".tmp")
            tmp.write_text(f"{os.getpid()} {len(db.query_training_metrics())}")
            os.replace(tmp, marker)
    return epochs
