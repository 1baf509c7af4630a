"""The store's settings, each declared once with its default, unit and bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import env

#: What a log call does when the in-memory queue is full.
ON_FULL = ("block", "drop")


@dataclass(frozen=True)
class StoreOptions:
    """How the store batches what it is given and how much it holds in memory."""

    #: records per transaction (a batch is committed once it holds this many); >= 1
    buffer_size: int = 100
    #: seconds between commits of a partial batch; > 0
    flush_interval_s: float = 5.0
    #: records waiting in memory at most; >= 1 and >= buffer_size
    max_queue: int = 1_000_000
    #: "block": a log call waits for room (nothing accepted is lost); "drop": drop and count
    on_full: str = "block"
    #: postgresql:// URL of a central store the node store streams to; None: none (see
    #: :func:`central_url`). Without a password: a YAML file is copied into the run directory.
    central: str | None = None

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size={self.buffer_size}: must be >= 1 record")
        if not self.flush_interval_s > 0:
            raise ValueError(f"flush_interval={self.flush_interval_s}: must be > 0 seconds")
        if self.max_queue < 1:
            raise ValueError(f"max_queue={self.max_queue}: must be >= 1 record")
        if self.max_queue < self.buffer_size:  # a batch must fit in the queue
            raise ValueError(f"max_queue={self.max_queue} must be >= buffer_size={self.buffer_size}")
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


def central_url(options: StoreOptions | None, environ: dict[str, str] | None = None) -> str | None:
    """The central store a node store streams to: ``options.central`` (the YAML's
    ``monitoring.central``) when set, else ``$AETHERIUM_CENTRAL``; None (or empty): none."""
    if options is not None and options.central:
        return options.central
    value = (os.environ if environ is None else environ).get(env.CENTRAL, "").strip()
    return value or None
