"""Best-effort detection of the cluster this process runs on.

Contract: ``detect_cluster()`` never raises. It returns:

- with CUDA devices: a GPU ClusterSpec. The device comes from the reported name by
  substring ("H200", "H100", "A100" split 40/80GB by memory, "V100", "L40S"); an
  unknown GPU gets the figures of the known GPU with the closest memory size. Either
  way the name and memory_bytes are the reported ones. If ``nvidia-smi topo -m`` shows
  no NVLink between GPUs (or the name says PCIe) the intra-node bandwidth becomes the
  PCIe figure. Nodes come from torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE when both are
  set and consistent, else one node of ``torch.cuda.device_count()`` GPUs.
- without CUDA: a CPU cluster. Its size is WORLD_SIZE (split into nodes by
  LOCAL_WORLD_SIZE when set), else 1: a plain, un-launched Python process is one CPU
  device; ``os.cpu_count()`` is not used since cores are not processes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

from cost_models.cluster import ClusterSpec
from cost_models.hardware import DEVICES, DeviceSpec, lookup_device

PCIE_BW = 25e9  # effective per-GPU bus bandwidth over PCIe Gen4 x16
_GPU_NAMES = ("H200", "H100", "A100", "V100", "L40S")


def _env_int(name: str) -> int | None:
    try:
        val = int(os.environ[name])
    except (KeyError, ValueError):
        return None
    return val if val >= 1 else None


def _layout(default_per_node: int) -> tuple[int, int]:
    """(num_nodes, devices_per_node) from torchrun's env, else one node."""
    world, local = _env_int("WORLD_SIZE"), _env_int("LOCAL_WORLD_SIZE")
    if world is not None and local is not None and world % local == 0:
        return world // local, local
    if world is not None:
        return 1, world
    return 1, default_per_node


def device_from_name(name: str, memory_bytes: int) -> DeviceSpec:
    """A DeviceSpec for a GPU reported as ``name`` with ``memory_bytes`` of memory."""
    upper = name.upper()
    base: DeviceSpec | None = None
    for key in _GPU_NAMES:
        if key in upper:
            if key == "A100":
                key = "A100-80GB" if memory_bytes > 60 * 2**30 else "A100-40GB"
            base = lookup_device(key)
            break
    if base is None:
        gpus = [d for d in DEVICES.values() if not d.is_cpu]
        base = min(gpus, key=lambda d: abs(d.memory_bytes - memory_bytes))
    dev = dataclasses.replace(base, name=name.strip() or base.name, memory_bytes=memory_bytes)
    if "PCIE" in upper:
        dev = dataclasses.replace(dev, intra_node_bw=min(dev.intra_node_bw, PCIE_BW))
    return dev


def nvlink_present() -> bool | None:
    """True/False from ``nvidia-smi topo -m`` (an ``NV<k>`` entry), None when unknown."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "topo", "-m"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or "GPU0" not in out.stdout:
        return None
    for line in out.stdout.splitlines():
        if line.startswith("GPU") and any(
            tok.startswith("NV") and tok[2:].isdigit() for tok in line.split()
        ):
            return True
    return False


def _detect_gpu() -> ClusterSpec | None:
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if count < 1:
        return None
    props = torch.cuda.get_device_properties(0)
    dev = device_from_name(str(props.name), int(props.total_memory))
    if count > 1 and nvlink_present() is False:
        dev = dataclasses.replace(dev, intra_node_bw=min(dev.intra_node_bw, PCIE_BW))
    nodes, per_node = _layout(count)
    return ClusterSpec(nodes, per_node, dev)


def detect_cluster() -> ClusterSpec:
    """The cluster this process runs on, best effort; never raises (see module doc)."""
    try:
        found = _detect_gpu()
    except Exception:  # noqa: BLE001 - detection is best effort by contract
        found = None
    if found is not None:
        return found
    nodes, per_node = _layout(1)
    return ClusterSpec.cpu(per_node, num_nodes=nodes)
