"""The job's GPUs with NVML: utilisation, memory, power, temperature, the job's processes' memory.

The only module that imports ``pynvml`` (nvidia-ml-py). It lists the node's GPUs; which of
them are the job's is decided in :mod:`.selection` (one info line says which rule chose them).
A node without NVML (no nvidia-ml-py, no NVIDIA library or driver) where no GPU was asked for
(:func:`.selection.gpus_requested`) is skipped quietly: a CPU node has nothing to say.

MIG slices are recorded under their MIG UUID (memory, the job's memory; NVML has no
utilisation per slice: said once), the board's power and temperature under the parent
GPU's UUID. NOT_SUPPORTED is final for that device and field (info, once); a lost GPU
(GPU_IS_LOST, Xid 79) is final for that GPU and always reported, naming it; any other
error is reported once per device and NVML function, retried with back-off and counted
(``monitor/nvml_errors``). Nothing raised by NVML leaves :meth:`GpuCollector.collect`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .. import scheduler
from ..store import catalogue
from .base import Collector, Sample
from .selection import (
    GpuDevice,
    NodeGpu,
    SlurmVersion,
    find_job_cgroup,
    gpus_requested,
    read_cgroup_pids,
    select_devices,
)

log = logging.getLogger(__name__)

_MB = catalogue.BYTES_PER_MB
# NVML return codes (nvml.h), for a pynvml that lacks a constant
_SUCCESS = 0
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_INSUFFICIENT_SIZE = 7
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong: usedGpuMemory not known

#: How to stop looking for GPUs, as the notices say it; the runtime sets the way that applies
#: (a YAML config's ``monitoring.gpu``, ``aetherium-hpc run --config``); the library's own is the default.
OFF_HINT = "pass gpu=False to log_system_resources() / ResourceMonitor()"


def set_off_hint(text: str) -> None:
    """Say how the user turns GPU monitoring off, in the notices of this process."""
    global OFF_HINT
    OFF_HINT = text


#: A failing field is tried again after 1, 2, 4, ... samples, at most this many.
MAX_BACKOFF_SAMPLES = 64


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _try(fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    try:
        return fn(*args)
    except Exception:
        return default


def _code(nvml: Any, exc: BaseException) -> int | None:
    return getattr(exc, "value", None) if isinstance(exc, getattr(nvml, "NVMLError", ())) else None


def _missing(nvml: Any, exc: BaseException) -> bool:
    """The driver lacks the query (FUNCTION_NOT_FOUND, or pynvml's library mismatch)."""
    return type(exc).__name__ == "NVMLLibraryMismatchError" or _code(nvml, exc) == getattr(
        nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND
    )


def _absent(nvml: Any, exc: BaseException) -> bool:
    """The query is not there: NOT_SUPPORTED, or the driver lacks it (:func:`_missing`)."""
    return _missing(nvml, exc) or _code(nvml, exc) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED)


