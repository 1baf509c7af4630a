"""Merge many aetherium-hpc databases (one per task and node) into one of the same schema.

Rules (also in docs/REPORT.md):

* **Inputs** are database files or folders (searched recursively for ``*.db``). They are
  opened read-only (``file:...?mode=ro``) and never changed. The output itself is never
  read as an input, so ``merge runs/x -o runs/x/merged.db`` can be run again.
* **Same schema**: the output is created with :func:`...store.schema.create`, so it answers
  the same views and can itself be merged again.
* **Provenance**: every ``sources`` row of an input gets a new ``source_id`` in the output,
  ``source_path`` set to the input file; series, chunks and rows follow with new ids.
* **Idempotent**: a source is identified by ``(job_id, array_job_id, array_task_id, node,
  hostname, attempt, first timestamp)`` and fingerprinted by a hash of that identity, its job
  status row and the counts and last timestamps of its series, chunks and rows. A source
  whose fingerprint is already in the output adds nothing. A source with the same identity but
  a different fingerprint is a newer or older copy of the same database (a checkpoint copy,
  or a merge taken while the job was running): the copy with the later last timestamp (then
  more rows) is kept, the other dropped, so merging again after a job finished updates it.
* **Requeue**: each attempt of a requeued job is a source of its own (``attempt`` is Slurm's
  SLURM_RESTART_COUNT). The same ``(job_id, array_task_id, node)`` with another ``attempt`` is
  another identity, so every attempt is kept once, tagged by its ``attempt`` in ``sources``.
* **Broken inputs** (not SQLite, truncated or corrupt -- ``PRAGMA quick_check`` of every table but
  the chunks, which the copy reads whole: a malformed page there fails it --, foreign
  ``application_id``, another schema version, missing tables) are skipped with a one-line
  reason; the rest is merged and :attr:`MergeResult.exit_code` is 3.
* **Fast**: each input is ATTACHed to the output connection and copied with
  ``INSERT ... SELECT`` and id offsets; up to :data:`INPUTS_PER_COMMIT` inputs share one
  transaction, each in a savepoint of its own (one that fails while copying is rolled back alone).
* **One at a time**: a merge holds ``<output>.lock`` (a :class:`~...store.FileLock`) from before
  it reads the output until it is done, so a second merge into the same file waits (at most
  :data:`LOCK_TIMEOUT_S`, then one line and exit 2) and then finds every source present: two
  merges at once give the result of one. The lock file is removed when the merge ends.
* **Unfinished jobs**: a ``jobs`` row still saying ``running`` after all inputs are in is checked
  (:mod:`..final_status`: sacct once for all Slurm jobs, else squeue; the process of a local job).
  A job that has ended gets Slurm's state (``out_of_memory``, ``node_fail``, ``cancelled`` ...) or
  ``lost`` in its row, ``detail`` saying it was resolved after the fact and from what; table
  ``jobs_resolved`` keeps what the row said before, and the fingerprint uses that, so merging the
  same inputs again adds nothing, while a copy in which the job wrote its own final status
  replaces the resolved one.

One module per step: :mod:`.inputs` (finding and checking inputs), :mod:`.lock`, :mod:`.output`
(opening the output, its deferred index), :mod:`.fingerprint`, :mod:`.copy`, :mod:`.unfinished`,
:mod:`.progress`, :mod:`.result`; :mod:`.core` runs them in order.
"""

from __future__ import annotations

from .copy import INPUTS_PER_COMMIT
from .core import merge
from .inputs import COPY_CHECKED_TABLES, REQUIRED_TABLES, MergeInputError, check_input, collect_inputs
from .lock import LOCK_TIMEOUT_S, output_lock
from .output import DEFER_INDEX_MIN_INPUTS, DEFERRED_INDEX, open_output
from .progress import PROGRESS_MIN_INPUTS
from .result import SKIPPED_EXIT_CODE, MergeResult, Skipped
from .unfinished import RESOLVED_TABLE

__all__ = [
    "COPY_CHECKED_TABLES",
    "DEFERRED_INDEX",
    "DEFER_INDEX_MIN_INPUTS",
    "INPUTS_PER_COMMIT",
    "LOCK_TIMEOUT_S",
    "PROGRESS_MIN_INPUTS",
    "REQUIRED_TABLES",
    "RESOLVED_TABLE",
    "SKIPPED_EXIT_CODE",
    "MergeInputError",
    "MergeResult",
    "Skipped",
    "check_input",
    "collect_inputs",
    "merge",
    "open_output",
    "output_lock",
]
