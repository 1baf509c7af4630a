"""The YAML loader: libyaml's C parser first, the same results and messages as the pure-Python one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from config_cases import BASE, MALFORMED

from aetherium_hpc import config
from aetherium_hpc.config import yaml_lines
from aetherium_hpc.errors import ConfigError


def _outcome(path: Path) -> str:
    try:
        return repr(config.load_config(path))
    except ConfigError as exc:
        return f"ConfigError: {exc}"


@pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="PyYAML built without libyaml")
def test_the_c_loader_is_used_when_libyaml_is_there() -> None:
    assert yaml_lines._FAST_LOADERS and issubclass(yaml_lines._FAST_LOADERS[0], yaml.CSafeLoader)


@pytest.mark.parametrize(("text", "line", "key_path", "hint"), [*MALFORMED, (BASE, 0, "", "")])
def test_same_config_or_message_with_and_without_libyaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: int, key_path: str, hint: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    fast = _outcome(path)
    monkeypatch.setattr(yaml_lines, "_FAST_LOADERS", ())
    assert fast == _outcome(path)


def test_line_numbers_of_a_long_array(tmp_path: Path) -> None:
    """A validation error deep in a 1,000-entry array names its line (marks come from the C parser)."""
    params = "".join(f"    - {{seed: {i}}}\n" for i in range(1000)).replace("{seed: 700}", "{seed: 700, 3: x}")
    path = tmp_path / "a.yaml"
    path.write_text(f"{BASE}array:\n  params:\n{params}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    assert str(info.value).startswith(f"{path}:{BASE.count(chr(10)) + 3 + 700}: "), str(info.value)


#: YAML features whose data or lines the fast build must give exactly as PyYAML, or leave to it.
FEATURES = [
    "a: 1\nb: [x, 'y', \"z\", 017, 0x1F, 1_000, 1:30, -0, +5, 0, 00, 10, 0b11, 190:20:30]\n",
    "a: &x 1\nb: *x\nc: [*x, *x]\n",
    "f: [1.5, 1e5, 1.0e+5, .inf, -.Inf, .nan, 0.]\nn: [~, null, Null, '']\nb: [yes, No, on, OFF, true, y]\n",
    "nested:\n  - {k: [1, {deep: [a, b]}]}\n  -\n    - x\n  - {}\n  - []\nempty:\n",
    "base: &b {x: 1, y: 2}\nuse: *b\n",
    "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n",
    "t: !!str 123\nf: !!float 1\nbin: !!binary aGk=\n",
    "when: 2024-01-01\nstamp: 2024-01-01 10:00:00\n",
    "? [a, b]\n: c\n",
    "=: x\n",
    "a: 1\nsub: {k: 1, k: 2}\n",
    "1: one\n'1': two\n1.0: three\n",
    "long: >\n  folded\n  text\nlit: |\n  kept\n  lines\n",
    "s: &a [1, 2]\nt: *a\n",
]


def _with_lines(data: object) -> object:
    """The data with every line number it carries, to compare the two loaders exactly."""
    if isinstance(data, yaml_lines.LineDict):
        items = [(repr(k), _with_lines(v), data.key_lines.get(k)) for k, v in data.items()]
        return ("map", data.line, items)
    if isinstance(data, yaml_lines.LineList):
        return ("seq", data.line, data.item_lines, [_with_lines(v) for v in data])
    return (type(data).__name__, repr(data))


def _slow(monkeypatch: pytest.MonkeyPatch, text: str) -> object:
    with monkeypatch.context() as m:
        m.setattr(yaml_lines, "_FAST_LOADERS", ())
        try:
            return _with_lines(yaml_lines.read_yaml(text, "f.yaml"))
        except ConfigError as exc:
            return f"ConfigError: {exc}"


@pytest.mark.skipif(not yaml_lines._FAST_LOADERS, reason="PyYAML built without libyaml")
@pytest.mark.parametrize("text", [*FEATURES, BASE, *(case.values[0] for case in MALFORMED)])
def test_fast_build_gives_the_same_data_and_lines_as_pyyaml(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    try:
        fast: object = _with_lines(yaml_lines.read_yaml(text, "f.yaml"))
    except ConfigError as exc:
        fast = f"ConfigError: {exc}"
    assert fast == _slow(monkeypatch, text)


@pytest.mark.skipif(not yaml_lines._FAST_LOADERS, reason="PyYAML built without libyaml")
def test_fast_build_takes_plain_files_and_leaves_aliases_merges_tags_and_duplicates() -> None:
    def built(text: str) -> bool:
        loader = yaml_lines._FAST_LOADERS[0](text)
        try:
            yaml_lines._build(loader, loader.get_single_node(), set())
            return True
        except yaml_lines._LeftToPyYAML:
            return False
        finally:
            loader.dispose()

    params = "".join(f"    - {{seed: {i}, lr: 0.1, opt: adam}}\n" for i in range(1000))
    assert built(f"{BASE}array:\n  params:\n{params}") and built(FEATURES[0]) and built(FEATURES[3])
    assert built(FEATURES[1])  # an aliased scalar: the same value, built twice
    for text in (FEATURES[4], FEATURES[5], FEATURES[6], FEATURES[7], FEATURES[8], FEATURES[9], FEATURES[10],
                 FEATURES[11], FEATURES[13]):  # fmt: skip
        assert not built(text), text
