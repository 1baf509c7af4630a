"""The run folder's config.yaml: ``snapshot_yaml`` writes a long ``array.params`` itself and must
give exactly PyYAML's text (``yaml_text(config.to_dict())``), which loads back to the same config."""

from __future__ import annotations

import random
from typing import Any

import pytest

from aetherium_hpc.config import config_from_dict, parse_config, snapshot_yaml, yaml_text
from aetherium_hpc.config.dumping import _block_entries

#: Strings whose YAML style is a trap: booleans and nulls of YAML 1.1, numbers, dates, indicators.
TRICKY = [
    "yes", "No", "on", "OFF", "y", "n", "Y", "null", "Null", "NULL", "~", "true", "False", "1.5", "1e5",
    "1.0e+5", "1_000", "0x1F", "0o17", "017", "0b101", "2024-01-01", "2024-01-01t00:00:00z", "12:30", ".inf",
    "-.inf", ".NaN", "-1", "+1", "1.", "1", "0", "a-b", "data/x.csv", "resnet50", "", "with space", "a:b", "a: b",
    "#x", "x #y", "é", "naïve", "x,y", "[a]", "{a}", "-x", "-", ".x", "..", "...", "---", "_x", "=", "<<", "!x",
    "&a", "*a", "%x", "@x", "`x", "'q'", '"q"', "a'b", "tab\tin", "line\nbreak", " lead", "trail ", "x" * 90,
]  # fmt: skip
KEYS = ["seed", "lr", "yes", "on", "null", "true", "n", "y", "model_name", "_private", "x1", "k" * 99]


def _value(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice([0, 1, -1, 7, 10**20, -(10**18), 123456789])
    if kind == 1:
        return rng.choice([True, False, None])
    if kind == 2:
        return rng.choice([0.0, -0.0, 0.1, 1e-5, 1e17, 3.0, -2.5e-300, 1.7976931348623157e308, 123456.789])
    if kind == 3:
        return rng.random() * 10 ** rng.randrange(-8, 9)
    if kind == 4:
        return rng.choice(TRICKY)
    if kind == 5:
        return "".join(rng.choice("abcXYZ019_-./:# ,'\"[]{}é") for _ in range(rng.randrange(1, 12)))
    return f"run{rng.randrange(1000)}"


def _config(params: list[dict[str, Any]]) -> Any:
    return config_from_dict({"name": "dump", "workload": {"callable": "aetherium_hpc.demo.pipeline:run"},
                             "array": {"params": params}})  # fmt: skip


def _same(got: Any, want: Any) -> bool:
    """Equal, of the same type, and for floats the same repr (-0.0 is not 0.0)."""
    return type(got) is type(want) and (repr(got) == repr(want) if isinstance(want, float) else got == want)


def _check(params: list[dict[str, Any]]) -> None:
    config = _config(params)
    text = snapshot_yaml(config)
    assert text == yaml_text(config.to_dict())
    back = parse_config(text, "config.yaml").array_params()
    for got, want in zip(back, params, strict=True):
        assert list(got) == list(want) and all(_same(got[k], v) for k, v in want.items()), (got, want)


@pytest.mark.parametrize("seed", range(4))
def test_snapshot_is_pyyaml_text_entry_by_entry(seed: int) -> None:
    """Each generated entry alone (a list PyYAML must write whole if one entry is not simple)."""
    rng = random.Random(seed)
    fast = 0
    for _ in range(300):
        entry = {k: _value(rng) for k in rng.sample(KEYS, rng.randrange(0, 5))}
        fast += _block_entries([entry]) is not None
        _check([entry])
    assert fast >= 60  # the test says something about the fast path (about half the entries take it)


@pytest.mark.parametrize("seed", range(4))
def test_snapshot_is_pyyaml_text_for_long_simple_lists(seed: int) -> None:
    rng = random.Random(seed)
    params: list[dict[str, Any]] = []
    while len(params) < 500:
        entry = {k: _value(rng) for k in rng.sample(KEYS, rng.randrange(0, 5))}
        if _block_entries([entry]) is not None:
            params.append(entry)
    assert _block_entries(params) is not None
    _check(params)


def test_simple_params_take_the_fast_path_and_the_rest_falls_back() -> None:
    simple = [{"seed": i, "lr": 10.0**-i, "opt": ["adam", "sgd", "yes", "1.5"][i % 4], "on": i % 2 == 0}
              for i in range(20)]  # fmt: skip
    lines = _block_entries(simple)
    assert lines is not None and len(lines) == 80
    assert lines[:4] == ["  - seed: 0\n", "    lr: 1.0\n", "    opt: adam\n", "    'on': true\n"]
    assert lines[6] == "    opt: sgd\n" and lines[10] == "    opt: 'yes'\n" and lines[14] == "    opt: '1.5'\n"
    assert _block_entries([{"seed": 1}, {}, {"s": ""}]) == ["  - seed: 1\n", "  - {}\n", "  - s: ''\n"]
    for odd in ({"tags": ["a", "b"]}, {"cfg": {"depth": 2}}, {"name": "with space"}, {"name": "é"},
                {"k" * 130: 1}, {"t": "a:b"}):  # fmt: skip
        assert _block_entries([{"seed": 0}, odd]) is None, odd
        config = _config([{"seed": 0}, odd])
        assert snapshot_yaml(config) == yaml_text(config.to_dict())


def test_snapshot_of_a_sweep_and_of_no_array_is_pyyaml_text() -> None:
    for config in (
        config_from_dict({"name": "s", "workload": {"callable": "m:f"}, "array": {"sweep": {"lr": [0.1, 1e-5]}}}),
        config_from_dict({"name": "one", "workload": {"callable": "m:f"}}),
    ):
        assert snapshot_yaml(config) == yaml_text(config.to_dict())
