"""The job configuration: frozen dataclasses, each key declared once (type, default, unit, bounds).

docs/CONFIG.md explains every key; tests/config/test_config_docs.py keeps it in step with this module.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from ..errors import ConfigError
from ..paths import textfile_problem
from ..store.options import StoreOptions, limits
from . import dumping
from .setting import setting

Backend = Literal["auto", "slurm", "local", "debug"]
#: Accepted values of ``backend``.
BACKENDS: tuple[str, ...] = get_args(Backend)

#: Largest number of array tasks a config may describe (Slurm's own MaxArraySize cap is 4,000,001).
MAX_ARRAY_TASKS = 1_000_000


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for (per array task)."""

    timeout_min: int = setting(60, unit="min", ge=1, help="wall-clock limit (Slurm --time)")
    nodes: int = setting(1, ge=1, help="number of nodes; more than 1 needs Slurm")
    tasks_per_node: int = setting(1, ge=1, help="processes per node (Slurm --ntasks-per-node)")
    cpus_per_task: int = setting(1, ge=1, help="CPU cores per process")
    gpus_per_node: int = setting(0, ge=0, example=1, help="GPUs per node")
    mem_gb: float | None = setting(None, unit="GB", gt=0, example=4, help="memory per node; null: the cluster default")

    @property
    def total_tasks(self) -> int:
        """Number of processes of one job: nodes x tasks_per_node."""
        return self.nodes * self.tasks_per_node


@dataclass(frozen=True)
class SlurmSettings:
    """Slurm settings (``array_parallelism`` also limits the local backend's arrays)."""

    partition: str | None = setting(None, example="gpu", help="sbatch --partition")
    account: str | None = setting(None, example="my_project", help="sbatch --account")
    qos: str | None = setting(None, example="normal", help="sbatch --qos")
    constraint: str | None = setting(None, example="a100", help="sbatch --constraint (node features)")
    signal_delay_s: int = setting(120, unit="s", ge=0, help="USR2 this long before the time limit")
    setup: tuple[str, ...] = setting((), help="shell lines run in the batch script before the job")
    array_parallelism: int | None = setting(None, ge=1, example=4, help="array tasks running at once at most")
    max_array_size: int | None = setting(
        None, ge=1, example=1000, help="most tasks of one sbatch array; null: ask scontrol for MaxArraySize"
    )
    additional_parameters: dict[str, str | int | bool] = setting(
        default_factory=dict, help="other sbatch options, without the leading dashes"
    )
    exclusive: bool = setting(False, help="whole nodes (sbatch --exclusive)")


@dataclass(frozen=True)
class Workload:
    """What runs inside the job: a Python callable *or* a command (exactly one is set)."""

    callable: str | None = setting(None, omit_when_none=True, help='the Python function, "pkg.module:function"')
    kwargs: dict[str, Any] = setting(default_factory=dict, only_with="callable", help="keyword arguments of callable")
    command: tuple[str, ...] | None = setting(None, omit_when_none=True, help="program and arguments")
    env: dict[str, str] = setting(default_factory=dict, help="extra environment variables")
    workdir: str | None = setting(None, example="/path/to/project", help="folder to run in; null: where you submit")

    @property
    def kind(self) -> Literal["callable", "command"]:
        return "callable" if self.callable is not None else "command"

    def split_callable(self) -> tuple[str, str]:
        """``"pkg.mod:func"`` -> ``("pkg.mod", "func")``."""
        if self.callable is None:
            raise ConfigError("workload.callable: not set (this workload is a command); use workload.command")
        module, _, func = self.callable.partition(":")
        return module, func

    def load_callable(self) -> Callable[..., Any]:
        """Import the module and return the function named by ``callable``."""
        module_name, func_name = self.split_callable()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"workload.callable: cannot import module {module_name!r} ({exc}); "
                "check the spelling and that the package is installed in the job's Python"
            ) from exc
        func = getattr(module, func_name, None)
        if func is None or not callable(func):
            raise ConfigError(
                f"workload.callable: module {module_name!r} has no callable {func_name!r}; "
                "check the name after the colon"
            )
        return cast(Callable[..., Any], func)


