"""GPU monitor against a fake pynvml (this machine has no GPU): selection, MIG, errors, processes, the store.

The fake follows nvidia-ml-py (tests/monitors/test_fake_pynvml_contract.py); each behaviour below is
what NVML, CUDA or Slurm do on a real node, modelled in the fake first.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fake_pynvml
import pytest
from fake_pynvml import GPU0, GPU1, GPU2, GPU3, MIG_A, MIG_B, FakeDevice, make_module, two_gpus_and_mig

from aetherium_hpc import get_db, init_db
from aetherium_hpc.monitors import ResourceMonitor, log_system_resources
from aetherium_hpc.monitors.base import Sample
from aetherium_hpc.monitors.gpu import GpuCollector
from aetherium_hpc.monitors.selection import gpus_requested

GPU_LOGGER = "aetherium_hpc.monitors.gpu"
MB = 2**20
CURRENT_SLURM: Callable[[], tuple[int, ...] | None] = lambda: (24, 11)  # noqa: E731


@pytest.fixture(autouse=True)
def _clean_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID"):
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
    return {s[4] for s in samples if s[0] == "gpu"}


def by_key(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s[1], s[4]): s[2] for s in samples}


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == GPU_LOGGER and r.levelno == level]


def four_gpus() -> list[FakeDevice]:
    """NVML order is PCI bus order; the kernel numbered /dev/nvidiaN in another order (it is not fixed)."""
    return [
        FakeDevice(GPU0, bus_id="00000000:18:00.0", minor=2),
        FakeDevice(GPU1, bus_id="00000000:3B:00.0", minor=3),
        FakeDevice(GPU2, bus_id="00000000:86:00.0", minor=0),
        FakeDevice(GPU3, bus_id="00000000:AF:00.0", minor=1),
    ]


# -- what is read -----------------------------------------------------------------------------
def test_all_gpus_with_mig_devices_in_place_of_their_parent(nvml: list[FakeDevice]) -> None:
    [samples] = collect(GpuCollector())
    assert devices_of(samples) == {GPU0, GPU1, MIG_A, MIG_B, GPU2}
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
        ("gpu", "power"): "W", ("gpu", "temperature"): "C", ("monitor", "nvml_errors"): "count",
    }  # fmt: skip


def test_memory_used_includes_reserved_memory(nvml: list[FakeDevice]) -> None:
    nvml[1].mem_reserved = 512 * MB  # what the driver sets aside; nvidia-smi's "used" counts it too
    [samples] = collect(GpuCollector())
    assert by_key(samples)[("memory_used", GPU1)] == 8192.0 + 512.0


def test_mig_board_power_and_temperature_are_recorded_on_the_parent_uuid(nvml: list[FakeDevice]) -> None:
    # NVML reports board power and temperature on the parent GPU's handle only, not per slice.
    [samples] = collect(GpuCollector())
    parent = {s[1]: s[2] for s in samples if s[4] == GPU2}
    assert parent == {"power": pytest.approx(210.0), "temperature": 61.0}
    for mig in (MIG_A, MIG_B):
        assert {s[1] for s in samples if s[4] == mig} == {"memory_used", "memory_total"}


def test_unsupported_fields_are_skipped_with_one_info_line(
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
    # Utilisation per MIG slice: said once for all slices, not per slice or tick.
    assert len(unsupported) == 1 and "MIG device" in unsupported[0] and "utilization" in unsupported[0]
    assert not messages(caplog, logging.WARNING)
    # NOT_SUPPORTED is final: the function is not called again on that device.
    assert nvml[2].migs[0] is not None and nvml[2].migs[0].calls["nvmlDeviceGetUtilizationRates"] == 1


# -- every failure said, nothing switched off for good by a glitch ----------------------------
def test_a_lost_gpu_is_reported_by_name_even_after_another_gpus_error_on_the_same_function(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture
) -> None:
    nvml[0].fail_after["nvmlDeviceGetTemperature"] = (2, fake_pynvml.NVML_ERROR_UNKNOWN)
    nvml[1].fail_after["nvmlDeviceGetTemperature"] = (3, fake_pynvml.NVML_ERROR_GPU_IS_LOST)
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(), ticks=6)
    temps = [{s[4] for s in samples if s[1] == "temperature"} for samples in ticks]
    assert temps[:3] == [{GPU0, GPU1, GPU2}, {GPU0, GPU1, GPU2}, {GPU1, GPU2}]
    # A lost GPU is final: nothing more is read from it, not only the function that saw it.
    assert all(GPU1 not in devices_of(samples) for samples in ticks[4:])
    assert all(any(s[1] == "power" and s[4] == GPU0 for s in samples) for samples in ticks)  # the rest carries on
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 2
    unknown = [w for w in warnings if GPU0 in w]
    lost = [w for w in warnings if GPU1 in w]
    assert len(unknown) == 1 and "nvmlDeviceGetTemperature" in unknown[0] and "drain" not in unknown[0]
    assert len(lost) == 1 and "lost" in lost[0] and "Xid" in lost[0] and "00000000:5E:00.0" in lost[0]


def test_transient_errors_are_retried_with_back_off_and_counted(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture
) -> None:
    timeout = fake_pynvml.NVML_ERROR_TIMEOUT
    nvml[1].fail_after["nvmlDeviceGetUtilizationRates"] = (1, [timeout] * 3)  # 3 failures, then it works again
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(), ticks=20)
    util = [any(s[1] == "utilization" and s[4] == GPU1 for s in samples) for samples in ticks]
    assert util[0] and not util[1]
    assert all(util[-5:])  # back after the glitch, not switched off for the run
    # Back-off: fewer calls than ticks while it fails (1 good + 3 failed, then one per tick again).
    calls = nvml[1].calls["nvmlDeviceGetUtilizationRates"]
    assert calls < 20 and calls == 4 + sum(util[1:])
    assert [s[2] for s in ticks[-1] if s[0] == "monitor" and s[1] == "nvml_errors"] == [3.0]
    assert [s[2] for s in ticks[0] if s[0] == "monitor" and s[1] == "nvml_errors"] == [0.0]
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "Timeout" in warnings[0] and "retried" in warnings[0]
    assert "drain" not in warnings[0]


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (fake_pynvml.NVML_ERROR_NO_PERMISSION, "permission"),
        (fake_pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "driver"),
        (fake_pynvml.NVML_ERROR_RESET_REQUIRED, "reset"),
        (fake_pynvml.NVML_ERROR_UNKNOWN, "dmesg"),
        (fake_pynvml.NVML_ERROR_TIMEOUT, "busy"),
    ],
)
def test_messages_name_the_real_cause(
    nvml: list[FakeDevice], caplog: pytest.LogCaptureFixture, code: int, cause: str
) -> None:
    nvml[0].fail_after["nvmlDeviceGetPowerUsage"] = (0, code)
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collect(GpuCollector(), ticks=4)
    [warning] = messages(caplog, logging.WARNING)
    assert cause in warning.lower() and GPU0 in warning and "nvmlDeviceGetPowerUsage" in warning
    if code in (fake_pynvml.NVML_ERROR_NO_PERMISSION, fake_pynvml.NVML_ERROR_TIMEOUT, fake_pynvml.NVML_ERROR_UNKNOWN):
        assert "drain" not in warning


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
    assert GPU0 not in devices_of(seen[-1])  # lost: nothing more read from it
    assert any(s[1] == "power" and s[4] == GPU1 for s in seen[-1])
    assert len(messages(caplog, logging.WARNING)) == 2  # one per device and function


# -- the job's GPUs, and only those -----------------------------------------------------------
@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1", [GPU1]),
        ("GPU-bbbbbbbb", [GPU1]),  # a unique UUID prefix, as CUDA accepts
        (GPU1, [GPU1]),
        ("1,0", [GPU1, GPU0]),
        ("0,0,1", [GPU0, GPU1]),
        ("2", [MIG_A]),  # CUDA gives a process one MIG device of a MIG-mode GPU (the first), not all
        (GPU2, [MIG_A]),
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
    boards = {GPU2} if any(e.startswith("MIG-") for e in expected) else set()
    assert devices_of(samples) == set(expected) | boards


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


def test_a_slurm_job_without_gpu_variables_monitors_no_gpu(
    nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Slurm removes CUDA_VISIBLE_DEVICES and SLURM_*_GPUS from a step without GPUs; without
    # ConstrainDevices NVML still sees every GPU of the node: other users' GPUs.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    ticks = collect(collector, ticks=3)
    assert collector.devices == [] and ticks == [[], [], []]
    lines = [r.getMessage() for r in caplog.records if r.name == GPU_LOGGER and r.levelno >= logging.INFO]
    assert len(lines) == 1 and "4242" in lines[0] and "no GPU" in lines[0]
    module = sys.modules["pynvml"]
    assert module.state["shutdown"] == module.state["init"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["SLURM_JOB_GPUS", "SLURM_STEP_GPUS"])
def test_slurm_gpus_are_gres_indices_in_pci_order(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_module(four_gpus()))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv(name, "1,3")
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU1, GPU3]  # not the GPUs of minors 1 and 3
    [line] = [m for m in messages(caplog, logging.INFO) if "chosen by" in m]
    assert name in line and "GRES ind" in line and "PCI" in line  # one line says which rule chose them


def test_slurm_before_the_gres_index_wrote_minor_numbers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_module(four_gpus()))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_GPUS", "1,3")
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(slurm_version=lambda: (18, 8, 9))
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU3, GPU1]
    [line] = [m for m in messages(caplog, logging.INFO) if "chosen by" in m]
    assert "minor" in line and "18.8" in line


def test_constrain_devices_hidden_gpus_keep_their_gres_index(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # ConstrainDevices: NVML counts every GPU of the node but refuses the job's hidden ones with
    # NO_PERMISSION, so NVML indices (= PCI order = GRES indices) stay those of the node.
    devices = four_gpus()
    devices[0].hidden = devices[1].hidden = True
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_GPUS", "2,3")
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU2, GPU3]
    assert devices[0].calls["nvmlDeviceGetHandleByIndex"] == 1  # asked, refused, not an error to report
    assert not messages(caplog, logging.WARNING)
    # CUDA, which sees only the job's GPUs there, numbers them from 0: the same two GPUs.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU2, GPU3]


def test_on_mig_nodes_each_mig_slice_is_its_own_gres_index(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [
        FakeDevice(GPU0, bus_id="00000000:18:00.0", minor=1, mig_mode=1,
                   migs=[FakeDevice(MIG_A, gpu_instance=1), None, FakeDevice(MIG_B, gpu_instance=2)]),
        FakeDevice(GPU1, bus_id="00000000:3B:00.0", minor=0, unsupported={"nvmlDeviceGetMigMode"}),
    ]  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_GPUS", "1,2")
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    collect(collector)
    assert [d.uuid for d in collector.devices] == [MIG_B, GPU1]


def test_cuda_visible_devices_wins_over_slurm(nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    collector = GpuCollector(slurm_version=CURRENT_SLURM)
    collect(collector)
    assert [d.uuid for d in collector.devices] == [GPU1]


# -- per-process memory that is true ----------------------------------------------------------
def test_memory_of_our_process_tree_only(nvml: list[FakeDevice]) -> None:
    me = os.getpid()
    nvml[0].processes = [(me, 512 * MB), (999_999_999, 4096 * MB)]
    nvml[1].processes = [(me, None)]  # NVML could not tell (containers, MIG without privileges)
    [samples] = collect(GpuCollector(tree_pids=lambda: {me}))
    values = by_key(samples)
    assert values[("process_tree_memory_used", GPU0)] == 512.0
    assert ("process_tree_memory_used", GPU1) not in values  # unknown is stored as nothing, not as 0
    assert {s[3] for s in samples if s[1] == "process_tree_memory_used"} == {"MB"}


def test_graphics_contexts_and_mps_clients_count_once_per_pid(nvml: list[FakeDevice]) -> None:
    me, child = os.getpid(), 4_000_001
    nvml[0].processes = [(me, 512 * MB)]
    nvml[0].graphics_processes = [(me, 512 * MB), (child, 100 * MB)]  # one context listed twice: counted once
    # Under MPS the compute list shows only the MPS server; the clients are in the MPS list.
    nvml[1].processes = [(4_000_002, 64 * MB)]
    nvml[1].mps_processes = [(me, 300 * MB)]
    [samples] = collect(GpuCollector(tree_pids=lambda: {me, child}))
    values = by_key(samples)
    assert values[("process_tree_memory_used", GPU0)] == 612.0
    assert values[("process_tree_memory_used", GPU1)] == 300.0


@pytest.mark.parametrize(
    ("missing", "used"),
    [
        ({"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
          "nvmlDeviceGetMPSComputeRunningProcesses_v3"}, "v2"),
        ({"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
          "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
          "nvmlDeviceGetGraphicsRunningProcesses_v2", "nvmlDeviceGetMPSComputeRunningProcesses_v2"}, "v1"),
    ],
)  # fmt: skip
def test_an_older_driver_falls_back_to_older_process_queries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: set[str], used: str
) -> None:
    # pynvml's unversioned query raises NVMLLibraryMismatchError (not an NVMLError) without _v3.
    me = os.getpid()
    devices = [FakeDevice(GPU0, processes=[(me, 256 * MB), (4_000_003, 1024 * MB)], graphics_processes=[(me, None)])]
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices, missing_symbols=missing))
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(tree_pids=lambda: {me}), ticks=3)
    for samples in ticks:
        assert by_key(samples)[("process_tree_memory_used", GPU0)] == 256.0
    assert not messages(caplog, logging.WARNING)
    assert any(used in m and "RunningProcesses" in m for m in messages(caplog, logging.INFO))
    assert devices[0].calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1  # found missing once, not per tick


def test_a_driver_without_graphics_or_mps_queries_still_gives_the_compute_figure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    me = os.getpid()
    missing = {f"nvmlDeviceGet{kind}RunningProcesses{suffix}" for kind in ("Graphics", "MPSCompute")
               for suffix in ("_v3", "_v2", "")}  # fmt: skip
    devices = [FakeDevice(GPU0, processes=[(me, 128 * MB)]), FakeDevice(GPU1, processes=[(me, 64 * MB)])]
    devices[1].unsupported = {"nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetMPSComputeRunningProcesses_v3"}
    monkeypatch.setitem(sys.modules, "pynvml", make_module(devices, missing_symbols=missing))
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    ticks = collect(GpuCollector(tree_pids=lambda: {me}), ticks=3)
    for samples in ticks:
        values = by_key(samples)
        assert values[("process_tree_memory_used", GPU0)] == 128.0
        assert values[("process_tree_memory_used", GPU1)] == 64.0
    assert not messages(caplog, logging.WARNING)


def _cgroup_tree(tmp_path: Path, version: int, job: str, me: int, other_step_pid: int) -> tuple[Path, Path]:
    """A Slurm job's cgroup (v2 or v1 layout) with this process in step 0 and another srun step."""
    root = tmp_path / "cgroup"
    if version == 2:
        own = f"/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0"
        other = f"/system.slice/slurmstepd.scope/job_{job}/step_1/user/task_0"
        self_lines = f"0::{own}\n"
        base = root
    else:
        own = f"/slurm/uid_1000/job_{job}/step_0/task_0"
        other = f"/slurm/uid_1000/job_{job}/step_1/task_0"
        self_lines = f"12:memory:{own}\n11:freezer:{own}\n3:cpuset:/slurm/uid_1000/job_{job}/step_0\n"
        base = root / "memory"
    for path, pid in ((own, me), (other, other_step_pid)):
        folder = base / path.lstrip("/")
        folder.mkdir(parents=True)
        (folder / "cgroup.procs").write_text(f"{pid}\n")
        for above in folder.relative_to(base).parents:  # every cgroup has the file, most of them empty
            if not (base / above / "cgroup.procs").exists():
                (base / above / "cgroup.procs").write_text("")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(self_lines)
    return self_cgroup, root


