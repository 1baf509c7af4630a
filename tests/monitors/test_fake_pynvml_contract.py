"""The fake pynvml against the installed nvidia-ml-py: same names, signatures, constants, error classes.

A fake that drifts from the real module makes the GPU tests prove nothing; this keeps them
honest without a GPU (the real module imports without a driver: only nvmlInit needs one).
"""

from __future__ import annotations

import inspect

import fake_pynvml
import pytest

pynvml = pytest.importorskip("pynvml")


@pytest.fixture(scope="module")
def fake() -> object:
    return fake_pynvml.make_module(fake_pynvml.two_gpus_and_mig())


def public_names(module: object) -> list[str]:
    return sorted(n for n in vars(module) if n.startswith(("nvml", "NVML", "_nvmlGetFunctionPointer")))


def test_every_name_of_the_fake_exists_in_nvidia_ml_py(fake: object) -> None:
    missing = [name for name in public_names(fake) if not hasattr(pynvml, name)]
    assert missing == []


def test_functions_take_the_same_parameters(fake: object) -> None:
    differ = {}
    for name in public_names(fake):
        ours = getattr(fake, name)
        if not callable(ours) or isinstance(ours, type):
            continue
        theirs = inspect.signature(getattr(pynvml, name))  # follows functools.wraps to the real parameters
        mine = inspect.signature(ours)
        spec = [(p.name, p.default is not inspect.Parameter.empty) for p in theirs.parameters.values()]
        if [(p.name, p.default is not inspect.Parameter.empty) for p in mine.parameters.values()] != spec:
            differ[name] = (str(mine), str(theirs))
    assert differ == {}


def test_constants_have_the_real_values(fake: object) -> None:
    constants = [n for n in public_names(fake) if n.startswith("NVML_") or n.startswith("nvmlMemory_")]
    assert "NVML_ERROR_GPU_IS_LOST" in constants and "NVML_ERROR_FUNCTION_NOT_FOUND" in constants
    assert {n: getattr(fake, n) for n in constants} == {n: getattr(pynvml, n) for n in constants}


def test_error_classes_match() -> None:
    classes = sorted(n for n in vars(fake_pynvml) if n.startswith("NVMLError_"))
    assert {"NVMLError_FunctionNotFound", "NVMLError_InvalidArgument", "NVMLError_NoPermission",
            "NVMLError_GpuIsLost", "NVMLError_NotSupported"} <= set(classes)  # fmt: skip
    for name in classes:
        ours, theirs = getattr(fake_pynvml, name), getattr(pynvml, name)
        assert issubclass(theirs, pynvml.NVMLError)
        assert ours().value == theirs().value, name  # NVMLError_X() carries its code, in both
        assert type(fake_pynvml.NVMLError(ours().value)) is ours  # NVMLError(code) builds the subclass
    # The library mismatch is a plain Exception in both: `except NVMLError` does not catch it.
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    assert not issubclass(fake_pynvml.NVMLLibraryMismatchError, fake_pynvml.NVMLError)
    assert str(fake_pynvml.NVMLError(fake_pynvml.NVML_ERROR_GPU_IS_LOST)) == str(
        pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    )


def test_strings_and_counts_as_the_real_module_returns_them(fake: object) -> None:
    f: object = fake
    f.nvmlInit()  # type: ignore[attr-defined]
    try:
        gpu = f.nvmlDeviceGetHandleByIndex(2)  # type: ignore[attr-defined]
        assert isinstance(f.nvmlDeviceGetName(gpu), str)  # type: ignore[attr-defined]
        assert isinstance(f.nvmlDeviceGetUUID(gpu), str)  # type: ignore[attr-defined]
        assert f.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7  # type: ignore[attr-defined]  # the maximum, not 2
        with pytest.raises(fake_pynvml.NVMLError_NotFound):
            f.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)  # type: ignore[attr-defined]  # an empty slot
    finally:
        f.nvmlShutdown()  # type: ignore[attr-defined]


def test_every_device_function_can_fail() -> None:
    device = fake_pynvml.FakeDevice(fake_pynvml.GPU0, mig_mode=1, migs=[fake_pynvml.FakeDevice(fake_pynvml.MIG_A)])
    mod = fake_pynvml.make_module([device])
    mod.nvmlInit()
    args = {"nvmlDeviceGetTemperature": (device, 0), "nvmlDeviceGetMigDeviceHandleByIndex": (device, 0)}
    for function in fake_pynvml.DEVICE_FUNCTIONS:
        target = device.migs[0] if function == "nvmlDeviceGetDeviceHandleFromMigDeviceHandle" else device
        assert target is not None
        target.fail_after = {function: (0, fake_pynvml.NVML_ERROR_TIMEOUT)}
        if function.endswith("RunningProcesses"):  # v1 is reached through the C symbol
            fn = mod._nvmlGetFunctionPointer(function)
            count = fake_pynvml.ctypes.c_uint(0)
            assert fn(target, fake_pynvml.ctypes.byref(count), None) == fake_pynvml.NVML_ERROR_TIMEOUT
        elif function == "nvmlDeviceGetHandleByIndex":
            with pytest.raises(fake_pynvml.NVMLError_Timeout):
                mod.nvmlDeviceGetHandleByIndex(0)
        else:
            with pytest.raises(fake_pynvml.NVMLError_Timeout):
                getattr(mod, function)(*args.get(function, (target,)))
        target.fail_after = {}


def test_structures_carry_fields_the_real_ones_have() -> None:
    device = fake_pynvml.FakeDevice(fake_pynvml.GPU0, processes=[(1, 2)])
    mod = fake_pynvml.make_module([device])
    mod.nvmlInit()
    try:
        answers = {
            "c_nvmlUtilization_t": mod.nvmlDeviceGetUtilizationRates(device),
            "c_nvmlMemory_t": mod.nvmlDeviceGetMemoryInfo(device),
            "c_nvmlMemory_v2_t": mod.nvmlDeviceGetMemoryInfo(device, version=mod.nvmlMemory_v2),
            "nvmlPciInfo_t": mod.nvmlDeviceGetPciInfo(device),
            "c_nvmlProcessInfo_t": mod.nvmlDeviceGetComputeRunningProcesses(device)[0],
        }
    finally:
        mod.nvmlShutdown()
    for struct, answer in answers.items():
        real = {name for name, *_ in getattr(pynvml, struct)._fields_}
        assert set(answer.values) <= real, (struct, set(answer.values) - real)
