"""Tests of aetherium_hpc.config: shipped configs, overrides, round trips and malformed files.

Every malformed case asserts the whole location prefix ``FILE:LINE: key.path: `` and a hint,
so a message that loses its line number, its key path or its advice fails the test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from config_cases import BASE, MALFORMED
from testenv import ROOT

from aetherium_hpc.config import (
    ArraySpec,
    Config,
    Monitoring,
    Resources,
    SlurmSettings,
    Workload,
    config_from_dict,
    load_config,
    parse_config,
)
from aetherium_hpc.errors import AetheriumError, ConfigError

CONFIGS = ROOT / "configs"

# --------------------------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.yaml", "array.yaml", "multinode.yaml"])
def test_shipped_config_loads_and_round_trips(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.source == str(CONFIGS / name)
    json.dumps(cfg.to_dict())  # JSON-able snapshot
    assert parse_config(cfg.dump_yaml(), "dumped.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_train_yaml_values() -> None:
    cfg = load_config(CONFIGS / "train.yaml")
    assert cfg.name == "demo-train"
    assert cfg.backend == "auto"
    assert cfg.workload.kind == "callable"
    assert cfg.workload.split_callable() == ("aetherium_hpc.demo.pipeline", "run")
    assert cfg.workload.kwargs == {
        "rounds": 3, "epochs": 20, "chunks": 8, "samples_per_chunk": 512, "width": 256, "workers": 2
    }  # fmt: skip
    assert cfg.resources == Resources(timeout_min=10, cpus_per_task=2, mem_gb=2)
    assert cfg.monitoring.interval_s == 0.5
    assert not cfg.is_array and cfg.array_params() == []


def test_array_yaml_values() -> None:
    cfg = load_config(CONFIGS / "array.yaml")
    assert cfg.name == "demo-array"
    assert cfg.slurm.array_parallelism == 2
    assert cfg.is_array and cfg.array is not None and len(cfg.array) == 4
    assert cfg.array_params() == [
        {"learning_rate": 0.01, "seed": 0},
        {"learning_rate": 0.01, "seed": 1},
        {"learning_rate": 0.05, "seed": 0},
        {"learning_rate": 0.05, "seed": 1},
    ]


def test_multinode_yaml_values() -> None:
    cfg = load_config(CONFIGS / "multinode.yaml")
    assert (cfg.resources.nodes, cfg.resources.tasks_per_node) == (2, 1)
    assert cfg.resources.total_tasks == 2


# --------------------------------------------------------------------------------------------
# Defaults, dataclasses, API
# --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse_config(BASE)
    assert cfg.backend == "auto" and cfg.run_dir == "runs"
    assert cfg.resources == Resources(timeout_min=60, nodes=1, tasks_per_node=1, cpus_per_task=1, gpus_per_node=0)
    assert cfg.resources.mem_gb is None
    assert cfg.slurm == SlurmSettings()
    assert cfg.slurm.signal_delay_s == 120 and cfg.slurm.setup == () and cfg.slurm.exclusive is False
    assert cfg.monitoring == Monitoring(
        enabled=True, interval_s=1.0, gpu=True, buffer_size=100, flush_interval_s=5.0, checkpoint_interval_s=30.0
    )
    assert cfg.report.auto is False
    assert cfg.workload == Workload(callable="pkg.mod:func")
    assert cfg.array is None


def test_empty_sections_mean_defaults() -> None:
    cfg = parse_config(BASE + "resources:\nslurm: {}\nmonitoring:\nreport:\narray:\n")
    assert cfg.resources == Resources() and cfg.array is None


def test_dataclasses_are_frozen() -> None:
    cfg = parse_config(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resources.nodes = 3  # type: ignore[misc]


def test_command_workload_and_full_sections() -> None:
    text = """\
name: cmd.job_1
backend: local
run_dir: /tmp/runs
workload:
  command: [python, train.py, "--epochs", "5"]
  env: {OMP_NUM_THREADS: "4"}
  workdir: /project
