"""MeshSpec: a named, n-dimensional device mesh as a value.

Contract: ``MeshSpec(axes=(("dp", 2), ("tp", 4)))`` names each mesh axis and its size;
ranks are laid out row-major (the last axis varies fastest, so it should be the one
inside a node). A MeshSpec is pure data: it builds a torch ``DeviceMesh`` only when
``device_mesh()`` is called inside an initialised process group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MeshSpec:
    axes: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.axes:
            raise ValueError("a mesh needs at least one axis, e.g. {'dp': 2}")
        names = [n for n, _ in self.axes]
        if len(set(names)) != len(names):
            raise ValueError(f"mesh axis names must be unique, got {names}")
        for name, size in self.axes:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"mesh axis name must be an identifier, got {name!r}")
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"mesh axis {name!r} must have a positive int size, got {size!r}")

    @staticmethod
    def of(spec: Mapping[str, int] | int | MeshSpec, default_axis: str = "dp") -> MeshSpec:
        """Build from a dict ``{"dp": 2, "tp": 2}``, a device count, or a MeshSpec."""
        if isinstance(spec, MeshSpec):
            return spec
        if isinstance(spec, int):
            return MeshSpec(((default_axis, spec),))
        if isinstance(spec, Mapping):
            return MeshSpec(tuple((str(k), v) for k, v in spec.items()))
        raise TypeError(f"mesh must be a dict like {{'dp': 2, 'tp': 2}} or an int, got {spec!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.axes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.axes)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def num_devices(self) -> int:
        return math.prod(self.sizes)

    def size(self, axis: int | str) -> int:
        if isinstance(axis, str):
            return self.sizes[self.names.index(axis)]
        return self.sizes[axis]

    def axis_stride(self, axis: int) -> int:
        """Distance in global rank between neighbours along ``axis`` (row-major)."""
        return math.prod(self.sizes[axis + 1 :])

    def check_world(self, world_size: int) -> None:
        if self.num_devices != world_size:
            shape = " x ".join(f"{n}={s}" for n, s in self.axes)
            raise ValueError(
                f"mesh {shape} has {self.num_devices} devices but the process group has "
                f"{world_size} ranks; choose axis sizes whose product is {world_size} "
                f"(for example mesh={{'dp': {world_size}}}) or launch {self.num_devices} processes"
            )

    def __str__(self) -> str:
        return "(" + ", ".join(f"{n}={s}" for n, s in self.axes) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"axes": [{"name": n, "size": s} for n, s in self.axes]}

    @staticmethod
    def from_json(obj: Any) -> MeshSpec:
        if not isinstance(obj, dict) or not isinstance(obj.get("axes"), list):
            raise ValueError(
                f"mesh must be {{'axes': [{{'name': ..., 'size': ...}}]}}, got {obj!r}"
            )
        axes = []
        for a in obj["axes"]:
            if not isinstance(a, dict) or "name" not in a or "size" not in a:
                raise ValueError(f"each mesh axis needs 'name' and 'size', got {a!r}")
            axes.append((a["name"], a["size"]))
        return MeshSpec(tuple(axes))

    def device_mesh(self, device_type: str = "cpu") -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, self.sizes, mesh_dim_names=self.names)
