"""Dtype names for cost lookups, without importing torch.

Contract: ``dtype_key(dtype)`` maps a ``torch.dtype`` or a string ("bf16", "bfloat16",
"torch.float32", "half", ...) to the short key used in throughput tables: "fp8",
"bf16", "fp16", "tf32", "fp32", "fp64", or ``None`` for integer/bool dtypes (which have
no FLOP rate, only memory traffic). ``dtype_bytes(dtype)`` gives the element size.
Unknown names raise ``ValueError`` listing the accepted ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

FLOAT_KEYS = ("fp8", "bf16", "fp16", "tf32", "fp32", "fp64")

# name (lowercase, "torch." prefix removed) -> (table key or None, bytes per element)
_DTYPES: Mapping[str, tuple[str | None, int]] = MappingProxyType(
    {
        "fp8": ("fp8", 1),
        "float8_e4m3fn": ("fp8", 1),
        "float8_e4m3fnuz": ("fp8", 1),
        "float8_e5m2": ("fp8", 1),
        "float8_e5m2fnuz": ("fp8", 1),
        "bf16": ("bf16", 2),
        "bfloat16": ("bf16", 2),
        "fp16": ("fp16", 2),
        "float16": ("fp16", 2),
        "half": ("fp16", 2),
        "tf32": ("tf32", 4),
        "fp32": ("fp32", 4),
        "float32": ("fp32", 4),
        "float": ("fp32", 4),
        "fp64": ("fp64", 8),
        "float64": ("fp64", 8),
        "double": ("fp64", 8),
        "bool": (None, 1),
        "uint8": (None, 1),
        "int8": (None, 1),
        "int16": (None, 2),
        "short": (None, 2),
        "uint16": (None, 2),
        "int32": (None, 4),
        "int": (None, 4),
        "uint32": (None, 4),
        "int64": (None, 8),
        "long": (None, 8),
        "uint64": (None, 8),
    }
)


def _lookup(dtype: Any) -> tuple[str | None, int]:
    if isinstance(dtype, str):
        name = dtype.strip().lower()
    elif str(dtype).startswith("torch."):  # a torch.dtype, recognised without importing torch
        name = str(dtype)
    else:
        raise ValueError(f"dtype must be a torch.dtype or a string such as 'bf16', got {dtype!r}")
    name = name.removeprefix("torch.")
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; accepted names are {sorted(_DTYPES)} "
            "(or the matching torch.dtype)"
        ) from None


def dtype_key(dtype: Any) -> str | None:
    """Throughput-table key for ``dtype``; ``None`` for integer and bool dtypes."""
    return _lookup(dtype)[0]


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of ``dtype``."""
    return _lookup(dtype)[1]
