"""YAML job configuration -> validated, frozen dataclasses.

======================  ==============================================================
``model``               the dataclasses; each key declares its type, default, unit, bounds
``setting``             what a key declares besides type and default (:class:`Setting`)
``yaml_lines``          YAML text -> mappings and lists that know their line numbers
``overrides``           ``--set key.path=value``
``validation``          raw data -> :class:`Config`, driven by the model
``problems``            the one-line message ``FILE:LINE: key.path: problem; how to fix``
``dumping``             :class:`Config` -> plain data / YAML (the run folder's snapshot)
``loading``             the entry points :func:`load_config`, :func:`parse_config`, :func:`config_from_dict`
======================  ==============================================================

Every problem is raised as one :class:`~aetherium_hpc.errors.ConfigError`. docs/CONFIG.md
lists every key.
"""

from __future__ import annotations

from .dumping import snapshot_yaml, yaml_text
from .loading import config_from_dict, load_config, parse_config
from .model import (
    BACKENDS,
    MAX_ARRAY_TASKS,
    ArraySpec,
    Config,
    Monitoring,
    ReportSettings,
    Resources,
    SlurmSettings,
    Workload,
)

__all__ = [
    "BACKENDS",
    "MAX_ARRAY_TASKS",
    "ArraySpec",
    "Config",
    "Monitoring",
    "ReportSettings",
    "Resources",
    "SlurmSettings",
    "Workload",
    "config_from_dict",
    "load_config",
    "parse_config",
    "snapshot_yaml",
    "yaml_text",
]
