"""What a caller asks the planner for, read into constraints (no planning here).

Contract:
- ``parse_strategy(text, devices) -> (preset, degrees | None)``: a preset name (``auto``,
  ``dp``, ``tp``, ``fsdp``, ``zero``, ``pp``; ``3d`` is ``auto``) or fixed degrees
  ``tp=8,pp=4,dp=2`` (axes pp, dp, tp; they must multiply to ``devices``), else
  ValueError naming both. Degrees leave the placements to the solver (preset ``auto``).
- ``parse_bytes("40GB" | "38GiB" | "1e9")`` -> positive int bytes; ValueError otherwise.
- ``Constraints`` is the one normalised request the planning entry searches under:
  preset, fixed degrees (``pp``, ``dp``, ``tp``; missing ones are searched), a given mesh
  (used as is) and whether the mesh/pipeline search runs at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from autopar.mesh import MeshSpec

PRESETS = ("auto", "dp", "tp", "fsdp", "zero", "pp")
STAGE_PRESETS = ("auto", "dp", "tp", "fsdp", "zero")
PIPELINE_AXES = ("pp", "dp", "tp")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_strategy(text: str, devices: int | None = None) -> tuple[str, dict[str, int] | None]:
    """(preset, fixed degrees or None); ``devices`` None skips the degrees' product check."""
    text = text.strip().lower()
    if "=" not in text:
        name = "auto" if text == "3d" else text
        if name not in PRESETS:
            raise ValueError(
                f"strategy {text!r} is not known; use one of {', '.join(PRESETS)} or fixed "
                "degrees such as tp=8,pp=4,dp=2"
            )
        return name, None
    degrees: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if not size.strip().isdigit() or int(size) < 1 or name not in PIPELINE_AXES:
            raise ValueError(
                f"strategy {text!r}: each part must be axis=degree with axis pp, dp or tp "
                "and a positive degree, e.g. tp=8,pp=4,dp=2"
            )
        if name in degrees:
            raise ValueError(f"strategy {text!r} names axis {name!r} twice")
        degrees[name] = int(size)
    total = math.prod(degrees.values())
    if devices is not None and total != devices:
        raise ValueError(
            f"strategy {text!r} multiplies to {total} devices but the cluster has {devices}; "
            f"choose degrees whose product is {devices} (or change the cluster)"
        )
    return "auto", degrees


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"memory budget {text!r} is not a positive size; write it like 40GB, 38GiB or 80e9"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True)
class Constraints:
    preset: str  # placements inside a stage: auto, dp, tp, fsdp, zero
    degrees: dict[str, int] | None  # fixed pp/dp/tp (None: every factorisation searched)
    mesh: MeshSpec | None  # a given mesh: planned on as is (pp axis = pipeline)
    pipelined: bool  # pipeline stages are forced (pp > 1)
    search: bool  # the pp x dp x tp search runs (else the flat ILP on ``mesh``)


def constraints(
    strategy: str | None,
    mesh: Mapping[str, int] | MeshSpec | None,
    devices: int,
) -> Constraints:
    preset, degrees = parse_strategy(strategy or "auto", devices)
    spec = MeshSpec.of(mesh) if mesh is not None else None
    if spec is not None:
        if degrees is not None:
            raise ValueError(
                f"give either a mesh ({spec}) or fixed degrees in the strategy, not both"
            )
        spec.check_world(devices)
        pp = spec.size("pp") if "pp" in spec.names else 1
        if preset == "pp" and pp == 1:
            raise ValueError(
                f"strategy='pp' cuts the model into pipeline stages along a mesh axis named "
                f"'pp', but mesh {spec} has none; pass a mesh with one (e.g. "
                f"{{'pp': {devices}}}), or leave the mesh out to let autopar choose"
            )
        stage = "auto" if preset == "pp" else preset
        if pp > 1:
            odd = [n for n in spec.names if n not in PIPELINE_AXES]
            if odd:
                raise ValueError(
                    f"a pipeline mesh names its axes pp, dp and tp; mesh {spec} has "
                    f"{', '.join(odd)}. Write e.g. {{'pp': 2, 'dp': 2}}"
                )
            fixed = {n: spec.size(n) if n in spec.names else 1 for n in PIPELINE_AXES}
            return Constraints(stage, fixed, spec, True, True)
        return Constraints(stage, None, spec, False, False)
    if preset == "pp":
        return Constraints("auto", degrees, None, True, True)
    if degrees is not None:
        fixed = {n: degrees.get(n, 1) for n in PIPELINE_AXES}
        return Constraints("auto", fixed, None, fixed["pp"] > 1, True)
    # presets without a mesh: one data axis (dp, fsdp, zero) or tensor axis (tp) over the
    # world; auto searches every pp x dp x tp
    return Constraints(preset, None, None, False, preset == "auto")
