"""Config -> submitit executor -> jobs (the login-node side of ``aetherium-hpc submit``).

Flow::

    Config --executor_parameters()--> AutoExecutor(cluster from backend).update_parameters(...)
           --submit()/map_array()---> one job, or ONE sbatch array per MaxArraySize tasks
           --> RunLayout: config.yaml, jobs.json, submitit/, logs/, db/

The job runs :class:`aetherium_hpc.runtime.JobRunner`. Nothing here prints; the CLI does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmExecutor

import aetherium_hpc

from .config import Config, yaml_text
from .errors import LaunchError
from .paths import RunLayout
from .runtime.entrypoint import JobRunner

__all__ = [
    "Submission",
    "check_script_path",
    "executor_parameters",
    "max_array_size",
    "render_sbatch",
    "resolve_cluster",
    "submit",
    "wait",
]

#: Slurm's default MaxArraySize, used when ``scontrol show config`` does not answer.
DEFAULT_MAX_ARRAY_SIZE = 1001
SCONTROL_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def resolve_cluster(backend: str) -> str:
    """submitit's executor name for a backend.

    ``auto``: Slurm when its commands are installed *and* a controller answers; otherwise the
    local backend (a workstation with Slurm packages but no cluster is a machine without Slurm).
    """
    if backend != "auto":
        return backend
    cluster = submitit.AutoExecutor.which()
    if cluster == "slurm":
        problem = _slurm_problem()
        if problem is not None:
            log.warning(
                "aetherium-hpc: Slurm is installed but %s; running locally "
                "(backend: local skips this check, backend: slurm submits anyway)",
                problem,
            )
            return "local"
    return cluster


def _slurm_problem(timeout: float = SCONTROL_TIMEOUT_S) -> str | None:
    """None when a Slurm controller answers ``sinfo``, else what went wrong."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {timeout:.0f} s"
    except OSError as exc:
        return f"sinfo cannot run ({exc.strerror})"
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


