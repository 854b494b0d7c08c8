"""The model-zoo sweep (autopar.zoo.hf): each Hugging Face architecture, built from a tiny
config exactly as its users write it, captures; the exported loss equals eager; capture
leaves the model and its config as the user set them; zero_dropout zeroes dropout and
nothing else."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from torch import nn

from autopar.capture import capture
from autopar.zoo import hf

pytestmark = pytest.mark.filterwarnings("ignore")

# The only config fields a zoo entry may set: sizes (and the label count).
SIZE_FIELDS = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "max_position_embeddings", "n_embd", "n_layer",
    "n_head", "n_inner", "n_positions", "ffn_dim", "word_embed_proj_dim", "d_model", "d_kv",
    "d_ff", "num_layers", "num_heads", "encoder_layers", "decoder_layers",
    "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
    "image_size", "patch_size", "num_channels", "num_labels", "num_local_experts",
    "num_experts_per_tok", "num_experts", "moe_intermediate_size",
    "shared_expert_intermediate_size",
}  # fmt: skip
NAMES = hf.NAMES


def _loss(out):
    return out if isinstance(out, torch.Tensor) else out.loss


def _dropout_active(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if any(isinstance(v, float) and v > 0 and hf._is_dropout_name(k)
               for k, v in vars(m).items()):  # fmt: skip
            return True
    return False


def test_the_sweep_covers_the_required_families():
    assert len(NAMES) >= 11 and len(set(NAMES)) == len(NAMES)
    classes = {a.model_class for a in hf.ARCHS}
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel",
            "OPTForCausalLM", "GPTNeoXForCausalLM", "BertForSequenceClassification",
            "ViTForImageClassification"} <= classes  # fmt: skip
    assert classes & {"T5ForConditionalGeneration", "BartForConditionalGeneration"}
    assert classes & {"MixtralForCausalLM", "Qwen2MoeForCausalLM"}


@pytest.mark.parametrize("name", NAMES)
def test_config_sets_only_size_fields(name):
    a = hf.arch(name)
    assert set(a.config) <= SIZE_FIELDS, set(a.config) - SIZE_FIELDS
    cfg = hf.make_config(name)
    default = getattr(importlib.import_module("transformers"), a.config_class)()
    for key, value in default.to_dict().items():
        if hf._is_dropout_name(key) or key in ("use_cache", "_attn_implementation"):
            assert cfg.to_dict()[key] == value, key  # left at the default


@pytest.mark.parametrize("name", NAMES)
def test_batch_is_seeded_divisible_by_4_with_labels_and_2_blocks(name):
    m1, a1, k1 = hf.build(name, seed=5)
    m2, a2, k2 = hf.build(name, seed=5)
    assert m1.training and "labels" in k1
    first = next(iter(k1.values()))
    assert first.shape[0] % 4 == 0
    for t1, t2 in zip([*a1, *k1.values()], [*a2, *k2.values()], strict=True):
        assert torch.equal(t1, t2)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    blocks = [
        len(ml) for ml in m1.modules()
        if isinstance(ml, nn.ModuleList) and len(ml) >= 2 and len({type(b) for b in ml}) == 1
    ]  # fmt: skip
    assert blocks, "no ModuleList of >= 2 identical blocks"
    deeper, _, _ = hf.build(name, layers=3)
    assert max(len(ml) for ml in deeper.modules() if isinstance(ml, nn.ModuleList)) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_captures_with_its_default_config(name):
    model, args, kwargs = hf.build(name)
    reference, _, _ = hf.build(name)
    reference(*args, **kwargs)  # what the model's own forward does to its config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
    out = captured.graph_module(*args, **kwargs)
    assert _loss(out).dim() == 0 and torch.isfinite(_loss(out))
    keys = set(out.keys())
    assert {"loss", "logits"} <= keys and not keys & {"cache", "past_key_values"}, keys
    assert model.config.to_dict() == reference.config.to_dict()  # use_cache etc. untouched
    assert not model._forward_pre_hooks and not model._forward_hooks
    if not _dropout_active(model):  # no randomness: the loss is the eager loss exactly
        torch.testing.assert_close(_loss(out), _loss(model(*args, **kwargs)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if _dropout_active(hf.build(n, device="meta")[0])]
)
def test_exported_loss_equals_eager_without_dropout(name):
    model, args, kwargs = hf.build(name, dropout=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
    got = _loss(captured.graph_module(*args, **kwargs))
    torch.testing.assert_close(got, _loss(model(*args, **kwargs)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_zero_dropout_makes_train_mode_deterministic_and_changes_nothing_else(name):
    model, args, kwargs = hf.build(name)
    plain, _, _ = hf.build(name, dropout=False)
    with_dropout, without = model.config.to_dict(), plain.config.to_dict()
    changed = {k for k in with_dropout if with_dropout[k] != without.get(k)}
    assert all(hf._is_dropout_name(k) for k in changed), changed
    active = _dropout_active(model)
    if active:  # dropout draws new masks each call: two forwards differ
        torch.manual_seed(1)
        a = _loss(model(*args, **kwargs))
        torch.manual_seed(2)
        assert not torch.equal(a, _loss(model(*args, **kwargs)))
    assert plain.training and not _dropout_active(plain)
    torch.manual_seed(1)
    a = _loss(plain(*args, **kwargs))
    torch.manual_seed(2)
    assert torch.equal(a, _loss(plain(*args, **kwargs)))
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("name", NAMES)
def test_builds_on_meta(name):
    model, args, kwargs = hf.build(name, device="meta", batch_size=8, seq_len=32)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" and t.shape[0] == 8 for t in [*args, *kwargs.values()])


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match="hf-llama"):
        hf.build("hf-no-such")
