"""Prove the GPU monitor's values on a real GPU: idle first, then under a load it starts itself.

    python bench/gpu_check.py [--idle 8] [--seconds 20] [--interval 1.0] [--alloc-mb 2048]

Run it on a GPU node, e.g. ``srun --gpus=1 python bench/gpu_check.py``. The load is a
matmul loop with torch, else cupy, on CUDA device 0, holding ``--alloc-mb`` of device
memory. Checks (each printed PASS/FAIL):

- the load started (a load that fails to start fails the check);
- the loaded device's UUID, as the CUDA library names it, is among the monitor's selected
  devices, and no device outside the selection (another job's GPU) has rows;
- ``utilization`` under the load rises above the idle figure, ``memory_used`` rises by at
  least half the allocation, ``process_tree_memory_used`` of the loaded device is above 0
  (this process is in the tree), ``power`` stays in a sane range (1 W to 2000 W);
- missed ticks and the wall time per sample are reported (printed, not judged).

Exit status: 0 every check passed, 1 a check failed (or no load library), 2 this machine
has no usable GPU (said why) -- so on a machine without GPU it fails cleanly, at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc import get_db, init_db, shutdown_db  # noqa: E402
from aetherium_hpc.monitors import ResourceMonitor  # noqa: E402
from aetherium_hpc.monitors.gpu import GpuCollector, NvmlUnavailable, _load_nvml  # noqa: E402

NO_GPU, FAILED, OK = 2, 1, 0


class TimedMonitor(ResourceMonitor):
    """The normal monitor, each tick processed on its own (``batch_ticks=1``), with the wall time
    of each tick kept: what one whole sample of the GPUs takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, batch_ticks=1, **kwargs)
        self.wall_s: list[float] = []

    def _tick(self, process: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            super()._tick(process)
        finally:
            self.wall_s.append(time.perf_counter() - t0)


class Load:
    """A matmul loop on CUDA device 0 in a thread; ``uuid`` is that device's UUID as CUDA names it."""

    def __init__(self, alloc_mb: int) -> None:
        self.alloc_mb = alloc_mb
        self.what = ""
        self.uuid: str | None = None
        self.visible: list[str] = []  # every device CUDA gives this process: the job's allocation
        self.started = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        run = self._pick()
        if run is None:
            return False
        self._thread = threading.Thread(target=self._guarded, args=(run,), daemon=True, name="gpu-load")
        self._thread.start()
        self.started.wait(120)  # the first kernel, CUDA context creation included
        return self.started.is_set() and self.error is None

    def _guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:  # reported by start()/the checks
            self.error = exc
            self.started.set()

    def _pick(self) -> Callable[[], None] | None:
        try:
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                self.uuid = _cuda_uuid(getattr(props, "uuid", None))
                self.visible = [
                    u for i in range(torch.cuda.device_count())
                    if (u := _cuda_uuid(getattr(torch.cuda.get_device_properties(i), "uuid", None)))
                ]  # fmt: skip
                self.what = f"torch {torch.__version__} matmul on {props.name}"

                def run_torch() -> None:
                    hold = torch.empty(self.alloc_mb * 2**20, dtype=torch.uint8, device="cuda")
                    a = torch.randn(4096, 4096, device="cuda")
                    while not self.stop.is_set():
                        for _ in range(20):
                            a = (a @ a).tanh_()
                        torch.cuda.synchronize()
                        self.started.set()
                    del hold

                return run_torch
        except ImportError:
            pass
        try:
            import cupy

            runtime = cupy.cuda.runtime
            self.uuid = _cuda_uuid(runtime.getDeviceProperties(0).get("uuid"))
            self.visible = [
                u
                for i in range(runtime.getDeviceCount())
                if (u := _cuda_uuid(runtime.getDeviceProperties(i).get("uuid")))
            ]
            self.what = f"cupy {cupy.__version__} matmul"

            def run_cupy() -> None:
                hold = cupy.empty(self.alloc_mb * 2**20, dtype=cupy.uint8)
                a = cupy.random.standard_normal((4096, 4096), dtype=cupy.float32)
                while not self.stop.is_set():
                    for _ in range(20):
                        a = cupy.tanh(a @ a)
                    cupy.cuda.Device().synchronize()
                    self.started.set()
                del hold

            return run_cupy
        except ImportError:
            pass
        self.what = "no torch or cupy importable: no load can be started (pip install torch, or cupy)"
        return None

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(60)


def _cuda_uuid(raw: Any) -> str | None:
    """'GPU-xxxxxxxx-...' from what torch (a UUID-like object or str) or cupy (16 bytes) gives."""
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        return f"GPU-{uuidlib.UUID(bytes=bytes(raw[:16]))}"
    text = str(raw)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _same_device(cuda_uuid: str, nvml_uuid: str) -> bool:
    """CUDA and NVML agree on the UUID's digits; the prefix may differ (MIG devices)."""
    return cuda_uuid.split("-", 1)[-1].lower() == nvml_uuid.split("-", 1)[-1].lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=8.0, help="seconds measured before the load")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds measured under the load")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--alloc-mb", type=int, default=2048)
    args = parser.parse_args()

    try:
        nvml = _load_nvml()
    except NvmlUnavailable as why:
        print(f"gpu_check: cannot run: no usable GPU on this machine: {why}")
        print("gpu_check: run it on a GPU node, e.g. `srun --gpus=1 python bench/gpu_check.py`")
        return NO_GPU
    node_gpus = [str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(nvml.nvmlDeviceGetCount())
                 if _opens(nvml, i)]  # fmt: skip
    nvml.nvmlShutdown()
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        print(f"{name}={os.environ.get(name)!r}")

    probe = GpuCollector()
    probe.start()
    selected_devices = [d.uuid for d in probe.devices]
    selected = selected_devices + [b.uuid for b in probe.boards]
    probe.close()
    print(f"selected devices: {selected or 'none'} (of {len(node_gpus)} GPU(s) NVML opens here)")
    if not selected:
        print(f"gpu_check: FAILED: no device selected ({probe.skipped})")
        return FAILED

    results: list[tuple[bool, str]] = []
    load = Load(args.alloc_mb)
    with tempfile.TemporaryDirectory() as folder:
        init_db(os.path.join(folder, "gpu_check.db"), flush_interval=1.0)
        monitor = TimedMonitor(args.interval, gpu=True)
        monitor.start()
        time.sleep(args.idle)
        t_load = time.time()
        started = load.start()
        print(f"load: {load.what}; CUDA device 0 = {load.uuid}")
        results.append((started, f"the load started ({load.error!r})" if load.error else "the load started"))
        if started:
            time.sleep(args.seconds)
        t_end = time.time()
        load.join()
        monitor.stop()
        store = get_db()
        assert store is not None
        rows = store.query_resource_metrics(metric_type="gpu")
        shutdown_db()
    if not started:
        print(f"gpu_check: FAILED: the load did not start: {load.error or load.what}")
        return FAILED

    def values(device: str, metric: str, t0: float, t1: float) -> list[float]:
        return [r["value"] for r in rows if r["device"] == device and r["metric_name"] == metric
                and t0 <= r["timestamp"] < t1 and r["value"] is not None]  # fmt: skip

    loaded = next((u for u in selected if load.uuid and _same_device(load.uuid, u)), None)
    results.append((loaded is not None, f"the loaded device {load.uuid} is among the selected {selected}"))
    boards = set(selected) - set(selected_devices)
    unallocated = [u for u in selected_devices if not any(_same_device(v, u) for v in load.visible)]
    results.append((
        bool(load.visible) and not unallocated,
        f"every selected device is one CUDA gives this job ({len(load.visible)} visible); not allocated: "
        f"{unallocated or 'none'}" + (f" (MIG boards {sorted(boards)} not judged)" if boards else ""),
    ))  # fmt: skip
    strangers = sorted({r["device"] for r in rows} - set(selected))
    results.append((not strangers, f"no rows for devices outside the selection (found: {strangers or 'none'})"))
    if loaded is not None:
        # The load's first seconds ramp up: judge its second half against the idle phase.
        mid = t_load + (t_end - t_load) / 2
        idle_util, load_util = values(loaded, "utilization", 0, t_load), values(loaded, "utilization", mid, t_end)
        idle_mem, load_mem = values(loaded, "memory_used", 0, t_load), values(loaded, "memory_used", mid, t_end)
        mine = values(loaded, "process_tree_memory_used", mid, t_end)
        power = [r["value"] for r in rows if r["metric_name"] == "power" and r["value"] is not None]
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        results += [
            (bool(idle_util and load_util) and mean(load_util) > mean(idle_util) + 10,
             f"utilization rises: idle {mean(idle_util):.1f} % -> load {mean(load_util):.1f} %"),
            (bool(idle_mem and load_mem) and max(load_mem) > mean(idle_mem) + args.alloc_mb / 2,
             f"memory_used rises: idle {mean(idle_mem):.0f} MB -> load {max(load_mem or [0]):.0f} MB "
             f"(allocated {args.alloc_mb} MB)"),
            (bool(mine) and max(mine) > 0, f"process_tree_memory_used of this process > 0: {max(mine or [0]):.0f} MB"),
            (bool(power) and all(1.0 <= p <= 2000.0 for p in power),
             f"power in 1..2000 W: {min(power or [0]):.0f}..{max(power or [0]):.0f} W"),
        ]  # fmt: skip
    wall = sorted(monitor.wall_s)
    print(f"\nsamples {monitor.samples_taken}, missed ticks {monitor.missed_ticks}; wall time per sample: "
          f"median {1000 * wall[len(wall) // 2]:.1f} ms, max {1000 * wall[-1]:.1f} ms" if wall else "no samples")  # fmt: skip
    for ok, text in results:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if all(ok for ok, _ in results):
        print("gpu_check: OK")
        return OK
    print("gpu_check: FAILED")
    return FAILED


def _opens(nvml: Any, index: int) -> bool:
    try:
        nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