slurm:
  partition: gpu
  account: "12345"
  setup: ["module load cuda"]
  additional_parameters: {mail_type: END, requeue: true, nice: 10}
  exclusive: true
monitoring:
  local_dir: /scratch
  checkpoint_interval_s: 0
report: {auto: true}
"""
    cfg = parse_config(text, "cmd.yaml")
    assert cfg.workload.kind == "command"
    assert cfg.workload.command == ("python", "train.py", "--epochs", "5")
    assert cfg.workload.env == {"OMP_NUM_THREADS": "4"}
    assert cfg.slurm.account == "12345" and cfg.slurm.setup == ("module load cuda",)
    assert cfg.slurm.additional_parameters == {"mail_type": "END", "requeue": True, "nice": 10}
    assert cfg.monitoring.checkpoint_interval_s == 0.0 and cfg.report.auto is True
    assert parse_config(cfg.dump_yaml()) == cfg


def test_array_params_explicit_list() -> None:
    cfg = parse_config(BASE + "array:\n  params:\n    - {seed: 0}\n    - {seed: 5, lr: 0.1}\n")
    assert cfg.array == ArraySpec(params=({"seed": 0}, {"seed": 5, "lr": 0.1}))
    params = cfg.array_params()
    assert params == [{"seed": 0}, {"seed": 5, "lr": 0.1}]
    params[0]["seed"] = 99  # callers get copies
    assert cfg.array_params()[0]["seed"] == 0


def test_sweep_is_product_in_key_order() -> None:
    cfg = parse_config(BASE + "array:\n  sweep:\n    b: [1, 2, 3]\n    a: [x, y]\n")
    assert cfg.array_params() == [
        {"b": 1, "a": "x"},
        {"b": 1, "a": "y"},
        {"b": 2, "a": "x"},
        {"b": 2, "a": "y"},
        {"b": 3, "a": "x"},
        {"b": 3, "a": "y"},
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = BASE + "x_defaults: &d {nodes: 2, cpus_per_task: 4}\n"
    # anchors/merge keys are allowed; an own key may override a merged one
    cfg = parse_config(BASE + "resources:\n  <<: {nodes: 2, cpus_per_task: 4}\n  nodes: 3\n")
    assert (cfg.resources.nodes, cfg.resources.cpus_per_task) == (3, 4)
    with pytest.raises(ConfigError, match="x_defaults"):
        parse_config(text)


def test_load_callable() -> None:
    wl = parse_config('name: t\nworkload:\n  callable: "json:dumps"\n').workload
    assert wl.load_callable() is json.dumps
    with pytest.raises(ConfigError, match="cannot import"):
        parse_config('name: t\nworkload:\n  callable: "no_such_mod_xyz:f"\n').workload.load_callable()
    with pytest.raises(ConfigError, match="no callable"):
        parse_config('name: t\nworkload:\n  callable: "json:nope"\n').workload.load_callable()


def test_config_error_is_aetherium_error_with_exit_code_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert isinstance(info.value, AetheriumError) and info.value.exit_code == 2
    assert "missing.yaml" in str(info.value) and "check the path" in str(info.value)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(
        CONFIGS / "train.yaml",
        [
            "resources.nodes=2",
            "slurm.partition=gpu",
            "monitoring.gpu=false",
            "monitoring.interval_s=2",
            "workload.kwargs.epochs=7",
            "slurm.additional_parameters.mail_type=END",
            "slurm.setup=[module load a, module load b]",
            "backend=local",
        ],
    )
    assert cfg.resources.nodes == 2 and isinstance(cfg.resources.nodes, int)
    assert cfg.slurm.partition == "gpu"
    assert cfg.monitoring.gpu is False and cfg.monitoring.interval_s == 2.0
    assert cfg.workload.kwargs["epochs"] == 7 and cfg.workload.kwargs["rounds"] == 3
    assert cfg.slurm.additional_parameters == {"mail_type": "END"}
    assert cfg.slurm.setup == ("module load a", "module load b")
    assert cfg.backend == "local"


def test_override_adds_sections_and_array() -> None:
    cfg = parse_config(BASE, "x.yaml", ["array.sweep.seed=[0, 1, 2]", "report.auto=true"])
    assert cfg.array_params() == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    assert cfg.report.auto is True


def test_override_empty_value_is_null_and_last_wins() -> None:
    cfg = parse_config(BASE + "slurm:\n  partition: cpu\n", "x.yaml", ["slurm.partition=", "resources.nodes=3"])
    assert cfg.slurm.partition is None
    assert parse_config(BASE, "x.yaml", ["resources.nodes=2", "resources.nodes=4"]).resources.nodes == 4


def test_override_with_equals_in_value() -> None:
    cfg = parse_config(BASE, "x.yaml", ["workload.env.OPTS=a=b"])
    assert cfg.workload.env == {"OPTS": "a=b"}


def test_override_does_not_change_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    load_config(path, ["resources.nodes=5"])
    assert path.read_text() == BASE
    assert load_config(path).resources.nodes == 1


OVERRIDE_BASE = BASE + "resources:\n  nodes: 1\n"  # resources.nodes is on line 5


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(["nodes"], ["c.yaml: --set nodes:", "no '='", "KEY.PATH=VALUE"], id="no-equals"),
        pytest.param(["=3"], ["c.yaml: --set =3:", "not a dotted key path", "KEY.PATH=VALUE"], id="empty-key"),
        pytest.param(["resources..nodes=3"], ["--set resources..nodes=3", "KEY.PATH=VALUE"], id="empty-segment"),
        pytest.param(
            ["nodes=2"],
            ["c.yaml:1: nodes: unknown key 'nodes'", "(from --set nodes=2)", "resources.nodes"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            ["resources.nodez=2"],
            ["c.yaml:5: resources.nodez: unknown key", "(from --set resources.nodez=2)", "did you mean 'nodes'"],
            id="unknown-nested-key",
        ),
        pytest.param(
            ["resources.nodes=two"],
            ["c.yaml:5: resources.nodes: must be an integer", "(from --set resources.nodes=two)", "whole number"],
            id="wrong-type",
        ),
        pytest.param(
            ["resources.nodes=true"],
            ["c.yaml:5: resources.nodes: must be an integer, got true", "--set resources.nodes=true"],
            id="bool-as-int",
        ),
        pytest.param(
            ["resources.nodes=0"], ["c.yaml:5: resources.nodes: must be >= 1", "at least 1"], id="out-of-range"
        ),
        pytest.param(["name=[a"], ["c.yaml: --set name=[a:", "not valid YAML", "quote it"], id="bad-yaml-value"),
        pytest.param(
            ["name.first=x"],
            ["c.yaml:1: name: is not a section", "--set name.first=x", "--set name="],
            id="into-scalar",
        ),
        pytest.param(
            ["workload.command=[ls]"],
            ["c.yaml:3: workload: has both callable and command", "--set workload.command=[ls]", "keep exactly one"],
            id="makes-both-workloads",
        ),
    ],
)
def test_bad_override(tmp_path: Path, overrides: list[str], expected: list[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(OVERRIDE_BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_override_string_instead_of_list_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_config(BASE, "x.yaml", "resources.nodes=2")


# --------------------------------------------------------------------------------------------
# Malformed files: (yaml text, line, key path, hint)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "key_path", "hint"), MALFORMED)
def test_malformed_config(tmp_path: Path, text: str, line: int, key_path: str, hint: str) -> None:
    path = tmp_path / "bad-config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}:{line}: {key_path}: "), message
    problem_and_fix = message[len(f"{path}:{line}: {key_path}: ") :]
    assert "; " in problem_and_fix, message
    assert hint in problem_and_fix, f"hint {hint!r} not in {message!r}"


def test_enough_malformed_cases() -> None:
    assert len(MALFORMED) >= 30


def test_valid_config_object_is_a_config() -> None:
    assert isinstance(parse_config(BASE), Config)
