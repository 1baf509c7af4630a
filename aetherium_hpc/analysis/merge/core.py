"""``merge``: the steps of a merge in order (the rules are in :mod:`.`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from ...scheduler import SLURM_TIMEOUT_S as SACCT_TIMEOUT_S
from .copy import INPUTS_PER_COMMIT, merge_group
from .fingerprint import Present
from .inputs import MergeInputError, PathLike, collect_inputs
from .lock import output_lock
from .output import check_folder, deferred_index, open_output
from .progress import Progress
from .result import MergeResult
from .unfinished import name_tasks_without_database, resolve_unfinished


def merge(
    inputs: Sequence[PathLike],
    output: PathLike,
    *,
    progress: bool | None = None,
    lock_timeout: float | None = None,
    resolve_timeout: float = SACCT_TIMEOUT_S,
) -> MergeResult:
    """Merge the databases ``inputs`` (files or folders) into ``output``; see :mod:`aetherium_hpc.analysis.merge`.

    Raises :class:`~.inputs.MergeInputError` for a path that does not exist and
    :class:`~...errors.SchemaError` when ``output`` exists and is not an aetherium-hpc database of
    this schema; a broken *input* is skipped and listed in :attr:`MergeResult.skipped`. Waits up
    to ``lock_timeout`` seconds (:data:`~.lock.LOCK_TIMEOUT_S`) for another merge into ``output``,
    then raises :class:`~...errors.StoreError`; ``resolve_timeout`` bounds each Slurm query about
    unfinished jobs.
    """
    started = time.perf_counter()
    files = collect_inputs(inputs, output)
    if not files:
        raise MergeInputError("no input databases: pass database files or run directories (the output is not an input)")
    result = MergeResult(output=os.path.abspath(os.fspath(output)), inputs=files)
    check_folder(result.output)
    # One merge at a time per output: the idempotency check and the copies must see each other.
    with output_lock(result.output, lock_timeout, notify=sys.stderr):
        _merge_locked(files, result, progress, resolve_timeout)
    result.seconds = time.perf_counter() - started
    return result


def _merge_locked(files: list[str], result: MergeResult, progress: bool | None, resolve_timeout: float) -> None:
    conn = open_output(result.output)
    bar = Progress.for_inputs(len(files), progress)
    try:
        present = Present.read(conn)
        with deferred_index(conn, len(files)):
            for i in range(0, len(files), INPUTS_PER_COMMIT):
                group = files[i : i + INPUTS_PER_COMMIT]
                merge_group(conn, group, result, present)
                bar.update(i + len(group), group[-1])
        bar.close()
        resolve_unfinished(conn, result, resolve_timeout)
        name_tasks_without_database(conn, result, resolve_timeout)
    finally:
        bar.close()
        conn.close()
