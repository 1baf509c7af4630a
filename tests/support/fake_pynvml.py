"""A fake ``pynvml`` for machines without a GPU: inject it with ``monkeypatch.setitem(sys.modules, ...)``.

It follows nvidia-ml-py (tests/monitors/test_fake_pynvml_contract.py compares names, signatures and
constants with the installed module): the same error codes, the same ``NVMLError_*``
classes built from them, ``NVMLLibraryMismatchError`` (not an ``NVMLError``) from the
unversioned process queries when the driver lacks their ``_v3`` symbol, strings (not
bytes) from ``nvmlDeviceGetName`` / ``nvmlDeviceGetUUID``, the maximum possible count from
``nvmlDeviceGetMaxMigDeviceCount`` (empty slots answer NOT_FOUND), ``NO_PERMISSION`` from
``nvmlDeviceGetHandleByIndex`` for a GPU the job's cgroup hides (Slurm's ConstrainDevices:
NVML still counts it). Every device function can be made to fail: ``unsupported`` (Not
Supported from the first call) or ``fail_after`` (an error code after a number of good
calls, for an error in the middle of a run; a list of codes is raised one per call, then
the function works again).
"""

from __future__ import annotations

import ctypes
import string
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The codes of nvidia-ml-py (the contract test checks every one).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
nvmlMemory_v2 = 0x02000028

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLLibraryMismatchError(Exception):
    """Like pynvml's: an unversioned call whose symbol the driver lacks. Not an NVMLError."""


