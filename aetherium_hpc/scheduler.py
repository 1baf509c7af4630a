"""What Slurm's commands say: ``sinfo``, ``scontrol``, ``sacct``, ``squeue``.

The one place that asks Slurm about the cluster and its jobs: whether a controller answers
(``backend: auto``), how large an array may be, which release is installed (the GPU monitor
reads ``SLURM_*_GPUS`` by it), accounting (``sacct``: for ``aetherium-hpc status``, reports,
merges and the final-status check of :mod:`.analysis.final_status`), the queue (``squeue``),
and for the job runtime what a job asked for and when its time is up. Every call is one
subprocess with an argument list (never a shell) and a bounded timeout. A command that cannot
run or fails is a :class:`~.errors.SlurmError` saying why (:func:`sacct_rows` raises it); the
other functions turn it into their answer: a reason, or the value used without one.

A leaf module: it imports neither submitit nor the store, so analysis code reads Slurm through it.
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import SlurmError

#: How long any Slurm command is given to answer.
SLURM_TIMEOUT_S = 10.0
#: Slurm's default MaxArraySize, used when ``scontrol show config`` does not answer.
DEFAULT_MAX_ARRAY_SIZE = 1001
#: The fields of every ``sacct`` call: the allocation line's figures and each step's end.
SACCT_FIELDS = (
    "JobID",
    "State",
    "ExitCode",
    "Elapsed",
    "TotalCPU",
    "ReqMem",
    "AllocCPUS",
    "Timelimit",
    "MaxRSS",
    "NodeList",
    "Start",
    "End",
)
#: Slurm job states after which a job's accounting figures no longer change.
FINAL_STATES = (
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE",
)  # fmt: skip
#: A job that ended less than this long ago may not be in accounting yet (slurmdbd records it a
#: moment after the controller).
ACCOUNTING_LAG_S = 120.0
#: How long a report waits for accounting to catch up with such jobs.
ACCOUNTING_WAIT_S = 30.0
_SLURM_ID = re.compile(r"^\d+(_\d+)?$")


def is_slurm_id(job_id: str | None) -> bool:
    """``123`` or ``123_4``: how sacct and squeue name a job or an array task."""
    return bool(job_id) and _SLURM_ID.match(str(job_id)) is not None


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The finished command (whatever its exit status); :class:`SlurmError` when it cannot be asked."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise SlurmError(f"{argv[0]} cannot run ({exc.strerror})") from None


def _stdout(argv: Sequence[str], timeout: float) -> str:
    """What the command printed when it succeeded; "" when it failed or could not be asked."""
    try:
        proc = _run(argv, timeout)
    except SlurmError:
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _first_line(stderr: str) -> str:
    return (stderr.strip().splitlines() or ["no output"])[0]


# -- the cluster: sinfo, scontrol --------------------------------------------------------------------
def slurm_problem(timeout: float = SLURM_TIMEOUT_S) -> str | None:
    """None when a Slurm controller answers ``sinfo``, else what went wrong."""
    try:
        proc = _run(["sinfo", "-h", "-o", "%P"], timeout)
    except SlurmError as exc:
        return str(exc)
    if proc.returncode != 0:
        return f"no controller answers ({_first_reason(proc.stderr)})"
    return None


def _first_reason(stderr: str) -> str:
    """The first line of a Slurm command's complaint without its ``sinfo: error:`` prefixes, short."""
    for line in stderr.splitlines():
        text = re.sub(r"^(?:\s*(?:sinfo|error|fatal|slurm_load_partitions)\s*:\s*)+", "", line).strip()
        if text:
            return text if len(text) <= 100 else text[:99] + "…"
    return "sinfo failed without a message"


def cluster_max_array_size(timeout: float = SLURM_TIMEOUT_S) -> int:
    """MaxArraySize of ``scontrol show config``, else Slurm's default."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", _stdout(["scontrol", "show", "config"], timeout), re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def slurm_version(timeout: float = 5.0) -> tuple[int, ...] | None:
    """The installed Slurm's release from ``scontrol --version`` (``slurm 23.02.7``), or None."""
    exe = shutil.which("scontrol") or shutil.which("srun")
    if exe is None:
        return None
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", _stdout([exe, "--version"], timeout))
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def job_fields(job_id: str, timeout: float = SLURM_TIMEOUT_S) -> dict[str, str]:
    """``scontrol show job -o JOB`` as key=value pairs; {} when it does not answer."""
    return dict(re.findall(r"(\S+?)=(\S*)", _stdout(["scontrol", "show", "job", "-o", job_id], timeout)))


