"""Run the resource monitor on a real GPU under a small load and print what it stored.

    python bench/gpu_check.py [--seconds 20] [--interval 1.0]

The load is a matmul loop with torch, else cupy (whichever imports with a GPU); with
neither, the GPU is measured idle. Exit status: 0 when GPU rows were stored for every
selected device, 1 when not, 2 when this machine has no usable GPU (said why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aetherium_hpc import get_db, init_db, shutdown_db  # noqa: E402
from aetherium_hpc.monitors import log_system_resources  # noqa: E402
from aetherium_hpc.monitors.gpu import GpuCollector, _load_nvml  # noqa: E402


def gpu_load(stop: threading.Event) -> tuple[str, Callable[[], None] | None]:
    """(what the load is, a function that runs it until ``stop``) -- or no function."""
    try:
        import torch

        if torch.cuda.is_available():

            def run_torch() -> None:
                a = torch.randn(4096, 4096, device="cuda")
                while not stop.is_set():
                    for _ in range(20):
                        a = (a @ a).tanh_()
                    torch.cuda.synchronize()
                    time.sleep(0.05)  # a small load: about half busy

            return f"torch {torch.__version__} matmul on {torch.cuda.get_device_name(0)}", run_torch
    except ImportError:
        pass
    try:
        import cupy

        def run_cupy() -> None:
            a = cupy.random.standard_normal((4096, 4096), dtype=cupy.float32)
            while not stop.is_set():
                for _ in range(20):
                    a = cupy.tanh(a @ a)
                cupy.cuda.Device().synchronize()
                time.sleep(0.05)

        return f"cupy {cupy.__version__} matmul", run_cupy
    except ImportError:
        pass
    return "no torch or cupy importable: measuring the GPU idle", None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

    nvml, why = _load_nvml()
    if nvml is None:
        print(f"gpu_check: no usable GPU on this machine: {why}")
        if shutil.which("nvidia-smi") is None:
            print("gpu_check: nvidia-smi is not on PATH either; run this on a GPU node (e.g. srun --gpus=1 ...)")
        return 2
    nvml.nvmlShutdown()
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        print("nvidia-smi -L:\n" + listing.rstrip())
    else:
        print("nvidia-smi is not on PATH (NVML works without it)")
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        print(f"{name}={os.environ.get(name)!r}")

    probe = GpuCollector()
    probe.start()
    selected = [d.uuid for d in probe.devices]
    probe.close()
    print(f"selected devices: {selected or 'none'}")

    stop = threading.Event()
    what, load = gpu_load(stop)
    print(f"load: {what}")
    worker = threading.Thread(target=load, daemon=True) if load is not None else None

    with tempfile.TemporaryDirectory() as folder:
        init_db(os.path.join(folder, "gpu_check.db"), flush_interval=1.0)
        summary_path = os.path.join(folder, "summary.json")
        monitor = log_system_resources(summary_path, interval=args.interval, gpu=True)
        if worker is not None:
            worker.start()
        time.sleep(args.seconds)
        stop.set()
        if worker is not None:
            worker.join(30)
        monitor.stop()
        store = get_db()
        assert store is not None
        rows = store.query_resource_metrics(metric_type="gpu")
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
        shutdown_db()

    series: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        if row["value"] is not None:
            series.setdefault((row["device"], row["metric_name"], row["unit"]), []).append(row["value"])
    print(f"\n{len(rows)} gpu rows stored over {summary['duration_s']:.1f} s ({summary['samples']} samples):")
    print(f"{'device':<42}{'metric':<28}{'unit':>5}{'n':>5}{'min':>10}{'mean':>10}{'max':>10}")
    for (device, metric, unit), values in sorted(series.items()):
        print(
            f"{device:<42}{metric:<28}{unit:>5}{len(values):>5}"
            f"{min(values):10.1f}{statistics.fmean(values):10.1f}{max(values):10.1f}"
        )
    print(
        f"\nmonitor CPU: {summary['monitor_cpu_s'] * 1000:.1f} ms = {summary['monitor_cpu_percent_of_one_core']} % of one core"
    )
    missing = [uuid for uuid in selected if not any(key[0] == uuid for key in series)]
    if missing or not selected:
        print(f"gpu_check: FAILED: no gpu rows for {missing or 'any device'}")
        return 1
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
