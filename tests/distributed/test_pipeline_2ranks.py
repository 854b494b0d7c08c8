"""Pipeline parity on 2 gloo ranks: pp=2 with GPipe and 1F1B for GPT-2 and LLaMA tiny,
3 SGD steps through ``step``; loss every step and ``full_state_dict()`` against the
single-process model (GPT-2 ties its embedding to the head across the two stages)."""

from __future__ import annotations

import pytest

from tests.distributed.pipeline_parity import check, pipeline_parity


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("example", ["gpt2", "llama"])
def test_pp2(pool2, example: str, schedule: str) -> None:
    result = pool2.run(pipeline_parity, example, {"pp": 2}, schedule, timeout_s=300)[0]
    check(result)
    info = result["pipeline"]
    assert info["schedule"] == schedule and info["num_stages"] == 2
    assert info["stages"][0]["units"][0] == 0  # embeddings on the first stage
    assert 0.0 < info["predicted_bubble"] < 1.0
