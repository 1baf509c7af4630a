"""The store's settings, each declared once: its default and unit on :class:`StoreOptions`, its
bounds in :data:`BOUNDS`."""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass

from .. import envvars

#: What a log call does when the in-memory queue is full.
ON_FULL = ("block", "drop")

#: The limits of the numeric options, read by :class:`StoreOptions`' own check and by the job
#: configuration's (config/model.py): option -> {"gt" (>) | "ge" (>=) | "le" (<=): limit}, checked in
#: this order. A limit that is a name is that option's value (a batch must fit in the queue).
BOUNDS: dict[str, dict[str, float | str]] = {
    "max_queue": {"ge": 1},
    "buffer_size": {"ge": 1, "le": "max_queue"},
    "flush_interval_s": {"gt": 0},
}
#: The relations of :data:`BOUNDS`: key -> (sign, test).
RELATIONS = {"gt": (">", operator.gt), "ge": (">=", operator.ge), "le": ("<=", operator.le)}


@dataclass(frozen=True)
class StoreOptions:
    """How the store batches what it is given and how much it holds in memory."""

    #: records per transaction (a batch is committed once it holds this many)
    buffer_size: int = 100
    #: seconds between commits of a partial batch
    flush_interval_s: float = 5.0
    #: records waiting in memory at most
    max_queue: int = 1_000_000
    #: "block": a log call waits for room (nothing accepted is lost); "drop": drop and count
    on_full: str = "block"
    #: postgresql:// URL of a central store the node store streams to; None: none (see
    #: :func:`central_url`). Without a password: a YAML file is copied into the run directory.
    central: str | None = None

    def __post_init__(self) -> None:
        for name, limits in BOUNDS.items():
            value = getattr(self, name)
            for relation, limit in limits.items():
                sign, holds = RELATIONS[relation]
                bound = getattr(self, limit) if isinstance(limit, str) else limit
                if not holds(value, bound):  # (NaN holds none)
                    shown = f"{limit}={bound}" if isinstance(limit, str) else bound
                    raise ValueError(f"{name}={value}: must be {sign} {shown}")
        if self.on_full not in ON_FULL:
            raise ValueError(f"on_full={self.on_full!r}: use one of {', '.join(ON_FULL)}")
        if self.central is not None:
            if not self.central.lower().startswith(("postgresql://", "postgres://")):
                raise ValueError("central: must be a postgresql:// URL (postgresql://USER@HOST:PORT/DATABASE)")
            from .central.url import has_password

            if has_password(self.central):
                raise ValueError(
                    "central: must not hold a password (the configuration is copied into the run directory); "
                    "put it in ~/.pgpass, a file named by PGPASSFILE, or PGPASSWORD"
                )


def limits(name: str) -> dict[str, float]:
    """The limits of option ``name`` as numbers (``{"ge": 1, "le": 1000000}``), keyed as in
    :data:`BOUNDS`; a limit named by another option is that option's default."""
    defaults = StoreOptions()
    return {k: getattr(defaults, v) if isinstance(v, str) else v for k, v in BOUNDS.get(name, {}).items()}


def central_url(options: StoreOptions | None, environ: dict[str, str] | None = None) -> str | None:
    """The central store a node store streams to: ``options.central`` (the YAML's
    ``monitoring.central``) when set, else ``$AETHERIUM_CENTRAL``; None (or empty): none."""
    if options is not None and options.central:
        return options.central
    value = (os.environ if environ is None else environ).get(envvars.CENTRAL, "").strip()
    return value or None