def executor_parameters(config: Config) -> dict[str, Any]:
    """AutoExecutor parameters (generic names, Slurm-only ones prefixed ``slurm_``)."""
    res, slurm = config.resources, config.slurm
    params: dict[str, Any] = {
        "name": config.name,
        "timeout_min": res.timeout_min,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(slurm, key)
        if value:
            params[f"slurm_{key}"] = value
    params["slurm_signal_delay_s"] = slurm.signal_delay_s
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    if slurm.array_parallelism:
        params["slurm_array_parallelism"] = slurm.array_parallelism
    if slurm.exclusive:
        params["slurm_exclusive"] = True
    if slurm.additional_parameters:
        params["slurm_additional_parameters"] = dict(slurm.additional_parameters)
    return params


def _slurm_names(params: dict[str, Any]) -> dict[str, Any]:
    """AutoExecutor names -> SlurmExecutor names (what AutoExecutor does for cluster='slurm')."""
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    out = SlurmExecutor._convert_parameters(_ScriptSlurmExecutor.__new__(_ScriptSlurmExecutor), generic)
    out.update({k[len("slurm_") :]: v for k, v in params.items() if k.startswith("slurm_")})
    return out


class _ScriptSlurmExecutor(SlurmExecutor):
    """A SlurmExecutor that only renders scripts: usable where srun is absent (dry runs, tests)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def check_script_path(path: Path | str) -> None:
    """Refuse paths that no sbatch script can hold safely: control characters (a newline would
    end an ``#SBATCH`` line) and ``%`` (Slurm expands it in --output/--error)."""
    text = str(path)
    if _CONTROL.search(text):
        raise LaunchError(
            f"run directory {text!r} contains a control character (newline, tab ...); "
            "choose a run_dir without them, e.g. --set run_dir=runs"
        )
    if "%" in text:
        raise LaunchError(
            f"run directory {text!r} contains '%', which Slurm expands in log file names; choose a run_dir without '%'"
        )


def render_sbatch(config: Config, layout: RunLayout, *, python: str | None = None, n_tasks: int | None = None) -> str:
    """The sbatch script submitit would write for ``config`` (an array of ``n_tasks`` if > 1)."""
    check_script_path(layout.root)
    executor = _ScriptSlurmExecutor(layout.submitit_dir, python=python)
    executor.update_parameters(**_slurm_names(executor_parameters(config)))
    n = len(config.array_params()) if n_tasks is None and config.is_array else n_tasks
    if n is not None and n > 1:
        executor.parameters["map_count"] = n
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def max_array_size(config: Config, timeout: float = SCONTROL_TIMEOUT_S) -> int:
    """Most tasks one sbatch array may have: ``slurm.max_array_size``, else MaxArraySize of
    ``scontrol show config``, else Slurm's default."""
    if config.slurm.max_array_size:
        return config.slurm.max_array_size
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


@dataclass
class Submission:
    """What ``submit`` did: where the run lives and which jobs it made."""

    layout: RunLayout
    cluster: str
    jobs: list[Any] = field(default_factory=list)  # submitit Job objects, in task order
    array_job_ids: list[str] = field(default_factory=list)
    report_job: Any = None  # the merge + report job of ``report: {auto: true}``

    @property
    def job_ids(self) -> list[str]:
        return [str(j.job_id) for j in self.jobs]

    def record(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "job_ids": self.job_ids,
            "array_job_ids": self.array_job_ids,
            "report_job_id": None if self.report_job is None else str(self.report_job.job_id),
            "submitted_at": time.time(),
        }


@contextmanager
def _job_environment() -> Iterator[None]:
    """Make this aetherium_hpc importable in the job (sbatch and the local controller copy the
    environment), also when it is not installed but run from a source tree."""
    parent = str(Path(aetherium_hpc.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    parts = [p for p in (old or "").split(os.pathsep) if p]
    if parent not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([parent, *parts])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def check_submission(config: Config, cluster: str, root: Path) -> None:
    """Every check :func:`submit` makes before it submits, creating nothing: ``submit --dry-run``
    makes the same ones, so a configuration the dry run accepts is not refused by the submit."""
    if cluster == "slurm":
        check_script_path(root)
    if cluster == "local" and config.resources.nodes > 1:
        raise LaunchError(
            f"resources.nodes={config.resources.nodes}: the local backend runs on this machine only; "
            "use backend: slurm, or --set resources.nodes=1"
        )
    if cluster == "slurm" and shutil.which("sbatch") is None:
        return  # rendering a script on a machine without Slurm (a dry run): submitit cannot check it here
    with tempfile.TemporaryDirectory(prefix="aetherium-check-") as folder:
        _make_executor(config, Path(folder), cluster)


def _make_executor(config: Config, folder: Path, cluster: str) -> submitit.AutoExecutor:
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**executor_parameters(config))
    except (ValueError, NameError, RuntimeError) as exc:
        raise LaunchError(f"submitit refused the parameters for {cluster}: {str(exc).splitlines()[0]}") from None
    return executor


def submit(config: Config, *, base_dir: str | None = None, sleep: Callable[[float], None] = time.sleep) -> Submission:
    """Make the run directory, submit the job (or array), record the job ids."""
    cluster = resolve_cluster(config.backend)
    base = Path(base_dir or config.run_dir).expanduser().absolute()
    check_submission(config, cluster, base / f"{config.name}-YYYYmmdd-HHMMSS-hhhh")
    layout = RunLayout.new(base, config.name)
    try:
        if cluster == "slurm":
            check_script_path(layout.root)
        return _submit_into(config, layout, cluster, sleep)
    except BaseException:
        # A refused submission leaves no run folder behind -- unless a job was submitted into it.
        if not layout.jobs_path.exists() and not any(layout.submitit_dir.rglob("*_submitted.pkl")):
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def _submit_into(config: Config, layout: RunLayout, cluster: str, sleep: Callable[[float], None]) -> Submission:
    layout.config_path.write_text(
        f"# resolved configuration of {config.source}\n" + yaml_text(config.to_dict()),
        encoding="utf-8",
    )
    executor = _make_executor(config, layout.submitit_dir, cluster)
    # The runner carries the validated config without its array: each task gets (index, its own params).
    runner = JobRunner(config, str(layout.root), local_array_id=str(os.getpid()))
    sub = Submission(layout, cluster)
    try:
        with _job_environment():
            if not config.is_array:
                sub.jobs.append(executor.submit(runner))
            elif cluster == "slurm":
                _submit_slurm_arrays(config, executor, runner, sub)
            else:
                _submit_local_array(config, executor, runner, sub, sleep)
            if config.report.auto and cluster in ("slurm", "local"):
                sub.report_job = _submit_report_job(config, layout, cluster, sub)
    except LaunchError:
        raise
    except (OSError, subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
        raise LaunchError(
            f"submission failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
        ) from None
    if cluster == "slurm":
        script = sorted(layout.submitit_dir.glob("**/*.sh"))
        if script:
            shutil.copyfile(script[-1], layout.sbatch_path)
    layout.jobs_path.write_text(json.dumps(sub.record(), indent=2), encoding="utf-8")
    return sub


def _submit_report_job(config: Config, layout: RunLayout, cluster: str, sub: Submission) -> Any:
    """``report: {auto: true}``: merge + report once every task has ended (afterany on Slurm)."""
    from .analysis.auto import MergeReportJob

    executor = submitit.AutoExecutor(folder=layout.submitit_dir, cluster=cluster)
    params: dict[str, Any] = {"name": f"{config.name}-report", "timeout_min": 60, "nodes": 1,
                              "tasks_per_node": 1, "cpus_per_task": 1}  # fmt: skip
    if cluster == "slurm":
        ids = sub.array_job_ids or sub.job_ids
        params["mem_gb"] = 4
        params["slurm_additional_parameters"] = {"dependency": "afterany:" + ":".join(ids)}
        for key in ("partition", "account", "qos"):
            value = getattr(config.slurm, key)
            if value:
                params[f"slurm_{key}"] = value
        executor.update_parameters(**params)
        return executor.submit(MergeReportJob(str(layout.root)))
    executor.update_parameters(**params)
    pids = [int(j) for j in sub.job_ids if str(j).isdigit()]
    return executor.submit(MergeReportJob(str(layout.root), wait_for_pids=pids))


def _submit_slurm_arrays(config: Config, executor: submitit.AutoExecutor, runner: JobRunner, sub: Submission) -> None:
    params = config.array_params()
    indices = list(range(len(params)))
    size = max(1, max_array_size(config))
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        jobs = executor.map_array(runner, [(i, params[i]) for i in chunk])
        sub.jobs.extend(jobs)
        sub.array_job_ids.append(str(jobs[0].job_id).split("_")[0])


def _submit_local_array(
    config: Config,
    executor: submitit.AutoExecutor,
    runner: JobRunner,
    sub: Submission,
    sleep: Callable[[float], None],
) -> None:
    """submitit's local executor starts every task at once: keep ``array_parallelism`` running."""
    params = config.array_params()
    indices = list(range(len(params)))
    limit = config.slurm.array_parallelism or len(indices)
    sub.array_job_ids.append(runner.local_array_id or "")
    if limit >= len(indices):
        sub.jobs.extend(executor.map_array(runner, [(i, params[i]) for i in indices]))
        return
    pending = indices
    while pending:
        running = sum(1 for j in sub.jobs if not j.done())
        while running < limit and pending:
            i = pending.pop(0)
            sub.jobs.append(executor.submit(runner, (i, params[i])))
            running += 1
        if pending:
            sleep(0.2)


def job_state(job: Any) -> str:
    """A submitit job's state as one upper-case word."""
    try:
        return str(job.state).upper()
    except Exception:  # the scheduler did not answer: not a reason to stop waiting
        return "UNKNOWN"


def wait(
    sub: Submission,
    progress: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    progress_every_s: float = 30.0,
) -> dict[str, str]:
    """Wait for every job; ``progress`` gets one line per poll. Returns job id -> outcome
    (``ok`` or the error's first line)."""
    started = time.monotonic()
    total = len(sub.jobs)
    last: tuple[int, float] = (-1, 0.0)
    while True:
        n_done = sum(1 for j in sub.jobs if j.done())
        now = time.monotonic()
        if progress is not None and (n_done != last[0] or now - last[1] >= progress_every_s or n_done == total):
            progress(f"[{now - started:5.0f} s] {n_done}/{total} done, {total - n_done} waiting or running")
            last = (n_done, now)
        if n_done == total:
            break
        sleep(poll_s)
    outcome: dict[str, str] = {}
    for job in sub.jobs:
        try:
            job.results()  # every task of a multi-task job
            outcome[str(job.job_id)] = "ok"
        except Exception as exc:
            text = str(exc).strip().splitlines()
            outcome[str(job.job_id)] = text[-1] if text else type(exc).__name__
    return outcome


def status_commands(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sacct and squeue argument lists ``aetherium-hpc status`` runs (never a shell)."""
    ids = ",".join(job_ids)
    sacct = ["sacct", "-X", "-j", ids, "--parsable2", "-n", "-o", "JobID,State,ExitCode,Elapsed,NodeList"]
    squeue = ["squeue", "-h", "-j", ids, "-o", "%i|%T|%M|%N"]
    return sacct, squeue


# -- status ----------------------------------------------------------------------------------
STATUS_TIMEOUT_S = 10.0


def _query(argv: list[str], timeout: float) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _rows_from_databases(
    layout: RunLayout,
    record: dict[str, Any] | None = None,
    *,
    sacct: dict[str, Any] | None = None,
    squeue: dict[str, Any] | None = None,
    timeout: float = STATUS_TIMEOUT_S,
) -> list[dict[str, str]]:
    """One row per ``jobs`` row of the run's databases. A row that still says ``running`` is
    checked (:mod:`.analysis.final_status`): Slurm's state, ``LOST`` or ``UNKNOWN`` once the job
    has ended without writing its status, with a ``note`` saying how that was found."""
    from .analysis.final_status import RUNNING, resolve_rows
    from .store import reader

    rows: list[dict[str, str]] = []
    jobs: dict[int, dict[str, Any]] = {}  # index in rows -> its jobs row
    for db in layout.databases():
        try:
            conn = reader.open_readonly(str(db), timeout=2.0)
            try:
                cur = conn.execute(
                    "SELECT j.job_id, j.array_job_id, j.array_task_id, j.status, j.exit_code, j.start_time,"
                    " j.end_time, j.node, j.config, s.hostname FROM jobs j LEFT JOIN sources s USING (source_id)"
                )
                names = [d[0] for d in cur.description]
                found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            finally:
                conn.close()
        except Exception as exc:  # a half-copied or foreign file: show it, go on
            rows.append({"job": db.parent.name, "state": "UNREADABLE", "exit": "", "elapsed": "", "nodes": str(exc)})
            continue
        for job in found:
            jobs[len(rows)] = job
            rows.append(_db_row(job))
    open_rows = [(i, job, record, job.get("hostname")) for i, job in jobs.items() if job.get("status") == RUNNING]
    resolved = resolve_rows(open_rows, sacct=sacct, squeue=squeue, timeout=timeout) if open_rows else {}
    for i, res in resolved.items():
        if res.status == RUNNING or not isinstance(i, int):
            continue
        row, start = rows[i], jobs[i].get("start_time")
        row["state"] = res.status.upper()
        if res.exit_code is not None:
            row["exit"] = str(res.exit_code)
        if res.end_time is not None and start is not None:
            row["elapsed"] = f"{res.end_time - start:.0f}s"
        row["note"] = res.detail
    return rows


def _db_row(job: dict[str, Any]) -> dict[str, str]:
    start, end, exit_code = job.get("start_time"), job.get("end_time"), job.get("exit_code")
    return {
        "job": str(job.get("job_id")), "state": str(job.get("status")).upper(),
        "exit": "" if exit_code is None else str(exit_code),
        "elapsed": "" if start is None or end is None else f"{end - start:.0f}s", "nodes": str(job.get("node")),
    }  # fmt: skip


def run_status(run_dir: Path, timeout: float = STATUS_TIMEOUT_S) -> tuple[list[dict[str, str]], str]:
    """Rows (job, state, exit, elapsed, nodes; ``note`` when a state was found after the fact) of
    every task, and where they came from: ``sacct``, ``squeue`` or ``databases``. Every query is
    bounded by ``timeout``. A task whose database says ``running`` after its job ended shows
    Slurm's state, ``LOST`` or ``UNKNOWN``, never ``RUNNING``."""
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise LaunchError(f"{run_dir}: no such run directory; give a folder printed by `aetherium-hpc submit`")
    record = layout.record() or {}
    sacct_seen: dict[str, Any] | None = None
    squeue_seen: dict[str, Any] | None = None
    if record.get("cluster") == "slurm":
        ids = [*(record.get("array_job_ids") or record.get("job_ids") or []),
               *([record["report_job_id"]] if record.get("report_job_id") else [])]  # fmt: skip
        sacct, squeue = status_commands([str(i) for i in ids])
        out = _query(sacct, timeout)
        if out and out.strip():
            rows = []
            for line in out.strip().splitlines():
                parts = (line.split("|") + [""] * 5)[:5]
                rows.append(dict(zip(("job", "state", "exit", "elapsed", "nodes"), parts, strict=True)))
            return rows, "sacct"
        # Asked once: the databases' open rows are checked against these answers, not by asking again.
        sacct_seen = {"rows": [], "why": "sacct gave no answer" if out is None else "sacct knows none of these jobs"}
        out = _query(squeue, timeout)
        squeue_seen = _squeue_view(out)
        if out and out.strip():
            rows = []
            for line in out.strip().splitlines():
                job, state, elapsed, nodes = (line.split("|") + [""] * 4)[:4]
                rows.append({"job": job, "state": state, "exit": "", "elapsed": elapsed, "nodes": nodes})
            db_rows = _rows_from_databases(layout, record, sacct=sacct_seen, squeue=squeue_seen, timeout=timeout)
            return rows + db_rows, "squeue" + (" and databases" if db_rows else "")
    rows = _rows_from_databases(layout, record, sacct=sacct_seen, squeue=squeue_seen, timeout=timeout)
    if record.get("cluster") == "local":
        rows += _local_jobs_without_rows(record, rows)
        rows += _local_report_row(layout, record)
    return rows, "databases"


def _local_report_row(layout: RunLayout, record: dict[str, Any]) -> list[dict[str, str]]:
    """The local merge + report job of ``report: {auto: true}``: running while its process lives,
    then COMPLETED when it wrote the report, else FAILED."""
    from .analysis.auto import REPORT_HTML

    pid = str(record.get("report_job_id") or "")
    if not pid.isdigit():
        return []
    if _pid_alive(int(pid)):
        state = "RUNNING"
    else:
        state = "COMPLETED" if (layout.root / REPORT_HTML).is_file() else "FAILED"
    return [{"job": pid, "state": state, "exit": "", "elapsed": "", "nodes": "(merge + report)"}]


def _pid_alive(pid: int) -> bool:
    """A process of that id exists (another user's counts: signal 0 is refused, not missing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _squeue_view(out: str | None) -> dict[str, Any] | None:
    """The squeue output of :func:`status_commands` as :func:`.analysis.accounting.squeue_states`
    gives it; None (ask again) when squeue failed (one unknown job id makes it exit 1)."""
    if out is None:
        return None
    jobs = {}
    for line in out.strip().splitlines():
        job, _, rest = line.partition("|")
        jobs[job.strip()] = rest.partition("|")[0]
    return {"jobs": jobs}


def _local_jobs_without_rows(record: dict[str, Any], rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Local jobs whose database is not copied back yet: alive (RUNNING) or gone (LOST).

    ``job_ids`` are the tasks' process ids in task order; rows name local array tasks
    ``<submitter>_<task>``, so an array task counts as seen by its index."""
    arrays = [str(a) for a in record.get("array_job_ids") or []]
    is_array = bool(arrays)
    seen = {r["job"] for r in rows}
    seen_bases = {r["job"].split("_")[0] for r in rows}
    out = []
    for index, job_id in enumerate(record.get("job_ids", [])):
        pid = str(job_id)
        name = f"{arrays[0]}_{index}" if is_array else pid
        if (name in seen if is_array else pid in seen_bases) or not pid.isdigit():
            continue
        if _pid_alive(int(pid)):
            state = "RUNNING"
        elif is_array:
            continue
        else:
            state = "LOST"
        out.append({"job": name, "state": state, "exit": "", "elapsed": "", "nodes": ""})
    return out
