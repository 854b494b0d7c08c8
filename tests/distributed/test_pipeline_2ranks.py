"""Pipeline parity on 2 gloo ranks: pp=2 with GPipe and 1F1B for GPT-2 and LLaMA tiny,
3 SGD steps through ``step``; loss every step and ``full_state_dict()`` against the
single-process model (GPT-2 ties its embedding to the head across the two stages); and
interleaved 1F1B (2 chunks per rank) on a 4-block LLaMA tiny."""

from __future__ import annotations

import pytest

from autopar.testing.pipeline_parity import check, pipeline_parity


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("example", ["gpt2", "llama"])
def test_pp2(pool2, example: str, schedule: str) -> None:
    result = pool2.run(pipeline_parity, example, {"pp": 2}, schedule, timeout_s=300)[0]
    check(result)
    info = result["pipeline"]
    assert info["schedule"] == schedule and info["num_stages"] == 2
    assert info["stages"][0]["units"][0] == 0  # embeddings on the first stage
    assert 0.0 < info["predicted_bubble"] < 1.0


@pytest.mark.parametrize("example", ["llama"])
def test_pp2_interleaved(pool2, example: str) -> None:
    """Interleaved 1F1B: 4 blocks -> 4 stages (2 chunks per rank: stages r and r + 2)."""
    result = pool2.run(pipeline_parity, example, {"pp": 2}, "interleaved_1f1b", "pp", 3, 4,
                       timeout_s=300)[0]  # fmt: skip
    check(result)
    info = result["pipeline"]
    assert info["schedule"] == "interleaved_1f1b" and info["num_stages"] == 4
    assert [s["rank"] for s in info["stages"]] == [0, 1, 0, 1]
