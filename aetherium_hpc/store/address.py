"""The node socket's names: where it lives, what it is called, and how processes find it.

The store that owns a database listens on ``<socket folder>/aeth-XXXXXXXX/metrics.sock``, with
its key in ``metrics.sock.key`` beside it (0600). A process of the node reaches it through
``AETHERIUM_METRICS_ADDR`` (the socket's path) and ``AETHERIUM_METRICS_KEY`` (the key, or the
key file when unset); ``AETHERIUM_METRICS_DB`` names the database for information. Inside a
job, the socket folder is derived from the node-local store folder (:func:`socket_dir_for`),
so every task of the node finds the same socket (:func:`find_socket`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass

from .. import envvars
from ..errors import UnsafeFolderError
from ..paths import not_private, private_folder, user_scratch

#: Longest path an AF_UNIX socket may have on Linux (108 bytes with the NUL).
MAX_SOCKET_PATH = 107
#: File name of the socket in its private folder.
SOCKET_NAME = "metrics.sock"
#: Suffix of the key file beside the socket.
KEY_SUFFIX = ".key"
#: Prefix of the private folder a store's socket lives in (one per opened store).
FOLDER_PREFIX = "aeth-"


@dataclass(frozen=True)
class StoreAddress:
    """Where a process that is not the writer sends its records: the socket and its key."""

    path: str
    key: bytes

    @property
    def key_path(self) -> str:
        """The key file beside the socket."""
        return self.path + KEY_SUFFIX

    @classmethod
    def from_environ(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> StoreAddress | None:
        """The address the environment names (key from ``AETHERIUM_METRICS_KEY`` or the key
        file); None when none is named or the key cannot be read."""
        values = os.environ if environ is None else environ
        path = values.get(envvars.METRICS_ADDR)
        if not path:
            return None
        key_hex = values.get(envvars.METRICS_KEY)
        if key_hex is None:
            try:
                with open(path + KEY_SUFFIX, encoding="ascii") as fh:
                    key_hex = fh.read().strip()
            except OSError:
                return None
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            return None
        return cls(path, key)

    def to_environ(self) -> dict[str, str]:
        return {envvars.METRICS_ADDR: self.path, envvars.METRICS_KEY: self.key.hex()}


def new_socket_folder(socket_dir: str | None) -> str:
    """A fresh private (0700, unpredictable) folder for one store's socket, in ``socket_dir`` (default:
    this user's folder under node-local scratch, made private and checked)."""
    return tempfile.mkdtemp(
        prefix=FOLDER_PREFIX, dir=socket_dir or private_folder(user_scratch(envvars.local_scratch_dir()))
    )


def new_address(folder: str) -> StoreAddress:
    """A fresh socket path in ``folder`` and a random key; the key is also written to ``<socket>.key`` (0600)."""
    path = os.path.join(folder, SOCKET_NAME)
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise OSError(
            f"socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes; set AETHERIUM_LOCAL_DIR to a short folder"
        )
    address = StoreAddress(path, secrets.token_bytes(32))
    write_key(address)
    return address


def write_key(address: StoreAddress) -> None:
    """Write ``address``'s key to its key file (0600), for processes that find the socket by its path."""
    fd = os.open(address.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(address.key.hex())


def socket_dir_for(local_dir: str) -> str:
    """Folder of the node socket: ``local_dir`` itself, or a short folder in this user's folder
    under /tmp, derived from it, when the socket path would not fit in AF_UNIX's 107 bytes."""
    if len(os.fsencode(local_dir)) + len(f"/{FOLDER_PREFIX}xxxxxxxx/{SOCKET_NAME}{KEY_SUFFIX}") <= 100:
        return local_dir
    digest = hashlib.sha1(os.fsencode(local_dir)).hexdigest()[:16]
    return os.path.join(user_scratch("/tmp"), f"{FOLDER_PREFIX}{digest}")


def remove_stale_sockets(socket_dir: str) -> None:
    """Remove the socket folders an earlier attempt left in ``socket_dir`` (a requeued job)."""
    for stale in glob.glob(os.path.join(glob.escape(socket_dir), FOLDER_PREFIX + "*")):
        shutil.rmtree(stale, ignore_errors=True)


def find_socket(socket_dir: str) -> str | None:
    """The socket a store of ``socket_dir`` listens on, once its key file is there too; else None.
    Raises :class:`UnsafeFolderError` when a folder on the way is not this user's alone (another
    user's socket there would receive the records)."""
    if not os.path.lexists(socket_dir):
        return None  # not made yet: the store has not started
    found = glob.glob(os.path.join(glob.escape(socket_dir), FOLDER_PREFIX + "*", SOCKET_NAME))
    for folder in (os.path.dirname(socket_dir), socket_dir, *(os.path.dirname(p) for p in found)):
        why = not_private(folder)
        if why is not None:
            raise UnsafeFolderError(f"{folder}: refused: {why}; no records are sent there")
    return next((p for p in found if os.path.exists(p + KEY_SUFFIX)), None)


def publish(address: StoreAddress | str, db_path: str) -> None:
    """Name the node store in this process's environment, for it and the processes it starts.

    ``address``: a :class:`StoreAddress`, or only the socket's path (its key is then read from
    the key file beside it)."""
    if isinstance(address, StoreAddress):
        os.environ.update(address.to_environ())
    else:
        os.environ[envvars.METRICS_ADDR] = address
        os.environ.pop(envvars.METRICS_KEY, None)  # read from <socket>.key beside it
    os.environ[envvars.METRICS_DB] = db_path


def unpublish() -> None:
    """Remove the node store's names from this process's environment."""
    for name in (envvars.METRICS_ADDR, envvars.METRICS_KEY, envvars.METRICS_DB):
        os.environ.pop(name, None)
