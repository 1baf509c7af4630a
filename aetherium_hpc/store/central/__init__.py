"""The central store: what a node's SQLite database committed, copied into one PostgreSQL database.

The node-local SQLite file stays the source of truth; PostgreSQL (through psycopg 3, imported only
in this package) gets the same tables and views, every row tagged with its source (job, array
task, node), so ``SELECT ... FROM resource_metrics`` answers across every job of a lab.

* :mod:`.url` -- ``postgresql://`` URLs: recognise, mask the password, connect with one clear line;
* :mod:`.schema` -- the PostgreSQL tables and views, and the version check;
* :mod:`.push` -- :func:`push`: what is new in one SQLite database since a high-water mark, copied
  idempotently (``merge --into`` and the live sender share it);
* :mod:`.sender` -- :class:`CentralSender`, the thread of a node store that pushes every few seconds.
"""

from __future__ import annotations

from .url import is_central_url, mask

__all__ = ["is_central_url", "mask"]
