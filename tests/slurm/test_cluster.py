"""The test cluster of slurm/cluster.sh: two nodes, multi-node srun, job arrays, accounting."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_conf")]

NODES = {"n1", "n2"}


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def node_states() -> dict[str, str]:
    out = run(["sinfo", "--noheader", "--Node", "--format=%N %T"], timeout=20).stdout
    return dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())


def job_id_of(parsable: str) -> str:
    # sbatch --parsable prints "<id>" or "<id>;<cluster>"
    return parsable.strip().splitlines()[0].split(";")[0]


def test_sinfo_shows_both_nodes_idle() -> None:
    deadline = time.monotonic() + 60  # a job of an earlier test may still be completing
    states = node_states()
    while not all(states.get(node) == "idle" for node in NODES) and time.monotonic() < deadline:
        time.sleep(1)
        states = node_states()
    assert {node: states.get(node) for node in NODES} == {"n1": "idle", "n2": "idle"}, states


def test_srun_runs_one_task_on_each_node() -> None:
    out = run(
        ["srun", "--nodes=2", "--ntasks=2", "--label", "--time=1", "printenv", "SLURMD_NODENAME"],
        timeout=90,
    ).stdout
    by_task = dict(line.split(": ", 1) for line in out.splitlines())
    assert sorted(by_task) == ["0", "1"], out
    assert set(by_task.values()) == NODES, out


def test_srun_inside_sbatch_spans_both_nodes(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    output = tmp_path / "steps.out"
    run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "--nodes=2",
            "--ntasks=2",
            "--time=2",
            f"--output={output}",
            "--wrap",
            "srun --label printenv SLURMD_NODENAME",
        ],
        timeout=120,
    )
    lines = output.read_text().splitlines()
    assert sorted(line.split(": ", 1)[1] for line in lines) == sorted(NODES), lines


def test_throttled_array_runs_every_task_and_is_accounted(tmp_path: Path) -> None:
    outdir = tmp_path / "array"
    outdir.mkdir()
    outdir.chmod(0o755)
    # Each task writes its own file; the directory is quoted as the shell will see it.
    script = (
        f'echo "$SLURM_ARRAY_TASK_ID $SLURMD_NODENAME" > {shlex.quote(str(outdir))}/task_"$SLURM_ARRAY_TASK_ID".txt'
    )
    submitted = run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "--array=0-3%2",
            "--time=2",
            f"--chdir={outdir}",
            f"--output={outdir}/slurm-%A_%a.out",
            "--wrap",
            script,
        ],
        timeout=180,
    )
    job_id = job_id_of(submitted.stdout)

    for task in range(4):
        index, node = (outdir / f"task_{task}.txt").read_text().split()
        assert index == str(task)
        assert node in NODES

    expected = {f"{job_id}_{task}": "COMPLETED" for task in range(4)}
    rows: dict[str, str] = {}
    deadline = time.monotonic() + 60  # slurmdbd records job ends a little after they happen
    while time.monotonic() < deadline:
        out = run(
            ["sacct", "-X", "-j", job_id, "-o", "JobID,State", "--parsable2", "--noheader"],
            timeout=20,
        ).stdout
        rows = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if rows == expected:
            break
        time.sleep(1)
    assert rows == expected
