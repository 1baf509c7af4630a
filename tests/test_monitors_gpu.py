"""GPU monitor against a fake pynvml (this machine has no GPU): selection, MIG, errors, the store."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fake_pynvml
import pytest
from fake_pynvml import GPU0, GPU1, GPU2, MIG_A, MIG_B, FakeDevice, make_module, two_gpus_and_mig

from aetherium_hpc import get_db, init_db
from aetherium_hpc.monitors import ResourceMonitor, log_system_resources
from aetherium_hpc.monitors.base import Sample
from aetherium_hpc.monitors.gpu import GpuCollector

GPU_LOGGER = "aetherium_hpc.monitors.gpu"


@pytest.fixture(autouse=True)
def _clean_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeDevice]]:
    devices = two_gpus_and_mig()
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices))
    yield devices


def collect(collector: GpuCollector, ticks: int = 1) -> list[list[Sample]]:
    collector.start()
    out = []
    for _ in range(ticks):
        samples: list[Sample] = []
        collector.collect(samples, time.time())
        out.append(samples)
    collector.close()
    return out


def devices_of(samples: list[Sample]) -> set[str]:
    return {s[4] for s in samples}


def by_key(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s[1], s[4]): s[2] for s in samples}


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == GPU_LOGGER and r.levelno == level]


def test_all_gpus_with_mig_devices_in_place_of_their_parent(nvml: list[FakeDevice]) -> None:
    [samples] = collect(GpuCollector())
    assert devices_of(samples) == {GPU0, GPU1, MIG_A, MIG_B}
    values = by_key(samples)
    assert values[("utilization", GPU1)] == 90.0
    assert values[("memory_used", GPU1)] == 8192.0
    assert values[("memory_total", GPU0)] == 40960.0
    assert values[("power", GPU1)] == pytest.approx(300.5)
    assert values[("temperature", GPU0)] == 55.0
    assert values[("memory_total", MIG_A)] == 20480.0
    units = {(s[0], s[1]): s[3] for s in samples}
    assert units == {
        ("gpu", "utilization"): "%", ("gpu", "memory_used"): "MB", ("gpu", "memory_total"): "MB",
        ("gpu", "power"): "W", ("gpu", "temperature"): "C",
    }  # fmt: skip


def test_unsupported_fields_are_skipped_with_one_info_line_per_function(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(), ticks=3)
    for samples in ticks:
        mig_metrics = {s[1] for s in samples if s[4] in (MIG_A, MIG_B)}
        assert mig_metrics == {"memory_used", "memory_total"}
        assert {s[1] for s in samples if s[4] == GPU0} == {
            "utilization", "memory_used", "memory_total", "power", "temperature"
        }  # fmt: skip
    unsupported = [m for m in messages(caplog, logging.INFO) if "Not Supported" in m]
    assert len(unsupported) == 3  # utilization, power, temperature: once each, not per device or tick
    assert all("MIG device" in m for m in unsupported)
    assert not messages(caplog, logging.WARNING)
    # Once refused, the function is not called again on that device.
    assert nvml[2].migs[0] is not None and nvml[2].migs[0].calls["nvmlDeviceGetPowerUsage"] == 1


def test_nvml_error_mid_run_is_reported_once_and_the_field_skipped(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture
) -> None:
    nvml[0].fail_after["nvmlDeviceGetTemperature"] = (2, fake_pynvml.NVML_ERROR_UNKNOWN)
    nvml[1].fail_after["nvmlDeviceGetTemperature"] = (3, fake_pynvml.NVML_ERROR_GPU_IS_LOST)
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(), ticks=6)
    temps = [{s[4] for s in samples if s[1] == "temperature"} for samples in ticks]
    assert temps == [{GPU0, GPU1}, {GPU0, GPU1}, {GPU1}, set(), set(), set()]
    assert all(any(s[1] == "power" for s in samples) for samples in ticks)  # the rest carries on
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "nvmlDeviceGetTemperature" in warnings[0] and GPU0 in warnings[0]


def test_errors_inside_a_running_monitor_never_escape_the_loop(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture
) -> None:
    nvml[0].fail_after["nvmlDeviceGetMemoryInfo"] = (1, fake_pynvml.NVML_ERROR_GPU_IS_LOST)
    nvml[1].fail_after["nvmlDeviceGetUtilizationRates"] = (0, fake_pynvml.NVML_ERROR_UNKNOWN)
    seen: list[list[Sample]] = []
    monitor = ResourceMonitor(0.02, collectors=[GpuCollector()], sink=lambda s, ts: seen.append(s), store_getter=None)
    with monitor:
        deadline = time.monotonic() + 10
        while monitor.samples_taken < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert monitor.samples_taken >= 5
    assert not any(s[1] == "memory_used" and s[4] == GPU0 for s in seen[-1])
    assert any(s[1] == "power" and s[4] == GPU0 for s in seen[-1])
    assert len(messages(caplog, logging.WARNING)) == 2


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1", [GPU1]),
        ("GPU-bbbbbbbb", [GPU1]),  # a unique UUID prefix, as CUDA accepts
        (GPU1, [GPU1]),
        ("1,0", [GPU1, GPU0]),
        ("0,0,1", [GPU0, GPU1]),
        ("2", [MIG_A, MIG_B]),  # a GPU in MIG mode stands for its MIG devices
        (MIG_B, [MIG_B]),
        ("MIG-GPU-cccccccc-2222-2222-2222-222222222222/1/0", [MIG_A]),  # legacy MIG form
        ("1,banana,0", [GPU1]),  # CUDA stops at the first entry that names nothing
        ("1,7,0", [GPU1]),
        ("GPU-", []),  # an ambiguous prefix names nothing
    ],
)
def test_cuda_visible_devices_remaps_to_uuids(
    nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, visible: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    collector = GpuCollector()
    [samples] = collect(collector)
    assert [d.uuid for d in collector.devices] == expected
    assert devices_of(samples) == set(expected)


def test_cuda_indices_follow_pci_bus_order_not_nvml_order(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [
        FakeDevice(GPU0, bus_id="00000000:AF:00.0", minor=0),
        FakeDevice(GPU1, bus_id="00000000:18:00.0", minor=1),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    collector = GpuCollector()
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU1]


@pytest.mark.parametrize("name", ["SLURM_JOB_GPUS", "SLURM_STEP_GPUS"])
def test_slurm_gpus_match_device_minor_numbers(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # The job's cgroup shows NVML only /dev/nvidia2 and /dev/nvidia3 (NVML indices 0 and 1).
    devices = [
        FakeDevice(GPU0, minor=2, bus_id="00000000:18:00.0"),
        FakeDevice(GPU1, minor=3, bus_id="00000000:AF:00.0"),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices))
    monkeypatch.setenv(name, "3")
    collector = GpuCollector()
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU1]


def test_cuda_visible_devices_wins_over_slurm(nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    collector = GpuCollector()
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU1]


def test_memory_of_our_process_tree_only(nvml: list[FakeDevice]) -> None:
    me = os.getpid()
    nvml[0].processes = [(me, 512 * 2**20), (999_999_999, 4096 * 2**20)]
    nvml[1].processes = [(me, None)]  # NVML could not tell (containers, MIG without privileges)
    [samples] = collect(GpuCollector(tree_pids=lambda: {me}))
    values = by_key(samples)
    assert values[("process_tree_memory_used", GPU0)] == 512.0
    assert values[("process_tree_memory_used", GPU1)] == 0.0
    assert {s[3] for s in samples if s[1] == "process_tree_memory_used"} == {"MB"}


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("no_module", "pip install nvidia-ml-py"),
        ("no_library", "libnvidia-ml.so.1"),
        ("no_driver", "driver is not loaded"),
        ("no_gpu", "no GPU"),
        ("none_visible", "names none of this node's GPUs"),
    ],
)
def test_no_gpu_gives_one_info_line_and_no_samples(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, setup: str, reason: str
) -> None:
    module = {
        "no_module": None,
        "no_library": make_module([], init_error=fake_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
        "no_driver": make_module([], init_error=fake_pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
        "no_gpu": make_module([]),
        "none_visible": make_module(two_gpus_and_mig()),
    }[setup]
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None: import fails
    if setup == "none_visible":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    caplog.set_level(logging.DEBUG, logger=GPU_LOGGER)
    collector = GpuCollector()
    ticks = collect(collector, ticks=3)
    assert ticks == [[], [], []]
    lines = [r for r in caplog.records if r.name == GPU_LOGGER and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "GPU metrics skipped" in lines[0].getMessage() and reason in lines[0].getMessage()
    assert collector.skipped is not None and reason in collector.skipped
    if module is not None and setup != "no_library" and setup != "no_driver":
        assert module.state["shutdown"] == module.state["init"]  # NVML released


def test_through_the_store(nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{GPU1},2")
    nvml[1].processes = [(os.getpid(), 100 * 2**20)]
    init_db(tmp_path / "m.db", flush_interval=0.2)
    monitor = log_system_resources(tmp_path / "summary.json", interval=0.05)
    try:
        deadline = time.monotonic() + 20
        while monitor.samples_taken < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        summary = monitor.stop()
    store = get_db()
    assert store is not None
    rows = store.query_resource_metrics(metric_type="gpu")
    assert {r["device"] for r in rows} == {GPU1, MIG_A, MIG_B}
    mem = [r for r in rows if r["metric_name"] == "process_tree_memory_used" and r["device"] == GPU1]
    assert mem and all(r["value"] == 100.0 and r["unit"] == "MB" for r in mem)
    assert summary["metrics"][f"gpu/power[{GPU1}]"]["max"] == pytest.approx(300.5)
    assert not any(r["device"] == GPU2 for r in rows)  # a MIG parent is not a device of its own
    assert sys.modules["pynvml"].state["shutdown"] == sys.modules["pynvml"].state["init"]
