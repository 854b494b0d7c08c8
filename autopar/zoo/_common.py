"""Helpers shared by the bundled model builders (not a model itself).

Contract: ``build_context(device, seed)`` is the context a builder constructs its model in
(on ``meta`` nothing is allocated; elsewhere the global RNG is seeded first, so every process
builds identical weights); ``random_tokens`` makes a deterministic int64 batch;
``resolve_size`` checks a size name and maps aliases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def build_context(device: str | torch.device, seed: int) -> Iterator[None]:
    """Context in which a model is constructed.

    On ``meta`` the model is built directly on the meta device, so even a 70B model allocates
    no memory.  Otherwise the global RNG is seeded with ``seed`` first, so every process builds
    identical weights.
    """
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            yield
    else:
        torch.manual_seed(seed)
        yield


def random_tokens(
    shape: tuple[int, ...], vocab_size: int, *, device: str | torch.device, seed: int
) -> torch.Tensor:
    """Deterministic random int64 token ids (on ``device``; meta tensors carry no data)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=torch.long, device="meta")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, shape, generator=gen, dtype=torch.long).to(device)


def random_floats(shape: tuple[int, ...], *, device: str | torch.device, seed: int) -> torch.Tensor:
    """Deterministic standard-normal float32 values (meta tensors carry no data)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, device="meta")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(device)


def ones(shape: tuple[int, ...], *, device: str | torch.device) -> torch.Tensor:
    """An int64 all-ones tensor (an attention mask that attends everywhere)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=torch.long, device="meta")
    return torch.ones(shape, dtype=torch.long, device=device)


def resolve_size(size: str, sizes: tuple[str, ...], aliases: dict[str, str]) -> str:
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; expected one of {sizes}")
    return aliases.get(size, size)
