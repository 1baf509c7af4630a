"""What of the node is the job's: its GPUs and its processes. Functions of the GPUs NVML listed
(:class:`NodeGpu`, from :mod:`.gpu`), the environment and the job's cgroup files; no NVML calls.

Which GPUs are the job's (:func:`select_devices`; the GPU monitor's info line says which rule chose them):

1. ``CUDA_VISIBLE_DEVICES`` when set, read as CUDA reads it: indices, ``GPU-``/``MIG-``
   UUIDs or unique UUID prefixes, the list ending at the first entry that names
   nothing. NVML numbers every GPU of the node and ignores that variable, so a CUDA
   index is mapped to the GPU of that rank in PCI bus id order among the GPUs NVML lets
   this process open (CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and in practice
   on nodes of identical GPUs). A GPU in MIG mode named this way gives one MIG device,
   as CUDA gives a process one (the first).
2. Else, inside a Slurm job, ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``: GRES indices, which
   follow the PCI bus order of the node's GPUs -- NVML's own order. Under Slurm's
   ``ConstrainDevices`` NVML still counts the GPUs the job's cgroup hides (it refuses their
   handles with NO_PERMISSION), so NVML indices stay the node's. On a MIG node each MIG
   slice is its own index. Slurm releases before :data:`GRES_INDEX_SINCE` wrote the device
   minor number (``/dev/nvidiaN``) there instead; that reading is kept for them only (the
   release from :func:`aetherium_hpc.scheduler.slurm_version`).
3. A Slurm job with none of these variables was given no GPU (Slurm removes them from
   steps without GPUs): no GPU is monitored, and one line says so -- without
   ``ConstrainDevices`` NVML would show other jobs' GPUs.
4. Outside Slurm, every GPU of the node.

Which processes are the job's, for the GPU memory they use: inside Slurm, those of the job's
cgroup (:func:`find_job_cgroup`, :func:`read_cgroup_pids`), every ``srun`` step included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import scheduler

#: The first Slurm release taken to write GRES indices into SLURM_*_GPUS; older ones wrote
#: device minor numbers. (Slurm 19.05 reworked GPU GRES around NVML; not verified on a
#: cluster of each release -- change it here if a site shows otherwise.)
GRES_INDEX_SINCE = (19, 5)

SlurmVersion = Callable[[], "tuple[int, ...] | None"]

#: The variables that list the GPUs this process was given (by the user or by Slurm), and Slurm's
#: count of them on this node.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")
_NO_GPU = ("", "-1", "NoDevFiles")  # values that give no GPU (Slurm wrote NoDevFiles for steps without)


def gpus_requested(environ: Mapping[str, str]) -> str | None:
    """``NAME=value`` of the first of :data:`GPU_VARIABLES` that gives this process GPUs, or None."""
    for name in GPU_VARIABLES:
        value = environ.get(name, "").strip()
        if value not in _NO_GPU and not (name == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{name}={value}"
    return None


@dataclass
class GpuDevice:
    """One monitored device: a whole GPU, a MIG device, or (``board``) the board of a MIG GPU."""

    uuid: str
    handle: Any
    name: str = ""
    index: int = -1  # NVML index of the (parent) GPU
    parent_uuid: str | None = None  # set for MIG devices
    gpu_instance: int | None = None
    compute_instance: int | None = None
    bus_id: str = ""  # of the (parent) GPU
    board: bool = False  # a MIG GPU's board: power and temperature only

    @property
    def kind(self) -> str:
        return "MIG device" if self.parent_uuid else "GPU"


@dataclass
class NodeGpu:
    """One GPU of the node as NVML lists it: its NVML index, PCI bus id, device minor number, MIG mode
    and MIG devices."""

    index: int
    handle: Any
    uuid: str
    name: str
    bus_id: str
    minor: int | None
    mig_enabled: bool
    migs: list[GpuDevice] = field(default_factory=list)

    def devices(self) -> list[GpuDevice]:
        """Every device of this GPU: its MIG devices in MIG mode, else itself."""
        if self.mig_enabled:
            return list(self.migs)
        return [GpuDevice(self.uuid, self.handle, self.name, self.index, bus_id=self.bus_id)]

    def cuda_devices(self) -> list[GpuDevice]:
        """What CUDA gives a process that names this GPU: one MIG device in MIG mode."""
        return self.devices()[:1] if self.mig_enabled else self.devices()

    def board(self) -> GpuDevice:
        return GpuDevice(self.uuid, self.handle, self.name, self.index, bus_id=self.bus_id, board=True)


@dataclass
class Selection:
    """The job's devices, the rule that chose them, and every GPU of the node NVML opened."""

    devices: list[GpuDevice]
    rule: str
    gpus: list[NodeGpu]
    slots: list[GpuDevice | None]  # GRES order: hidden GPUs as None, MIG slices one each
    no_gpu_job: str | None = None  # set when a Slurm job was given no GPU


def _unique(candidates: list[Any]) -> Any:
    return candidates[0] if len(candidates) == 1 else None


