"""A user's model file gets the batch size and sequence length asked for: passed to a
builder that takes them, else its inputs cut to the first ``batch_size`` samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopar.models import resolve

SIZED = """
import torch
def build(batch_size=None, seq_len=None):
    b, s = batch_size or 6, seq_len or 5
    return torch.nn.Linear(4, 4), (torch.zeros(b, s, 4),)
"""
PLAIN = """
import torch
def build():
    x = torch.zeros(6, 5, 4)
    return torch.nn.Linear(4, 4), (x,), {"mask": torch.ones(6, 5), "scale": torch.ones(4)}
"""


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "m.py"
    path.write_text(text)
    return f"{path}:build"


def test_builder_taking_sizes_gets_them(tmp_path: Path) -> None:
    _, args, _ = resolve(_file(tmp_path, SIZED), "cpu", 2, 3)
    assert tuple(args[0].shape) == (2, 3, 4)
    _, args, _ = resolve(_file(tmp_path, SIZED), "cpu")
    assert tuple(args[0].shape) == (6, 5, 4)


def test_builder_without_sizes_has_its_inputs_cut(tmp_path: Path) -> None:
    _, args, kwargs = resolve(_file(tmp_path, PLAIN), "cpu", 2)
    assert tuple(args[0].shape) == (2, 5, 4)
    assert tuple(kwargs["mask"].shape) == (2, 5)
    assert tuple(kwargs["scale"].shape) == (4,)  # not batched: kept
    with pytest.raises(ValueError, match="batch_size parameter"):
        resolve(_file(tmp_path, PLAIN), "cpu", 8)