def _enumerate(nvml: Any) -> tuple[list[NodeGpu], list[GpuDevice | None]]:
    """(every GPU NVML lets us open, with its MIG devices; the GRES slots in NVML = PCI order)."""
    gpus: list[NodeGpu] = []
    slots: list[GpuDevice | None] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except Exception as exc:
            if _code(nvml, exc) == getattr(nvml, "NVML_ERROR_NO_PERMISSION", _NO_PERMISSION):
                log.debug("NVML GPU %d is hidden from this job (cgroup): %s", index, exc)  # ConstrainDevices
            else:
                log.warning("aetherium-hpc: NVML GPU %d cannot be opened (%s: %s); not monitored", index,
                            type(exc).__name__, exc)  # fmt: skip
            slots.append(None)  # it keeps its place: GRES indices count it
            continue
        name = _text(_try(nvml.nvmlDeviceGetName, handle, default=""))
        pci = _try(nvml.nvmlDeviceGetPciInfo, handle)
        bus_id = _text(getattr(pci, "busId", "")).upper()
        minor = _try(nvml.nvmlDeviceGetMinorNumber, handle)
        mode = (_try(nvml.nvmlDeviceGetMigMode, handle) or [0])[0]
        gpu = NodeGpu(index, handle, uuid, name, bus_id, minor, mode == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))
        if gpu.mig_enabled:
            # The maximum this GPU can hold; slots without a MIG device answer NOT_FOUND.
            for slot in range(int(_try(nvml.nvmlDeviceGetMaxMigDeviceCount, handle, default=0) or 0)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                    mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                except Exception:
                    continue
                gpu.migs.append(
                    GpuDevice(
                        mig_uuid, mig, _text(_try(nvml.nvmlDeviceGetName, mig, default=name)), index, uuid,
                        _try(nvml.nvmlDeviceGetGpuInstanceId, mig), _try(nvml.nvmlDeviceGetComputeInstanceId, mig),
                        bus_id,
                    )
                )  # fmt: skip
        gpus.append(gpu)
        slots.extend(gpu.devices())
    return gpus, slots


class _ProcessInfoV1(ctypes.Structure):
    """nvmlProcessInfo_v1_t: what drivers without the v2/v3 queries fill."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def _processes_v1(nvml: Any, handle: Any, symbol: str) -> list[tuple[int, int | None]]:
    """The v1 process query through the C symbol (nvidia-ml-py no longer wraps it)."""
    fn = nvml._nvmlGetFunctionPointer(symbol)
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == _SUCCESS:
        return []
    if ret != _INSUFFICIENT_SIZE:
        raise nvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes started between the two calls
    infos = (_ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != _SUCCESS:
        raise nvml.NVMLError(ret)
    return [
        (int(infos[i].pid), None if infos[i].usedGpuMemory == _NOT_AVAILABLE else int(infos[i].usedGpuMemory))
        for i in range(count.value)
    ]


#: (kind, pynvml's query); tried as the unversioned (newest) query, then _v2, then v1.
PROCESS_QUERIES = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ("mps", "nvmlDeviceGetMPSComputeRunningProcesses"),  # MPS clients; compute shows only the MPS server
)
_VERSIONS = ("", "_v2", "v1")
_VERSION_NAMES = {"": "v3", "_v2": "v2", "v1": "v1"}


class _CallFailed(Exception):
    def __init__(self, function: str, exc: BaseException) -> None:
        super().__init__(function)
        self.function = function
        self.exc = exc


# -- error causes -----------------------------------------------------------------------------
def _cause(nvml: Any, exc: BaseException) -> str:
    """What an NVML error means on a cluster node, and what to do (none of these advise draining
    unless the GPU itself needs a reset)."""
    code = _code(nvml, exc)
    c = lambda name, default: getattr(nvml, name, default)  # noqa: E731
    if code is None:
        if type(exc).__name__ == "NVMLLibraryMismatchError":
            return "nvidia-ml-py and the NVIDIA driver do not match (a function this driver lacks)"
        return f"an unexpected {type(exc).__name__} from nvidia-ml-py"
    causes = {
        c("NVML_ERROR_NO_PERMISSION", 4): (
            "no permission: the job's cgroup (Slurm ConstrainDevices) or the driver's settings deny this query "
            "to users; the GPU is fine"
        ),
        c("NVML_ERROR_TIMEOUT", 10): "NVML timed out: the driver was busy; this usually passes",
        c("NVML_ERROR_UNINITIALIZED", 1): "NVML was shut down in this process (another library called nvmlShutdown)",
        c("NVML_ERROR_DRIVER_NOT_LOADED", 9): (
            "the NVIDIA driver was unloaded under the job; the admins need to reload it or reboot the node"
        ),
        c("NVML_ERROR_LIB_RM_VERSION_MISMATCH", 18): (
            "the NVIDIA driver changed under the job (libnvidia-ml and the kernel module differ: an upgrade "
            "without a reboot); the admins need to reboot the node"
        ),
        c("NVML_ERROR_RESET_REQUIRED", 16): (
            "the GPU needs a reset (after an ECC or Xid error): ask the admins to drain the node and reset it"
        ),
        c("NVML_ERROR_MEMORY", 20): "the node is short of host memory",
        c("NVML_ERROR_FUNCTION_NOT_FOUND", 13): "this NVIDIA driver is too old for this query",
        c("NVML_ERROR_CORRUPTED_INFOROM", 14): "the GPU's infoROM is corrupted: tell the admins (`nvidia-smi -q`)",
        c("NVML_ERROR_IRQ_ISSUE", 11): "the driver saw an interrupt problem: look for Xid errors in `dmesg`",
        c("NVML_ERROR_OPERATING_SYSTEM", 17): "the operating system blocked the request",
    }
    return causes.get(
        code,
        "NVML gives no reason; if it repeats, look for Xid errors in `dmesg` (or `journalctl -k`) and at "
        "`nvidia-smi -q` on this node",
    )


# -- what is read from each device ------------------------------------------------------------
Reading = list[tuple[catalogue.MetricSpec, float]]


@dataclass
class _Retry:
    failures: int = 0
    next_tick: int = 0


class GpuCollector(Collector):
    """Per-device NVML readings for the job's GPUs; does nothing (after one info line) without them,
    and says nothing on a node without NVML where no GPU was asked for.

    ``tree_pids``: the monitor's process tree (enables ``process_tree_memory_used``);
    ``environ``: where the GPU and Slurm variables are read (default ``os.environ``);
    ``slurm_version``: how the Slurm release is learnt (only when SLURM_*_GPUS is read);
    ``self_cgroup`` / ``cgroup_root``: where this process's cgroup is found inside Slurm.
    """

    name = "gpu"

    def __init__(
        self,
        tree_pids: Callable[[], Collection[int]] | None = None,
        environ: Mapping[str, str] | None = None,
        slurm_version: SlurmVersion = scheduler.slurm_version,
        self_cgroup: str = "/proc/self/cgroup",
        cgroup_root: str = "/sys/fs/cgroup",
    ) -> None:
        self._tree_pids = tree_pids
        self._environ = environ
        self._slurm_version = slurm_version
        self._self_cgroup = self_cgroup
        self._cgroup_root = cgroup_root
        self._nvml: Any = None
        self.devices: list[GpuDevice] = []  # the job's devices (GPUs and MIG devices)
        self.boards: list[GpuDevice] = []  # parents of the job's MIG devices: board power, temperature
        self._plan: list[
            tuple[GpuDevice, tuple[tuple[str, str, Callable[[GpuCollector, GpuDevice], Reading]], ...]]
        ] = []
        self.skipped: str | None = None  # why GPU metrics are off, once start() has run
        self.job_cgroup: str | None = None  # where the job's processes are read inside Slurm
        self.errors = 0  # NVML errors so far (NOT_SUPPORTED excluded): monitor/nvml_errors
        self._tick = 0
        self._final: set[tuple[str, str]] = set()  # (device uuid, field) NOT_SUPPORTED: never read again
        self._retry: dict[tuple[str, str], _Retry] = {}  # (device uuid, field) failing: back-off
        self._lost: set[int] = set()  # NVML indices of lost GPUs
        self._reported: set[tuple[str, str]] = set()  # (device uuid or "MIG", NVML function) already logged
        self._kind_off: set[tuple[str, str]] = set()  # (uuid, graphics|mps) a device does not support
        self._version: dict[str, int] = {}  # process query kind -> index in _VERSIONS that works
        self._cgroup_pids: set[int] = set()
        self._cgroup_tick = -1
        self._tree: Collection[int] = ()

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        environ = os.environ if self._environ is None else self._environ
        try:
            self._nvml = _load_nvml()
        except NvmlUnavailable as exc:  # a CPU node where no GPU was asked for: nothing to say
            self._skip(str(exc), quiet=exc.absent and gpus_requested(environ) is None)
            return
        try:
            gpus, slots = _enumerate(self._nvml)
            chosen = select_devices(gpus, slots, environ, self._slurm_version)
        except Exception as exc:
            self._skip(f"listing the GPUs with NVML failed ({type(exc).__name__}: {exc}); check `nvidia-smi`")
            return
        if chosen.no_gpu_job is not None:
            self._skip(chosen.no_gpu_job)
            return
        if not chosen.gpus:
            self._skip(f"NVML sees no GPU on this node; request GPUs (e.g. --gpus=1) or {OFF_HINT}")
            return
        if not chosen.devices:
            listed = ", ".join(f"{g.index}:{g.uuid}" for g in chosen.gpus)
            self._skip(
                f"{chosen.rule} names none of this node's GPUs ({listed}); this job was given no GPU, or the "
                "variable holds indices/UUIDs of another node"
            )
            return
        self.devices = chosen.devices
        parents = {d.parent_uuid for d in chosen.devices if d.parent_uuid}
        self.boards = [g.board() for g in chosen.gpus if g.uuid in parents]
        self._plan = [(dev, self._fields_of(dev)) for dev in (*self.devices, *self.boards)]  # fixed from here on
        log.info(
            "aetherium-hpc: GPU metrics from %d device(s) chosen by %s: %s", len(self.devices), chosen.rule,
            ", ".join(f"{d.uuid} ({d.name})" if d.name else d.uuid for d in self.devices),
        )  # fmt: skip
        job_id = environ.get("SLURM_JOB_ID")
        if self._tree_pids is not None and job_id:
            self.job_cgroup, why_not = find_job_cgroup(job_id, self._self_cgroup, self._cgroup_root)
            if self.job_cgroup is not None:
                log.info(
                    "aetherium-hpc: GPU memory of the job's processes: those of its cgroup %s (every srun step) "
                    "and the monitor's process tree", self.job_cgroup,
                )  # fmt: skip
            else:
                log.info(
                    "aetherium-hpc: GPU memory of the job's processes: the monitor's process tree only (the job's "
                    "cgroup: %s); GPU work of other srun steps is not counted", why_not,
                )  # fmt: skip

    def _skip(self, why: str, quiet: bool = False) -> None:
        """No GPU metrics: NVML released, ``skipped`` set, one line (at debug level when ``quiet``)."""
        self.close()
        self.skipped = why
        self.active = False
        log.log(logging.DEBUG if quiet else logging.INFO, "aetherium-hpc: GPU metrics skipped: %s", why)

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    # -- sampling ---------------------------------------------------------------------------
    def _fields_of(self, dev: GpuDevice) -> tuple[tuple[str, str, Callable[[GpuCollector, GpuDevice], Reading]], ...]:
        if dev.board:
            return BOARD_FIELDS
        fields = MIG_FIELDS if dev.parent_uuid else FIELDS
        return fields if self._tree_pids is not None else fields[:-1]

    def collect(self, out: list[Sample], timestamp: float) -> None:
        if self._nvml is None:
            return
        self._tick += 1
        self._tree = self._tree_pids() if self._tree_pids is not None else ()
        for dev, fields in self._plan:
            uuid = dev.uuid
            for name, function, reader in fields:
                if dev.index in self._lost:
                    break
                key = (uuid, name)
                if key in self._final:
                    continue
                retry = self._retry.get(key)
                if retry is not None and self._tick < retry.next_tick:
                    continue
                try:
                    readings = reader(self, dev)
                except _CallFailed as failed:
                    self._field_failed(dev, name, failed.function, failed.exc)
                    continue
                except Exception as exc:
                    self._field_failed(dev, name, function, exc)
                    continue
                if retry is not None:
                    del self._retry[key]
                for spec, value in readings:
                    out.append((spec.metric_type, spec.metric_name, value, spec.unit, uuid))
        out.append(catalogue.MONITOR_NVML_ERRORS.sample(float(self.errors)))

    def _utilization(self, dev: GpuDevice) -> Reading:
        return [(catalogue.GPU_UTILIZATION, float(self._nvml.nvmlDeviceGetUtilizationRates(dev.handle).gpu))]

    def _memory(self, dev: GpuDevice) -> Reading:
        info = self._nvml.nvmlDeviceGetMemoryInfo(dev.handle)  # v1: "used" includes reserved memory
        return [(catalogue.GPU_MEMORY_USED, info.used / _MB), (catalogue.GPU_MEMORY_TOTAL, info.total / _MB)]

    def _power(self, dev: GpuDevice) -> Reading:
        return [(catalogue.GPU_POWER, self._nvml.nvmlDeviceGetPowerUsage(dev.handle) / 1000.0)]  # mW

    def _temperature(self, dev: GpuDevice) -> Reading:
        sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        return [(catalogue.GPU_TEMPERATURE, float(self._nvml.nvmlDeviceGetTemperature(dev.handle, sensor)))]

    def _tree_memory(self, dev: GpuDevice) -> Reading:
        used_by: dict[int, int | None] = {}
        for kind, query in PROCESS_QUERIES:
            if (dev.uuid, kind) in self._kind_off:
                continue
            try:
                listed = self._processes(dev, kind, query)
            except _CallFailed as failed:
                if kind != "compute" and _absent(self._nvml, failed.exc):
                    # Graphics and MPS lists are extras: a device or driver without them still gives
                    # the compute figure.
                    self._kind_off.add((dev.uuid, kind))
                    continue
                raise
            for pid, used in listed:  # a context in two lists is one context: count it once
                known = used_by.get(pid)
                if pid not in used_by or (used is not None and (known is None or used > known)):
                    used_by[pid] = used
        ours = self._ours(used_by)
        if any(used_by[pid] is None for pid in ours):
            return []  # NVML cannot tell (containers, MIG without privileges): store nothing, not 0
        return [(catalogue.GPU_PROCESS_TREE_MEMORY, sum(used_by[pid] or 0 for pid in ours) / _MB)]

    def _processes(self, dev: GpuDevice, kind: str, query: str) -> list[tuple[int, int | None]]:
        """One process list, from the newest query this driver has (v3, then v2, then v1)."""
        nvml = self._nvml
        while True:
            at = self._version.get(kind, 0)
            suffix = _VERSIONS[at]
            function = query if suffix in ("", "v1") else query + suffix
            try:
                if suffix == "v1":
                    return _processes_v1(nvml, dev.handle, query)
                return [(int(p.pid), p.usedGpuMemory) for p in getattr(nvml, function)(dev.handle)]
            except Exception as exc:
                if _missing(nvml, exc) and at + 1 < len(_VERSIONS):
                    self._version[kind] = at + 1
                    after = _VERSIONS[at + 1]
                    log.info(
                        "aetherium-hpc: %s (%s) is not in this NVIDIA driver; using %s (%s) instead", function,
                        _VERSION_NAMES[suffix], query if after == "v1" else query + after, _VERSION_NAMES[after],
                    )  # fmt: skip
                    continue
                raise _CallFailed(function, exc) from exc

    def _ours(self, pids: Collection[int]) -> list[int]:
        """The pids that are the job's: in the monitor's tree, or (inside Slurm) in the job's cgroup."""
        tree = self._tree
        ours = [pid for pid in pids if pid in tree]
        rest = [pid for pid in pids if pid not in tree]
        if rest and self.job_cgroup is not None:
            if self._cgroup_tick != self._tick:  # read at most once per sample, and only when needed
                self._cgroup_pids = read_cgroup_pids(self.job_cgroup)
                self._cgroup_tick = self._tick
            ours.extend(pid for pid in rest if pid in self._cgroup_pids)
        return ours

    # -- failures ---------------------------------------------------------------------------
    def _field_failed(self, dev: GpuDevice, name: str, function: str, exc: BaseException) -> None:
        nvml = self._nvml
        code = _code(nvml, exc)
        if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED):
            self._final.add((dev.uuid, name))
            key = ("MIG" if dev.parent_uuid else dev.uuid, function)
            if key not in self._reported:
                self._reported.add(key)
                log.info(
                    "aetherium-hpc: %s %s%s does not report %s (%s: Not Supported); not read on it again%s. "
                    "Nothing to do", dev.kind, dev.uuid, f" ({dev.name})" if dev.name else "", name, function,
                    ", nor on other MIG devices: NVML has no per-slice figure" if dev.parent_uuid else "",
                )  # fmt: skip
            return
        self.errors += 1
        if code == getattr(nvml, "NVML_ERROR_GPU_IS_LOST", _GPU_IS_LOST):
            self._lost.add(dev.index)
            parent = dev.parent_uuid or dev.uuid
            log.warning(
                "aetherium-hpc: GPU %d %s (%s, PCI bus %s) is lost (%s on %s: GPU is lost): it fell off the bus or "
                "stopped answering, usually logged as Xid 79 in `dmesg`. No more rows for it%s this run. The node "
                "needs draining and the GPU a reset or the node a reboot: tell the admins",
                dev.index, parent, dev.name or "?", dev.bus_id or "?", function, dev.uuid,
                " nor its MIG devices" if dev.parent_uuid or dev.board else "",
            )  # fmt: skip
            return
        retry = self._retry.setdefault((dev.uuid, name), _Retry())
        retry.failures += 1
        retry.next_tick = self._tick + min(2 ** (retry.failures - 1), MAX_BACKOFF_SAMPLES) + 1
        key = (dev.uuid, function)
        if key in self._reported:
            return
        self._reported.add(key)
        log.warning(
            "aetherium-hpc: %s failed on %s %s (%s, PCI bus %s): %s: %s. Cause: %s. %s is retried with back-off "
            "(at most %d samples apart) and every error counted in monitor/nvml_errors; reported once for this "
            "device and function",
            function, dev.kind, dev.uuid, dev.name or "?", dev.bus_id or "?", type(exc).__name__, exc,
            _cause(nvml, exc), name, MAX_BACKOFF_SAMPLES,
        )  # fmt: skip


