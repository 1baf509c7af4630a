"""What status a signal means (the job's end time decides between cancelled and timeout)."""

from __future__ import annotations

import signal
import time

import pytest

from aetherium_hpc.runtime import signal_guard


@pytest.fixture(autouse=True)
def _forget_end_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal_guard, "_job_end_time", None)


def test_sigterm_is_cancelled_before_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 3600))
    assert signal_guard.status_for(signal.SIGTERM, None) == "cancelled"


def test_sigterm_at_the_time_limit_is_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) - 1))
    assert signal_guard.status_for(signal.SIGTERM, None) == "timeout"


def test_sigint_is_always_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) - 1))
    assert signal_guard.status_for(signal.SIGINT, None) == "cancelled"


def test_outside_slurm_sigterm_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert signal_guard.status_for(signal.SIGTERM, None) == "cancelled"


def test_end_time_learned_at_start_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) - 1))
    assert signal_guard.remember_job_end_time() is not None
    monkeypatch.delenv("SLURM_JOB_END_TIME")  # the handler needs no environment and no subprocess
    assert signal_guard.status_for(signal.SIGTERM, None) == "timeout"
