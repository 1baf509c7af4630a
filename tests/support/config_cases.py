"""Malformed config files and the one line each must give (file:line, key path, a hint): shared by
the validation tests and the loader tests."""

from __future__ import annotations

import pytest

#: Three lines every malformed case builds on (line 1: name, line 2: workload, line 3: callable).
BASE = 'name: t\nworkload:\n  callable: "pkg.mod:func"\n'

#: (text, line, key path, hint) of a config that must be refused.
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
    pytest.param(
        BASE + "monitoring:\n  buffer_size: 2000000\n", 5, "monitoring.buffer_size", "at most 1000000", id="huge-buffer"
    ),
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
