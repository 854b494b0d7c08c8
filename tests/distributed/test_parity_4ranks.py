"""Parity on 4 gloo ranks: ``auto`` on a named {"dp": 2, "tp": 2} mesh for every bundled
example, 3 SGD and 3 AdamW steps against the single-process model."""

from __future__ import annotations

import pytest

from tests.distributed.parity import check, train_parity


@pytest.mark.parametrize("example", ["mlp", "gpt2", "bert", "llama"])
def test_auto_2d_mesh(pool4, example: str) -> None:
    result = pool4.run(train_parity, example, "auto", {"dp": 2, "tp": 2}, timeout_s=400)[0]
    check(result)


def test_forced_tp_on_2d_mesh_is_really_sharded(pool4) -> None:
    result = pool4.run(train_parity, "gpt2", "tp", {"dp": 2, "tp": 2}, ("sgd",), timeout_s=400)[0]
    check(result)
    assert result["sgd"]["sharded"] > 0
