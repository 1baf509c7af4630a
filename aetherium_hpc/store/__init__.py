"""The metrics store: log calls → queue → one writer thread → SQLite, and everything that reads it.

What the rest of the package may use is named here (``__all__``); the public modules are

* :mod:`.client` -- ``init_db``, the ``log_*`` calls, ``get_db``, ``shutdown_db``: the API of pipeline
  code, which :mod:`aetherium_hpc` exports; here only what the rest of the package calls;
* :mod:`.options` -- :class:`StoreOptions`, the store's settings as one object;
* :mod:`.address` -- the node socket's names (:class:`StoreAddress`, where the socket lives);
* :mod:`.catalogue` -- every metric name and unit the monitors and the store write;
* :mod:`.chunks` -- the chunk codec; :mod:`.schema` -- tables, views and the version check;
* :mod:`.reader` -- the one read-only opener, and :class:`StoreReader`'s queries;
* :mod:`.backup` -- copying a live database (:class:`CopyBack`, :func:`copy_database`,
  :func:`readable`); loaded on first use, so that ``python -m aetherium_hpc.store.backup``
  runs it as a script.

Internal (used only inside this package): ``process`` (this process's store and sink),
``stores`` (the store objects), ``writer`` (the writer thread), ``record_queue`` (its queue),
``failures`` and ``sqlite_errors`` (failed writes, SQLite's result codes), ``transport`` and
``server`` (the socket protocol, its client and server ends), ``ownership`` (the lock files; its
:class:`FileLock`, the package's one file lock, is exported here) and ``records`` (record tuples
and their checks). What SIGTERM does to a process that logs is :mod:`aetherium_hpc.signal_policy`' policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..identity import SourceInfo, source_from_environ, source_of
from . import address, catalogue, chunks, client, reader, schema
from .address import StoreAddress
from .client import log_builtin_ticks, log_resource_samples, send_one_record
from .options import StoreOptions
from .ownership import FileLock, check_path
from .process import add_close_hook, close_store, get_db, remove_close_hook
from .reader import RECENT_WINDOW_S, StoreReader
from .stores import JoinedStore, set_recent_source

if TYPE_CHECKING:
    from .backup import CopyBack, copy_database, readable

#: Names of :mod:`.backup` this package exports, imported on first use.
_BACKUP_NAMES = ("CopyBack", "copy_database", "readable")


def __getattr__(name: str) -> Any:
    if name in _BACKUP_NAMES:
        from . import backup

        return getattr(backup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RECENT_WINDOW_S",
    "CopyBack",
    "FileLock",
    "JoinedStore",
    "SourceInfo",
    "StoreAddress",
    "StoreOptions",
    "StoreReader",
    "add_close_hook",
    "address",
    "catalogue",
    "check_path",
    "chunks",
    "client",
    "close_store",
    "copy_database",
    "get_db",
    "log_builtin_ticks",
    "log_resource_samples",
    "remove_close_hook",
    "send_one_record",
    "set_recent_source",
    "readable",
    "reader",
    "schema",
    "source_from_environ",
    "source_of",
]
