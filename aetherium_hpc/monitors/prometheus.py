"""node_exporter's textfile collector: the node's latest resource values as a ``*.prom`` file.

With ``monitoring.prometheus_textfile: PATH`` (``aetherium-hpc run``: ``--prometheus-textfile``
or ``$AETHERIUM_PROMETHEUS_TEXTFILE``) the monitor rewrites one file after every tick, in the
Prometheus text exposition format 0.0.4: a gauge per catalogue metric (a counter named ``*_total``
for the running counts), in base units (bytes, seconds), labelled ``job_id``, ``array_job_id``, ``array_task_id``, ``node`` and, for GPUs,
``device``. node_exporter (``--collector.textfile.directory=PATH``) serves it with the node's own
metrics.

* PATH a folder (recommended): the file is ``aetherium_<job_id>_<node>.prom`` inside it, so
  every task and node of every job has a file of its own (several jobs share a node; a folder on
  a shared file system serves several nodes).
* PATH ending in ``.prom``: that file; ``{job_id}`` and ``{node}`` in it are replaced. Without
  them two tasks on one node write the same file: for jobs that have the node to themselves.

Atomic: written to ``.<name>.<pid>.tmp`` in the same folder (node_exporter reads ``*.prom``
only), then ``os.replace``d over the file: a reader sees the previous tick or this one, never a
part. Removed when the monitor stops, so node_exporter stops exporting a job that has ended; a
job killed hard (SIGKILL, a lost node) leaves its last file: ``aetherium_last_sample_timestamp_seconds``
tells its age. Per-process rows (one series per pid) are not exported, nor the store writer's
own ``store/batch_write_ms`` (it goes to the database, never through a monitor tick).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..identity import JobIdentity
from ..paths import textfile_path, textfile_problem
from ..store import catalogue
from ..store.catalogue import MetricSpec
from .base import Sample

log = logging.getLogger(__name__)

__all__ = ["COUNTERS", "NAMES", "NOT_EXPORTED", "PrometheusTextfile", "require_textfile_folder"]

#: The config key, as messages name it.
KEY = "monitoring.prometheus_textfile"

#: The gauge written last in every file: the tick's time (node_exporter refuses sample timestamps).
TIMESTAMP_METRIC = "aetherium_last_sample_timestamp_seconds"

#: Catalogue metric -> its Prometheus name (the one place they are mapped). Units are Prometheus'
#: base units: MB and ms are scaled by :data:`_TO_BASE`; percentages stay 0-100, as stored.
NAMES: dict[MetricSpec, str] = {
    catalogue.CPU_SYSTEM_TOTAL: "aetherium_node_cpu_percent",
    catalogue.CPU_PROCESS_TREE: "aetherium_cpu_percent",
    catalogue.RAM_SYSTEM_USED: "aetherium_node_memory_used_bytes",
    catalogue.RAM_SYSTEM_PERCENT: "aetherium_node_memory_used_percent",
    catalogue.RAM_PROCESS_TREE_RSS: "aetherium_memory_rss_bytes",
    catalogue.GPU_UTILIZATION: "aetherium_gpu_utilization_percent",
    catalogue.GPU_MEMORY_USED: "aetherium_gpu_memory_used_bytes",
    catalogue.GPU_MEMORY_TOTAL: "aetherium_gpu_memory_total_bytes",
    catalogue.GPU_POWER: "aetherium_gpu_power_watts",
    catalogue.GPU_TEMPERATURE: "aetherium_gpu_temperature_celsius",
    catalogue.GPU_PROCESS_TREE_MEMORY: "aetherium_gpu_job_memory_used_bytes",
    catalogue.MONITOR_SAMPLE_CPU: "aetherium_monitor_sample_cpu_seconds",
    catalogue.MONITOR_NVML_ERRORS: "aetherium_monitor_nvml_errors_total",
    catalogue.MONITOR_WINDOW_BYTES: "aetherium_monitor_window_bytes",
    catalogue.STORE_QUEUE_DEPTH: "aetherium_store_queue_depth_records",
    catalogue.STORE_DROPPED: "aetherium_store_dropped_records_total",
}
#: Running counts since the monitor started (they only grow): typed counter, named ``*_total``.
COUNTERS = (catalogue.MONITOR_NVML_ERRORS, catalogue.STORE_DROPPED)
#: Not in the file: one series per process of the tree (pids come and go, a time series database
#: wants stable series), and what the store's writer records itself (no monitor tick carries it).
NOT_EXPORTED = (catalogue.PROCESS_CPU, catalogue.PROCESS_RSS, catalogue.STORE_BATCH_WRITE)
_TO_BASE = {catalogue.MB: catalogue.BYTES_PER_MB, catalogue.MS: 1e-3}
_BASE_UNIT = {catalogue.MB: "bytes", catalogue.MS: "seconds", catalogue.BYTES: "bytes"}


@dataclass(frozen=True)
class _Family:
    """One metric family: its name, its HELP and TYPE lines, the factor to base units."""

    order: int
    name: str
    header: str
    scale: float


def _help(text: str) -> str:
    """HELP text escaped as the format asks (backslash and line feed)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_value(text: str) -> str:
    """A label value escaped as the format asks (backslash, double quote, line feed)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _families() -> dict[tuple[str, str, str], _Family]:
    out: dict[tuple[str, str, str], _Family] = {}
    for order, (spec, name) in enumerate(NAMES.items()):
        unit = _BASE_UNIT.get(spec.unit, spec.unit)
        text = _help(f"{spec.meaning} ({unit}; aetherium-hpc {spec.metric_type}/{spec.metric_name})")
        header = f"# HELP {name} {text}\n# TYPE {name} {'counter' if spec in COUNTERS else 'gauge'}\n"
        out[(spec.metric_type, spec.metric_name, spec.unit)] = _Family(
            order, name, header, _TO_BASE.get(spec.unit, 1.0)
        )
    return out


_FAMILIES = _families()
_TIMESTAMP_HEADER = (
    f"# HELP {TIMESTAMP_METRIC} Unix time of the sample these values come from (aetherium-hpc monitor tick)\n"
    f"# TYPE {TIMESTAMP_METRIC} gauge\n"
)


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def require_textfile_folder(path: str, origin: str) -> None:
    """Refuse, before the job starts, a PATH whose folder is missing here: one line naming where the
    value came from (``origin``: a config file, an option, a variable), the key and the value."""
    problem = textfile_problem(path)
    if problem is not None:
        raise ConfigError(f"{origin}: {KEY}: {path!r}: {problem}")


def job_labels(job: JobIdentity) -> dict[str, str]:
    """The labels every series of a job carries (the array's only for an array task)."""
    labels = {"job_id": job.job_id}
    if job.array_job_id is not None:
        labels["array_job_id"] = job.array_job_id
    if job.array_task_id is not None:
        labels["array_task_id"] = str(job.array_task_id)
    labels["node"] = job.node or job.hostname
    return labels


class PrometheusTextfile:
    """Writes a tick's samples to ``path`` in the text format, atomically; :meth:`remove` at the end.

    The text of each series (name and labels) is built once and kept; a tick costs one string
    format per sample, one ``write`` and one ``rename``.
    """

    def __init__(self, path: str | os.PathLike[str], labels: Mapping[str, str]) -> None:
        self.path = os.fspath(path)
        folder, name = os.path.split(self.path)
        self._tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        self._labels = ",".join(f'{k}="{label_value(v)}"' for k, v in labels.items())
        # (metric_type, metric_name, device) -> its family and 'name{labels} ' (family None: not exported)
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._layout: list[_Series] = []  # the series of the last tick, in sample order
        self._template = ""
        self._order: list[int] = []
        self._stamp = f"{TIMESTAMP_METRIC}{{{self._labels}}} "
        self.closed = False

    @classmethod
    def for_job(cls, path: str, job: JobIdentity) -> PrometheusTextfile:
        return cls(textfile_path(path, job), job_labels(job))

    def _new_series(self, mtype: str, mname: str, unit: str, device: str) -> _Series:
        family = _FAMILIES.get((mtype, mname, unit))  # a sample in another unit than the catalogue's: not ours
        if family is None:
            return _Series(None, "", 1.0)
        labels = f'{self._labels},device="{label_value(device)}"' if device else self._labels
        return _Series(family, f"{family.name}{{{labels}}} ", family.scale)

    def render(self, samples: Sequence[Sample], timestamp: float) -> str:
        """The file's text for one tick: each family's HELP, TYPE and series, then the tick's time.

        The series of a tick are nearly always those of the tick before: their text is then one
        ``%`` template (kept until the series change), filled with the values in one call."""
        series = self._series
        entries: list[_Series] = []
        values: list[float] = []
        for mtype, mname, value, unit, device in samples:
            key = (mtype, mname, device)
            entry = series.get(key)
            if entry is None:
                entry = series[key] = self._new_series(mtype, mname, unit, device)
            if entry.family is None or value != value:  # not exported, or NaN (no measurement)
                continue
            entries.append(entry)
            values.append(value * entry.scale)
        if entries != self._layout:
            self._layout = entries
            self._template, self._order = _template(entries, self._stamp)
        ordered = [values[i] for i in self._order]
        if ordered and (max(ordered) == _INF or min(ordered) == -_INF):  # (%r would write inf)
            return self._template % (*[_Number(v) for v in ordered], _Number(timestamp))
        return self._template % (*ordered, timestamp)

    def write(self, samples: Sequence[Sample], timestamp: float) -> None:
        """Replace the file with this tick's values (raises OSError; the monitor reports it once)."""
        if self.closed:
            return
        data = self.render(samples, timestamp).encode()
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)

    def remove(self) -> None:
        """The job has ended: remove the file (and a temporary one), so node_exporter stops exporting it."""
        self.closed = True
        for path in (self.path, self._tmp):
            try:
                os.unlink(path)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):
                    log.warning("aetherium-hpc: could not remove the Prometheus textfile %s: %s", path, exc)


@dataclass(frozen=True, eq=False)
class _Series:
    """One exported series: its family (None: a sample not exported) and its text up to the value."""

    family: _Family | None
    prefix: str
    scale: float


class _Number(float):
    """A value as the format writes it (``%r`` of it): +Inf, -Inf, NaN."""

    def __repr__(self) -> str:
        return _number(self)


_INF = float("inf")


def _template(entries: list[_Series], stamp: str) -> tuple[str, list[int]]:
    """The ``%`` template of a tick with these series (families in catalogue order, each with its
    HELP and TYPE), and the order in which the tick's values fill it."""
    order = sorted(range(len(entries)), key=lambda i: entries[i].family.order)  # type: ignore[union-attr]
    parts: list[str] = []
    last: _Family | None = None
    for i in order:
        family = entries[i].family
        assert family is not None
        if family is not last:
            parts.append(family.header.replace("%", "%%"))
            last = family
        parts.append(entries[i].prefix.replace("%", "%%") + "%r\n")
    parts.append(f"{_TIMESTAMP_HEADER}{stamp}".replace("%", "%%") + "%r\n")
    return "".join(parts), order
