"""The 3D search without processes: topology, memory, ranking, and speed on big shapes."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autopar.capture import capture
from autopar.pipeline.partition import InfeasibleError
from autopar.pipeline.search import search_3d
from cost_models import ClusterSpec


def _llama_70b_two_blocks():  # type: ignore[no-untyped-def]
    cfg = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=2,
                      num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                      use_cache=False)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    ids = torch.empty((1, 4096), dtype=torch.long, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture(model, (), {"input_ids": ids, "labels": ids})


def test_70b_on_64_h100_ranks_fitting_meshes_fast() -> None:
    cap = _llama_70b_two_blocks()
    cluster = ClusterSpec.parse("8x8xH100")
    start = time.perf_counter()
    ranked = search_3d(cap, cluster, 512, layers=80)
    assert time.perf_counter() - start < 60
    assert len(ranked) > 1
    assert [c.step_s for c in ranked] == sorted(c.step_s for c in ranked)
    budget = 0.9 * cluster.device.memory_bytes
    for c in ranked:
        assert c.pp * c.dp * c.tp == 64
        assert 8 % c.tp == 0  # tensor parallelism inside a node
        assert c.memory_bytes <= budget
        assert c.bounds[0][0] == 0 and c.bounds[-1][1] == 81
    # 70B parameters with Adam do not fit without model parallelism
    assert ranked[0].pp * ranked[0].tp > 1
    fixed = search_3d(cap, cluster, 512, layers=80, fixed={"pp": 4})
    assert all(c.pp == 4 for c in fixed)
    assert fixed[0].step_s >= ranked[0].step_s


def test_nothing_fits_is_explained() -> None:
    cap = _llama_70b_two_blocks()
    with pytest.raises(InfeasibleError, match="fits the model"):
        search_3d(cap, ClusterSpec.parse("2xH100"), 8, layers=80)
