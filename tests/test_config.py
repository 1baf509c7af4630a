"""Tests of aetherium_hpc.config: shipped configs, overrides, round trips and malformed files.

Every malformed case asserts the whole location prefix ``FILE:LINE: key.path: `` and a hint,
so a message that loses its line number, its key path or its advice fails the test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

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

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Three lines every malformed case builds on (line 1: name, line 2: workload, line 3: callable).
BASE = 'name: t\nworkload:\n  callable: "pkg.mod:func"\n'


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

MALFORMED = [
    # unknown keys
    pytest.param(BASE + "resorces:\n  nodes: 2\n", 4, "resorces", "did you mean 'resources'", id="unknown-top-typo"),
    pytest.param(
        BASE + "nodes: 2\n", 4, "nodes", "belongs under resources: (resources.nodes)", id="unknown-top-misplaced"
    ),
    pytest.param(BASE + "resources:\n  nodez: 2\n", 5, "resources.nodez", "did you mean 'nodes'", id="unknown-nested"),
    pytest.param(
        BASE + "monitoring:\n  enabled: true\n  intervall_s: 2\n",
        6,
        "monitoring.intervall_s",
        "valid keys in monitoring: enabled, interval_s, gpu",
        id="unknown-nested-lists-valid",
    ),
    pytest.param(
        BASE + "resources:\n  partition: gpu\n", 5, "resources.partition", "slurm.partition", id="wrong-section"
    ),
    pytest.param(BASE + "  kwarg: {a: 1}\n", 4, "workload.kwarg", "did you mean 'kwargs'", id="unknown-workload-key"),
    pytest.param(BASE + "resources:\n  name: x\n", 5, "resources.name", "top level", id="top-key-nested"),
    # types and ranges
    pytest.param(BASE + "resources:\n  nodes: true\n", 5, "resources.nodes", "whole number", id="bool-as-int"),
    pytest.param(
        BASE + "monitoring:\n  interval_s: yes\n", 5, "monitoring.interval_s", "number such as", id="bool-as-number"
    ),
    pytest.param(BASE + "resources:\n  nodes: -2\n", 5, "resources.nodes", "at least 1", id="negative-nodes"),
    pytest.param(BASE + "resources:\n  timeout_min: 0\n", 5, "resources.timeout_min", "at least 1", id="zero-timeout"),
    pytest.param(BASE + "resources:\n  timeout_min: 1.5\n", 5, "resources.timeout_min", "whole number", id="float-int"),
    pytest.param(
        BASE + 'resources:\n  cpus_per_task: "4"\n', 5, "resources.cpus_per_task", "remove the quotes", id="quoted-int"
    ),
    pytest.param(
        BASE + "resources:\n  gpus_per_node: -1\n", 5, "resources.gpus_per_node", "at least 0", id="negative-gpus"
    ),
    pytest.param(BASE + "resources:\n  mem_gb: 0\n", 5, "resources.mem_gb", "positive value", id="zero-mem"),
    pytest.param(BASE + "resources:\n  mem_gb: 4GB\n", 5, "resources.mem_gb", "no unit", id="mem-with-unit"),
    pytest.param(
        BASE + "monitoring:\n  interval_s: 7200\n", 5, "monitoring.interval_s", "<= 3600", id="interval-too-long"
    ),
    pytest.param(BASE + "monitoring:\n  interval_s: .nan\n", 5, "monitoring.interval_s", "finite", id="interval-nan"),
    pytest.param(BASE + "monitoring:\n  buffer_size: 0\n", 5, "monitoring.buffer_size", "at least 1", id="zero-buffer"),
    pytest.param(BASE + "monitoring:\n  gpu: 1\n", 5, "monitoring.gpu", "true or", id="int-as-bool"),
    pytest.param(
        BASE + "slurm:\n  signal_delay_s: -5\n", 5, "slurm.signal_delay_s", "at least 0", id="negative-signal"
    ),
    pytest.param(
        BASE + "slurm:\n  array_parallelism: 0\n", 5, "slurm.array_parallelism", "at least 1", id="zero-parallel"
    ),
    pytest.param(
        BASE + "slurm:\n  account: 12345\n", 5, "slurm.account", 'quote it: account: "12345"', id="numeric-str"
    ),
    pytest.param(BASE + "slurm:\n  exclusive: 1\n", 5, "slurm.exclusive", "exclusive: true", id="exclusive-int"),
    pytest.param(BASE + "run_dir:\n", 4, "run_dir", "remove the key", id="null-run-dir"),
    pytest.param(BASE + "resources: 5\n", 4, "resources", "indent its keys below resources:", id="section-scalar"),
    # slurm lists and mappings
    pytest.param(
        BASE + 'slurm:\n  setup: "module load x"\n', 5, "slurm.setup", 'setup: ["module load x"]', id="setup-string"
    ),
    pytest.param(BASE + "slurm:\n  setup:\n    - ok\n    - 3\n", 7, "slurm.setup[1]", "quote", id="setup-item-int"),
    pytest.param(
        BASE + "slurm:\n  additional_parameters:\n    --mail-type: END\n",
        6,
        "slurm.additional_parameters.--mail-type",
        "without dashes",
        id="sbatch-key-dashes",
    ),
    pytest.param(
        BASE + "slurm:\n  additional_parameters:\n    partition: x\n",
        6,
        "slurm.additional_parameters.partition",
        "use slurm.partition instead",
        id="sbatch-key-owned",
    ),
    pytest.param(
        BASE + "slurm:\n  additional_parameters:\n    nice: 1.5\n",
        6,
        "slurm.additional_parameters.nice",
        "quote it",
        id="sbatch-float",
    ),
    # workload
    pytest.param(BASE + "  command: [ls]\n", 4, "workload", "keep exactly one", id="callable-and-command"),
    pytest.param("name: t\nworkload:\n  env: {}\n", 2, "workload", 'callable: "pkg.module:function"', id="neither"),
    pytest.param("name: t\nworkload:\n", 2, "workload", "add workload:", id="workload-null"),
    pytest.param("name: t\n", 1, "workload", "add workload:", id="workload-missing"),
    pytest.param(
        "name: t\nworkload:\n  command: python train.py --lr 0.1\n",
        3,
        "workload.command",
        'split it into a list: command: ["python", "train.py", "--lr", "0.1"]',
        id="command-as-string",
    ),
    pytest.param(
        "name: t\nworkload:\n  command:\n    - python\n    - 5\n",
        5,
        "workload.command[1]",
        "quote it",
        id="command-int",
    ),
    pytest.param(
        "name: t\nworkload:\n  command: []\n",
        3,
        "workload.command",
        "the program and its arguments",
        id="command-empty",
    ),
    pytest.param(
        'name: t\nworkload:\n  callable: "pkg.mod.func"\n', 3, "workload.callable", "a colon", id="callable-no-colon"
    ),
    pytest.param(
        'name: t\nworkload:\n  callable: "pkg/mod.py:main"\n',
        3,
        "workload.callable",
        "pkg.module:function",
        id="callable-path",
    ),
    pytest.param(
        'name: t\nworkload:\n  callable: "pkg.class:def"\n', 3, "workload.callable", "a colon", id="callable-keyword"
    ),
    pytest.param(
        "name: t\nworkload:\n  callable: 3\n", 3, "workload.callable", "pkg.module:function", id="callable-int"
    ),
    pytest.param(
        "name: t\nworkload:\n  command: [ls]\n  kwargs: {a: 1}\n",
        4,
        "workload.kwargs",
        "into the command list",
        id="kwargs-with-command",
    ),
    pytest.param(
        BASE + "  kwargs:\n    learning-rate: 0.1\n",
        5,
        "workload.kwargs.learning-rate",
        "underscores",
        id="kwargs-bad-name",
    ),
    pytest.param(BASE + "  kwargs:\n    day: 2024-01-01\n", 5, "workload.kwargs.day", '"2024-01-01"', id="kwargs-date"),
    pytest.param(BASE + "  kwargs: [1, 2]\n", 4, "workload.kwargs", "indented 'key: value' lines", id="kwargs-list"),
    pytest.param(
        BASE + "  env:\n    OMP_NUM_THREADS: 4\n",
        5,
        "workload.env.OMP_NUM_THREADS",
        'OMP_NUM_THREADS: "4"',
        id="env-int",
    ),
    pytest.param(BASE + "  env:\n    MY-VAR: x\n", 5, "workload.env.MY-VAR", "rename it", id="env-bad-name"),
    # array
    pytest.param(
        BASE + "array:\n  params: [{seed: 0}]\n  sweep: {seed: [0]}\n", 6, "array", "keep one", id="sweep-and-params"
    ),
    pytest.param(BASE + "array: {}\n", 4, "array", "add params:", id="array-empty"),
    pytest.param(
        BASE + "array:\n  sweep:\n    seed: []\n", 6, "array.sweep.seed", "at least one value", id="sweep-empty-list"
    ),
    pytest.param(BASE + "array:\n  sweep:\n    seed: 3\n", 6, "array.sweep.seed", "seed: [3]", id="sweep-scalar"),
    pytest.param(BASE + "array:\n  sweep: {}\n", 5, "array.sweep", "at least one", id="sweep-empty-mapping"),
    pytest.param(BASE + "array:\n  sweep:\n    2x: [1]\n", 6, "array.sweep.2x", "underscores", id="sweep-bad-name"),
    pytest.param(
        BASE + "array:\n  params:\n    - {seed: 0}\n    - 3\n",
        7,
        "array.params[1]",
        "{seed: 0}",
        id="params-not-mappings",
    ),
    pytest.param(BASE + "array:\n  params: []\n", 5, "array.params", "at least one task", id="params-empty"),
    pytest.param(BASE + "array:\n  params: {seed: 0}\n", 5, "array.params", "use sweep:", id="params-mapping"),
    # YAML level
    pytest.param(
        BASE + "resources:\n  nodes: 1\n  nodes: 2\n", 6, "resources.nodes", "keep only one", id="duplicate-key"
    ),
    pytest.param(
        "name: a\nname: b\nworkload: {callable: 'a:b'}\n", 2, "name", "first written at line 1", id="duplicate-top"
    ),
    pytest.param(BASE + "resources:\n  nodes: 1\n   cpus: 2\n", 6, "(yaml)", "indentation", id="yaml-syntax"),
    pytest.param(BASE + "resources:\n  nodes: [1, 2\n", 6, "(yaml)", "started at line 5", id="yaml-unclosed"),
    pytest.param("name: t\n\tworkload: x\n", 2, "(yaml)", "spaces, not tabs", id="yaml-tab"),
    pytest.param(BASE + "run_dir: !!python/object/apply:os.getcwd []\n", 4, "(yaml)", "no !!python", id="python-tag"),
    pytest.param(BASE + "? [a, b]\n: 1\n", 4, "(yaml)", "plain key", id="unhashable-key"),
    pytest.param("", 1, "(root)", "name: my-job", id="empty-file"),
    pytest.param("# only a comment\n\n", 1, "(root)", "name: my-job", id="comments-only"),
    pytest.param("- name: t\n- workload: x\n", 1, "(root)", "left margin", id="top-level-list"),
    pytest.param("just some text\n", 1, "(root)", "left margin", id="top-level-scalar"),
    # name and backend
    pytest.param(
        'name: "job;rm -rf ~"\nworkload: {command: [ls]}\n', 1, "name", "letters, digits", id="name-semicolon"
    ),
    pytest.param(
        'name: "x$(whoami)"\nworkload: {command: [ls]}\n', 1, "name", "e.g. 'x-whoami'", id="name-dollar-paren"
    ),
    pytest.param("name: " + "a" * 65 + "\nworkload: {command: [ls]}\n", 1, "name", "1-64", id="name-too-long"),
    pytest.param("name: -x\nworkload: {command: [ls]}\n", 1, "name", "starting with a letter", id="name-dash-first"),
    pytest.param("name: 123\nworkload: {command: [ls]}\n", 1, "name", 'quote it: name: "123"', id="name-int"),
    pytest.param("workload:\n  callable: 'a:b'\n", 1, "name", "name: my-job", id="name-missing"),
    pytest.param("backend: slrum\n" + BASE, 1, "backend", "did you mean 'slurm'", id="bad-backend"),
    pytest.param("backend: [slurm]\n" + BASE, 1, "backend", "auto picks slurm", id="backend-list"),
]


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
