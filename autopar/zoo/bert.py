"""BERT sequence classifier (Hugging Face ``BertForSequenceClassification``, random init).

``model(**kwargs)`` returns a ``SequenceClassifierOutput`` whose ``.loss`` is the
cross-entropy loss over ``num_labels = 3`` classes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from autopar.zoo._common import build_context, random_tokens, resolve_size

SIZES = ("tiny", "base", "full")
_ALIASES = {"full": "base"}
NUM_LABELS = 3

# size -> (config kwargs, default batch size, default sequence length)
_CONFIGS: dict[str, tuple[dict, int, int]] = {
    "tiny": (
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=128,
        ),
        4,
        16,
    ),
    "base": (
        dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=30522,
        ),
        32,
        128,
    ),
}


def config(size: str = "tiny") -> BertConfig:
    cfg_kwargs, _, _ = _CONFIGS[resolve_size(size, SIZES, _ALIASES)]
    settings: dict[str, Any] = dict(
        num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        attn_implementation="sdpa",
    )
    return BertConfig(**cfg_kwargs, **settings)


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
    if seq > cfg.max_position_embeddings:
        raise ValueError(f"seq_len {seq} exceeds {cfg.max_position_embeddings} positions")
    with build_context(device, seed):
        model = BertForSequenceClassification(cfg)
    if torch.device(device).type != "meta":
        model = torch.nn.Module.to(model, torch.device(device))
    input_ids = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 1)
    if torch.device(device).type == "meta":
        attention_mask = torch.empty((batch, seq), dtype=torch.long, device="meta")
    else:
        attention_mask = torch.ones((batch, seq), dtype=torch.long, device=device)
    labels = random_tokens((batch,), NUM_LABELS, device=device, seed=seed + 2)
    return model, (), {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