def _match_cuda_visible(value: str, gpus: list[NodeGpu]) -> list[GpuDevice]:
    """The devices ``CUDA_VISIBLE_DEVICES=value`` gives, read as CUDA reads it."""
    by_bus = sorted(gpus, key=lambda g: (g.bus_id == "", g.bus_id, g.index))
    migs = [m for g in gpus for m in g.migs]
    chosen: list[GpuDevice] = []
    for token in (t.strip() for t in value.split(",")):
        if token.isdigit():
            if int(token) >= len(by_bus):
                break
            chosen.extend(by_bus[int(token)].cuda_devices())
        elif token.startswith("GPU-"):
            gpu = _unique([g for g in gpus if g.uuid.startswith(token)])
            if gpu is None:
                break
            chosen.extend(gpu.cuda_devices())
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


def _dedupe(devices: Iterable[GpuDevice]) -> list[GpuDevice]:
    seen: set[str] = set()
    return [d for d in devices if not (d.uuid in seen or seen.add(d.uuid))]  # type: ignore[func-returns-value]


def _version_text(version: tuple[int, ...] | None) -> str:
    return "version unknown" if version is None else ".".join(map(str, version))


def select_devices(
    gpus: list[NodeGpu],
    slots: list[GpuDevice | None],
    environ: Mapping[str, str],
    slurm_version: SlurmVersion = scheduler.slurm_version,
) -> Selection:
    """The job's devices among ``gpus`` (``slots``: in GRES order) and which rule chose them (see
    the module's docstring)."""
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return Selection(_match_cuda_visible(cuda, gpus), f"CUDA_VISIBLE_DEVICES={cuda!r}", gpus, slots)
    job_id = environ.get("SLURM_JOB_ID")
    if job_id:
        for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
            value = environ.get(name)
            if not value:
                continue
            ids = _slurm_ids(value)
            version = slurm_version()
            if version is not None and version[:2] < GRES_INDEX_SINCE:
                picked = [d for i in ids for g in gpus if g.minor == i for d in g.devices()]
                rule = (
                    f"{name}={value!r} read as device minor numbers (/dev/nvidiaN), as Slurm "
                    f"{_version_text(version)} writes them (GRES indices since {_version_text(GRES_INDEX_SINCE)})"
                )
            else:
                picked = [d for i in ids if 0 <= i < len(slots) for d in [slots[i]] if d is not None]
                rule = (
                    f"{name}={value!r} read as GRES indices (the node's GPUs in PCI bus order, those hidden by "
                    f"the job's cgroup counted, each MIG slice its own index; Slurm {_version_text(version)})"
                )
            return Selection(_dedupe(picked), rule, gpus, slots)
        return Selection(
            [], "", gpus, slots,
            no_gpu_job=(
                f"this Slurm job ({job_id}) was given no GPU: none of CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS, "
                "SLURM_JOB_GPUS is set, so the GPUs NVML shows belong to other jobs. Request GPUs "
                "(--gpus / --gres=gpu:N) to monitor them"
            ),
        )  # fmt: skip
    return Selection(_dedupe(d for g in gpus for d in g.devices()), "all GPUs of the node (no Slurm job)", gpus, slots)


# -- the job's processes ----------------------------------------------------------------------
def find_job_cgroup(job_id: str, self_cgroup: str, cgroup_root: str) -> tuple[str | None, str]:
    """(the folder of Slurm job ``job_id``'s cgroup, or None; why not) from ``/proc/self/cgroup``.

    cgroup v2: ``0::/system.slice/slurmstepd.scope/job_<id>/step_0/...``; v1: one line per
    hierarchy (``4:memory:/slurm/uid_<uid>/job_<id>/step_0``), each under ``<root>/<controller>``.
    """
    try:
        with open(self_cgroup, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        return None, f"{self_cgroup} is not readable ({exc.strerror or exc})"
    marker = f"job_{job_id}"
    tried: list[str] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        parts = path.split("/")
        if marker not in parts:
            continue
        job_path = "/".join(parts[: parts.index(marker) + 1]).lstrip("/")
        bases = [cgroup_root] if hierarchy == "0" and not controllers else [
            os.path.join(cgroup_root, c.removeprefix("name=")) for c in controllers.split(",")
        ] + [os.path.join(cgroup_root, controllers)]  # fmt: skip
        for base in bases:
            folder = os.path.join(base, job_path)
            if folder in tried:
                continue
            tried.append(folder)
            if os.access(os.path.join(folder, "cgroup.procs"), os.R_OK):
                return folder, ""
    if not tried:
        return None, f"no {marker} in {self_cgroup} (not a Slurm cgroup layout this monitor knows)"
    return None, f"{', '.join(tried)} not readable"


def read_cgroup_pids(folder: str) -> set[int]:
    """Every pid in the cgroup ``folder`` and the cgroups below it (every step of the job)."""
    pids: set[int] = set()
    for here, _dirs, files in os.walk(folder):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(here, "cgroup.procs"), encoding="ascii") as fh:
                pids.update(int(line) for line in fh if line.strip().isdigit())
        except OSError:
            continue  # a step that ended meanwhile
    return pids
