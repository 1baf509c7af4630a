"""Exceptions of aetherium-hpc. Every message says what is wrong and how to fix it.

The CLI turns an :class:`AetheriumError` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class AetheriumError(Exception):
    """Base class: a problem the user can fix; its message says how."""

    exit_code = 2


class ConfigError(AetheriumError):
    """A configuration file or override is invalid."""


class StoreError(AetheriumError):
    """The metrics store cannot be used as asked."""


class UnsafeFolderError(StoreError):
    """A node-local folder that is not this user's alone (another user made it, or it is a link)."""


class SchemaError(StoreError):
    """A database file is foreign, corrupt, or of another schema version."""


class ForeignDatabaseError(SchemaError):
    """The file is an SQLite database, but not one written by aetherium-hpc."""


class NewerSchemaError(SchemaError):
    """The database was written by a newer aetherium-hpc."""


class OlderSchemaError(SchemaError):
    """The database was written by an older aetherium-hpc with an incompatible schema."""


class LockUnsupportedError(StoreError):
    """A lock file cannot be made or locked here (a read-only folder, a file system with neither
    ``flock`` nor POSIX record locks): the caller decides whether to go on unguarded."""


class StoreNotReachableError(StoreError):
    """No metrics store can be reached from this process."""


class LaunchError(AetheriumError):
    """A job could not be submitted or run."""


class SlurmError(AetheriumError):
    """A Slurm command could not be asked (not installed, no answer in time) or refused to answer;
    the message says which, in a few words callers put in their own lines."""


class CentralStoreError(StoreError):
    """The central PostgreSQL store cannot be reached or used (its message never shows a password)."""


class CentralBusyError(CentralStoreError):
    """The central store (or the PgBouncer before it) has no connection to give now: a reason to
    wait and try again, not an outage."""
