"""The one place that names the files and folders of a run.

A run directory (one per ``aetherium-hpc submit``)::

    <run_dir>/<name>-<YYYYmmdd-HHMMSS>-<4 hex>/
        config.yaml                 resolved configuration (every key, effective values)
        jobs.json                   backend and job ids of the submission (for ``status``)
        submitit/                   submitit's pickles, sbatch scripts and its own logs
        logs/                       aetherium-hpc's notes (e.g. the rendered sbatch script)
        db/<job>_<task>/<node>.db   one database per array task (0 for a plain job) and node

Inside a job, the live database sits on node-local scratch, in a :class:`NodeFolder` whose
name is derived from (job, task, node) only, so that every ``srun`` task of the node finds it
(the store names its socket there). ``aetherium-hpc run`` copies to the run directory's
``db/`` when ``$AETHERIUM_RUN_DIR`` names one (:meth:`RunLayout.command_db_path`).

Merge, status and watch find a run's databases by one rule: :meth:`RunLayout.databases`.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .identity import JobIdentity

__all__ = ["LOCAL_DB_NAME", "NodeFolder", "RunLayout", "db_key", "safe_component", "textfile_path", "textfile_problem"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_component(text: str) -> str:
    """``text`` made safe as one path component (no '/', no spaces, no shell characters)."""
    cleaned = _UNSAFE.sub("_", text).strip(".") or "_"
    return cleaned[:100]


def db_key(job_id: str, task: int | str | None) -> str:
    """``<job>_<task>``: the folder of one array task's databases (task 0 for a plain job)."""
    return f"{safe_component(str(job_id))}_{0 if task is None else safe_component(str(task))}"


#: File name of the live database in its node-local folder (:class:`NodeFolder`).
LOCAL_DB_NAME = "metrics.db"
_NODE_FOLDER = "aeth-"


# -- private folders on shared scratch ---------------------------------------------------------------
def user_scratch(scratch: str) -> str:
    """This user's folder under a node-local scratch folder (``<scratch>/aetherium-<uid>``): every
    node folder and socket folder of the user lives in it, so another user can neither plant nor
    take over one (see :func:`private_folder`)."""
    return os.path.join(scratch, f"aetherium-{os.getuid()}")