@pytest.mark.parametrize("version", [2, 1])
def test_inside_slurm_the_jobs_processes_come_from_its_cgroup(
    nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
    version: int,
) -> None:  # fmt: skip
    me, other_step, stranger = os.getpid(), 4_000_010, 4_000_011
    self_cgroup, root = _cgroup_tree(tmp_path, version, "77", me, other_step)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    nvml[0].processes = [(me, 100 * MB), (other_step, 200 * MB), (stranger, 1024 * MB)]
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(tree_pids=lambda: {me}, self_cgroup=str(self_cgroup), cgroup_root=str(root))
    [samples] = collect(collector)
    assert by_key(samples)[("process_tree_memory_used", GPU0)] == 300.0  # another srun step's work counts
    assert any("cgroup" in m and "job_77" in m for m in messages(caplog, logging.INFO))


def test_an_unreadable_cgroup_falls_back_to_the_process_tree(
    nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    me = os.getpid()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    nvml[0].processes = [(me, 100 * MB), (4_000_010, 200 * MB)]
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collector = GpuCollector(
        tree_pids=lambda: {me}, self_cgroup=str(tmp_path / "absent"), cgroup_root=str(tmp_path / "none")
    )
    [samples] = collect(collector)
    assert by_key(samples)[("process_tree_memory_used", GPU0)] == 100.0
    assert any("process tree" in m and "cgroup" in m for m in messages(caplog, logging.INFO))


# -- no GPU, and the whole path ----------------------------------------------------------------
#: A node without NVML: no nvidia-ml-py, no NVIDIA library, the driver not loaded.
NO_NVML = {
    "no_module": lambda: None,
    "no_library": lambda: make_module([], init_error=fake_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
    "no_driver": lambda: make_module([], init_error=fake_pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
}


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
    makers = {**NO_NVML, "no_gpu": lambda: make_module([]), "none_visible": lambda: make_module(two_gpus_and_mig())}
    module = makers[setup]()
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None: import fails
    if setup == "none_visible":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if setup in NO_NVML:  # GPUs asked for: a node without NVML says so (asked for none, it says nothing)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
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


@pytest.mark.parametrize(
    ("environ", "asked_for"),
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"}, None),
        ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS=0"),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "1,2"}, "SLURM_STEP_GPUS=1,2"),
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2"}, "SLURM_GPUS_ON_NODE=2"),
    ],
)
@pytest.mark.parametrize("setup", sorted(NO_NVML))
def test_a_node_without_nvml_says_so_only_when_gpus_were_asked_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, setup: str, environ: dict[str, str],
    asked_for: str | None,
) -> None:  # fmt: skip
    """A CPU node, each `aetherium-hpc run`: nothing said unless the job was given GPUs it cannot see."""
    assert gpus_requested(environ) == asked_for
    monkeypatch.setitem(sys.modules, "pynvml", NO_NVML[setup]())
    caplog.set_level(logging.DEBUG, logger=GPU_LOGGER)
    collector = GpuCollector(environ=environ)
    assert collect(collector, ticks=3) == [[], [], []]
    lines = [r for r in caplog.records if r.name == GPU_LOGGER and "GPU metrics skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == (logging.DEBUG if asked_for is None else logging.INFO)
    said = [r for r in caplog.records if r.name == GPU_LOGGER and r.levelno >= logging.INFO]
    assert len(said) == (0 if asked_for is None else 1)
    assert collector.skipped is not None and collector.skipped in lines[0].getMessage()


def test_a_failing_nvml_init_is_said_even_when_no_gpu_was_asked_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The library and driver are there but refuse this process: not a CPU node, worth one line.
    monkeypatch.setitem(sys.modules, "pynvml", make_module([], init_error=fake_pynvml.NVML_ERROR_NO_PERMISSION))
    caplog.set_level(logging.INFO, logger=GPU_LOGGER)
    collect(GpuCollector(environ={}))
    [line] = messages(caplog, logging.INFO)
    assert "GPU metrics skipped" in line and "no permission" in line


def test_through_the_store(nvml: list[FakeDevice], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{GPU1},{MIG_B}")
    nvml[1].processes = [(os.getpid(), 100 * MB)]
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
    assert {r["device"] for r in rows} == {GPU1, MIG_B, GPU2}
    mem = [r for r in rows if r["metric_name"] == "process_tree_memory_used" and r["device"] == GPU1]
    assert mem and all(r["value"] == 100.0 and r["unit"] == "MB" for r in mem)
    assert summary["metrics"][f"gpu/power[{GPU1}]"]["max"] == pytest.approx(300.5)
    # A MIG parent carries the board's power and temperature only.
    assert {r["metric_name"] for r in rows if r["device"] == GPU2} == {"power", "temperature"}
    assert summary["metrics"]["monitor/nvml_errors"]["max"] == 0.0
    assert sys.modules["pynvml"].state["shutdown"] == sys.modules["pynvml"].state["init"]  # type: ignore[attr-defined]
