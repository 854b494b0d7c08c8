"""Pipeline parity on 4 gloo ranks: pp=2 x dp=2 and pp=2 x tp=2 (each stage keeps its
own data- or tensor-parallel plan on its 2-rank submesh) for GPT-2 and LLaMA tiny, 3
SGD steps through ``step`` against the single-process model."""

from __future__ import annotations

import pytest

from autopar.testing.pipeline_parity import check, pipeline_parity


@pytest.mark.parametrize("example", ["gpt2", "llama"])
@pytest.mark.parametrize("inner", ["dp", "tp"])
def test_pp2_x_inner2(pool4, example: str, inner: str) -> None:
    mesh = {"pp": 2, inner: 2}
    result = pool4.run(pipeline_parity, example, mesh, "1f1b", inner, timeout_s=300)[0]
    check(result)
    assert result["submesh"] == {"axes": [{"name": inner, "size": 2}]}
    assert result["sharded"] > 0, "the stage's plan should shard over its submesh"
