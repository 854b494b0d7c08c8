"""ClusterSpec: how many devices of which kind, grouped into nodes.

Contract: ``ClusterSpec(num_nodes, devices_per_node, device)`` is a frozen value.
``ClusterSpec.parse`` reads the spec strings users type:

- ``"8xH100"``        one node of 8 H100s
- ``"4x8xA100-80GB"`` 4 nodes of 8 A100-80GB each
- ``"cpu:2"``         2 CPU processes on one node (``"cpu"`` alone is one)

Case and whitespace are ignored; ``str(cluster)`` gives the canonical spec string back.
Global ranks are assumed to fill node 0 first (rank // devices_per_node = node).
``axis_link(mesh, axis)`` says which link a collective along a mesh axis uses: intra-node
when every group along the axis lies inside one node under MeshSpec's row-major rank
layout, otherwise inter-node (the slowest hop bounds a ring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from autopar.mesh import MeshSpec
from cost_models import _validate as v
from cost_models.hardware import DeviceSpec, known_device_names, lookup_device

LinkKind = Literal["intra", "inter"]

_ACCEPTED_FORMS = "'<devices>x<device>' (e.g. '8xH100'), '<nodes>x<devices>x<device>' (e.g. '4x8xA100-80GB'), 'cpu:<processes>' (e.g. 'cpu:2')"  # noqa: E501
_GPU_RE = re.compile(r"^(?:(\d+)x)?(\d+)x(.+)$")
_CPU_RE = re.compile(r"^cpu(?::(\d+))?$")


@dataclass(frozen=True)
class LinkSpec:
    """The link a collective runs over: bytes/s per device, seconds per message step."""

    bandwidth: float
    alpha: float
    kind: LinkKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "bandwidth", v.positive("link bandwidth", self.bandwidth))
        object.__setattr__(self, "alpha", v.non_negative("link alpha", self.alpha))
        if self.kind not in ("intra", "inter"):
            raise ValueError(f"link kind must be 'intra' or 'inter', got {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "alpha": self.alpha, "kind": self.kind}

    @staticmethod
    def from_json(obj: Any) -> LinkSpec:
        d = v.check_keys("link", obj, {"bandwidth", "alpha", "kind"})
        return LinkSpec(d["bandwidth"], d["alpha"], d["kind"])


@dataclass(frozen=True)
class ClusterSpec:
    num_nodes: int
    devices_per_node: int
    device: DeviceSpec

    def __post_init__(self) -> None:
        v.positive_int("num_nodes", self.num_nodes)
        v.positive_int("devices_per_node", self.devices_per_node)
        if not isinstance(self.device, DeviceSpec):
            raise ValueError(
                f"device must be a DeviceSpec (see cost_models.lookup_device), got {self.device!r}"
            )

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    @staticmethod
    def parse(text: str) -> ClusterSpec:
        """Parse a spec string such as ``"8xH100"``, ``"4x8xA100-80GB"`` or ``"cpu:2"``."""
        if not isinstance(text, str):
            raise ValueError(f"cluster spec must be a string like '8xH100', got {text!r}")
        t = "".join(text.split()).lower()
        m = _CPU_RE.match(t)
        if m:
            n = int(m.group(1)) if m.group(1) is not None else 1
            if n < 1:
                raise ValueError(
                    f"cluster spec {text!r} asks for {n} CPU processes; use cpu:1 or more"
                )
            return ClusterSpec(1, n, lookup_device("cpu"))
        m = _GPU_RE.match(t)
        if m is None:
            raise ValueError(
                f"cannot parse cluster spec {text!r}; accepted forms are {_ACCEPTED_FORMS}; "
                f"known devices are {known_device_names()}"
            )
        nodes = int(m.group(1)) if m.group(1) is not None else 1
        per_node = int(m.group(2))
        if nodes < 1 or per_node < 1:
            raise ValueError(
                f"cluster spec {text!r} has a zero count; node and device counts must be >= 1"
            )
        try:
            device = lookup_device(m.group(3))
        except ValueError as e:
            raise ValueError(
                f"cluster spec {text!r}: {e}; accepted forms are {_ACCEPTED_FORMS}"
            ) from None
        return ClusterSpec(nodes, per_node, device)

    @staticmethod
    def cpu(num_processes: int, num_nodes: int = 1) -> ClusterSpec:
        """A CPU (gloo) cluster of ``num_processes`` processes per node."""
        return ClusterSpec(num_nodes, num_processes, lookup_device("cpu"))

    def __str__(self) -> str:
        if self.device.is_cpu and self.num_nodes == 1:
            return f"cpu:{self.devices_per_node}"
        if self.num_nodes == 1:
            return f"{self.devices_per_node}x{self.device.name}"
        return f"{self.num_nodes}x{self.devices_per_node}x{self.device.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "num_nodes": self.num_nodes,
            "devices_per_node": self.devices_per_node,
            "device": self.device.to_json(),
        }

    @staticmethod
    def from_json(obj: Any) -> ClusterSpec:
        """Parse the ``to_json`` form; also accepts a spec string such as ``"8xH100"``."""
        if isinstance(obj, str):
            return ClusterSpec.parse(obj)
        d = v.check_keys("cluster", obj, {"num_nodes", "devices_per_node", "device"})
        return ClusterSpec(d["num_nodes"], d["devices_per_node"], DeviceSpec.from_json(d["device"]))

    def check_mesh(self, mesh: MeshSpec) -> None:
        """Raise ValueError unless ``mesh`` has exactly as many devices as this cluster."""
        if mesh.num_devices != self.num_devices:
            raise ValueError(
                f"mesh {mesh} has {mesh.num_devices} devices but cluster '{self}' has "
                f"{self.num_devices} ({self.num_nodes} node(s) x {self.devices_per_node}); "
                f"choose mesh axis sizes whose product is {self.num_devices} or a cluster "
                f"with {mesh.num_devices} devices"
            )

    def axis_is_intra_node(self, mesh: MeshSpec, axis: int) -> bool:
        """True when every group along mesh ``axis`` sits inside one node.

        Groups along ``axis`` are ranks ``r, r+s, ..., r+(n-1)s`` (s = axis stride) and
        lie in aligned blocks of ``span = s*n`` ranks; a block is inside one node iff
        ``span <= devices_per_node`` and ``devices_per_node % span == 0``.
        """
        self.check_mesh(mesh)
        if not isinstance(axis, int) or not 0 <= axis < mesh.ndim:
            raise ValueError(
                f"axis must be an int in [0, {mesh.ndim}) for mesh {mesh}, got {axis!r}"
            )
        size = mesh.size(axis)
        if size == 1 or self.num_nodes == 1:
            return True
        span = mesh.axis_stride(axis) * size
        return span <= self.devices_per_node and self.devices_per_node % span == 0

    def axis_link(self, mesh: MeshSpec, axis: int) -> LinkSpec:
        """The link used by collectives along mesh ``axis`` (see ``axis_is_intra_node``)."""
        d = self.device
        if self.axis_is_intra_node(mesh, axis):
            return LinkSpec(d.intra_node_bw, d.intra_alpha, "intra")
        return LinkSpec(d.inter_node_bw, d.inter_alpha, "inter")
