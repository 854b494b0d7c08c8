"""CostModel: the one object a planner asks for times and the memory budget.

Contract: ``CostModel(cluster, mesh, profile=None)`` is a frozen value; construction
raises ValueError unless ``mesh`` has as many devices as ``cluster``. When ``profile``
is given its measured figures replace the device table's (``Profile.apply``). Methods:

- ``compute_time(flops, bytes_moved, dtype, special, attention)``: roofline seconds on
  one device (``cost_models.compute.compute_time``).
- ``link(axis)``: the LinkSpec of a mesh axis (int index or axis name), or of a group
  spanning several axes (a tuple): intra-node only if every such group fits in a node.
- ``collective_time(kind, nbytes, axis)``: ``comm.collective_time`` with n = the axis
  size (product of sizes for a tuple of axes) on ``link(axis)``; nbytes is the FULL
  tensor size. On an intra-node link a profile's per-kind fit (``Profile.collectives``)
  replaces the link's alpha and bandwidth for that kind.
- ``memory_budget_bytes(headroom=0.9)``: usable bytes per device.
- ``reshard_overhead_s``: the profile's per-layout-call runtime overhead (0.0 without).
- ``param_use_s``: the profile's runtime overhead of one parameter use in its stored
  layout (the profile's ``reshard_overhead_s`` when it has no such figure, else 0.0).
- ``overlap``: the fraction of compute time under which parameter collectives (gradient
  reductions, FSDP/ZeRO gathers) can run: ``GPU_OVERLAP`` on GPUs, where NCCL runs on
  its own stream and FSDP/DDP prefetch and bucket them; 0 on CPU, where gloo
  collectives run synchronously. ``comm_overlap`` overrides it.
- ``interference``: the share of an overlapped collective's time still paid, because its
  kernels slow the compute they share the GPU with (``GPU_INTERFERENCE``; 0 when nothing
  overlaps).

``CostModel.default_for(mesh)`` is the model used when the user names no cluster: one
node of CPU processes, one per mesh device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autopar.mesh import MeshSpec
from cost_models import _validate as v
from cost_models.cluster import ClusterSpec, LinkSpec
from cost_models.comm import collective_time as _collective_time
from cost_models.compute import compute_time as _compute_time
from cost_models.hardware import DeviceSpec
from cost_models.profile import Profile

AxisRef = int | str
GPU_OVERLAP = 0.8
GPU_INTERFERENCE = 0.1


@dataclass(frozen=True)
class CostModel:
    cluster: ClusterSpec
    mesh: MeshSpec
    profile: Profile | None = None
    comm_overlap: float | None = None
    # The cluster with the profile's figures applied; derived, not part of equality.
    effective_cluster: ClusterSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, ClusterSpec):
            raise ValueError(
                f"cluster must be a ClusterSpec (e.g. ClusterSpec.parse('8xH100')), "
                f"got {self.cluster!r}"
            )
        if not isinstance(self.mesh, MeshSpec):
            raise ValueError(
                f"mesh must be a MeshSpec (MeshSpec.of({{'dp': 2}})), got {self.mesh!r}"
            )
        if self.profile is not None and not isinstance(self.profile, Profile):
            raise ValueError(f"profile must be a Profile or None, got {self.profile!r}")
        self.cluster.check_mesh(self.mesh)
        eff = self.cluster
        if self.profile is not None:
            eff = dataclasses.replace(eff, device=self.profile.apply(eff.device))
        object.__setattr__(self, "effective_cluster", eff)

    @staticmethod
    def default_for(mesh: MeshSpec) -> CostModel:
        """A one-node CPU cluster with one process per mesh device."""
        return CostModel(ClusterSpec.cpu(mesh.num_devices), mesh)

    @property
    def overlap(self) -> float:
        if self.comm_overlap is not None:
            return v.fraction("comm_overlap", self.comm_overlap) if self.comm_overlap else 0.0
        return 0.0 if self.device.is_cpu else GPU_OVERLAP

    @property
    def interference(self) -> float:
        return GPU_INTERFERENCE if self.overlap > 0 else 0.0

    @property
    def device(self) -> DeviceSpec:
        """The device figures in use (table figures with the profile applied)."""
        return self.effective_cluster.device

    @property
    def reshard_overhead_s(self) -> float:
        """Seconds of runtime overhead per layout call (the profile's figure, else 0)."""
        if self.profile is None or self.profile.reshard_overhead_s is None:
            return 0.0
        return self.profile.reshard_overhead_s

    @property
    def param_use_s(self) -> float:
        """Seconds of runtime overhead per parameter use in its stored layout."""
        if self.profile is None:
            return 0.0
        if self.profile.param_use_s is not None:
            return self.profile.param_use_s
        return self.reshard_overhead_s

    def compute_time(
        self,
        flops: float,
        bytes_moved: float,
        dtype: Any = "fp32",
        special: Mapping[str, float] | None = None,
        attention: bool = False,
    ) -> float:
        return _compute_time(self.device, flops, bytes_moved, dtype, special, attention)

    def _axis_index(self, axis: AxisRef) -> int:
        names = self.mesh.names
        if isinstance(axis, str):
            if axis not in names:
                raise ValueError(f"mesh {self.mesh} has no axis {axis!r}; axes are {list(names)}")
            return names.index(axis)
        if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < len(names):
            raise ValueError(
                f"axis must be an axis name in {list(names)} or an int in [0, {len(names)}), "
                f"got {axis!r}"
            )
        return axis

    def _axes(self, axis: AxisRef | Sequence[AxisRef]) -> tuple[int, ...]:
        if isinstance(axis, (int, str)):
            return (self._axis_index(axis),)
        idx = tuple(self._axis_index(a) for a in axis)
        if not idx or len(set(idx)) != len(idx):
            raise ValueError(f"axes must be a non-empty list of distinct mesh axes, got {axis!r}")
        return tuple(sorted(idx))

    def group_size(self, axis: AxisRef | Sequence[AxisRef]) -> int:
        return math.prod(self.mesh.size(a) for a in self._axes(axis))

    def link(self, axis: AxisRef | Sequence[AxisRef]) -> LinkSpec:
        axes = self._axes(axis)
        cluster = self.effective_cluster
        if len(axes) == 1:
            return cluster.axis_link(self.mesh, axes[0])
        d = cluster.device
        if _group_in_one_node(self.mesh, axes, cluster.devices_per_node):
            return LinkSpec(d.intra_node_bw, d.intra_alpha, "intra")
        return LinkSpec(d.inter_node_bw, d.inter_alpha, "inter")

    def collective_time(self, kind: str, nbytes: float, axis: AxisRef | Sequence[AxisRef]) -> float:
        """Seconds for collective ``kind`` of a FULL tensor of ``nbytes`` along ``axis``."""
        link = self.link(axis)
        fit = self.profile.collectives.get(kind) if self.profile is not None else None
        if fit is not None and link.kind == "intra":  # this kind's own measured fit
            link = LinkSpec(fit.bandwidth, fit.alpha, "intra")
        return _collective_time(kind, nbytes, self.group_size(axis), link)

    def collective_latency(self, kind: str, axis: AxisRef | Sequence[AxisRef]) -> float:
        """The latency part (steps x alpha) of one collective ``kind`` along ``axis``:
        what each additional collective costs when tensors are sent together instead."""
        from cost_models.comm import ring_terms

        link = self.link(axis)
        fit = self.profile.collectives.get(kind) if self.profile is not None else None
        if fit is not None and link.kind == "intra":
            link = LinkSpec(fit.bandwidth, fit.alpha, "intra")
        _, steps = ring_terms(kind, 1.0, self.group_size(axis))
        return steps * link.alpha

    def memory_budget_bytes(self, headroom: float = 0.9) -> int:
        """Bytes per device a plan may use: ``memory_bytes * headroom``."""
        return int(self.device.memory_bytes * v.fraction("headroom", headroom))

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster.to_json(),
            "mesh": self.mesh.to_json(),
            "profile": None if self.profile is None else self.profile.to_json(),
        }

    @staticmethod
    def from_json(obj: Any) -> CostModel:
        d = v.check_keys("cost model", obj, {"cluster", "mesh"}, {"profile"})
        prof = d.get("profile")
        return CostModel(
            ClusterSpec.from_json(d["cluster"]),
            MeshSpec.from_json(d["mesh"]),
            None if prof is None else Profile.from_json(prof),
        )


def _group_in_one_node(mesh: MeshSpec, axes: tuple[int, ...], devices_per_node: int) -> bool:
    """True when every group of ranks spanning mesh ``axes`` sits in one node."""
    nodes_of_group: dict[tuple[int, ...], int] = {}
    sizes = mesh.sizes
    for rank in range(mesh.num_devices):
        coords, rest = [], rank
        for s in reversed(sizes):
            coords.append(rest % s)
            rest //= s
        coords.reverse()
        key = tuple(c for i, c in enumerate(coords) if i not in axes)
        node = rank // devices_per_node
        if nodes_of_group.setdefault(key, node) != node:
            return False
    return True
