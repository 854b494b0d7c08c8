"""GPT-2 causal language model (Hugging Face ``GPT2LMHeadModel``, randomly initialised).

``model(**kwargs)`` returns a ``CausalLMOutput`` whose ``.loss`` is the LM loss.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from autopar.zoo._common import build_context, random_tokens, resolve_size

SIZES = ("tiny", "small", "full")
_ALIASES = {"full": "small"}

# size -> (config kwargs, default batch size, default sequence length)
_CONFIGS: dict[str, tuple[dict, int, int]] = {
    "tiny": (dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64), 4, 16),
    "small": (dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024), 8, 1024),
}


def config(size: str = "tiny") -> GPT2Config:
    cfg_kwargs, _, _ = _CONFIGS[resolve_size(size, SIZES, _ALIASES)]
    special = cfg_kwargs["vocab_size"] - 1  # GPT-2's <|endoftext|> is the last token id
    settings: dict[str, Any] = dict(
        bos_token_id=special,
        eos_token_id=special,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return GPT2Config(**cfg_kwargs, **settings)


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
    if seq > cfg.n_positions:
        raise ValueError(f"seq_len {seq} exceeds n_positions {cfg.n_positions}")
    with build_context(device, seed):
        model = GPT2LMHeadModel(cfg)
    # transformers cannot infer the loss from the class name "GPT2LMHeadModel" and warns.
    model.loss_type = "ForCausalLM"
    if torch.device(device).type != "meta":
        model = torch.nn.Module.to(model, torch.device(device))
    input_ids = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 1)
    labels = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 2)
    return model, (), {"input_ids": input_ids, "labels": labels}