@dataclass(frozen=True)
class ArraySpec:
    """A job array: explicit ``params`` (one mapping per task) or a cartesian ``sweep``."""

    params: tuple[dict[str, Any], ...] | None = setting(None, omit_when_none=True, help="one mapping per task")
    sweep: dict[str, tuple[Any, ...]] | None = setting(None, omit_when_none=True, help="every combination")

    def expand(self) -> list[dict[str, Any]]:
        """One kwargs mapping per array task, in task order."""
        if self.params is not None:
            return [dumping.plain_copy(p) for p in self.params]
        if self.sweep is not None:
            keys = list(self.sweep)
            return [
                dict(zip(keys, dumping.plain_copy(combo), strict=True))
                for combo in itertools.product(*self.sweep.values())
            ]
        return []

    def __len__(self) -> int:
        if self.params is not None:
            return len(self.params)
        if self.sweep is not None:
            return math.prod(len(v) for v in self.sweep.values())
        return 0


def _store_setting(name: str, **spec: Any) -> Any:
    """A key the store owns: its default is that of :class:`StoreOptions`, its bounds those of
    :data:`~aetherium_hpc.store.options.BOUNDS` (a bound set by an option the YAML does not have, such
    as ``max_queue``, is that option's default), and the store checks the rest of the value."""

    def check(value: Any) -> StoreOptions:
        return StoreOptions(**{name: value})

    return setting(getattr(StoreOptions(), name), check=check, **limits(name), **spec)


def _textfile_form(path: str) -> None:
    """The form of a ``prometheus_textfile`` PATH (its folder is checked on the node, where it is written)."""
    problem = textfile_problem(path, folder_exists=False)
    if problem is not None:
        raise ValueError(problem)


@dataclass(frozen=True)
class Monitoring:
    """Resource monitor and metrics store settings."""

    enabled: bool = setting(True, help="run the resource monitor and the metrics store in the job")
    interval_s: float = setting(1.0, unit="s", gt=0, le=3600, help="time between CPU/RAM/GPU samples")
    gpu: bool = setting(True, help="sample GPUs through NVML")
    buffer_size: int = _store_setting("buffer_size", unit="records", help="the writer commits after this many")
    flush_interval_s: float = _store_setting("flush_interval_s", unit="s", help="... or after this long")
    checkpoint_interval_s: float = setting(30.0, unit="s", ge=0, help="time between copies to the run folder")
    local_dir: str | None = setting(None, example="/scratch/$USER", help="node-local folder of the live database")
    prometheus_textfile: str | None = setting(
        None,
        example="/var/lib/node_exporter/textfile_collector",
        check=_textfile_form,
        help="folder (or *.prom file) node_exporter's textfile collector reads; null: none written",
    )
    central: str | None = _store_setting(
        "central", example="postgresql://lab@db.example.org:5432/aetherium",
        help="PostgreSQL URL (no password) the node store also streams to; null: $AETHERIUM_CENTRAL, if set",
    )  # fmt: skip

    def store_options(self) -> StoreOptions:
        """The store's settings of this section."""
        return StoreOptions(buffer_size=self.buffer_size, flush_interval_s=self.flush_interval_s, central=self.central)


@dataclass(frozen=True)
class ReportSettings:
    """What happens after the job."""

    auto: bool = setting(False, help="merge and report once the job ends (slurm and local backends)")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A validated job configuration. Build it with :func:`~aetherium_hpc.config.load_config`."""

    name: str = setting(help="Slurm job name and start of the run folder name")
    backend: Backend = setting("auto", help="where the job runs: " + ", ".join(BACKENDS))
    run_dir: str = setting("runs", example="runs", help="parent folder of runs")
    resources: Resources = setting(default_factory=Resources, help="what the scheduler is asked for")
    slurm: SlurmSettings = setting(default_factory=SlurmSettings, help="Slurm settings")
    workload: Workload = setting(help="what runs")
    array: ArraySpec | None = setting(None, help="makes the submission a job array")
    monitoring: Monitoring = setting(default_factory=Monitoring, help="resource monitor and metrics store")
    report: ReportSettings = setting(default_factory=ReportSettings, help="what happens after the job")
    #: Where the config came from (file path or "<string>"); not a key, not part of :meth:`to_dict`.
    source: str = field(default="<dict>", compare=False)

    @property
    def is_array(self) -> bool:
        return self.array is not None

    def array_params(self) -> list[dict[str, Any]]:
        """One kwargs mapping per array task (sweep: itertools.product in key order); [] if no array."""
        return [] if self.array is None else self.array.expand()

    def to_dict(self) -> dict[str, Any]:
        """Every key with its effective value, JSON-able; loads back to an equal Config."""
        return dumping.to_dict(self)

    def to_json(self) -> str:
        return dumping.to_json(self)

    def dump_yaml(self) -> str:
        """The effective configuration as YAML text (readable by :func:`parse_config`)."""
        return dumping.dump_yaml(self)
