"""The job's GPUs with NVML: utilisation, memory, power, temperature, our processes' memory.

The only module that imports ``pynvml`` (nvidia-ml-py). Which GPUs are the job's:

1. ``CUDA_VISIBLE_DEVICES`` when set, read as CUDA reads it: indices, ``GPU-``/``MIG-``
   UUIDs or unique UUID prefixes, the list ending at the first entry that names
   nothing. NVML numbers every GPU of the node and ignores that variable, so a CUDA
   index is mapped to the GPU of that rank in PCI bus id order (CUDA's order with
   ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and in practice on nodes of identical GPUs).
2. Else ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``: matched to the device minor number
   (``/dev/nvidiaN``), which does not depend on what the job's cgroup lets NVML see.
3. Else every GPU of the node.

A GPU in MIG mode stands for its MIG devices. The device column holds the GPU or
MIG UUID. A field a device cannot report, or an NVML call that starts failing in the
middle of a run, is logged once per NVML function and then skipped for that device
(a sentinel, as in nvitop); nothing raised by NVML leaves :meth:`GpuCollector.collect`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import units
from .base import Collector, Sample

log = logging.getLogger(__name__)

_MB = units.BYTES_PER_MB
_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED, for a pynvml that lacks the constant
_ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


@dataclass
class GpuDevice:
    """One monitored device: a whole GPU or a MIG device."""

    uuid: str
    handle: Any
    name: str = ""
    index: int = -1  # NVML index of the (parent) GPU
    parent_uuid: str | None = None  # set for MIG devices
    gpu_instance: int | None = None
    compute_instance: int | None = None


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str
    name: str
    bus_id: str
    minor: int | None
    mig_enabled: bool
    migs: list[GpuDevice] = field(default_factory=list)

    def devices(self) -> list[GpuDevice]:
        if self.mig_enabled:
            return list(self.migs)
        return [GpuDevice(self.uuid, self.handle, self.name, self.index)]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _try(fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    try:
        return fn(*args)
    except Exception:
        return default


def _enumerate(nvml: Any) -> list[_Gpu]:
    """Every GPU NVML sees, with its MIG devices."""
    gpus: list[_Gpu] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:  # e.g. a GPU the job's cgroup hides: not ours
            log.debug("NVML GPU %d skipped: %s", index, exc)
            continue
        name = _text(_try(nvml.nvmlDeviceGetName, handle, default=""))
        pci = _try(nvml.nvmlDeviceGetPciInfo, handle)
        bus_id = _text(getattr(pci, "busId", "")).upper()
        minor = _try(nvml.nvmlDeviceGetMinorNumber, handle)
        mode = (_try(nvml.nvmlDeviceGetMigMode, handle) or [0])[0]
        gpu = _Gpu(index, handle, uuid, name, bus_id, minor, mode == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))
        if gpu.mig_enabled:
            for slot in range(int(_try(nvml.nvmlDeviceGetMaxMigDeviceCount, handle, default=0))):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                    mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                except nvml.NVMLError:  # an empty slot: NVML_ERROR_NOT_FOUND
                    continue
                gpu.migs.append(
                    GpuDevice(
                        mig_uuid, mig, _text(_try(nvml.nvmlDeviceGetName, mig, default=name)), index, uuid,
                        _try(nvml.nvmlDeviceGetGpuInstanceId, mig), _try(nvml.nvmlDeviceGetComputeInstanceId, mig),
                    )
                )  # fmt: skip
        gpus.append(gpu)
    return gpus


def _unique(candidates: list[GpuDevice] | list[_Gpu]) -> Any:
    return candidates[0] if len(candidates) == 1 else None


def _match_cuda_visible(value: str, gpus: list[_Gpu]) -> list[GpuDevice]:
    """The devices ``CUDA_VISIBLE_DEVICES=value`` gives, read as CUDA reads it."""
    by_bus = sorted(gpus, key=lambda g: (g.bus_id == "", g.bus_id, g.index))
    migs = [m for g in gpus for m in g.migs]
    chosen: list[GpuDevice] = []
    for token in (t.strip() for t in value.split(",")):
        if token.isdigit():
            if int(token) >= len(by_bus):
                break
            chosen.extend(by_bus[int(token)].devices())
        elif token.startswith("GPU-"):
            gpu = _unique([g for g in gpus if g.uuid.startswith(token)])
            if gpu is None:
                break
            chosen.extend(gpu.devices())
        elif token.startswith("MIG-GPU-"):  # legacy form MIG-GPU-<uuid>/<gpu instance>/<compute instance>
            parts = token[len("MIG-") :].split("/")
            mig = None
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                gi, ci = int(parts[1]), int(parts[2])
                mig = _unique(
                    [m for m in migs if m.parent_uuid == parts[0] and m.gpu_instance == gi and m.compute_instance == ci]
                )
            if mig is None:
                break
            chosen.append(mig)
        elif token.startswith("MIG-"):
            mig = _unique([m for m in migs if m.uuid.startswith(token)])
            if mig is None:
                break
            chosen.append(mig)
        else:  # CUDA stops at the first entry that names no device
            break
    return _dedupe(chosen)


def _slurm_ids(value: str) -> list[int]:
    ids: list[int] = []
    for token in value.split(","):
        lo, _, hi = token.strip().partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def _dedupe(devices: list[GpuDevice]) -> list[GpuDevice]:
    seen: set[str] = set()
    return [d for d in devices if not (d.uuid in seen or seen.add(d.uuid))]  # type: ignore[func-returns-value]


def select_devices(nvml: Any, environ: Mapping[str, str]) -> tuple[list[GpuDevice], str, list[_Gpu]]:
    """(the job's devices, which rule chose them, every GPU of the node)."""
    gpus = _enumerate(nvml)
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return _match_cuda_visible(cuda, gpus), f"CUDA_VISIBLE_DEVICES={cuda!r}", gpus
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = environ.get(name)
        if value:
            ids = _slurm_ids(value)
            picked = [g for i in ids for g in gpus if (g.minor if g.minor is not None else g.index) == i]
            return _dedupe([d for g in picked for d in g.devices()]), f"{name}={value!r}", gpus
    return _dedupe([d for g in gpus for d in g.devices()]), "all GPUs of the node", gpus


# -- what is read from each device --------------------------------------------------------------
Reading = list[tuple[units.MetricSpec, float]]


def _utilization(nvml: Any, dev: GpuDevice, tree: Collection[int]) -> Reading:
    return [(units.GPU_UTILIZATION, float(nvml.nvmlDeviceGetUtilizationRates(dev.handle).gpu))]


def _memory(nvml: Any, dev: GpuDevice, tree: Collection[int]) -> Reading:
    info = nvml.nvmlDeviceGetMemoryInfo(dev.handle)
    return [(units.GPU_MEMORY_USED, info.used / _MB), (units.GPU_MEMORY_TOTAL, info.total / _MB)]


def _power(nvml: Any, dev: GpuDevice, tree: Collection[int]) -> Reading:
    return [(units.GPU_POWER, nvml.nvmlDeviceGetPowerUsage(dev.handle) / 1000.0)]  # mW


def _temperature(nvml: Any, dev: GpuDevice, tree: Collection[int]) -> Reading:
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    return [(units.GPU_TEMPERATURE, float(nvml.nvmlDeviceGetTemperature(dev.handle, sensor)))]


def _tree_memory(nvml: Any, dev: GpuDevice, tree: Collection[int]) -> Reading:
    used = 0
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(dev.handle):
        if proc.pid in tree and proc.usedGpuMemory is not None:  # None: not available (MIG, containers)
            used += proc.usedGpuMemory
    return [(units.GPU_PROCESS_TREE_MEMORY, used / _MB)]


#: (field, NVML function it calls, reader)
FIELDS: tuple[tuple[str, str, Callable[[Any, GpuDevice, Collection[int]], Reading]], ...] = (
    ("utilization", "nvmlDeviceGetUtilizationRates", _utilization),
    ("memory", "nvmlDeviceGetMemoryInfo", _memory),
    ("power", "nvmlDeviceGetPowerUsage", _power),
    ("temperature", "nvmlDeviceGetTemperature", _temperature),
    ("process_tree_memory", "nvmlDeviceGetComputeRunningProcesses", _tree_memory),
)


def _load_nvml() -> tuple[Any, str | None]:
    """(pynvml after nvmlInit, None) or (None, why GPU metrics are skipped and what to do)."""
    try:
        import pynvml
    except ImportError:
        return None, "the nvidia-ml-py package (module pynvml) is not installed; pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        if code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
            return None, (
                "the NVML library (libnvidia-ml.so.1) was not found: this node has no NVIDIA driver. "
                "Run on a GPU node, or pass gpu=False to stop looking"
            )
        if code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
            return (
                None,
                "the NVIDIA driver is not loaded on this node (nvmlInit: Driver Not Loaded); check `nvidia-smi`",
            )
        if code == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", 4):
            return (
                None,
                "no permission to open the NVIDIA devices (nvmlInit: Insufficient Permissions); ask for GPUs with --gpus",
            )
        return None, f"nvmlInit failed: {exc}; check `nvidia-smi` on this node"
    except Exception as exc:  # a broken library, an odd platform
        return None, f"nvmlInit failed: {type(exc).__name__}: {exc}; check `nvidia-smi` on this node"
    return pynvml, None


class GpuCollector(Collector):
    """Per-device NVML readings for the job's GPUs; does nothing (after one info line) without them."""

    name = "gpu"

    def __init__(
        self,
        tree_pids: Callable[[], Collection[int]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._tree_pids = tree_pids
        self._environ = environ
        self._nvml: Any = None
        self.devices: list[GpuDevice] = []
        self.skipped: str | None = None  # why GPU metrics are off, once start() has run
        self._fields = [f for f in FIELDS if tree_pids is not None or f[0] != "process_tree_memory"]
        self._off: set[tuple[str, str]] = set()  # (device uuid, field) no longer read
        self._reported: set[tuple[str, bool]] = set()  # (NVML function, unsupported?) already logged

    def start(self) -> None:
        nvml, why = _load_nvml()
        if nvml is None:
            self._skip(why or "NVML is not available")
            return
        environ = os.environ if self._environ is None else self._environ
        try:
            devices, rule, gpus = select_devices(nvml, environ)
        except Exception as exc:
            self._shutdown(nvml)
            self._skip(f"listing the GPUs with NVML failed ({type(exc).__name__}: {exc}); check `nvidia-smi`")
            return
        if not gpus:
            self._shutdown(nvml)
            self._skip("NVML sees no GPU on this node; request GPUs (e.g. --gpus=1) or pass gpu=False")
            return
        if not devices:
            self._shutdown(nvml)
            listed = ", ".join(f"{g.index}:{g.uuid}" for g in gpus)
            self._skip(
                f"{rule} names none of this node's GPUs ({listed}); this job was given no GPU, or the variable "
                "holds indices/UUIDs of another node"
            )
            return
        self._nvml = nvml
        self.devices = devices
        log.info(
            "aetherium-hpc: GPU metrics from %d device(s) chosen by %s: %s", len(devices), rule,
            ", ".join(f"{d.uuid} ({d.name})" if d.name else d.uuid for d in devices),
        )  # fmt: skip

    def _skip(self, why: str) -> None:
        self.skipped = why
        log.info("aetherium-hpc: GPU metrics skipped: %s", why)

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass

    def collect(self, out: list[Sample], timestamp: float) -> None:
        nvml = self._nvml
        if nvml is None:
            return
        tree: Collection[int] = self._tree_pids() if self._tree_pids is not None else ()
        off = self._off
        for dev in self.devices:
            uuid = dev.uuid
            for name, function, reader in self._fields:
                if (uuid, name) in off:
                    continue
                try:
                    readings = reader(nvml, dev, tree)
                except Exception as exc:
                    self._field_failed(dev, name, function, exc)
                    continue
                for spec, value in readings:
                    out.append((spec.metric_type, spec.metric_name, value, spec.unit, uuid))

    def _field_failed(self, dev: GpuDevice, name: str, function: str, exc: Exception) -> None:
        """Stop reading this field of this device; say so once per NVML function."""
        self._off.add((dev.uuid, name))
        nvml_error = getattr(self._nvml, "NVMLError", ())
        unsupported = isinstance(exc, nvml_error) and getattr(exc, "value", None) == getattr(
            self._nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED
        )
        if (function, unsupported) in self._reported:
            return
        self._reported.add((function, unsupported))
        kind = "MIG device" if dev.parent_uuid else "GPU"
        if unsupported:
            log.info(
                "aetherium-hpc: %s %s does not report %s (%s: Not Supported); skipped for it and any other "
                "device that cannot. Usual for MIG devices and some boards: nothing to do",
                kind, dev.uuid, name, function,
            )  # fmt: skip
        else:
            log.warning(
                "aetherium-hpc: %s failed on %s %s: %s: %s; %s is no longer sampled on it (reported once). "
                "Check `nvidia-smi -q` on this node; a lost GPU needs the node drained",
                function, kind, dev.uuid, type(exc).__name__, exc, name,
            )  # fmt: skip

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            self._shutdown(nvml)
