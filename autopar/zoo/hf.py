"""The model-zoo sweep: Hugging Face architectures built exactly as their users build them.

Contract: ``ARCHS`` lists every architecture (an ``Arch``: name, classes, what it exercises,
the size fields of its tiny config). ``build(name, *, device, batch_size, seq_len, seed,
dropout, layers)`` returns ``(model, args, kwargs)``: ``model`` is ``ModelClass(ConfigClass(
**size fields))`` in train mode with every other config field at its default (``use_cache``,
dropout, attention implementation included: nothing is changed for autopar's sake), and
``kwargs`` is a deterministic batch (seeded; batch size 4 by default, divisible by 4) with
labels, so ``model(*args, **kwargs).loss`` is the training loss. Every tiny config has 2
repeated blocks (``layers`` sets another count), so pipeline stages can split it.

``dropout=False`` returns the same model with ``zero_dropout`` applied: every dropout
probability is 0 and nothing else differs (same weights, same batch). Dropout draws random
masks, so parity with a single-process model is defined only for that variant.
``device="meta"`` builds without allocating weights. Unknown names raise ValueError.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from autopar.zoo._common import build_context, ones, random_floats, random_tokens

BATCH, SEQ, VOCAB, LABELS = 4, 16, 128, 3
# Config attribute and module attribute names that hold a dropout probability.
_DROPOUT_WORDS = ("dropout", "pdrop", "layerdrop")


@dataclass(frozen=True)
class Arch:
    """One architecture of the sweep: ``model_class(config_class(**config))``."""

    name: str
    model_class: str  # a class in ``transformers``
    config_class: str
    inputs: str  # "causal-lm" | "classification" | "seq2seq" | "image"
    what: str  # what the architecture exercises, one line
    config: Mapping[str, Any] = field(default_factory=dict)  # size fields only
    layer_fields: tuple[str, ...] = ("num_hidden_layers",)  # the fields `layers` overrides


def _lm(**extra: Any) -> Mapping[str, Any]:
    sizes = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
    )  # fmt: skip
    return MappingProxyType({**sizes, **extra})


def _encoder(**extra: Any) -> Mapping[str, Any]:
    sizes = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=64, num_labels=LABELS,
    )  # fmt: skip
    return MappingProxyType({**sizes, **extra})


ARCHS: tuple[Arch, ...] = (
    Arch("hf-llama", "LlamaForCausalLM", "LlamaConfig", "causal-lm",
         "decoder LM: grouped-query attention, rotary embeddings, RMSNorm, SwiGLU", _lm()),
    Arch("hf-qwen2", "Qwen2ForCausalLM", "Qwen2Config", "causal-lm",
         "decoder LM: grouped-query attention with q/k/v biases, rotary embeddings", _lm()),
    Arch("hf-mistral", "MistralForCausalLM", "MistralConfig", "causal-lm",
         "decoder LM: grouped-query attention, rotary embeddings, sliding-window config", _lm()),
    Arch("hf-gpt2", "GPT2LMHeadModel", "GPT2Config", "causal-lm",
         "decoder LM: learned positions, Conv1D projections, tied output embedding",
         MappingProxyType(dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=VOCAB,
                               n_positions=64)), ("n_layer",)),
    Arch("hf-opt", "OPTForCausalLM", "OPTConfig", "causal-lm",
         "decoder LM: learned offset positions, ReLU MLP, tied output embedding",
         MappingProxyType(dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                               num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64,
                               word_embed_proj_dim=64))),
    Arch("hf-gpt-neox", "GPTNeoXForCausalLM", "GPTNeoXConfig", "causal-lm",
         "decoder LM: parallel attention + MLP residual, partial rotary, fused QKV",
         MappingProxyType(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, vocab_size=VOCAB,
                               max_position_embeddings=64))),
    Arch("hf-bert", "BertForSequenceClassification", "BertConfig", "classification",
         "encoder: post-LayerNorm, padding mask, pooler, sequence classification", _encoder()),
    Arch("hf-roberta", "RobertaForSequenceClassification", "RobertaConfig", "classification",
         "encoder: positions from the padding mask (cumsum), classification head",
         _encoder(max_position_embeddings=66)),
    Arch("hf-t5", "T5ForConditionalGeneration", "T5Config", "seq2seq",
         "encoder-decoder: relative position bias, cross-attention, labels shifted right",
         MappingProxyType(dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                               vocab_size=VOCAB)), ("num_layers",)),
    Arch("hf-bart", "BartForConditionalGeneration", "BartConfig", "seq2seq",
         "encoder-decoder: learned positions, cross-attention, tied embeddings",
         MappingProxyType(dict(d_model=64, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4,
                               encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=VOCAB,
                               max_position_embeddings=64)), ("encoder_layers", "decoder_layers")),
    Arch("hf-vit", "ViTForImageClassification", "ViTConfig", "image",
         "vision: convolutional patch embedding, CLS token, image classification",
         MappingProxyType(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, image_size=32, patch_size=8, num_channels=3,
                               num_labels=LABELS))),
    Arch("hf-mixtral", "MixtralForCausalLM", "MixtralConfig", "causal-lm",
         "mixture of experts: top-2 routing over 4 experts, grouped-query attention",
         _lm(num_local_experts=4, num_experts_per_tok=2)),
    Arch("hf-qwen2-moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", "causal-lm",
         "mixture of experts: top-2 of 4 routed experts plus a gated shared expert",
         _lm(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
             shared_expert_intermediate_size=128)),
)  # fmt: skip

NAMES: tuple[str, ...] = tuple(a.name for a in ARCHS)


def arch(name: str) -> Arch:
    for a in ARCHS:
        if a.name == name:
            return a
    raise ValueError(f"unknown zoo architecture {name!r}; the zoo has {', '.join(NAMES)}")


def make_config(name: str, layers: int | None = None) -> Any:
    """The architecture's config, as a user writes it: only its size fields set."""
    a = arch(name)
    sizes = dict(a.config)
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        sizes.update(dict.fromkeys(a.layer_fields, layers))
    transformers = importlib.import_module("transformers")
    return getattr(transformers, a.config_class)(**sizes)


