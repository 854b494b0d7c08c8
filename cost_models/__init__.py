"""cost_models: hardware figures and analytic time/memory costs for autopar's planner.

Contract: pure values and functions, no module-level mutable state, no solver imports;
depends only on ``autopar.mesh`` and the standard library (torch is imported lazily,
only by ``detect_cluster``). Entry points: ``ClusterSpec.parse("8xH100")``,
``detect_cluster()``, ``CostModel(cluster, mesh, profile)`` / ``CostModel.default_for``.
"""

from cost_models.cluster import ClusterSpec, LinkSpec
from cost_models.comm import COLLECTIVE_KINDS, collective_time
from cost_models.compute import compute_time
from cost_models.detect import detect_cluster, device_from_name
from cost_models.dtypes import dtype_bytes, dtype_key
from cost_models.hardware import DEVICES, DeviceSpec, known_device_names, lookup_device
from cost_models.memory import (
    TrainingMemory,
    master_weight_bytes,
    optimizer_state_bytes,
    optimizer_step_bytes,
)
from cost_models.model import CostModel
from cost_models.profile import Profile

__all__ = [
    "COLLECTIVE_KINDS",
    "DEVICES",
    "ClusterSpec",
    "CostModel",
    "DeviceSpec",
    "LinkSpec",
    "Profile",
    "TrainingMemory",
    "collective_time",
    "compute_time",
    "detect_cluster",
    "device_from_name",
    "dtype_bytes",
    "dtype_key",
    "known_device_names",
    "lookup_device",
    "master_weight_bytes",
    "optimizer_state_bytes",
    "optimizer_step_bytes",
]
