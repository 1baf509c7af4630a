"""bench/gpu_check.py: fails cleanly without a GPU; its checks judge values (fake NVML + a fake torch load).

The real proof needs a GPU (see the script); here the fake NVML device answers the way a
real one does while a load runs on it, so that the checks themselves are tested.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import types
from typing import Any

import pytest
from fake_pynvml import GPU0, FakeDevice, make_module
from testenv import ROOT

from aetherium_hpc.monitors.gpu import NvmlUnavailable, _load_nvml

SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(autouse=True)
def _clean_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_gpu_it_says_so_and_exits_2() -> None:
    with contextlib.suppress(NvmlUnavailable):
        _load_nvml().nvmlShutdown()
        pytest.skip("this machine has a working NVML: run bench/gpu_check.py itself")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot run: no usable GPU on this machine" in proc.stdout and "srun --gpus=1" in proc.stdout


class _Tensor:
    def __matmul__(self, other: object) -> _Tensor:
        return self

    def tanh_(self) -> _Tensor:
        return self


def fake_torch(device: FakeDevice, start_fails: bool = False) -> types.ModuleType:
    """Enough of torch for the load; allocating and running move the fake device's figures as a real load would."""
    torch = types.ModuleType("torch")
    props = types.SimpleNamespace(uuid=device.uuid[len("GPU-") :], name=device.name)

    def empty(n: int, dtype: Any = None, device_: Any = None, **kw: Any) -> _Tensor:
        if start_fails:
            raise RuntimeError("CUDA error: out of memory")
        device.mem_used += n
        device.processes = [(os.getpid(), n)]
        device.util = 97
        device.power_mw = 600_000
        return _Tensor()

    torch.__dict__.update(
        __version__="0-fake", uint8="uint8", empty=empty, randn=lambda *a, **k: _Tensor(),
        cuda=types.SimpleNamespace(
            is_available=lambda: True, device_count=lambda: 1, get_device_properties=lambda i: props,
            synchronize=lambda: time.sleep(0.005),
        ),
    )  # fmt: skip
    return torch


def run_check(monkeypatch: pytest.MonkeyPatch, device: FakeDevice, start_fails: bool = False) -> tuple[int, str]:
    monkeypatch.setitem(sys.modules, "pynvml", make_module([device]))
    monkeypatch.setitem(sys.modules, "torch", fake_torch(device, start_fails))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Enough samples in each phase even on a loaded machine: 40 ticks idle, 60 under the load.
    argv = ["gpu_check", "--idle", "2", "--seconds", "3", "--interval", "0.05", "--alloc-mb", "512"]
    monkeypatch.setattr(sys, "argv", argv)
    return module.main(), ""


def test_the_checks_pass_when_the_values_move_under_the_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    device = FakeDevice(GPU0, util=0, mem_used=300 * 2**20, power_mw=60_000)
    rc, _ = run_check(monkeypatch, device)
    out = capsys.readouterr().out
    assert rc == 0, out
    for line in ("PASS  the load started", "PASS  the loaded device", "PASS  every selected device",
                 "PASS  utilization rises", "PASS  memory_used rises", "PASS  process_tree_memory_used",
                 "PASS  power in", "missed ticks", "wall time per sample"):  # fmt: skip
        assert line in out, out


def test_a_load_that_fails_to_start_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    device = FakeDevice(GPU0, util=0)
    rc, _ = run_check(monkeypatch, device, start_fails=True)
    out = capsys.readouterr().out
    assert rc == 1 and "the load did not start" in out and "out of memory" in out, out
