"""Submitting a config: the backend, the executor, one job or array, and waiting for it.

Flow::

    Config --executor_parameters()--> AutoExecutor(cluster from backend).update_parameters(...)
           --submit()/map_array()---> one job, or ONE sbatch array per MaxArraySize tasks
           --> RunLayout: config.yaml, jobs.json, submitit/, logs/, db/

The job runs :class:`aetherium_hpc.runtime.JobRunner`. Nothing here prints; the CLI does.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import submitit

import aetherium_hpc

from .. import scheduler
from ..config import Config, snapshot_yaml
from ..errors import LaunchError
from ..paths import RunLayout, replaced_atomically
from ..runtime.entrypoint import JobRunner
from .parameters import executor_parameters
from .sbatch import check_script_path

log = logging.getLogger(__name__)


def resolve_cluster(backend: str, *, warn: Callable[[str], object] | None = None) -> str:
    """submitit's executor name for a backend.

    ``auto``: Slurm when its commands are installed *and* a controller answers; otherwise the
    local backend (a workstation with Slurm packages but no cluster is a machine without Slurm),
    said to ``warn`` (default: a warning in the log).
    """
    if backend != "auto":
        return backend
    cluster = submitit.AutoExecutor.which()
    if cluster == "slurm":
        problem = scheduler.slurm_problem()
        if problem is not None:
            (warn or log.warning)(
                f"aetherium-hpc: Slurm is installed but {problem}; running locally "
                "(backend: local skips this check, backend: slurm submits anyway)"
            )
            return "local"
    return cluster


def max_array_size(config: Config, timeout: float = scheduler.SLURM_TIMEOUT_S) -> int:
    """Most tasks one sbatch array may have: ``slurm.max_array_size``, else MaxArraySize of
    ``scontrol show config``, else Slurm's default."""
    if config.slurm.max_array_size:
        return config.slurm.max_array_size
    return scheduler.cluster_max_array_size(timeout)


@dataclass
class Submission:
    """What ``submit`` did: where the run lives and which jobs it made."""

    layout: RunLayout
    cluster: str
    jobs: list[Any] = field(default_factory=list)  # submitit Job objects, in task order
    array_job_ids: list[str] = field(default_factory=list)
    report_job: Any = None  # the merge + report job of ``report: {auto: true}``
    tasks: int = 1  # how many tasks the submission has (a local array launches them over time)

    def write_record(self) -> None:
        """Write ``jobs.json`` whole (a new file renamed over the old: a reader never sees half)."""
        with replaced_atomically(str(self.layout.jobs_path)) as part, open(part, "w", encoding="utf-8") as fh:
            json.dump(self.record(), fh, indent=2)

    @property
    def job_ids(self) -> list[str]:
        return [str(j.job_id) for j in self.jobs]

    def record(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "tasks": self.tasks,
            "job_ids": self.job_ids,
            "array_job_ids": self.array_job_ids,
            "report_job_id": None if self.report_job is None else str(self.report_job.job_id),
            "submitted_at": time.time(),
        }


def callable_folder(config: Config) -> str | None:
    """Where the job finds the module of ``workload.callable``: None where it imports as it is
    (installed, or in the folder the job runs in: ``workload.workdir``, else where you submit),
    else the config file's folder when the module is there. A module found in neither is refused
    in one line, before anything is submitted. Only the top-level package is looked up: nothing
    of the user's code runs at submit."""
    if config.workload.kind != "callable":
        return None
    module = config.workload.split_callable()[0]
    top = module.split(".")[0]
    runs_in = os.path.abspath(config.workload.workdir or os.getcwd())
    config_dir = os.path.dirname(os.path.abspath(config.source)) if os.path.isfile(config.source) else None
    for folder in (runs_in, config_dir):
        if folder is None:
            continue
        sys.path.insert(0, folder)
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.remove(folder)
        if found:
            return None if folder == runs_in else folder
    where = f"the installed packages, {runs_in} (where the job runs)" + (f" or {config_dir}" if config_dir else "")
    raise LaunchError(
        f"{config.source}: workload.callable: module {top!r} is not in {where}; install it "
        "(pip install -e YOUR_PROJECT), put it beside the config, or set workload.workdir to its folder"
    )


