"""The login-node side: executor parameters, the sbatch script, arrays, hostile paths."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shlex
import stat
import sys
from pathlib import Path

import cloudpickle
import pytest
import testenv
from launch_helpers import counts, job_rows, make_config
from testenv import ROOT

from aetherium_hpc import launch, scheduler
from aetherium_hpc.config import load_config
from aetherium_hpc.errors import LaunchError
from aetherium_hpc.launch import sbatch
from aetherium_hpc.launch.status import status_table
from aetherium_hpc.paths import RunLayout
from aetherium_hpc.runtime.entrypoint import JobRunner

GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", testenv.PYTHONPATH)
    monkeypatch.setenv("AETHERIUM_LOCAL_DIR", str(tmp_path))


# -- parameters ---------------------------------------------------------------------------------
def test_executor_parameters_map_every_setting() -> None:
    config = load_config(
        ROOT / "configs" / "train.yaml",
        [
            "slurm.partition=gpu", "slurm.account=proj", "slurm.qos=high", "slurm.constraint=a100",
            "slurm.setup=['module load x']", "slurm.array_parallelism=3", "resources.gpus_per_node=2",
            "slurm.additional_parameters={mail_type: END}",
        ],
    )  # fmt: skip
    params = launch.executor_parameters(config)
    assert params == {
        "name": "demo-train", "timeout_min": 10, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 2,
        "gpus_per_node": 2, "mem_gb": 2, "slurm_partition": "gpu", "slurm_account": "proj", "slurm_qos": "high",
        "slurm_constraint": "a100", "slurm_signal_delay_s": 120, "slurm_setup": ["module load x"],
        "slurm_array_parallelism": 3, "slurm_additional_parameters": {"mail_type": "END"},
    }  # fmt: skip


def test_max_array_size_from_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'MaxArraySize            = 3'\necho 'MaxJobCount = 10000'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    config = make_config(tmp_path)
    assert launch.max_array_size(config) == 3
    assert launch.max_array_size(make_config(tmp_path, slurm={"max_array_size": 7})) == 7
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert launch.max_array_size(config) == scheduler.DEFAULT_MAX_ARRAY_SIZE


# -- the sbatch script --------------------------------------------------------------------------
def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if os.environ.get("UPDATE_GOLDEN") != "1":
            pytest.fail(f"{path} did not exist and was written; check it and commit it")
    assert text == path.read_text(encoding="utf-8"), (
        f"the sbatch script rendered by aetherium_hpc/launch/sbatch.py differs from {path}; if this change "
        "is intended, delete the record file (or rerun with UPDATE_GOLDEN=1) to write it again, and review its diff"
    )


@pytest.mark.parametrize(("config_name", "golden"), [("train.yaml", "train.sbatch"), ("array.yaml", "array.sbatch")])
def test_sbatch_script_matches_golden_file(config_name: str, golden: str) -> None:
    config = load_config(ROOT / "configs" / config_name)
    text = sbatch.render_sbatch(config, RunLayout(Path("/runs/golden")), python="python3")
    _golden(golden, text)


def test_array_script_is_one_array_with_parallelism() -> None:
    config = load_config(ROOT / "configs" / "array.yaml")
    text = launch.render_sbatch(config, RunLayout(Path("/r")), python="python3")
    assert "#SBATCH --array=0-3%2" in text and "%A_%a_0_log.out" in text


HOSTILE = ["it's", 'say "hi"', "$(touch pwned)", "`touch pwned`", "a b;touch pwned", "x\\y"]


@pytest.fixture(params=HOSTILE)
def weird_tmp_path(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder whose name holds shell syntax; the test runs from tmp_path to catch `pwned`."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / f"w {request.param} w"
    folder.mkdir()
    return folder


def _no_pwned(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


def test_hostile_run_dir_is_quoted_in_the_script(weird_tmp_path: Path, tmp_path: Path) -> None:
    layout = RunLayout(weird_tmp_path / "run")
    text = launch.render_sbatch(make_config(tmp_path), layout, python=shlex.quote(sys.executable))
    srun_line = next(line for line in text.splitlines() if line.startswith("srun "))
    argv = shlex.split(srun_line)
    assert argv[-1] == str(layout.submitit_dir) and argv[argv.index("--output") + 1].startswith(
        str(layout.submitit_dir)
    )
    for line in text.splitlines():
        if line.startswith("#SBATCH --output=") or line.startswith("#SBATCH --error="):
            (value,) = shlex.split(line.split("=", 1)[1])
            assert value.startswith(str(layout.submitit_dir))
    _no_pwned(tmp_path)


@pytest.mark.parametrize("bad", ["new\nline", "tab\there", "per%cent"])
def test_run_dir_that_no_script_can_hold_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(LaunchError, match="run_dir|run directory"):
        launch.render_sbatch(make_config(tmp_path), RunLayout(tmp_path / bad))


def test_hostile_run_dir_through_a_local_submission(weird_tmp_path: Path, tmp_path: Path, job_env: None) -> None:
    config = make_config(
        weird_tmp_path,
        workload={
            "command": [sys.executable, "-c", "import sys; assert sys.argv[1] == '$(touch pwned)'", "$(touch pwned)"],
        },
    )
    sub = launch.submit(config)
    assert launch.wait(sub) == {sub.job_ids[0]: "ok"}
    (db,) = sub.layout.databases()
    assert job_rows(db)[0]["status"] == "completed"
    assert str(weird_tmp_path) in str(db)
    _no_pwned(tmp_path)


# -- local arrays -----------------------------------------------------------------------------
def test_local_array_runs_every_task_within_parallelism(tmp_path: Path, job_env: None) -> None:
    config = make_config(
        tmp_path / "runs",
        array={"sweep": {"learning_rate": [0.1, 0.2], "seed": [0, 1]}},
        slurm={"array_parallelism": 2},
    )
    sleeps: list[float] = []
    sub = launch.submit(config, sleep=lambda s: (sleeps.append(s), __import__("time").sleep(s)))
    assert len(sub.jobs) == 4
    outcome = launch.wait(sub)
    assert set(outcome.values()) == {"ok"}
    results = [j.result() for j in sub.jobs]
    assert [(r["learning_rate"], r["seed"]) for r in results] == [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]
    dbs = sub.layout.databases()
    assert len(dbs) == 4
    tasks = sorted(job_rows(db)[0]["array_task_id"] for db in dbs)
    assert tasks == [0, 1, 2, 3]
    assert all(counts(db)["training_metrics"] == 5 for db in dbs)
    assert sleeps, "with 4 tasks and parallelism 2 the launcher had to wait for a slot"


def test_array_tasks_share_one_pickle_of_the_runner_and_load_their_own_params(tmp_path: Path, job_env: None) -> None:
    """The runner (the validated config) is pickled once for the whole array; each task's pickle
    still loads as submitit's call of that JobRunner with the task's own (index, params)."""
    config = make_config(tmp_path / "runs", array={"sweep": {"seed": [0, 1, 2]}})
    sub = launch.submit(config)
    assert set(launch.wait(sub).values()) == {"ok"}
    loaded = []
    for i, job in enumerate(sub.jobs):
        raw = job.paths.submitted_pickle.read_bytes()
        call = pickle.loads(raw)
        assert type(call.function) is JobRunner and call.function.run_dir == str(sub.layout.root)
        assert call.function.config == dataclasses.replace(config, array=None)
        assert call.args == ((i, {"seed": i}),) and call.kwargs == {}
        assert cloudpickle.dumps(call.function) in raw  # the runner's own pickle, embedded whole
        loaded.append(call.function.local_array_id)
    assert loaded == [sub.array_job_ids[0]] * 3


def test_local_backend_refuses_several_nodes(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="resources.nodes"):
        launch.submit(make_config(tmp_path, resources={"nodes": 2}))


# -- status ------------------------------------------------------------------------------------
def _fake(folder: Path, name: str, body: str) -> None:
    tool = folder / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_status_uses_sacct_then_squeue_and_never_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    layout = RunLayout.new(tmp_path, "s")
    layout.jobs_path.write_text(json.dumps({"cluster": "slurm", "job_ids": ["5_0", "5_1"], "array_job_ids": ["5"]}))
    args = bin_dir / "args"
    _fake(
        bin_dir,
        "sacct",
        f'echo "$@" > "{args}"\nprintf "5_0|COMPLETED|0:0|00:00:03|n1\\n5_1|RUNNING|0:0|00:00:02|n2\\n"\n',
    )
    rows, source = launch.run_status(layout.root)
    assert source == "sacct" and [r["state"] for r in rows] == ["COMPLETED", "RUNNING"]
    assert args.read_text().split() == launch.status_commands(["5"])[0][1:]

    # sacct's "CANCELLED by UID": the state in its column, who in a note, every column aligned
    _fake(
        bin_dir,
        "sacct",
        'printf "5_0|CANCELLED by 0|0:0|00:00:03||||||n1\\n5_1|RUNNING|0:0|01:02:03||||||n10,n11\\n"\n',
    )
    rows, source = launch.run_status(layout.root)
    assert source == "sacct" and [(r["state"], r.get("note")) for r in rows] == [
        ("CANCELLED", "cancelled by uid 0 (root)"), ("RUNNING", None)
    ]  # fmt: skip
    table = status_table(rows)
    assert table == [
        "JOB  STATE      EXIT  ELAPSED   NODES",
        "5_0  CANCELLED  0:0   00:00:03  n1",
        "5_1  RUNNING    0:0   01:02:03  n10,n11",
        "# 5_0 on n1: CANCELLED: cancelled by uid 0 (root)",
    ]

    _fake(bin_dir, "sacct", "sleep 30\n")
    _fake(bin_dir, "squeue", 'printf "5_1|RUNNING|0:05|n2\\n"\n')
    rows, source = launch.run_status(layout.root, timeout=1.0)
    assert source == "squeue" and rows[0]["job"] == "5_1" and rows[0]["nodes"] == "n2"
