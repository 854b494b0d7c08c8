"""Helpers shared by the CLI commands: mesh strings and the cost model a command prices with.

Contract: ``parse_mesh("dp=2,tp=4", devices)`` returns a ``MeshSpec`` (one ``dp`` axis over
``devices`` when the text is empty) and raises ValueError naming the expected form.
"""

from __future__ import annotations

from autopar.mesh import MeshSpec


def parse_mesh(text: str | None, devices: int) -> MeshSpec:
    if not text:
        return MeshSpec.of(devices)
    axes = []
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size.strip().isdigit():
            raise ValueError(f"mesh {text!r} must look like dp=2,tp=4")
        axes.append((name.strip(), int(size)))
    return MeshSpec(tuple(axes))
