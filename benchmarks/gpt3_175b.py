"""GPT-3 175B-shaped model for ``autopar plan benchmarks/gpt3_175b.py:build``.

A 96-layer GPT-2 (hidden 12288, 96 heads, sequence
2048, vocabulary 51200) at global batch 1536 (``batch_size``/``seq_len`` change the
inputs), on the meta device in bf16. A plain file
(no dataclasses, no package imports): ``autopar plan`` loads a model file by its path.
"""

from __future__ import annotations

from typing import Any

import torch


def build(batch_size: int | None = None,
          seq_len: int | None = None) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:  # fmt: skip
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=12288, n_layer=96, n_head=96, vocab_size=51200, n_positions=2048,
                     use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="sdpa", loss_type="ForCausalLM")  # fmt: skip
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg).to(torch.bfloat16)
    batch, seq = batch_size or 1536, seq_len or 2048
    if seq > cfg.n_positions:
        raise ValueError(f"seq_len {seq} exceeds the model's {cfg.n_positions} positions")
    ids = torch.empty((batch, seq), dtype=torch.long, device="meta")
    return model, (), {"input_ids": ids, "labels": ids}