@contextmanager
def _job_environment(extra: str | None = None) -> Iterator[None]:
    """Make this aetherium_hpc, and the folder ``extra`` (:func:`callable_folder`), importable in
    the job (sbatch and the local controller copy the environment), also when it is not installed
    but run from a source tree."""
    parent = str(Path(aetherium_hpc.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    parts = [p for p in (old or "").split(os.pathsep) if p]
    wanted = [f for f in (extra, parent) if f is not None and f not in parts]
    if wanted:
        os.environ["PYTHONPATH"] = os.pathsep.join([*wanted, *parts])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def check_submission(config: Config, cluster: str, root: Path) -> str | None:
    """Every check :func:`submit` makes before it submits, creating nothing: ``submit --dry-run``
    makes the same ones, so a configuration the dry run accepts is not refused by the submit.
    Returns the folder the job needs on its path (:func:`callable_folder`)."""
    if cluster == "slurm":
        check_script_path(root)
    extra = callable_folder(config)
    if cluster == "local" and config.resources.nodes > 1:
        raise LaunchError(
            f"resources.nodes={config.resources.nodes}: the local backend runs on this machine only; "
            "use backend: slurm, or --set resources.nodes=1"
        )
    if cluster != "slurm" and config.monitoring.enabled and config.monitoring.prometheus_textfile:
        from ..monitors.prometheus import require_textfile_folder

        # The job runs on this machine: its textfile folder must be here (a Slurm node checks its own).
        require_textfile_folder(config.monitoring.prometheus_textfile, config.source)
    if cluster == "slurm" and shutil.which("sbatch") is None:
        return extra  # rendering a script on a machine without Slurm (a dry run): submitit cannot check it here
    with tempfile.TemporaryDirectory(prefix="aetherium-check-") as folder:
        _make_executor(config, Path(folder), cluster)
    return extra


def _make_executor(config: Config, folder: Path, cluster: str) -> submitit.AutoExecutor:
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**executor_parameters(config))
    except (ValueError, NameError, RuntimeError) as exc:
        raise LaunchError(f"submitit refused the parameters for {cluster}: {str(exc).splitlines()[0]}") from None
    return executor


def submit(
    config: Config,
    *,
    base_dir: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str], None] | None = None,
) -> Submission:
    """Make the run directory, submit the job (or array), record the job ids in ``jobs.json``.

    A local array with ``slurm.array_parallelism`` below its size is launched here, a task as
    one ends: ``jobs.json`` is written before the first and again as each starts, and
    ``progress`` gets a line for each (on Slurm the scheduler throttles and this returns at once)."""
    cluster = resolve_cluster(config.backend)
    base = Path(base_dir or config.run_dir).expanduser().absolute()
    extra = check_submission(config, cluster, base / f"{config.name}-YYYYmmdd-HHMMSS-hhhh")
    layout = RunLayout.new(base, config.name)
    try:
        if cluster == "slurm":
            check_script_path(layout.root)
        return _submit_into(config, layout, cluster, extra, sleep, progress)
    except BaseException:
        # A refused submission leaves no run folder behind -- unless a job was submitted into it.
        if not layout.jobs_path.exists() and not any(layout.submitit_dir.rglob("*_submitted.pkl")):
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def _submit_into(
    config: Config,
    layout: RunLayout,
    cluster: str,
    extra: str | None,
    sleep: Callable[[float], None],
    progress: Callable[[str], None] | None,
) -> Submission:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aetherium-scontrol") as pool:
        # Slurm's MaxArraySize is asked (a process, a few ms) while the run folder is written.
        array_size = pool.submit(max_array_size, config) if cluster == "slurm" and config.is_array else None
        return _submit_with(config, layout, cluster, extra, sleep, array_size, progress)


