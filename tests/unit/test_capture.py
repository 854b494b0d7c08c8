"""Capture errors, capture on the meta device, and the entry point's up-front checks."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.distributed as dist
from torch import nn

import autopar
from autopar.capture import CaptureError, capture
from autopar.mesh import MeshSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.sum() > 0:  # data-dependent control flow
            return y.relu().sum()
        return y.sum()


def test_data_dependent_branch_names_file_line_and_fix():
    with pytest.raises(CaptureError) as info:
        capture(_Branchy(), (torch.randn(2, 4),))
    msg = str(info.value)
    assert os.path.basename(__file__) in msg
    assert "if y.sum() > 0:" in msg
    assert "Fix" in msg
    assert "_Branchy" in msg


def test_capture_tiny_llama_on_meta():
    from autopar.zoo import llama

    model, args, kwargs = llama.build("tiny", device="meta")
    captured = capture(model, args, kwargs)
    graph = captured.graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    assert len(calls) > 50
    for node in calls:
        assert "val" in node.meta, node.format_node()
        vals = (
            node.meta["val"] if isinstance(node.meta["val"], (tuple, list)) else [node.meta["val"]]
        )
        for v in vals:
            if isinstance(v, torch.Tensor):
                assert v.device.type == "meta", node.name
    # parameters come back as get_attr nodes named by FQN, each with its value
    attrs = {str(n.target): n for n in graph.nodes if n.op == "get_attr"}
    named = dict(model.named_parameters())
    assert set(captured.param_names) == {k for k, p in named.items() if p.requires_grad}
    for fqn in captured.param_names:
        assert fqn in attrs, fqn
        assert tuple(attrs[fqn].meta["val"].shape) == tuple(named[fqn].shape)
    assert "model.layers.1.mlp.down_proj.weight" in captured.param_names
    # runtime-only assert nodes are dropped
    assert not any("_assert" in str(n.target) for n in calls)


class _Switch(nn.Module):
    """Its output depends on use_cache, as an HF model's (which then returns a KV cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, use_cache: bool | None = None) -> torch.Tensor:
        y = self.lin(x).sum()
        return y * 2 if use_cache is not False else y * 3


def test_capture_passes_use_cache_false_unless_the_call_sets_it():
    model, x = _Switch(), torch.randn(2, 4)
    base = model.lin(x).sum()
    torch.testing.assert_close(capture(model, (x,)).graph_module(x), base * 3)
    got = capture(model, (x,), {"use_cache": True}).graph_module(x, use_cache=True)
    torch.testing.assert_close(got, base * 2)  # the caller's explicit choice is kept
    got = capture(model, (x, True)).graph_module(x, True)  # set positionally: kept too
    torch.testing.assert_close(got, base * 2)
    assert not model._forward_pre_hooks and not model._forward_hooks


class _ReturnsCache(nn.Module):
    """A forward without use_cache that returns a transformers Cache next to its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        from transformers.cache_utils import DynamicCache
        from transformers.modeling_outputs import CausalLMOutputWithPast

        logits = self.lin(x)
        return CausalLMOutputWithPast(
            loss=logits.square().mean(), logits=logits, past_key_values=DynamicCache()
        )


def test_cache_objects_are_dropped_from_the_output():
    model, x = _ReturnsCache(), torch.randn(2, 4)
    out = capture(model, (x,)).graph_module(x)
    assert list(out.keys()) == ["loss", "logits"]
    torch.testing.assert_close(out.loss, model(x).loss)


@pytest.mark.parametrize("name", ["hf-llama", "hf-t5"])
def test_hf_default_config_captures_and_config_is_untouched(name):
    from autopar.zoo import hf

    model, args, kwargs = hf.build(name, dropout=False)  # dropout 0 for an exact comparison
    assert model.config.use_cache is True  # the default, as a user leaves it
    captured = capture(model, args, kwargs)
    assert model.config.use_cache is True
    out = captured.graph_module(*args, **kwargs)
    assert "loss" in out and not any("cache" in k for k in out.keys())
    torch.testing.assert_close(out.loss, model(*args, **kwargs).loss)
    # an explicit use_cache=True is the caller's: capture keeps it and drops the cache object
    kwargs = {**kwargs, "use_cache": True}
    out = capture(model, args, kwargs).graph_module(*args, **kwargs)
    assert "loss" in out and not any("cache" in k for k in out.keys())


def test_non_module_raises_type_error():
    with pytest.raises(TypeError, match="nn.Module"):
        capture(lambda x: x, (torch.randn(2),))  # type: ignore[arg-type]


def test_args_must_be_a_tuple():
    with pytest.raises(TypeError, match="tuple"):
        capture(nn.Linear(2, 2), torch.randn(2, 2))  # type: ignore[arg-type]


def test_compile_without_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        autopar.compile(nn.Linear(2, 2), (torch.randn(2, 2),), mesh={"dp": 2})


def test_check_world_names_both_numbers():
    with pytest.raises(ValueError) as info:
        MeshSpec.of({"dp": 3}).check_world(2)
    msg = str(info.value)
    assert re.search(r"\b3 devices\b", msg), msg
    assert re.search(r"\b2 ranks\b", msg), msg
    MeshSpec.of({"dp": 2, "tp": 2}).check_world(4)  # matching sizes pass
