"""Profile: measured figures that replace the device table's figures.

Contract: a ``Profile`` is a frozen value of *achieved* (not peak) numbers, each
optional: ``matmul_flops`` (FLOP/s per dtype key), ``mem_bw`` (bytes/s), intra- and
inter-node link bandwidth (bytes/s per device) and alpha (seconds per step), and the
kernel ``launch_floor_s``, and ``collectives``: per collective kind, its own fitted
``CollectiveFit(alpha, bandwidth)`` on the calibration group's (intra-node) link, which
``CostModel`` prefers over ``intra_alpha``/``intra_bw`` for that kind, and
``reshard_overhead_s``: what one communication-free layout call of the runtime costs
(forward and backward), and ``param_use_s``: what one use of a parameter in its stored
layout costs the runtime (both measured by ``autopar.runtime.overhead``); no device
figure holds them, so ``apply`` leaves them out and ``CostModel`` reads them. Also
``attention_efficiency`` (fused attention's rate over the matmul rate) and
``special_rates`` (special-function evaluations per second, per function), which
``apply`` substitutes. ``apply(device)`` returns the device with those figures
substituted; because they are achieved rates, efficiencies become 1.0 and table peaks
the profile does not cover are pre-multiplied by the table efficiency, so unmeasured
dtypes keep their modelled rate. JSON round trip via ``to_json``/``from_json`` and
files via ``save(path)``/``Profile.load(path)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cost_models import _validate as v
from cost_models.comm import COLLECTIVE_KINDS
from cost_models.dtypes import FLOAT_KEYS
from cost_models.hardware import DeviceSpec, special_rate_map

_OPTIONAL_FLOATS = (
    "mem_bw",
    "intra_bw",
    "intra_alpha",
    "inter_bw",
    "inter_alpha",
    "launch_floor_s",
    "reshard_overhead_s",
    "param_use_s",
    "attention_efficiency",
)
_ALPHA_LIKE = (
    "intra_alpha", "inter_alpha", "launch_floor_s", "reshard_overhead_s", "param_use_s",
)  # fmt: skip


@dataclass(frozen=True)
class CollectiveFit:
    """One collective kind's fitted per-step latency (s) and bandwidth (bytes/s/device)."""

    alpha: float
    bandwidth: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", v.non_negative("collective fit alpha", self.alpha))
        object.__setattr__(
            self, "bandwidth", v.positive("collective fit bandwidth", self.bandwidth)
        )

    def to_json(self) -> dict[str, float]:
        return {"alpha": self.alpha, "bandwidth": self.bandwidth}

    @staticmethod
    def from_json(obj: Any) -> CollectiveFit:
        if isinstance(obj, CollectiveFit):
            return obj
        d = v.check_keys("collective fit", obj, {"alpha", "bandwidth"})
        return CollectiveFit(d["alpha"], d["bandwidth"])


