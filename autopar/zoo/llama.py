"""LLaMA causal language model (Hugging Face ``LlamaForCausalLM``, randomly initialised).

``model(**kwargs)`` returns a ``CausalLMOutput`` whose ``.loss`` is the LM loss.  The 7B and
70B sizes are meant to be built with ``device="meta"`` (no memory is allocated).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autopar.zoo._common import build_context, random_tokens, resolve_size

SIZES = ("tiny", "7b", "70b", "full")
_ALIASES = {"full": "7b"}

# size -> (config kwargs, default batch size, default sequence length)
_CONFIGS: dict[str, tuple[dict, int, int]] = {
    "tiny": (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            max_position_embeddings=64,
        ),
        4,
        16,
    ),
    "7b": (
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=2048,
        ),
        8,
        2048,
    ),
    "70b": (
        dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=32000,
            max_position_embeddings=4096,
        ),
        8,
        4096,
    ),
}


def config(size: str = "tiny") -> LlamaConfig:
    cfg_kwargs, _, _ = _CONFIGS[resolve_size(size, SIZES, _ALIASES)]
    settings: dict[str, Any] = dict(
        attention_dropout=0.0,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaConfig(**cfg_kwargs, **settings)


def build(
    size: str = "tiny",
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, tuple, dict]:
    """Return ``(model, args, kwargs)``; ``model(*args, **kwargs).loss`` is the training loss."""
    cfg = config(size)
    _, default_batch, default_seq = _CONFIGS[resolve_size(size, SIZES, _ALIASES)]
    batch, seq = batch_size or default_batch, seq_len or default_seq
    with build_context(device, seed):
        model = LlamaForCausalLM(cfg)
    if torch.device(device).type != "meta":
        model = torch.nn.Module.to(model, torch.device(device))
    input_ids = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 1)
    labels = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 2)
    return model, (), {"input_ids": input_ids, "labels": labels}
