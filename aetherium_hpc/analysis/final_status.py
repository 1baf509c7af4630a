"""What became of a job whose database still says ``running``.

A job that is SIGKILLed, killed by the OOM killer or loses its node never writes its final
status: the ``jobs`` row of the database copied back to the run directory says ``running``
for ever. ``status``, ``merge`` and ``report`` pass such rows through :func:`resolve`:

* **Slurm jobs** (the run's ``jobs.json`` says slurm, the row's configuration says
  ``backend: slurm``, or ``aetherium-hpc run`` ran with a Slurm job id): accounting is asked
  once for all of them (:func:`aetherium_hpc.scheduler.sacct_figures`; array tasks are ``<array>_<task>``).
  A final state (``OUT_OF_MEMORY``, ``NODE_FAIL``, ``CANCELLED``, ``TIMEOUT``, ``FAILED``,
  ``PREEMPTED``, ``BOOT_FAIL``, ``DEADLINE``, ``COMPLETED`` ...) is shown in lower case, with
  sacct's exit code and end time; a live state (``RUNNING``, ``PENDING``, ``REQUEUED`` ...)
  leaves ``running``. An accounting row is used only when its start and end fit the row's
  start time (job ids restart on a new cluster). No answer from accounting: ``squeue`` --
  still queued is ``running``, gone is ``lost``.
* **Local jobs** (submitit's local backend: the job id is the job's process id; for a local
  array the process ids are in ``jobs.json``; ``aetherium-hpc run`` outside Slurm:
  ``local<pid>``): never sent to Slurm. On the host that ran it (``sources.hostname``), a
  process with that id that started before the job's start time means ``running``; none, a
  zombie, or a younger process (the id was reused) means ``lost``.
* Nothing can be asked (another host, no Slurm commands answer, no process id known):
  ``unknown``, with the reason -- never ``running``.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import RunLayout
from ..scheduler import SLURM_TIMEOUT_S as SACCT_TIMEOUT_S
from ..scheduler import is_slurm_id, sacct_figures, squeue_states

#: The status a job writes when it starts; the only one :func:`resolve` looks at.
RUNNING = "running"
#: The job is gone and nothing recorded how it ended.
LOST = "lost"
#: Whether the job still runs cannot be found out from here.
UNKNOWN = "unknown"
#: An attempt that never wrote its end, of a task a later attempt shows was requeued.
REQUEUED = "requeued"
#: Slurm states of a job that has not ended (sacct and squeue spellings).
SLURM_ALIVE = frozenset({
    "RUNNING", "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING",
    "STAGE_OUT", "CONFIGURING", "COMPLETING", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD",
})  # fmt: skip
#: Final states of a whole job (allocation) that squeue's answer can be stored with: for any
#: other (COMPLETED, FAILED: the batch script's exit) accounting may name a step that ended worse.
#: A job that COMPLETED after one of its steps was killed is shown with that step's state, as a
#: job script may go on and end normally after the step that ran aetherium-hpc was killed.
JOB_LEVEL = frozenset({
    "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "CANCELLED", "REVOKED",
})  # fmt: skip
#: Seconds of clock difference allowed when matching accounting or process start times to a row.
CLOCK_SLACK_S = 300.0
#: A process must have started at most this long after the row's start time to be the job.
PROCESS_SLACK_S = 5.0
_LOCAL_ID = re.compile(r"^local(\d+)$")


@dataclass(frozen=True)
class OpenJob:
    """A ``jobs`` row that says ``running``, with what is known to check it."""

    key: Hashable
    job_id: str | None
    slurm_id: str | None  # how sacct / squeue name it: <array job>_<task>, else the job id
    cluster: str | None  # slurm | local | debug; None when it cannot be told
    pid: int | None = None  # the job's process (local jobs)
    hostname: str | None = None
    start_time: float | None = None
    attempt: int = 0  # which run of a requeued job the row is (SLURM_RESTART_COUNT)


@dataclass(frozen=True)
class Resolved:
    """What :func:`resolve` found for one :class:`OpenJob`."""

    status: str  # running | a Slurm state in lower case | lost | unknown | requeued
    how: str  # sacct | squeue | process | "" (nothing could be asked)
    detail: str  # one line: what was asked and what it said
    exit_code: int | None = None
    end_time: float | None = None
    #: False when a better answer is expected soon: the controller's COMPLETED / FAILED of a job
    #: that accounting does not have yet (its steps, which may have been killed, are not known).
    settled: bool = True

    @property
    def final(self) -> bool:
        """True when the job has ended."""
        return self.status not in (RUNNING, UNKNOWN)


#: An earlier attempt of a task whose later attempt is in the same database: it ended (Slurm
#: requeued it) without writing its status; accounting speaks of the last attempt only.
LATER_ATTEMPT = Resolved(
    REQUEUED, "a later attempt", "resolved after the fact: a later attempt of the task followed (Slurm requeued it); "
    "this one ended without writing its status",
)  # fmt: skip


# -- telling Slurm jobs from local ones ------------------------------------------------------------
def run_record(
    db_path: str | Path | None, cache: dict[str, dict[str, Any] | None] | None = None
) -> dict[str, Any] | None:
    """``jobs.json`` of the run directory holding ``<run>/db/<job>_<task>/<node>.db``, if any."""
    if not db_path:
        return None
    p = Path(db_path)
    if p.parent.parent.name != "db":
        return None
    layout = RunLayout(p.parent.parent.parent)
    key = str(layout.jobs_path)
    if cache is not None and key in cache:
        return cache[key]
    record = layout.record()
    if cache is not None:
        cache[key] = record
    return record


def slurm_name(job_id: Any, array_job_id: Any, array_task_id: Any) -> str | None:
    """How Slurm names a task: ``<array job>_<task>`` for array tasks, else the job id."""
    name: str | None = f"{array_job_id}_{array_task_id}" if array_job_id and array_task_id is not None else None
    if name is None and job_id is not None:
        name = str(job_id)
    return name if is_slurm_id(name) else None


def task_name(job_id: Any, array_job_id: Any, array_task_id: Any) -> str:
    """How ``jobs.json`` names a task: ``<array job>_<task>`` for array tasks (local ones too), else the job id."""
    return f"{array_job_id}_{array_task_id}" if array_job_id and array_task_id is not None else str(job_id)


def submitted_tasks(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, cluster)`` of every task a run submitted, from its ``jobs.json``."""
    cluster = record.get("cluster")
    ids = [str(j) for j in record.get("job_ids") or []]
    arrays = [str(a) for a in record.get("array_job_ids") or [] if a]
    if cluster == "local" and arrays:  # the ids are the tasks' process ids; rows name the tasks <array>_<task>
        return [(f"{arrays[0]}_{i}", "local") for i in range(len(ids))]
    return [(j, str(cluster)) for j in ids] if cluster in ("slurm", "local") else []