class NVMLError(Exception):
    """Like pynvml.NVMLError: ``NVMLError(code)`` builds the subclass of that code."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _build_error_classes() -> None:
    """One subclass per NVML_ERROR_* code, named as pynvml names them (NVMLError_GpuIsLost)."""
    for name, code in list(globals().items()):
        if not name.startswith("NVML_ERROR_"):
            continue
        cls_name = "NVMLError_" + string.capwords(name[len("NVML_ERROR_") :], "_").replace("_", "")

        def new(cls: type[NVMLError], *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        globals()[cls_name] = NVMLError._valClassMapping[code] = type(cls_name, (NVMLError,), {"__new__": new})


_build_error_classes()


@dataclass
class FakeDevice:
    """One GPU (or, inside ``migs``, one MIG device)."""

    uuid: str
    name: str = "Fake A100"
    bus_id: str = "00000000:00:00.0"
    minor: int = 0
    util: int = 40
    mem_used: int = 1024 * 2**20  # bytes
    mem_reserved: int = 0  # bytes the driver holds; nvmlDeviceGetMemoryInfo(v2) reports it apart
    mem_total: int = 40960 * 2**20
    power_mw: int = 250_000
    temp_c: int = 55
    mig_mode: int = 0
    migs: list[FakeDevice | None] = field(default_factory=list)  # None: an empty MIG slot
    max_migs: int = 7  # what nvmlDeviceGetMaxMigDeviceCount answers on a MIG-capable GPU
    gpu_instance: int = 0
    compute_instance: int = 0
    hidden: bool = False  # the job's cgroup hides it (ConstrainDevices): NO_PERMISSION on its handle
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # compute: (pid, used bytes)
    graphics_processes: list[tuple[int, int | None]] = field(default_factory=list)
    mps_processes: list[tuple[int, int | None]] = field(default_factory=list)  # MPS clients
    unsupported: set[str] = field(default_factory=set)  # NVML function names
    # function -> (good calls, error code or list of codes raised one per call afterwards)
    fail_after: dict[str, tuple[int, int | list[int]]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    parent: FakeDevice | None = None  # set for MIG devices by make_module


@dataclass
class _Struct:
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


#: The per-process symbols of the NVML C library, newest first (what an old driver lacks).
PROCESS_SYMBOLS = tuple(
    f"nvmlDevice{kind}RunningProcesses{suffix}"
    for kind in ("GetCompute", "GetGraphics", "GetMPSCompute")
    for suffix in ("_v3", "_v2", "")
)


def make_module(
    devices: list[FakeDevice], init_error: int | None = None, missing_symbols: set[str] | None = None
) -> types.ModuleType:
    """A module that answers NVML calls about ``devices``.

    ``init_error`` makes nvmlInit fail; ``missing_symbols`` are C functions this "driver"
    lacks (e.g. ``nvmlDeviceGetComputeRunningProcesses_v3`` on a driver older than 510).
    """
    mod = types.ModuleType("pynvml")
    mod.__dict__.update(
        {k: v for k, v in globals().items() if k.startswith(("NVML_", "NVMLError", "nvmlMemory_"))}
        | {"NVMLLibraryMismatchError": NVMLLibraryMismatchError}
    )
    state = {"init": 0, "shutdown": 0}
    missing = set(missing_symbols or ())
    mod.__dict__.update(state=state, devices=devices, missing_symbols=missing)
    for dev in devices:
        for mig in dev.migs:
            if mig is not None:
                mig.parent = dev

    def call(dev: FakeDevice, function: str) -> None:
        if state["init"] <= state["shutdown"]:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        n = dev.calls[function] = dev.calls.get(function, 0) + 1
        if function in dev.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if function in dev.fail_after:
            good, codes = dev.fail_after[function]
            if n > good:
                if isinstance(codes, int):
                    raise NVMLError(codes)
                if n - good <= len(codes):
                    raise NVMLError(codes[n - good - 1])

    def symbol(name: str) -> None:
        if name in missing:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)

    def nvmlInit() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        state["init"] += 1

    def nvmlShutdown() -> None:
        if state["init"] <= state["shutdown"]:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        state["shutdown"] += 1

    def nvmlDeviceGetCount() -> int:
        if state["init"] <= state["shutdown"]:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return len(devices)  # hidden GPUs included: NVML counts them, then refuses their handle

    def nvmlDeviceGetHandleByIndex(index: int) -> FakeDevice:
        if not 0 <= index < len(devices):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        dev = devices[index]
        call(dev, "nvmlDeviceGetHandleByIndex")
        if dev.hidden:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        return dev

    def nvmlDeviceGetUUID(handle: FakeDevice) -> str:
        call(handle, "nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetName(handle: FakeDevice) -> str:
        call(handle, "nvmlDeviceGetName")
        return handle.name  # str: nvidia-ml-py decodes (convertStrBytes)

    def nvmlDeviceGetPciInfo(handle: FakeDevice) -> _Struct:
        call(handle, "nvmlDeviceGetPciInfo")
        return _Struct({"busId": handle.bus_id.encode(), "busIdLegacy": handle.bus_id[4:].encode()})

    def nvmlDeviceGetMinorNumber(handle: FakeDevice) -> int:
        call(handle, "nvmlDeviceGetMinorNumber")
        return handle.minor

    def nvmlDeviceGetMigMode(device: FakeDevice) -> list[int]:
        call(device, "nvmlDeviceGetMigMode")
        return [device.mig_mode, device.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(device: FakeDevice) -> int:
        call(device, "nvmlDeviceGetMaxMigDeviceCount")
        return device.max_migs  # the most this GPU can hold, not how many exist now

    def nvmlDeviceGetMigDeviceHandleByIndex(device: FakeDevice, index: int) -> FakeDevice:
        call(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not 0 <= index < device.max_migs:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        mig = device.migs[index] if index < len(device.migs) else None
        if mig is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return mig

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migDevice: FakeDevice) -> FakeDevice:
        call(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if migDevice.parent is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return migDevice.parent

    def nvmlDeviceGetGpuInstanceId(device: FakeDevice) -> int:
        call(device, "nvmlDeviceGetGpuInstanceId")
        return device.gpu_instance

    def nvmlDeviceGetComputeInstanceId(device: FakeDevice) -> int:
        call(device, "nvmlDeviceGetComputeInstanceId")
        return device.compute_instance

    def nvmlDeviceGetUtilizationRates(handle: FakeDevice) -> _Struct:
        call(handle, "nvmlDeviceGetUtilizationRates")
        return _Struct({"gpu": handle.util, "memory": handle.util // 2})

    def nvmlDeviceGetMemoryInfo(handle: FakeDevice, version: int | None = None) -> _Struct:
        call(handle, "nvmlDeviceGetMemoryInfo")
        if not version:  # v1: reserved memory is counted in "used"
            used = handle.mem_used + handle.mem_reserved
            return _Struct({"used": used, "total": handle.mem_total, "free": handle.mem_total - used})
        symbol("nvmlDeviceGetMemoryInfo_v2")
        return _Struct({
            "version": version, "used": handle.mem_used, "reserved": handle.mem_reserved, "total": handle.mem_total,
            "free": handle.mem_total - handle.mem_used - handle.mem_reserved,
        })  # fmt: skip

    def nvmlDeviceGetPowerUsage(handle: FakeDevice) -> int:
        call(handle, "nvmlDeviceGetPowerUsage")
        return handle.power_mw

    def nvmlDeviceGetTemperature(handle: FakeDevice, sensor: int) -> int:
        call(handle, "nvmlDeviceGetTemperature")
        return handle.temp_c

    def processes(handle: FakeDevice, kind: str, suffix: str) -> list[_Struct]:
        call(handle, f"nvmlDevice{kind}RunningProcesses{suffix}")
        symbol(f"nvmlDevice{kind}RunningProcesses{suffix}")
        listed = {"GetCompute": handle.processes, "GetGraphics": handle.graphics_processes}.get(
            kind, handle.mps_processes
        )
        return [_Struct({"pid": pid, "usedGpuMemory": used}) for pid, used in listed]

    def unversioned(kind: str) -> Callable[[FakeDevice], list[_Struct]]:
        """pynvml's unversioned wrapper: the _v3 query, NVMLLibraryMismatchError when the symbol is missing."""

        def query(handle: FakeDevice) -> list[_Struct]:
            try:
                return processes(handle, kind, "_v3")
            except NVMLError as exc:
                if exc.value != NVML_ERROR_FUNCTION_NOT_FOUND:
                    raise
                raise NVMLLibraryMismatchError(
                    f"Unversioned function called and the pyNVML version does not match the NVML lib version "
                    f"(nvmlDevice{kind}RunningProcesses)"
                ) from None

        return query

    def versioned(kind: str, suffix: str) -> Callable[[FakeDevice], list[_Struct]]:
        def query(handle: FakeDevice) -> list[_Struct]:
            return processes(handle, kind, suffix)

        return query

    def _nvmlGetFunctionPointer(name: str) -> Callable[..., int]:
        """A C symbol of the fake library; the v1 process queries are reached this way."""
        if state["init"] <= state["shutdown"]:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        symbol(name)
        kinds = {f"nvmlDevice{k}RunningProcesses": k for k in ("GetCompute", "GetGraphics", "GetMPSCompute")}
        if name not in kinds:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)

        def c_function(handle: FakeDevice, count_ref: Any, infos: Any) -> int:
            """nvmlReturn_t fn(nvmlDevice_t, unsigned int *infoCount, nvmlProcessInfo_v1_t *infos)."""
            try:
                listed = processes(handle, kinds[name], "")
            except NVMLError as exc:
                return exc.value
            count = ctypes.cast(count_ref, ctypes.POINTER(ctypes.c_uint)).contents
            if infos is None:
                if not listed:
                    return NVML_SUCCESS
                count.value = len(listed)
                return NVML_ERROR_INSUFFICIENT_SIZE
            if count.value < len(listed):
                count.value = len(listed)
                return NVML_ERROR_INSUFFICIENT_SIZE
            for i, proc in enumerate(listed):
                infos[i].pid = proc.pid
                infos[i].usedGpuMemory = 2**64 - 1 if proc.usedGpuMemory is None else proc.usedGpuMemory
            count.value = len(listed)
            return NVML_SUCCESS

        return c_function

    for fn in (
        nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetUUID,
        nvmlDeviceGetName, nvmlDeviceGetPciInfo, nvmlDeviceGetMinorNumber, nvmlDeviceGetMigMode,
        nvmlDeviceGetMaxMigDeviceCount, nvmlDeviceGetMigDeviceHandleByIndex,
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle, nvmlDeviceGetGpuInstanceId,
        nvmlDeviceGetComputeInstanceId, nvmlDeviceGetUtilizationRates, nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetPowerUsage, nvmlDeviceGetTemperature, _nvmlGetFunctionPointer,
    ):  # fmt: skip
        setattr(mod, fn.__name__, fn)
    # The process queries: nvmlDevice{GetCompute,GetGraphics,GetMPSCompute}RunningProcesses[_v3|_v2].
    for kind in ("GetCompute", "GetGraphics", "GetMPSCompute"):
        base = f"nvmlDevice{kind}RunningProcesses"
        setattr(mod, base, unversioned(kind))
        for suffix in ("_v3", "_v2"):
            setattr(mod, base + suffix, versioned(kind, suffix))
    return mod


