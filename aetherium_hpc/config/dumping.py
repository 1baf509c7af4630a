"""A validated config back to plain data: the snapshot in the run folder and the jobs table."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from typing import Any

import yaml

from .setting import setting_of

__all__ = ["dump_yaml", "plain_copy", "snapshot_yaml", "to_dict", "to_json", "yaml_text"]

#: libyaml's C emitter when PyYAML has it (the same text, several times faster for a 1,000-entry array).
_SAFE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(data: Any, **options: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, **options)``, with libyaml's emitter when available."""
    return str(yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False, **options))


def to_dict(section: Any) -> dict[str, Any]:
    """Every key of a model dataclass with its effective value, in model order, as fresh JSON-able data.

    Keys that are not part of a choice made (``omit_when_none``, ``only_with``) are left out, so
    a callable workload has no ``command`` and a command workload no ``kwargs``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        spec = setting_of(f)
        if spec is None:
            continue  # not a config key (Config.source)
        value = getattr(section, f.name)
        if spec.omit_when_none and value is None:
            continue
        if spec.only_with is not None and getattr(section, spec.only_with) is None:
            continue
        out[f.name] = plain_copy(value)
    return out


def plain_copy(value: Any) -> Any:
    """Lists for tuples, new dicts and lists all the way down (callers may change what they get)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2)


def dump_yaml(config: Any) -> str:
    """The effective configuration as YAML text."""
    return yaml_text(to_dict(config), default_flow_style=False, allow_unicode=True)


def snapshot_yaml(config: Any) -> str:
    """``yaml_text(to_dict(config))``, the same text, faster for a long ``array.params``.

    That list (one mapping a task, often thousands) costs PyYAML's Python representer most of the
    dump. When every entry is a mapping of simple scalars (:func:`_block_scalar`), its lines are
    written here and spliced in where a unique placeholder was dumped; else PyYAML writes it all.
    tests/config/test_config_dump.py holds the two to the same text over many generated lists."""
    data = to_dict(config)
    array = data.get("array")
    if not isinstance(array, dict):
        return yaml_text(data)
    params = array.get("params")
    lines = _block_entries(params) if isinstance(params, list) and params else None
    if lines is None:
        return yaml_text(data)
    token = f"aetherium-params-{secrets.token_hex(8)}"
    array["params"] = [token]
    head, sep, tail = yaml_text(data).partition(f"\n  params:\n  - {token}\n")
    if not sep:  # pragma: no cover - the placeholder is always dumped as that block; PyYAML writes all else
        array["params"] = params
        return yaml_text(data)
    return "".join((head, "\n  params:\n", *lines, tail))


#: Strings PyYAML may write plain or in single quotes, never anything else (no space, no ``:#,[]{}``,
#: no leading indicator); :func:`_block_scalar` asks PyYAML's resolver which of the two.
_SIMPLE_STR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_RESOLVER = yaml.resolver.Resolver()
_REPRESENTER = yaml.representer.SafeRepresenter()
_LONGEST_KEY = 100  # PyYAML writes a key of 128 characters or more as '? key' (not a simple key)


def _block_scalar(value: Any) -> str | None:
    """``value`` as PyYAML's safe dumper writes it in block context, or None when it is not simple."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float:
        return str(_REPRESENTER.represent_float(value).value)  # .nan, 1.0e-05: PyYAML's own rule
    if kind is not str:
        return None
    if not value:
        return "''"
    if not _SIMPLE_STR.fullmatch(value):
        return None
    plain = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
    return value if plain else f"'{value}'"  # '0.5', 'yes', '2024-01-01' would load as other types


def _block_entries(params: list[Any]) -> list[str] | None:
    """The lines of ``params`` as a block sequence of block mappings under ``  params:``; None if an
    entry is not a mapping of simple scalars (then PyYAML writes the list)."""
    lines: list[str] = []
    for entry in params:
        if not isinstance(entry, dict):
            return None
        if not entry:
            lines.append("  - {}\n")
            continue
        lead = "  - "
        for key, value in entry.items():
            k = _block_scalar(key) if isinstance(key, str) and len(key) < _LONGEST_KEY else None
            v = _block_scalar(value)
            if k is None or v is None:
                return None
            lines.append(f"{lead}{k}: {v}\n")
            lead = "    "
    return lines