def not_private(path: str) -> str | None:
    """Why ``path`` is not a folder only this user can use (None: it is one). ``lstat``: a symbolic
    link is never accepted, only a real folder owned by this uid that nobody else can enter."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "it does not exist"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid != os.getuid():
        return f"it belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    if st.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700 (others can enter it)"
    return None


def private_folder(path: str, *, with_parent: bool = False) -> str:
    """Create ``path`` with mode 0700, or accept an existing one that :func:`not_private` accepts;
    otherwise raise :class:`~aetherium_hpc.errors.UnsafeFolderError` in one line. ``with_parent``:
    the folder above it first (this user's folder of :func:`user_scratch`). Returns ``path``."""
    from .errors import UnsafeFolderError

    if with_parent:
        private_folder(os.path.dirname(path))

    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeFolderError(f"{path}: cannot create the folder ({exc.strerror}); set AETHERIUM_LOCAL_DIR "
                                "to a node-local folder of yours") from exc  # fmt: skip
    why = not_private(path)
    if why is not None:
        raise UnsafeFolderError(
            f"{path}: refused: {why}; another user may have made it in advance. Remove it, or set "
            "AETHERIUM_LOCAL_DIR to a node-local folder of yours"
        )
    return path


#: The key of a job's config snapshot (``job_rows.config``) that holds its run directory, so that a
#: source names its run wherever its rows go (copies, merges, a central store): :meth:`RunLayout.run_of`.
SNAPSHOT_RUN_KEY = "run"


@dataclass(frozen=True)
class NodeFolder:
    """Node-local folder of one (job, task, node) on scratch, and the live database in it.

    Its name is derived from (job, task, node) only, so that every task of the job on this node
    finds it; kept short, as the store puts its AF_UNIX socket (107 bytes at most) beside the
    database when the path allows. Made with :meth:`RunLayout.node_folder`.
    """

    path: str

    @classmethod
    def of(cls, scratch: str, key: str, node: str) -> NodeFolder:
        """The folder of a :func:`db_key` and a node (as in a run's ``db/<key>/<node>.db``)."""
        return cls(os.path.join(user_scratch(scratch), f"{_NODE_FOLDER}{key}-{safe_component(node)[:40]}"))

    def create(self) -> NodeFolder:
        """Make the folder and this user's folder above it private (0700, checked): see :func:`private_folder`."""
        private_folder(self.path, with_parent=True)
        return self

    @property
    def database(self) -> str:
        """The live database of the task on this node."""
        return os.path.join(self.path, LOCAL_DB_NAME)

    @staticmethod
    def live_databases(scratch: str, job_id: str) -> list[tuple[str, str, str]]:
        """``(key, node, live database)`` of every task of ``job_id`` with a live database under ``scratch``."""
        found = []
        base = user_scratch(scratch)
        if not_private(base) is not None:  # none of this user's, or not one to trust
            return []
        pattern = os.path.join(glob.escape(base), f"{_NODE_FOLDER}{glob.escape(job_id)}_*-*", LOCAL_DB_NAME)
        for live in glob.glob(pattern):
            key, _, node = os.path.basename(os.path.dirname(live))[len(_NODE_FOLDER) :].rpartition("-")
            found.append((key, node, live))
        return found


class _RunPath:
    """A file or folder of a run directory, read as an attribute of its :class:`RunLayout`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, layout: RunLayout, owner: type[RunLayout] | None = None) -> Path:
        return layout.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunLayout:
    """The files of one run directory; builds paths, creates only what it is asked to."""

    root: Path

    #: the resolved configuration (every key, effective values)
    config_path = _RunPath("config.yaml")
    #: backend and job ids of the submission (for ``status``)
    jobs_path = _RunPath("jobs.json")
    #: submitit's pickles, sbatch scripts and its own logs
    submitit_dir = _RunPath("submitit")
    #: aetherium-hpc's notes (e.g. the rendered sbatch script)
    logs_dir = _RunPath("logs")
    #: copy of the job's sbatch script, for an array its first sbatch's (submitit keeps them under submitit/)
    sbatch_path = _RunPath("logs", "job.sbatch")
    #: ``db/<job>_<task>/<node>.db``: one database per array task and node
    db_dir = _RunPath("db")
    #: ``merged.db``: where ``merge RUN_DIR`` and ``report RUN_DIR`` put the run's merged database
    merged_path = _RunPath("merged.db")

    @classmethod
    def new(cls, base: str | os.PathLike[str], name: str, now: datetime.datetime | None = None) -> RunLayout:
        """A fresh run directory ``<base>/<name>-<timestamp>-<4 hex>`` (created, with its folders)."""
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        base_path = Path(base).expanduser().absolute()
        for _ in range(100):
            root = base_path / f"{safe_component(name)}-{stamp}-{secrets.token_hex(2)}"
            try:
                root.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            layout = cls(root)
            layout.create()
            return layout
        raise FileExistsError(f"could not make a fresh run directory under {base_path}")

    def create(self) -> None:
        for folder in (self.root, self.submitit_dir, self.logs_dir, self.db_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def record(self) -> dict[str, Any] | None:
        """``jobs.json`` (backend, job ids of the submission); None when missing or unreadable."""
        try:
            record = json.loads(self.jobs_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def db_path(self, job: JobIdentity) -> Path:
        """``db/<job>_<task>/<node>.db``: where the database of ``job`` on its node is copied."""
        return self.db_dir / db_key(job.base_job_id, job.task) / f"{safe_component(job.node)}.db"

    @staticmethod
    def node_folder(scratch: str, job: JobIdentity) -> NodeFolder:
        """The node-local folder of ``job`` on its node: where the live database is written."""
        return NodeFolder.of(scratch, db_key(job.base_job_id, job.task), job.node)

    @staticmethod
    def command_db_path(job: JobIdentity, db_dir: str | None = None, run_dir: str | None = None) -> Path:
        """Where ``aetherium-hpc run`` copies the database of ``job``: ``<db_dir>/<node>.db``, else
        ``db_path`` of the run directory ``run_dir``, else ``./aetherium-runs/<job id>/<node>.db``."""
        node = safe_component(job.node)
        if db_dir:
            return Path(db_dir) / f"{node}.db"
        if run_dir:
            return RunLayout(Path(run_dir)).db_path(job)
        return Path("aetherium-runs") / safe_component(job.job_id) / f"{node}.db"

    @staticmethod
    def is_run_dir(path: str | os.PathLike[str]) -> bool:
        """A folder made by ``submit`` (``jobs.json``, or a ``db/`` folder beside ``config.yaml``), or
        by ``aetherium-hpc run`` under ``AETHERIUM_RUN_DIR`` (the sbatch templates'
        ``aetherium-runs/<job id>/``: a ``db/`` folder with ``<job>_<task>/<node>.db`` files)."""
        layout = RunLayout(Path(path))
        if layout.jobs_path.is_file():  # (submitted: its tasks may not have written anything yet)
            return True
        return layout.db_dir.is_dir() and (layout.config_path.is_file() or bool(layout.databases()))

    @staticmethod
    def run_of(config: Any, source_path: str | None = None) -> str | None:
        """The name of the run directory a source belongs to: the ``run`` key of its job's config
        snapshot (:data:`SNAPSHOT_RUN_KEY`, written by the runtime), else a ``source_path`` of the form
        ``<run>/db/<job>_<task>/<node>.db`` (what ``merge`` records); None when neither says."""
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except ValueError:
                config = None
        recorded = config.get(SNAPSHOT_RUN_KEY) if isinstance(config, dict) else None
        if isinstance(recorded, str) and recorded.strip("/"):
            return os.path.basename(os.path.normpath(recorded))
        if source_path:
            parts = Path(source_path).parts
            if len(parts) >= 4 and parts[-3] == "db":
                return parts[-4]
        return None

    def databases(self) -> list[Path]:
        """Every copied-back database of the run (``db/<job>_<task>/<node>.db`` files), sorted."""
        return sorted(p for p in self.db_dir.glob("*/*.db") if p.is_file()) if self.db_dir.is_dir() else []


# -- node_exporter's textfile (monitoring.prometheus_textfile) ---------------------------------------
#: node_exporter's textfile collector reads files of this suffix only.
PROM_SUFFIX = ".prom"
#: What a ``*.prom`` PATH may hold in braces.
PLACEHOLDERS = ("job_id", "node")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def textfile_problem(path: str, *, folder_exists: bool = True) -> str | None:
    """What is wrong with a ``prometheus_textfile`` PATH, as ``problem; fix`` (None: nothing).

    The form is checked everywhere; ``folder_exists`` also asks that its folder exist and be
    writable -- only where the file will be written (the node)."""
    if not path.strip():
        return "must not be empty; give the folder node_exporter reads (--collector.textfile.directory)"
    unknown = [p for p in _PLACEHOLDER_RE.findall(path) if p not in PLACEHOLDERS]
    if unknown:
        return (
            f"unknown placeholder {{{unknown[0]}}}; use " + " or ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            + ", or give a folder (the file is then named by job and node)"
        )  # fmt: skip
    is_file = path.endswith(PROM_SUFFIX)
    if not is_file and _PLACEHOLDER_RE.search(path):
        return f"placeholders only go in a file name ending in {PROM_SUFFIX}; give a folder, or a path like DIR/aetherium_{{job_id}}.prom"
    if _PLACEHOLDER_RE.search(os.path.dirname(path)):
        return "placeholders only go in the file name, not in its folder; e.g. DIR/aetherium_{job_id}_{node}.prom"
    if is_file and os.path.isdir(path):
        return f"is a folder, but ends in {PROM_SUFFIX}; give the folder without the {PROM_SUFFIX} name, or a file name inside it"
    if not is_file and os.path.exists(path) and not os.path.isdir(path):
        return f"is a file not ending in {PROM_SUFFIX} (node_exporter reads *{PROM_SUFFIX} files only); give its folder instead"
    if folder_exists:
        folder = (os.path.dirname(path) or ".") if is_file else path
        if not os.path.isdir(folder):
            return (
                f"folder {folder} does not exist on this node; create it (the folder node_exporter's "
                "--collector.textfile.directory names) or point the key at an existing one"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"folder {folder} is not writable by this user; make it writable (e.g. chmod 1777) or use another"
    return None


def textfile_path(path: str, job: JobIdentity) -> str:
    """The file a job writes for ``path``: inside a folder, ``aetherium_<job_id>_<node>.prom``;
    a ``*.prom`` path with its placeholders replaced (by names safe in a file name)."""
    values = {"job_id": safe_component(job.job_id), "node": safe_component(job.node or job.hostname or "node")}
    if path.endswith(PROM_SUFFIX):
        return _PLACEHOLDER_RE.sub(lambda m: values[m[1]], path)
    return os.path.join(path, f"aetherium_{values['job_id']}_{values['node']}{PROM_SUFFIX}")


# -- writing a file whole ------------------------------------------------------------------------
@contextmanager
def replaced_atomically(path: str) -> Iterator[str]:
    """A fresh file beside ``path`` (an unpredictable name, made with O_EXCL) to write; it becomes
    ``path`` (one rename) when the block ends, and is removed when the block fails: a write that
    fails leaves no partial file. The file gets the mode a new file gets (the umask's)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, part = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".part")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(part, 0o666 & ~umask)
        yield part
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.unlink(part)