#: (field, NVML function it calls, reader) for a whole GPU; MIG devices and MIG boards read parts.
FIELDS: tuple[tuple[str, str, Callable[[GpuCollector, GpuDevice], Reading]], ...] = (
    ("utilization", "nvmlDeviceGetUtilizationRates", GpuCollector._utilization),
    ("memory", "nvmlDeviceGetMemoryInfo", GpuCollector._memory),
    ("power", "nvmlDeviceGetPowerUsage", GpuCollector._power),
    ("temperature", "nvmlDeviceGetTemperature", GpuCollector._temperature),
    ("process_tree_memory", "nvmlDeviceGetComputeRunningProcesses", GpuCollector._tree_memory),
)
MIG_FIELDS = tuple(f for f in FIELDS if f[0] not in ("power", "temperature"))  # power, temperature: the board's
BOARD_FIELDS = tuple(f for f in FIELDS if f[0] in ("power", "temperature"))


class NvmlUnavailable(Exception):
    """NVML cannot be used on this node; the message says why and what to do. ``absent``: the node
    has no NVML at all (no nvidia-ml-py, no NVIDIA library, or its driver not loaded)."""

    def __init__(self, why: str, absent: bool = False) -> None:
        super().__init__(why)
        self.absent = absent


def _load_nvml() -> Any:
    """pynvml after nvmlInit; :class:`NvmlUnavailable` says why GPU metrics are skipped and what to do."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "the nvidia-ml-py package (module pynvml) is not installed; pip install nvidia-ml-py", absent=True
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        if code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
            raise NvmlUnavailable(
                "the NVML library (libnvidia-ml.so.1) was not found: this node has no NVIDIA driver. "
                f"Run on a GPU node, or stop looking: {OFF_HINT}",
                absent=True,
            ) from None
        if code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
            raise NvmlUnavailable(
                "the NVIDIA driver is not loaded on this node (nvmlInit: Driver Not Loaded); check `nvidia-smi`",
                absent=True,
            ) from None
        if code == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", 4):
            raise NvmlUnavailable(
                "no permission to open the NVIDIA devices (nvmlInit: Insufficient Permissions); ask for GPUs with --gpus"
            ) from None
        raise NvmlUnavailable(f"nvmlInit failed: {exc}; check `nvidia-smi` on this node") from None
    except Exception as exc:  # a broken library, an odd platform
        raise NvmlUnavailable(
            f"nvmlInit failed: {type(exc).__name__}: {exc}; check `nvidia-smi` on this node"
        ) from None
    return pynvml
