"""What each key of the model declares once: its help line, unit, bounds and an example.

A model field is ``name: type = setting(default, help=..., ...)``: the annotation is the type,
the field's default is the default, and :class:`Setting` (the field's metadata) carries the rest.
Validation (bounds, wording of hints), dumping and the docs test all read it from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Setting", "default_of", "setting", "setting_of"]

_KEY = "aetherium_hpc.setting"


@dataclass(frozen=True)
class Setting:
    """The metadata of one config key (the type and default live on the dataclass field)."""

    #: one line for readers of the model (docs/CONFIG.md says more)
    help: str
    #: unit of a number ("s", "min", "GB", "records"); None for plain values
    unit: str | None = None
    #: bounds of a number, checked in this order: > gt, >= ge, <= le
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    #: a valid value shown in error hints; None: the default
    example: Any = None
    #: a check owned elsewhere (e.g. by the store's options), run after type and bounds: raises
    #: ValueError("KEY: problem; how to fix") (the fix may be left out)
    check: Callable[[Any], object] | None = None
    #: dumped only when set (one of a choice, such as workload.callable / workload.command)
    omit_when_none: bool = False
    #: dumped only when this sibling key is set (workload.kwargs goes with workload.callable)
    only_with: str | None = None


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field with ``default`` (or ``default_factory``; neither: required) and a :class:`Setting`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: Setting(**spec)})


def setting_of(f: dataclasses.Field[Any]) -> Setting | None:
    """The :class:`Setting` of a model field; None for fields that are not config keys."""
    spec = f.metadata.get(_KEY)
    return spec if isinstance(spec, Setting) else None


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one for a factory); MISSING for required fields."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