def _submit_with(
    config: Config,
    layout: RunLayout,
    cluster: str,
    extra: str | None,
    sleep: Callable[[float], None],
    array_size: Future[int] | None,
    progress: Callable[[str], None] | None = None,
) -> Submission:
    layout.config_path.write_text(
        f"# resolved configuration of {config.source}\n" + snapshot_yaml(config),
        encoding="utf-8",
    )
    executor = _make_executor(config, layout.submitit_dir, cluster)
    # The runner carries the validated config without its array: each task gets (index, its own params).
    runner = JobRunner(config, str(layout.root), local_array_id=str(os.getpid()))
    sub = Submission(layout, cluster, tasks=len(config.array_params()) if config.is_array else 1)
    try:
        with _job_environment(extra):
            if not config.is_array:
                sub.jobs.append(executor.submit(runner))
            elif cluster == "slurm":
                assert array_size is not None
                _submit_slurm_arrays(config, executor, PickledOnce(runner), sub, array_size.result())
            else:
                _submit_local_array(config, executor, PickledOnce(runner), sub, sleep, progress)
            if config.report.auto and cluster in ("slurm", "local"):
                sub.report_job = _submit_report_job(config, layout, cluster, sub)
    except LaunchError:
        raise
    except (OSError, subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
        raise LaunchError(
            f"submission failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
        ) from None
    if cluster == "slurm":
        # The script of the job, or of the array's first sbatch (not the report job's).
        shutil.copyfile(sub.jobs[0].paths.submission_file, layout.sbatch_path)
    sub.write_record()
    return sub


class PickledOnce:
    """``target`` (the array's :class:`JobRunner`), pickled once for every task of an array.

    submitit pickles one ``DelayedSubmission(function, (index, params))`` per task, the function
    by value each time: for a runner that is the whole validated config, 1,000 times. This
    wrapper pickles as the bytes of ``target``'s pickle, made once, and unpickles as ``target``
    itself, so each task's pickle loads exactly as before (the job gets the JobRunner).
    """

    def __init__(self, target: JobRunner) -> None:
        self.target = target
        self.blob = cloudpickle.dumps(target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
        return pickle.loads, (self.blob,)


def _submit_report_job(config: Config, layout: RunLayout, cluster: str, sub: Submission) -> Any:
    """``report: {auto: true}``: merge + report once every task has ended (afterany on Slurm)."""
    from ..analysis.auto import MergeReportJob

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


def _submit_slurm_arrays(
    config: Config, executor: submitit.AutoExecutor, runner: PickledOnce, sub: Submission, max_size: int
) -> None:
    """One sbatch array per ``max_size`` tasks (Slurm's MaxArraySize)."""
    params = config.array_params()
    indices = list(range(len(params)))
    size = max(1, max_size)
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        jobs = executor.map_array(runner, [(i, params[i]) for i in chunk])
        sub.jobs.extend(jobs)
        sub.array_job_ids.append(str(jobs[0].job_id).split("_")[0])


def _submit_local_array(
    config: Config,
    executor: submitit.AutoExecutor,
    runner: PickledOnce,
    sub: Submission,
    sleep: Callable[[float], None],
    progress: Callable[[str], None] | None = None,
) -> None:
    """submitit's local executor starts every task at once: keep ``array_parallelism`` running.
    ``jobs.json`` is written before the first task and again as each one starts."""
    params = config.array_params()
    indices = list(range(len(params)))
    limit = config.slurm.array_parallelism or len(indices)
    sub.array_job_ids.append(runner.target.local_array_id or "")
    if limit >= len(indices):
        sub.jobs.extend(executor.map_array(runner, [(i, params[i]) for i in indices]))
        return
    pending = list(indices)
    while pending:
        running = sum(1 for j in sub.jobs if not j.done())
        started = 0
        while running < limit and pending:
            i = pending.pop(0)
            sub.jobs.append(executor.submit(runner, (i, params[i])))
            running += 1
            started += 1
        if started:
            sub.write_record()
            if progress is not None:
                progress(f"local array {sub.array_job_ids[0]}: {len(sub.jobs)}/{len(indices)} task(s) started, "
                         f"{limit} at a time (array_parallelism); the rest start as these end")  # fmt: skip
        if pending:
            sleep(0.2)


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
