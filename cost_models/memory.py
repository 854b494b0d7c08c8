"""Per-device training memory: what a planner must fit under the memory budget.

Contract: ``TrainingMemory`` is a frozen breakdown in bytes (params, grads,
optimizer_state, master_weights, activations) with ``total`` and a JSON round trip.
Helpers give the byte counts of the standard mixed-precision conventions:

- ``optimizer_state_bytes(numel, optimizer)``: optimizer state kept in fp32:
  "sgd" 0, "sgd_momentum" 4 (one buffer), "adam"/"adamw" 8 (two moments) bytes/elem.
- ``master_weight_bytes(numel, param_dtype)``: an fp32 copy (4 bytes/elem) when the
  parameters are bf16/fp16, else 0.
- ``optimizer_step_bytes(optimizer)``: per-parameter-tensor scalars (torch's Adam keeps
  its step count as one fp32 scalar tensor per parameter).

All counts are of the elements a device holds (pass the local, sharded numel).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from cost_models import _validate as v
from cost_models.dtypes import dtype_key

OPTIMIZER_STATE_BYTES_PER_ELEM = MappingProxyType(
    {"sgd": 0, "sgd_momentum": 4, "adam": 8, "adamw": 8}
)


OPTIMIZER_STEP_BYTES = MappingProxyType({"sgd": 0, "sgd_momentum": 0, "adam": 4, "adamw": 4})


@dataclass(frozen=True)
class TrainingMemory:
    params: int = 0
    grads: int = 0
    optimizer_state: int = 0
    master_weights: int = 0
    activations: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v.non_negative_int(f"TrainingMemory.{f.name} (bytes)", getattr(self, f.name))

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def __add__(self, other: TrainingMemory) -> TrainingMemory:
        if not isinstance(other, TrainingMemory):
            return NotImplemented
        return TrainingMemory(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out

    @staticmethod
    def from_json(obj: Any) -> TrainingMemory:
        names = {f.name for f in fields(TrainingMemory)}
        d = dict(v.check_keys("training memory", obj, names, {"total"}))
        total = d.pop("total", None)
        mem = TrainingMemory(**d)
        if total is not None and total != mem.total:
            raise ValueError(
                f"training memory JSON says total={total!r} but its parts sum to {mem.total}; "
                "drop 'total' or fix the parts"
            )
        return mem


def optimizer_state_bytes(numel: int, optimizer: str) -> int:
    """Bytes of optimizer state for ``numel`` parameter elements (state kept in fp32)."""
    v.non_negative_int("numel", numel)
    key = optimizer.strip().lower() if isinstance(optimizer, str) else optimizer
    if key not in OPTIMIZER_STATE_BYTES_PER_ELEM:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of "
            f"{list(OPTIMIZER_STATE_BYTES_PER_ELEM)}"
        )
    return numel * OPTIMIZER_STATE_BYTES_PER_ELEM[key]


def master_weight_bytes(numel: int, param_dtype: Any) -> int:
    """Bytes of the fp32 master copy: 4/elem when params are bf16/fp16, else 0."""
    v.non_negative_int("numel", numel)
    return 4 * numel if dtype_key(param_dtype) in ("bf16", "fp16") else 0


def optimizer_step_bytes(optimizer: str) -> int:
    """Bytes of per-tensor optimizer scalars (Adam's step counter) for one parameter."""
    key = optimizer.strip().lower() if isinstance(optimizer, str) else optimizer
    if key not in OPTIMIZER_STEP_BYTES:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZER_STEP_BYTES)}"
        )
    return OPTIMIZER_STEP_BYTES[key]