#: The NVML functions of the fake whose errors a test can inject (every device function).
DEVICE_FUNCTIONS = (
    "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetMinorNumber", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature",
    *PROCESS_SYMBOLS,
)  # fmt: skip

GPU0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"
GPU2 = "GPU-cccccccc-2222-2222-2222-222222222222"
GPU3 = "GPU-ffffffff-5555-5555-5555-555555555555"
MIG_A = "MIG-dddddddd-3333-3333-3333-333333333333"
MIG_B = "MIG-eeeeeeee-4444-4444-4444-444444444444"

#: What NVML refuses on a MIG device (board-level and per-slice utilisation).
MIG_UNSUPPORTED = frozenset({"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"})


def two_gpus_and_mig() -> list[FakeDevice]:
    """GPU0 and GPU1 whole; GPU2 in MIG mode with two MIG devices (and an empty slot)."""
    return [
        FakeDevice(GPU0, bus_id="00000000:3B:00.0", minor=0, util=10, power_mw=100_000,
                   unsupported={"nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount"}),  # not MIG-capable
        FakeDevice(GPU1, bus_id="00000000:5E:00.0", minor=1, util=90, power_mw=300_500, mem_used=8192 * 2**20),
        FakeDevice(
            GPU2, name="Fake A100 MIG", bus_id="00000000:86:00.0", minor=2, mig_mode=1, power_mw=210_000, temp_c=61,
            migs=[
                FakeDevice(MIG_A, name="Fake 3g.20gb", mem_total=20480 * 2**20, gpu_instance=1, compute_instance=0,
                           unsupported=set(MIG_UNSUPPORTED)),
                None,
                FakeDevice(MIG_B, name="Fake 3g.20gb", mem_total=20480 * 2**20, gpu_instance=2, compute_instance=0,
                           unsupported=set(MIG_UNSUPPORTED)),
            ],
        ),
    ]  # fmt: skip
