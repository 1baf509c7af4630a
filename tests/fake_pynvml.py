"""A fake ``pynvml`` for machines without a GPU: inject it with ``monkeypatch.setitem(sys.modules, ...)``.

It implements the NVML calls the GPU monitor makes, with the same error classes and
codes as nvidia-ml-py; each device can refuse a function (Not Supported) or start
failing after a number of calls (an error in the middle of a run).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
_STRINGS = {
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: ``NVMLError(code)`` builds the subclass of that code."""

    _by_code: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML error {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    cls = type(f"NVMLError_{name}", (NVMLError,), {})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_NoPermission = _error_class("NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotSupported = _error_class("NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NotFound = _error_class("NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _error_class("DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("Unknown", NVML_ERROR_UNKNOWN)


@dataclass
class FakeDevice:
    """One GPU (or, inside ``migs``, one MIG device)."""

    uuid: str
    name: str = "Fake A100"
    bus_id: str = "00000000:00:00.0"
    minor: int = 0
    util: int = 40
    mem_used: int = 1024 * 2**20  # bytes
    mem_total: int = 40960 * 2**20
    power_mw: int = 250_000
    temp_c: int = 55
    mig_mode: int = 0
    migs: list[FakeDevice | None] = field(default_factory=list)  # None: an empty MIG slot
    gpu_instance: int = 0
    compute_instance: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes)
    unsupported: set[str] = field(default_factory=set)  # NVML function names
    fail_after: dict[str, tuple[int, int]] = field(default_factory=dict)  # function -> (good calls, error code)
    calls: dict[str, int] = field(default_factory=dict)


@dataclass
class _Struct:
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def make_module(devices: list[FakeDevice], init_error: int | None = None) -> types.ModuleType:
    """A module that answers NVML calls about ``devices``; ``init_error`` makes nvmlInit fail."""
    mod = types.ModuleType("pynvml")
    mod.__dict__.update({k: v for k, v in globals().items() if k.startswith(("NVML_ERROR_", "NVMLError"))})
    state = {"init": 0, "shutdown": 0}
    mod.__dict__.update(NVML_TEMPERATURE_GPU=0, NVML_DEVICE_MIG_ENABLE=1, state=state, devices=devices)

    def call(dev: FakeDevice, function: str) -> None:
        if state["init"] <= state["shutdown"]:
            raise NVMLError(1)  # Uninitialized
        n = dev.calls[function] = dev.calls.get(function, 0) + 1
        if function in dev.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if function in dev.fail_after and n > dev.fail_after[function][0]:
            raise NVMLError(dev.fail_after[function][1])

    def nvmlInit() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        state["init"] += 1

    def nvmlShutdown() -> None:
        state["shutdown"] += 1

    def nvmlDeviceGetCount() -> int:
        return len(devices)

    def nvmlDeviceGetHandleByIndex(index: int) -> FakeDevice:
        if not 0 <= index < len(devices):
            raise NVMLError(2)  # Invalid Argument
        return devices[index]

    def nvmlDeviceGetUUID(dev: FakeDevice) -> str:
        return dev.uuid

    def nvmlDeviceGetName(dev: FakeDevice) -> bytes:
        return dev.name.encode()  # old pynvml versions return bytes

    def nvmlDeviceGetPciInfo(dev: FakeDevice) -> _Struct:
        return _Struct({"busId": dev.bus_id.encode()})

    def nvmlDeviceGetMinorNumber(dev: FakeDevice) -> int:
        return dev.minor

    def nvmlDeviceGetMigMode(dev: FakeDevice) -> list[int]:
        call(dev, "nvmlDeviceGetMigMode")
        return [dev.mig_mode, dev.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(dev: FakeDevice) -> int:
        return len(dev.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(dev: FakeDevice, index: int) -> FakeDevice:
        mig = dev.migs[index]
        if mig is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return mig

    def nvmlDeviceGetGpuInstanceId(dev: FakeDevice) -> int:
        return dev.gpu_instance

    def nvmlDeviceGetComputeInstanceId(dev: FakeDevice) -> int:
        return dev.compute_instance

    def nvmlDeviceGetUtilizationRates(dev: FakeDevice) -> _Struct:
        call(dev, "nvmlDeviceGetUtilizationRates")
        return _Struct({"gpu": dev.util, "memory": dev.util // 2})

    def nvmlDeviceGetMemoryInfo(dev: FakeDevice) -> _Struct:
        call(dev, "nvmlDeviceGetMemoryInfo")
        return _Struct({"used": dev.mem_used, "total": dev.mem_total, "free": dev.mem_total - dev.mem_used})

    def nvmlDeviceGetPowerUsage(dev: FakeDevice) -> int:
        call(dev, "nvmlDeviceGetPowerUsage")
        return dev.power_mw

    def nvmlDeviceGetTemperature(dev: FakeDevice, sensor: int) -> int:
        call(dev, "nvmlDeviceGetTemperature")
        return dev.temp_c

    def nvmlDeviceGetComputeRunningProcesses(dev: FakeDevice) -> list[_Struct]:
        call(dev, "nvmlDeviceGetComputeRunningProcesses")
        return [_Struct({"pid": pid, "usedGpuMemory": used}) for pid, used in dev.processes]

    for fn in (
        nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetUUID,
        nvmlDeviceGetName, nvmlDeviceGetPciInfo, nvmlDeviceGetMinorNumber, nvmlDeviceGetMigMode,
        nvmlDeviceGetMaxMigDeviceCount, nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetGpuInstanceId,
        nvmlDeviceGetComputeInstanceId, nvmlDeviceGetUtilizationRates, nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetPowerUsage, nvmlDeviceGetTemperature, nvmlDeviceGetComputeRunningProcesses,
    ):  # fmt: skip
        setattr(mod, fn.__name__, fn)
    return mod


GPU0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"
GPU2 = "GPU-cccccccc-2222-2222-2222-222222222222"
MIG_A = "MIG-dddddddd-3333-3333-3333-333333333333"
MIG_B = "MIG-eeeeeeee-4444-4444-4444-444444444444"


def two_gpus_and_mig() -> list[FakeDevice]:
    """GPU0 and GPU1 whole; GPU2 in MIG mode with two MIG devices (and an empty slot)."""
    mig_unsupported = {"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"}
    return [
        FakeDevice(GPU0, bus_id="00000000:3B:00.0", minor=0, util=10, power_mw=100_000,
                   unsupported={"nvmlDeviceGetMigMode"}),  # not MIG-capable
        FakeDevice(GPU1, bus_id="00000000:5E:00.0", minor=1, util=90, power_mw=300_500, mem_used=8192 * 2**20),
        FakeDevice(
            GPU2, name="Fake A100 MIG", bus_id="00000000:86:00.0", minor=2, mig_mode=1,
            migs=[
                FakeDevice(MIG_A, name="Fake 3g.20gb", mem_total=20480 * 2**20, gpu_instance=1, compute_instance=0,
                           unsupported=set(mig_unsupported)),
                None,
                FakeDevice(MIG_B, name="Fake 3g.20gb", mem_total=20480 * 2**20, gpu_instance=2, compute_instance=0,
                           unsupported=set(mig_unsupported)),
            ],
        ),
    ]  # fmt: skip
