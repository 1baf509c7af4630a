"""docs/CONFIG.md documents every key of the config model, with the model's default.

Modelled on sqlite-utils' docs tests: the model is introspected, the docs are parsed, and a key
that is missing, or documented with another default, fails with the key in the test id.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, get_args, get_type_hints

import pytest
import yaml
from testenv import ROOT

from aetherium_hpc.config import Config
from aetherium_hpc.config.setting import default_of, setting_of

DOCS = ROOT / "docs" / "CONFIG.md"
NO_DEFAULT = "–"  # required, or one of a choice (workload.callable / command, array.params / sweep)


def _documented(text: str) -> dict[str, dict[str, str]]:
    """Section ('' for the top level) -> key -> the default column of its table row."""
    tables: dict[str, dict[str, str]] = {}
    section: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = re.match(r"## (?:Top level|`(\w+)`)", line)
            section = None if heading is None else heading[1] or ""
            if section is not None:
                tables[section] = {}
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]  # "\|" inside a cell is not a column
        if section is not None and len(cells) == 6 and re.fullmatch(r"`\w+`", cells[1]):
            tables[section][cells[1].strip("`")] = cells[3]
    return tables


def _keys(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if setting_of(f) is not None]


def _model_keys() -> list[tuple[str, dataclasses.Field[Any]]]:
    """(section, field) of every key: '' for the top level, else the section's name."""
    hints = get_type_hints(Config)
    keys: list[tuple[str, dataclasses.Field[Any]]] = []
    for f in _keys(Config):
        keys.append(("", f))
        for cls in (hints[f.name], *get_args(hints[f.name])):  # ArraySpec | None -> ArraySpec
            if dataclasses.is_dataclass(cls) and isinstance(cls, type):
                keys.extend((f.name, sub) for sub in _keys(cls))
    return keys


MODEL_KEYS = _model_keys()
DOCUMENTED = _documented(DOCS.read_text(encoding="utf-8"))


def _expected_cell(f: dataclasses.Field[Any]) -> Any:
    """What the default column says: "–", "" for a section, else the default (a tuple as a list)."""
    spec, default = setting_of(f), default_of(f)
    assert spec is not None
    if default is dataclasses.MISSING or spec.omit_when_none:
        return NO_DEFAULT
    if dataclasses.is_dataclass(default):
        return ""  # a section: the defaults are those of its keys
    return list(default) if isinstance(default, tuple) else default


@pytest.mark.parametrize(
    ("section", "field"), MODEL_KEYS, ids=[f"{s}.{f.name}" if s else f.name for s, f in MODEL_KEYS]
)
def test_every_key_is_documented_with_its_default(section: str, field: dataclasses.Field[Any]) -> None:
    where = f"the {repr(section) if section else 'top-level'} table of docs/CONFIG.md"
    table = DOCUMENTED.get(section)
    assert table is not None, f"docs/CONFIG.md has no '## `{section}`' section"
    assert field.name in table, f"{section + '.' if section else ''}{field.name} is missing from {where}"
    expected, cell = _expected_cell(field), table[field.name]
    if expected in (NO_DEFAULT, ""):
        assert cell == expected, f"{field.name}: {where} gives the default {cell!r}, expected {expected!r}"
    else:
        documented = yaml.safe_load(cell.strip("`"))
        assert documented == expected and type(documented) is type(expected), (
            f"{field.name}: {where} gives the default {cell}, the model {expected!r}"
        )


def test_the_docs_document_no_key_the_model_lacks() -> None:
    model = {(s, f.name) for s, f in MODEL_KEYS}
    extra = [f"{s}.{k}" if s else k for s, table in DOCUMENTED.items() for k in table if (s, k) not in model]
    assert not extra, f"docs/CONFIG.md documents keys the model does not have: {extra}"


def test_a_missing_row_is_noticed() -> None:
    """The parser really reads the tables: without the row of monitoring.flush_interval_s the key is gone."""
    text = DOCS.read_text(encoding="utf-8")
    assert "| `flush_interval_s` |" in text
    tables = _documented("\n".join(line for line in text.splitlines() if "| `flush_interval_s` |" not in line))
    assert "interval_s" in tables["monitoring"] and "flush_interval_s" not in tables["monitoring"]