def tasks_without_database(
    records: Iterable[dict[str, Any]], present: set[str], sacct: dict[str, Any] | None = None,
    timeout: float = SACCT_TIMEOUT_S,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every task the runs of ``records`` submitted that left no database (none of ``present``, the
    names of :func:`task_name`), each with what Slurm accounting says of it (``sacct``: an answer
    already fetched that asked for them too; else asked once here): ``{"task", "state", "detail"}``."""
    missing = [(name, cluster) for r in records for name, cluster in submitted_tasks(r) if name not in present]
    slurm = [name for name, cluster in missing if cluster == "slurm"]
    if slurm and sacct is None:
        sacct = sacct_figures(slurm, timeout=timeout)
    rows = {str(r["job"]): r for r in (sacct or {}).get("rows", [])}
    unasked = (sacct or {}).get("why") if not (sacct or {}).get("rows") else None
    out = []
    for name, cluster in missing:
        state = str(rows.get(name, {}).get("state") or "")
        if state:
            detail = f"no database; sacct says {state}"
        elif cluster != "slurm":
            detail = "no database (a local task: it did not start, or was killed before its first copy)"
        elif unasked and "knows none" not in unasked:
            detail = f"no database; Slurm cannot be asked ({unasked})"
        else:  # an array task cancelled while it waited is never written to accounting
            detail = "no database; it never started (Slurm accounting has no record of it)"
        out.append({"task": name, "state": state.split()[0].lower() if state else None, "detail": detail})
    return out


def classify(
    job_id: Any, array_task_id: Any, config: Any, record: dict[str, Any] | None
) -> tuple[str | None, int | None]:
    """``(cluster, pid)`` of a job: ``slurm``, ``local``, ``debug`` or None, and a local job's process id."""
    jid = "" if job_id is None else str(job_id)
    m = _LOCAL_ID.match(jid)
    if m:  # `aetherium-hpc run` outside Slurm
        return "local", int(m.group(1))
    cluster = record.get("cluster") if record else None
    if cluster not in ("slurm", "local", "debug"):
        conf = _config(config)
        backend = conf.get("backend") if conf is not None else None
        if backend in ("slurm", "local", "debug"):
            cluster = backend
        elif conf is not None and "backend" not in conf and "command" in conf and is_slurm_id(jid):
            cluster = "slurm"  # `aetherium-hpc run` with a Slurm job id: outside Slurm it is local<pid>
        else:
            cluster = None
    pid = None
    if cluster == "local":
        if jid.isdigit():
            pid = int(jid)
        elif record and array_task_id is not None:  # local array: <submitter>_<task>; pids in jobs.json
            ids = record.get("job_ids") or []
            task = int(array_task_id)
            if 0 <= task < len(ids) and str(ids[task]).isdigit():
                pid = int(ids[task])
    return cluster, pid


def _config(config: Any) -> dict[str, Any] | None:
    if isinstance(config, dict):
        return config
    if isinstance(config, str):
        try:
            parsed = json.loads(config)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def open_job(
    key: Hashable,
    row: dict[str, Any],
    record: dict[str, Any] | None,
    hostname: str | None = None,
) -> OpenJob:
    """An :class:`OpenJob` from a ``jobs`` row (job_id, array_job_id, array_task_id, start_time, config)."""
    cluster, pid = classify(row.get("job_id"), row.get("array_task_id"), row.get("config"), record)
    slurm_id = slurm_name(row.get("job_id"), row.get("array_job_id"), row.get("array_task_id"))
    return OpenJob(
        key=key,
        job_id=None if row.get("job_id") is None else str(row["job_id"]),
        slurm_id=slurm_id if cluster in ("slurm", None) else None,
        cluster=cluster,
        pid=pid,
        hostname=hostname,
        start_time=row.get("start_time"),
        attempt=int(row.get("attempt") or 0),
    )


# -- resolving -----------------------------------------------------------------------------------------
def resolve(
    jobs: Sequence[OpenJob],
    *,
    sacct: dict[str, Any] | None = None,
    squeue: dict[str, Any] | None = None,
    timeout: float = SACCT_TIMEOUT_S,
) -> dict[Hashable, Resolved]:
    """The truth about every job of ``jobs`` (see the module docstring), by key.

    ``sacct`` / ``squeue``: answers already fetched (:func:`aetherium_hpc.scheduler.sacct_figures`,
    :func:`aetherium_hpc.scheduler.squeue_states`) so that a caller that asked Slurm does not ask twice;
    otherwise each is asked at most once here, for all jobs together, within ``timeout``."""
    out: dict[Hashable, Resolved] = {}
    slurmish = [j for j in jobs if j.slurm_id and j.cluster in ("slurm", None)]
    if slurmish and sacct is None:
        sacct = sacct_figures([j.slurm_id for j in slurmish], timeout=timeout)
    by_job = {str(r["job"]): r for r in (sacct or {}).get("rows", [])}
    sacct_why = (sacct or {}).get("why") or "accounting has no record of the job"
    left: list[tuple[OpenJob, dict[str, Any] | None]] = []  # with sacct's row when it says the job lives
    for j in slurmish:
        row = by_job.get(str(j.slurm_id))
        if row is not None and j.attempt < (row.get("requeues") or 0):  # sacct's row is a later attempt's
            out[j.key] = Resolved(
                REQUEUED, "sacct",
                f"resolved after the fact: sacct says {j.slurm_id} was requeued after attempt {j.attempt + 1}, "
                "which ended without writing its status",
            )  # fmt: skip
            continue
        if row is not None and not _fits(row, j.start_time):
            row = None  # another job of the same id (ids restart on a new cluster)
        res = _from_slurm(str(j.slurm_id), str(row.get("state") or ""), "sacct", row) if row is not None else None
        if res is not None and res.final:
            out[j.key] = res
        else:  # alive for accounting (which may lag the controller), or unknown to it: ask the controller
            left.append((j, row))
    if left and squeue is None:
        squeue = squeue_states([j.slurm_id for j, _ in left], timeout=timeout)
    queue = (squeue or {}).get("jobs")
    why_q = (squeue or {}).get("why", "squeue gave no answer")
    for j, row in left:
        sid = str(j.slurm_id)
        if queue is not None and sid in queue:
            out[j.key] = _from_slurm(sid, str(queue[sid]), "squeue", None)
        elif row is not None:  # accounting says it lives
            if queue is None:
                out[j.key] = Resolved(RUNNING, "sacct", f"sacct says {sid} is {row.get('state')}")
            else:
                out[j.key] = Resolved(
                    LOST, "squeue",
                    f"resolved after the fact: sacct still says {sid} is {row.get('state')} but the controller "
                    "no longer knows it; it ended without writing its status",
                )  # fmt: skip
        elif queue is not None and (j.cluster == "slurm" or not _can_check_here(j)):
            if j.cluster == "slurm":
                out[j.key] = Resolved(
                    LOST, "squeue",
                    f"resolved after the fact: job {sid} has left the queue and accounting has no final state "
                    f"({sacct_why}); it ended without writing its status",
                )  # fmt: skip
            else:
                out[j.key] = Resolved(
                    UNKNOWN, "", f"Slurm does not know {sid} and it ran on {j.hostname or 'another host'}"
                )
        elif j.cluster == "slurm":
            out[j.key] = Resolved(UNKNOWN, "", f"Slurm cannot be asked about {sid} (sacct: {sacct_why}; {why_q})")
        else:  # not known to Slurm, or Slurm cannot be asked: the job id may be a local process id
            out[j.key] = _from_process(j, int(j.job_id) if j.job_id and j.job_id.isdigit() else None)
    for j in jobs:
        if j.key in out:
            continue
        if j.cluster == "local":
            out[j.key] = _from_process(j, j.pid)
        elif j.cluster == "debug":
            out[j.key] = Resolved(UNKNOWN, "", "a debug-backend job runs inside the submitting process; not checked")
        else:
            out[j.key] = Resolved(UNKNOWN, "", f"job id {j.job_id!r} is neither a Slurm job nor a local process")
    return out


def resolve_rows(
    rows: Iterable[tuple[Hashable, dict[str, Any], dict[str, Any] | None, str | None]],
    **kwargs: Any,
) -> dict[Hashable, Resolved]:
    """:func:`resolve` for ``(key, jobs row, run record, hostname)`` of the rows that say ``running``."""
    jobs = [open_job(key, row, record, host) for key, row, record, host in rows if row.get("status") == RUNNING]
    return resolve(jobs, **kwargs) if jobs else {}


def _fits(row: dict[str, Any], start_time: float | None) -> bool:
    """An accounting row is this job's: it started before the row's start and did not end before it."""
    if start_time is None:
        return True
    start, end = row.get("start"), row.get("end")
    if start is not None and start > start_time + CLOCK_SLACK_S:
        return False
    return not (end is not None and end < start_time - CLOCK_SLACK_S)


def _from_slurm(job: str, state: str, how: str, row: dict[str, Any] | None) -> Resolved:
    """A Slurm state (``CANCELLED by 0``, ``OUT_OF_MEMORY`` ...) as what is shown; ``row``: sacct's."""
    raw = state.strip()
    word = raw.split()[0] if raw else ""
    if not word or word in SLURM_ALIVE:
        return Resolved(RUNNING, how, f"{how} says {job} is {raw or 'in an unknown state'}")
    exit_text = str((row or {}).get("exit_code") or "")
    end = (row or {}).get("end")
    said = f"{how} says {job} ended {raw}" + (f" (exit {exit_text})" if exit_text else "")
    step = _ended_step(row) if row is not None else None
    if step is not None:
        step_exit = str(step.get("exit_code") or "")
        said += f", step {job}.{step['step']} {step['state']}" + (f" (exit {step_exit})" if step_exit else "")
        if word == "COMPLETED":  # the script went on and ended well after the step running aetherium-hpc was killed
            word, exit_text, end = str(step["state"]).split()[0], step_exit, step.get("end") or end
    return Resolved(
        word.lower(),
        how,
        f"resolved after the fact: {said}; the job did not write its status",
        exit_code=_exit_code(exit_text) if exit_text else None,
        end_time=end,
        settled=row is not None or word in JOB_LEVEL,
    )


def _ended_step(row: dict[str, Any]) -> dict[str, Any] | None:
    """The step that ended worst (not COMPLETED), the latest first; srun steps before the batch step."""
    bad = []
    for st in row.get("steps") or []:
        word = (str(st.get("state") or "").split() or [""])[0]
        if st.get("step") == "extern" or not word or word == "COMPLETED" or word in SLURM_ALIVE:
            continue
        bad.append((st.get("step") != "batch", st.get("end") or 0.0, st))
    return max(bad, key=lambda b: (b[0], b[1]))[2] if bad else None


def _exit_code(text: str) -> int | None:
    """sacct's ``code:signal``: 128 + the signal when a signal ended it (as a shell reports it),
    else the code; None for Slurm's own markers (``0:125`` of an OOM kill is no signal)."""
    code, _, sig = text.partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None
    if s:
        return 128 + s if s < 65 else None
    return c


def _this_host(hostname: str | None) -> bool:
    if not hostname:
        return False
    here = socket.gethostname()
    return hostname == here or hostname.split(".")[0] == here.split(".")[0]


def _can_check_here(j: OpenJob) -> bool:
    return _this_host(j.hostname) and j.job_id is not None and j.job_id.isdigit()


def _from_process(j: OpenJob, pid: int | None) -> Resolved:
    if pid is None:
        return Resolved(UNKNOWN, "", f"the process id of local job {j.job_id} is not known (no jobs.json found)")
    if not _this_host(j.hostname):
        return Resolved(UNKNOWN, "", f"job {j.job_id} ran on host {j.hostname or '?'}; check it there")
    alive, why = _process_alive(pid, j.start_time)
    if alive:
        return Resolved(RUNNING, "process", f"process {pid} still runs on {j.hostname}")
    return Resolved(
        LOST, "process",
        f"resolved after the fact: process {pid} is gone from {j.hostname} ({why}) and the job did not write "
        "its status (killed, or out of memory)",
    )  # fmt: skip


def _process_alive(pid: int, start_time: float | None) -> tuple[bool, str]:
    """Whether ``pid`` is a live process that may be the job (started before the job's start)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False, "a zombie: it has exited"
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return False, "no such process"
    except psutil.AccessDenied:
        return True, ""
    if start_time is not None and created > start_time + PROCESS_SLACK_S:
        return False, "its id now belongs to a younger process"
    return True, ""
