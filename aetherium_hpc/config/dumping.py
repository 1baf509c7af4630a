"""A validated config back to plain data: the snapshot in the run folder and the jobs table."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

from .setting import setting_of

__all__ = ["dump_yaml", "to_dict", "to_json", "yaml_text"]

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
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """Lists for tuples, new dicts and lists all the way down (callers may change what they get)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2)


def dump_yaml(config: Any) -> str:
    """The effective configuration as YAML text."""
    return yaml_text(to_dict(config), default_flow_style=False, allow_unicode=True)