@dataclass(frozen=True)
class Profile:
    matmul_flops: Mapping[str, float] = field(default_factory=dict)
    mem_bw: float | None = None
    intra_bw: float | None = None
    intra_alpha: float | None = None
    inter_bw: float | None = None
    inter_alpha: float | None = None
    launch_floor_s: float | None = None
    reshard_overhead_s: float | None = None
    param_use_s: float | None = None
    attention_efficiency: float | None = None
    special_rates: Mapping[str, float] = field(default_factory=dict)
    collectives: Mapping[str, CollectiveFit] = field(default_factory=dict)
    note: str = ""  # free text: where and how it was measured

    def __post_init__(self) -> None:
        flops = v.frozen_float_map("profile matmul_flops", self.matmul_flops)
        unknown = sorted(set(flops) - set(FLOAT_KEYS))
        if unknown:
            raise ValueError(
                f"profile matmul_flops has unknown dtype keys {unknown}; use keys from "
                f"{list(FLOAT_KEYS)}"
            )
        object.__setattr__(self, "matmul_flops", flops)
        rates = special_rate_map("profile special_rates", self.special_rates)
        object.__setattr__(self, "special_rates", rates)
        if not isinstance(self.collectives, Mapping):
            raise ValueError(
                "profile collectives must map a collective kind to {'alpha': s, 'bandwidth': "
                f"B/s}}, got {self.collectives!r}"
            )
        bad = sorted(set(self.collectives) - set(COLLECTIVE_KINDS))
        if bad:
            raise ValueError(
                f"profile collectives has unknown kinds {bad}; use kinds from "
                f"{list(COLLECTIVE_KINDS)}"
            )
        fits = {k: CollectiveFit.from_json(f) for k, f in self.collectives.items()}
        object.__setattr__(self, "collectives", MappingProxyType(fits))
        for name in _OPTIONAL_FLOATS:
            val = getattr(self, name)
            if val is None:
                continue
            check = v.non_negative if name in _ALPHA_LIKE else v.positive
            object.__setattr__(self, name, check(f"profile {name}", val))
        if not isinstance(self.note, str):
            raise ValueError(f"profile note must be a string, got {self.note!r}")

    def __hash__(self) -> int:
        rest = tuple(getattr(self, n) for n in _OPTIONAL_FLOATS)
        fits = tuple(sorted(self.collectives.items()))
        special = tuple(sorted(self.special_rates.items()))
        return hash((tuple(sorted(self.matmul_flops.items())), rest, fits, special, self.note))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # read-only maps do not pickle
        return Profile.from_json, (self.to_json(),)

    @property
    def is_empty(self) -> bool:
        return (
            not self.matmul_flops
            and not self.collectives
            and not self.special_rates
            and all(getattr(self, n) is None for n in _OPTIONAL_FLOATS)
        )

    def apply(self, device: DeviceSpec) -> DeviceSpec:
        """``device`` with the measured figures substituted (see module docstring)."""
        if self.is_empty:
            return device
        changes: dict[str, Any] = {}
        if self.matmul_flops:
            eff = device.matmul_efficiency
            flops = {k: peak * eff for k, peak in device.flops.items()}
            flops.update(self.matmul_flops)
            if "fp32" not in flops:  # pragma: no cover - tables always hold fp32
                flops["fp32"] = device.peak_flops("fp32") * eff
            changes.update(flops=flops, matmul_efficiency=1.0)
        if self.mem_bw is not None:
            changes.update(mem_bw=self.mem_bw, memory_efficiency=1.0)
        if self.special_rates:
            changes["special_rates"] = {**device.special_rates, **self.special_rates}
        if self.attention_efficiency is not None:
            changes["attention_efficiency"] = self.attention_efficiency
        for mine, theirs in (
            ("intra_bw", "intra_node_bw"),
            ("intra_alpha", "intra_alpha"),
            ("inter_bw", "inter_node_bw"),
            ("inter_alpha", "inter_alpha"),
            ("launch_floor_s", "launch_floor_s"),
        ):
            if getattr(self, mine) is not None:
                changes[theirs] = getattr(self, mine)
        return dataclasses.replace(device, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"matmul_flops": dict(self.matmul_flops)}
        for n in _OPTIONAL_FLOATS:
            if getattr(self, n) is not None:
                out[n] = getattr(self, n)
        if self.special_rates:
            out["special_rates"] = dict(self.special_rates)
        if self.collectives:
            out["collectives"] = {k: f.to_json() for k, f in sorted(self.collectives.items())}
        if self.note:
            out["note"] = self.note
        return out

    @staticmethod
    def from_json(obj: Any) -> Profile:
        d = v.check_keys(
            "profile",
            obj,
            set(),
            {"matmul_flops", *_OPTIONAL_FLOATS, "special_rates", "collectives", "note"},
        )
        return Profile(**d)

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Profile:
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"profile file {os.fspath(path)!r} is not valid JSON: {e}") from None
        try:
            return Profile.from_json(obj)
        except ValueError as e:
            raise ValueError(f"profile file {os.fspath(path)!r}: {e}") from None
