"""The one place that names the files and folders of a run.

A run directory (one per ``aetherium-hpc submit``)::

    <run_dir>/<name>-<YYYYmmdd-HHMMSS>-<4 hex>/
        config.yaml                 resolved configuration (every key, effective values)
        jobs.json                   backend and job ids of the submission (for ``status``)
        submitit/                   submitit's pickles, sbatch scripts and its own logs
        logs/                       aetherium-hpc's notes (e.g. the rendered sbatch script)
        db/<job>_<task>/<node>.db   one database per array task (0 for a plain job) and node

Inside a job, the live database and its socket sit on node-local scratch, in a folder whose
name is derived from (job, task, node) only, so that every ``srun`` task of the node finds it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunLayout", "db_key", "local_store_dir", "safe_component"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_component(text: str) -> str:
    """``text`` made safe as one path component (no '/', no spaces, no shell characters)."""
    cleaned = _UNSAFE.sub("_", text).strip(".") or "_"
    return cleaned[:100]


def db_key(job_id: str, task: int | str | None) -> str:
    """``<job>_<task>``: the folder of one array task's databases (task 0 for a plain job)."""
    return f"{safe_component(str(job_id))}_{0 if task is None else safe_component(str(task))}"


#: File name of the live database in its node-local folder (:func:`local_store_dir`).
LOCAL_DB_NAME = "metrics.db"


def local_store_dir(scratch: str, job_id: str, task: int | str | None, node: str) -> str:
    """Node-local folder of the live database and the socket of (job, task, node).

    Deterministic, so that other tasks of the same job on this node find the socket.
    Kept short: an AF_UNIX socket path must fit in 107 bytes.
    """
    return local_store_dir_of_key(scratch, db_key(job_id, task), node)


def local_store_dir_of_key(scratch: str, key: str, node: str) -> str:
    """:func:`local_store_dir` of a :func:`db_key` already made (a run's ``db/<key>/<node>.db``)."""
    return os.path.join(scratch, f"aeth-{key}-{safe_component(node)[:40]}")


@dataclass(frozen=True)
class RunLayout:
    """The files of one run directory; builds paths, creates only what it is asked to."""

    root: Path

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

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def jobs_path(self) -> Path:
        return self.root / "jobs.json"

    def record(self) -> dict[str, Any] | None:
        """``jobs.json`` (backend, job ids of the submission); None when missing or unreadable."""
        try:
            record = json.loads(self.jobs_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @property
    def submitit_dir(self) -> Path:
        return self.root / "submitit"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def sbatch_path(self) -> Path:
        """Copy of the rendered sbatch script (submitit keeps its own under submitit/)."""
        return self.logs_dir / "job.sbatch"

    @property
    def db_dir(self) -> Path:
        return self.root / "db"

    def db_path(self, job_id: str, task: int | str | None, node: str) -> Path:
        """``db/<job>_<task>/<node>.db``."""
        return self.db_dir / db_key(job_id, task) / f"{safe_component(node)}.db"

    @property
    def merged_path(self) -> Path:
        """``merged.db``: where ``merge RUN_DIR`` and ``report RUN_DIR`` put the run's merged database."""
        return self.root / "merged.db"

    @staticmethod
    def is_run_dir(path: str | os.PathLike[str]) -> bool:
        """A folder made by ``submit`` (a ``db/`` folder beside ``config.yaml`` or ``jobs.json``)."""
        p = Path(path)
        return (p / "db").is_dir() and ((p / "config.yaml").is_file() or (p / "jobs.json").is_file())

    def databases(self) -> list[Path]:
        """Every copied-back database of the run, sorted."""
        return sorted(self.db_dir.glob("*/*.db")) if self.db_dir.is_dir() else []
