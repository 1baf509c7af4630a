"""One way to write figures (analysis/formatting.py), and advice whose figures agree with the tables."""

from __future__ import annotations

import pytest

from aetherium_hpc.analysis import formatting as fmt
from aetherium_hpc.analysis.report.compute import efficiency
from aetherium_hpc.runtime.requested import parse_time_limit, requested_from_slurm


def test_memory_duration_share() -> None:
    assert fmt.memory_mb(53.4) == "53 MB" and fmt.memory_mb(1975.0) == "1.93 GB" and fmt.memory_mb(13332.0) == "13.0 GB"
    assert fmt.memory_mb(5.2) == "5.2 MB" and fmt.memory_mb(None) == "-"
    assert fmt.memory_gb(1) == "1 GB" and fmt.memory_gb(500 / 1024) == "500 MB"
    assert fmt.duration(0.25) == "0.2 s" and fmt.duration(725) == "12m05s" and fmt.duration(10930) == "3h02m10s"
    assert fmt.pct(53.4, 1024) == "5%" and fmt.pct(1, 1000) == "<1%" and fmt.pct(1, 0) == "-"
    assert fmt.slurm_time(90) == "01:30:00"
    assert fmt.minutes(7) == "7 min" and fmt.minutes(60) == "60 min" and fmt.minutes(240) == "4 h"


def test_advice_figures_match_the_tables() -> None:
    """A small peak is not rounded away: a 53 MB peak against 1 GB read "peak 0.1 GB of 1 GB (5%)"."""
    task = {"requested": {"mem_gb": 1, "timeout_min": 10, "cpus": 1}, "peak_memory_mb": 53.4, "runtime_s": 7.3,
            "cpu_cores": 0.5, "gpu_util_pct": None}  # fmt: skip
    advice = efficiency([task], [{"status": "completed"}])["advice"]
    mem = next(a for a in advice if a.startswith("memory:"))
    assert mem == "memory: peak 53 MB is 5% of the 1 GB requested; ask for --mem=100M"
    assert fmt.memory_mb(task["peak_memory_mb"]) in mem  # type: ignore[arg-type]  # as the per-task table writes it
    time_advice = next(a for a in advice if a.startswith("time:"))
    assert time_advice.startswith("time: longest task ran 7.3 s, 1% of the 10 min requested; ask for --time=00:05:00")


def test_requested_from_the_slurm_environment() -> None:
    env = {"SLURM_JOB_ID": "12", "SLURM_CPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "2048",
           "SLURM_JOB_START_TIME": "1000", "SLURM_JOB_END_TIME": "4600", "SLURM_GPUS_ON_NODE": "1",
           "SLURM_JOB_NUM_NODES": "1"}  # fmt: skip
    req = requested_from_slurm(env, ask_scontrol=False)
    assert req == {"from": "slurm environment", "cpus": 4, "cpus_per_task": 2, "mem_gb": 2.0, "timeout_min": 60.0,
                   "gpus": 1, "nodes": 1}  # fmt: skip
    per_cpu = requested_from_slurm({"SLURM_JOB_ID": "1", "SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_CPU": "512"},
                                   ask_scontrol=False)  # fmt: skip
    assert per_cpu["mem_gb"] == pytest.approx(2.0)
    assert requested_from_slurm({}, ask_scontrol=False) == {}  # not in Slurm: nothing


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("30", 30), ("00:07:00", 7), ("1-02:00:00", 1560), ("2-3", 2 * 1440 + 180), ("5:30", 5.5), ("UNLIMITED", None)],
)
def test_time_limit(text: str, minutes: float | None) -> None:
    assert parse_time_limit(text) == minutes
