"""Dtype names for cost lookups, without importing torch.

Contract: ``dtype_key(dtype)`` maps a ``torch.dtype`` or a string ("bf16", "bfloat16",
"torch.float32", "half", ...) to the short key used in throughput tables: "fp8",
"bf16", "fp16", "tf32", "fp32", "fp64", or ``None`` for integer/bool dtypes (which have
no FLOP rate, only memory traffic). ``dtype_bytes(dtype)`` gives the element size.
A ``torch.dtype`` outside the table is priced, never refused: a complex dtype by its
real part's FLOP rate and its own itemsize (complex64 -> "fp32", 8 bytes), any other
(sub-byte, quantized, bit dtypes) as memory traffic alone (``None``) at its itemsize.
Unknown names given as strings raise ``ValueError`` listing the accepted ones.
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


# complex dtype -> the table key of its real part
_COMPLEX_PART = MappingProxyType({"complex32": "fp16", "complex64": "fp32", "complex128": "fp64"})


def _torch_dtype(dtype: Any) -> tuple[str | None, int] | None:
    """A torch.dtype the table lacks, by its own attributes (without importing torch)."""
    itemsize = getattr(dtype, "itemsize", None)
    if not isinstance(itemsize, int):
        return None
    name = str(dtype).removeprefix("torch.")
    if getattr(dtype, "is_complex", False):
        return _COMPLEX_PART.get(name), itemsize
    return None, itemsize


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
        found = None if isinstance(dtype, str) else _torch_dtype(dtype)
        if found is not None:
            return found
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