def build(
    name: str,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    dropout: bool = True,
    layers: int | None = None,
) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """``(model, args, kwargs)`` for zoo architecture ``name`` (see the module docstring)."""
    a = arch(name)
    cfg = make_config(name, layers)
    transformers = importlib.import_module("transformers")
    with build_context(device, seed):
        model = getattr(transformers, a.model_class)(cfg)
    if torch.device(device).type != "meta":
        model = model.to(torch.device(device))
    model.train()
    if not dropout:
        zero_dropout(model)
    return model, (), _batch(a, cfg, batch_size or BATCH, seq_len or SEQ, device, seed)


def _batch(a: Arch, cfg: Any, batch: int, seq: int, device: str, seed: int) -> dict[str, Any]:
    if a.inputs == "image":
        shape = (batch, cfg.num_channels, cfg.image_size, cfg.image_size)
        return {
            "pixel_values": random_floats(shape, device=device, seed=seed + 1),
            "labels": random_tokens((batch,), cfg.num_labels, device=device, seed=seed + 2),
        }
    ids = random_tokens((batch, seq), cfg.vocab_size, device=device, seed=seed + 1)
    if a.inputs == "causal-lm":
        return {"input_ids": ids, "labels": random_tokens(ids.shape, cfg.vocab_size,
                                                          device=device, seed=seed + 2)}  # fmt: skip
    if a.inputs == "classification":
        labels = random_tokens((batch,), cfg.num_labels, device=device, seed=seed + 2)
        return {
            "input_ids": ids,
            "attention_mask": ones(ids.shape, device=device),
            "labels": labels,
        }
    # seq2seq: the decoder reads the labels shifted right, as a seq2seq data collator makes
    # them (T5's default config has no decoder_start_token_id to shift with by itself)
    labels = random_tokens((batch, max(2, seq // 2)), cfg.vocab_size, device=device, seed=seed + 2)
    start = getattr(cfg, "decoder_start_token_id", None)
    start = cfg.pad_token_id if start is None else start
    decoder_ids = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
    return {"input_ids": ids, "attention_mask": ones(ids.shape, device=device),
            "decoder_input_ids": decoder_ids, "labels": labels}  # fmt: skip


def _is_dropout_name(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in _DROPOUT_WORDS)


def _zero_config(cfg: Any, seen: set[int]) -> None:
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    for key, value in list(vars(cfg).items()):
        if isinstance(value, float) and _is_dropout_name(key):
            setattr(cfg, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config
            _zero_config(value, seen)


def zero_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability of ``model`` to 0, in place; return ``model``.

    Generic over architectures: the ``p`` of every ``nn.Dropout``-like module; every float
    attribute of a module whose name holds "dropout", "pdrop" or "layerdrop" (HF attention
    copies ``config.attention_dropout`` into such an attribute and passes it to the
    attention kernel at forward time); and the same fields of every config the modules hold.
    Nothing else changes: weights, buffers and every other setting stay as they were.
    """
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if isinstance(value, float) and _is_dropout_name(key):
                setattr(module, key, 0.0)
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            _zero_config(cfg, seen)
    return model
