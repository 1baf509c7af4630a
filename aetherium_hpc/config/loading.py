"""The entry points: a file, a text or a mapping in, a validated :class:`~.model.Config` out.

Flow::

    file text --yaml_lines.read_yaml--> raw mappings (with line numbers)
              --overrides.apply_override (--set)--> --validation.validate--> Config
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .model import Config
from .overrides import apply_override
from .problems import Origin
from .validation import validate
from .yaml_lines import read_yaml

__all__ = ["config_from_dict", "load_config", "parse_config"]


def parse_config(text: str, source: str = "<string>", overrides: Iterable[str] = ()) -> Config:
    """Validate YAML ``text``; ``source`` names it in error messages."""
    origin = Origin(source)
    data = read_yaml(text, source)
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key.path=value' strings, not one string")
    for item in overrides:
        apply_override(origin, data, item)
    return validate(origin, data)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override (``key.sub=value``, value parsed as YAML) and validate a config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: (file): no such config file; check the path (e.g. configs/train.yaml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: (file): is a folder, not a config file; give the path of a .yaml file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: (file): not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{source}: (file): cannot read ({exc.strerror}); check the path and permissions") from None
    return parse_config(text, source, overrides)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate an already-parsed mapping, e.g. a snapshot made by :meth:`Config.to_dict`."""
    return validate(Origin(source), copy.deepcopy(dict(data)))
