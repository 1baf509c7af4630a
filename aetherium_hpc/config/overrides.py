"""``--set key.path=value``: change the raw data after reading the file, before validating it."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError
from .problems import Origin, one_line, show
from .yaml_lines import LineDict, key_line, read_value

__all__ = ["apply_override"]


def apply_override(origin: Origin, data: Any, text: str) -> None:
    """Set the key of ``text`` (``key.path=value``, the value parsed as YAML) in ``data``, in place.

    Missing sections are created; ``origin`` remembers the override, so that a problem with
    that key later names it: ``(from --set resources.nodes=0)``."""
    shown = one_line(text)
    example = "e.g. --set resources.nodes=2"
    key, eq, value_text = text.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"{origin.source}: --set {shown}: override has no '='; write KEY.PATH=VALUE, {example}")
    parts = key.split(".")
    if not key or any(not p or p != p.strip() for p in parts):
        raise ConfigError(
            f"{origin.source}: --set {shown}: {key!r} is not a dotted key path; write KEY.PATH=VALUE, {example}"
        )
    try:
        value = read_value(value_text, f"{origin.source}: --set {shown}")
    except yaml.YAMLError as exc:
        problem = one_line(getattr(exc, "problem", None) or str(exc))
        raise ConfigError(
            f"{origin.source}: --set {shown}: {key}: value is not valid YAML ({problem}); "
            f"quote it, e.g. --set '{key}=\"...\"'"
        ) from None
    if not isinstance(data, dict):
        return  # the top-level error is reported by validation
    origin.overrides.append((key, text))
    node: dict[Any, Any] = data
    line = 1
    for i, part in enumerate(parts[:-1]):
        line = key_line(node, part, line)
        child = node.get(part)
        if child is None:
            child = LineDict()
            child.line = line
            node[part] = child
            if isinstance(node, LineDict):
                node.key_lines[part] = line
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            origin.fail(
                line,
                where,
                f"is not a section (it holds {show(child)}), so --set cannot reach into it",
                f"--set only reaches keys inside mappings, so set the whole value instead, e.g. --set {where}=...",
            )
        node = child
    last = parts[-1]
    if isinstance(node, LineDict) and last not in node.key_lines:
        node.key_lines[last] = node.line
    node[last] = value
