"""The YAML loader: libyaml's C parser first, the same results and messages as the pure-Python one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_config import BASE, MALFORMED

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