def job_end_time(job_id: str, timeout: float = SLURM_TIMEOUT_S) -> float | None:
    """When the controller will stop ``job_id`` (``squeue -o %e``); None without a limit or an answer."""
    answer = _stdout(["squeue", "-h", "-j", job_id, "-o", "%e"], timeout).strip()
    try:
        return _dt.datetime.strptime(answer, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:  # no limit ("N/A"), or no answer
        return None


# -- accounting: sacct -------------------------------------------------------------------------------
def _bases(job_ids: Iterable[str]) -> list[str]:
    """The jobs to name on the command line: ``123`` for array task ``123_4`` (every task of it)."""
    return sorted({j.split("_")[0] for j in job_ids})


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    """The one ``sacct`` command line: every line (allocation and steps) of these jobs, and of
    each earlier attempt of a requeued one (``--duplicates``)."""
    return ["sacct", "-j", ",".join(_bases(job_ids)), "--duplicates", "--parsable2", "--noheader",
            "-o", ",".join(SACCT_FIELDS)]  # fmt: skip


def sacct_rows(job_ids: Iterable[str | None], timeout: float = SLURM_TIMEOUT_S) -> list[dict[str, Any]]:
    """One row per Slurm job / array task of ``job_ids``, in sacct's order; :class:`SlurmError`
    says why sacct gave no answer.

    The allocation line gives state, exit code, elapsed, limits, nodes, start and end (Unix
    times); the steps give the peak MaxRSS (``max_rss_mb``) and ``steps`` (step, state, exit
    code, end of each). Ids that are no Slurm ids (a local job's process id) are never sent.
    A requeued job is its last attempt; ``requeues`` counts the attempts before it.
    """
    wanted = sorted({str(j) for j in job_ids if is_slurm_id(j)})
    if not wanted:
        raise SlurmError("no Slurm job ids in this database (local runs)")
    if shutil.which("sacct") is None:
        raise SlurmError("sacct is not installed here")
    proc = _run(sacct_argv(wanted), timeout)
    if proc.returncode != 0:
        raise SlurmError(f"accounting is off or unreachable (sacct: {_first_line(proc.stderr)})")
    jobs: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        values = dict(zip(SACCT_FIELDS, line.split("|"), strict=False))
        job, _, step = values.get("JobID", "").partition(".")
        if job not in wanted and job.split("_")[0] not in wanted:
            continue
        row = jobs.setdefault(job, {"job": job, "max_rss_mb": None, "steps": [], "requeues": 0})
        if not step and "state" in row:  # the next attempt of a requeued job (sacct lists them in order)
            row.update(max_rss_mb=None, steps=[], requeues=row["requeues"] + 1)
        if step:  # batch, extern, 0, 1 ...: what ended each step (a job may complete after its step was killed)
            row["steps"].append({
                "step": step, "state": values.get("State", ""), "exit_code": values.get("ExitCode", ""),
                "end": _epoch(values.get("End", "")),
            })  # fmt: skip
        else:
            row.update(
                state=values.get("State", ""), exit_code=values.get("ExitCode", ""), elapsed=values.get("Elapsed", ""),
                total_cpu=values.get("TotalCPU", ""), req_mem=values.get("ReqMem", ""),
                alloc_cpus=values.get("AllocCPUS", ""), timelimit=values.get("Timelimit", ""),
                nodes=values.get("NodeList", ""), start=_epoch(values.get("Start", "")),
                end=_epoch(values.get("End", "")),
            )  # fmt: skip
        rss = _mb(values.get("MaxRSS", ""))
        if rss is not None and (row["max_rss_mb"] is None or rss > row["max_rss_mb"]):
            row["max_rss_mb"] = rss
    return list(jobs.values())


def sacct_figures(job_ids: Iterable[str | None], timeout: float = SLURM_TIMEOUT_S) -> dict[str, Any]:
    """``{"rows": [...]}``: :func:`sacct_rows` in job and task order, or ``{"rows": [], "why": reason}``."""
    try:
        rows = sacct_rows(job_ids, timeout)
    except SlurmError as exc:
        return {"rows": [], "why": str(exc)}
    if not rows:
        return {"rows": [], "why": "sacct knows none of these jobs (purged, or another cluster)"}
    return {"rows": sorted(rows, key=lambda r: _order(r["job"]))}


def sacct_figures_when_final(
    job_ids: Iterable[str | None],
    ended_recently: Iterable[str],
    wait_s: float = ACCOUNTING_WAIT_S,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """:func:`sacct_figures`, asked again (up to ``wait_s``) while a job of ``ended_recently``
    (ids that ended moments ago) is missing from accounting or not yet in a final state there.
    If accounting does not catch up, the answer carries ``not_final`` saying so."""
    ids = list(job_ids)
    waiting_for = {j for j in ended_recently if is_slurm_id(j)}
    deadline = time.monotonic() + wait_s
    asked_queue = False
    while True:
        figures = sacct_figures(ids)
        if not waiting_for or "why" in figures and "knows none" not in figures["why"]:
            return figures  # nothing to wait for, or accounting cannot be asked at all
        final = {r["job"] for r in figures["rows"] if str(r.get("state", "")).split(" ")[0] in FINAL_STATES}
        missing = sorted(waiting_for - final)
        if missing and not asked_queue:
            # A job that ended within ACCOUNTING_LAG_S is still known to the controller (MinJobAge,
            # 300 s by default): one it does not know is not this cluster's, and no wait brings it.
            asked_queue = True
            known = squeue_states(missing).get("jobs")
            if known is not None:
                waiting_for &= set(known)
                missing = sorted(waiting_for - final)
        if not missing:
            return figures
        if time.monotonic() >= deadline:
            figures["not_final"] = (
                f"accounting had not recorded the end of {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''} after {wait_s:.0f} s; figures are not final: report again later"
            )
            return figures
        time.sleep(poll_s)


# -- the queue: squeue -------------------------------------------------------------------------------
def queue_argv(job_ids: Iterable[str]) -> list[str]:
    """The ``squeue`` command line of :func:`queue_rows`."""
    return ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%M|%N"]


def queue_rows(job_ids: Sequence[str], timeout: float = SLURM_TIMEOUT_S) -> list[dict[str, str]] | None:
    """What the controller lists of ``job_ids`` (pending, running ...; the tasks of an array
    that have not started as one row, ``5_[2-3]``): job, state, elapsed, nodes, in squeue's
    order. None when squeue failed (one unknown job id makes it exit 1)."""
    try:
        proc = _run(queue_argv(job_ids), timeout)
    except SlurmError:
        return None
    if proc.returncode != 0:
        return None
    rows = []
    for line in proc.stdout.strip().splitlines():
        job, state, elapsed, nodes = (line.split("|") + [""] * 4)[:4]
        rows.append({"job": job, "state": state, "elapsed": elapsed, "nodes": nodes})
    return rows


def squeue_states(job_ids: Iterable[str | None], timeout: float = SLURM_TIMEOUT_S) -> dict[str, Any]:
    """``{"jobs": {job: STATE}}`` for the jobs / array tasks the controller still knows
    (``--states=all``: pending, running ..., and for ``MinJobAge`` after the end its final state,
    before accounting may have it), or ``{"jobs": None, "why": reason}`` when squeue cannot be asked.

    A job missing from ``jobs`` while squeue answered has left the controller."""
    wanted = sorted({str(j) for j in job_ids if is_slurm_id(j)})
    if not wanted:
        return {"jobs": {}}
    if shutil.which("squeue") is None:
        return {"jobs": None, "why": "squeue is not installed here"}
    try:
        proc = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(_bases(wanted)), "-o", "%i|%T"], timeout)
    except SlurmError as exc:
        return {"jobs": None, "why": str(exc)}
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():  # the controller knows none of them any more
            return {"jobs": {}}
        return {"jobs": None, "why": f"no controller answers (squeue: {_first_line(proc.stderr)})"}
    jobs: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted or job.split("_")[0] in wanted:
            jobs[job] = state.strip()
    return {"jobs": jobs}


# -- sacct's spellings -------------------------------------------------------------------------------
def _epoch(text: str) -> float | None:
    """sacct's ``2024-05-01T12:00:00`` (local time) as a Unix time; None for Unknown / None / empty."""
    try:
        return _dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def _order(job: str) -> tuple[int, int]:
    base, _, task = job.partition("_")
    return int(base) if base.isdigit() else 0, int(task) if task.isdigit() else -1


def _mb(text: str) -> float | None:
    """sacct sizes (``1234K``, ``12M``, ``1.5G``) in MB."""
    text = text.strip()
    if not text:
        return None
    scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}.get(text[-1].upper())
    try:
        return float(text[:-1]) * scale if scale is not None else float(text) / 2**20
    except ValueError:
        return None
