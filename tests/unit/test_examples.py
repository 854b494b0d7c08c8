"""The bundled example models build, train (forward/backward) and export."""

import importlib
import math
import time

import pytest
import torch

EXAMPLES = ["mlp", "gpt2", "bert", "llama"]


def _loss(out):
    return out if isinstance(out, torch.Tensor) else out.loss


@pytest.fixture(params=EXAMPLES)
def example(request):
    return importlib.import_module(f"examples.{request.param}")


def test_sizes_declared(example):
    assert "tiny" in example.SIZES
    with pytest.raises(ValueError, match="unknown size"):
        example.build("no-such-size")


def test_tiny_forward_backward(example):
    model, args, kwargs = example.build("tiny")
    model.train()
    loss = _loss(model(*args, **kwargs))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_tiny_is_deterministic(example):
    m1, a1, k1 = example.build("tiny", seed=3)
    m2, a2, k2 = example.build("tiny", seed=3)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    for t1, t2 in zip([*a1, *k1.values()], [*a2, *k2.values()], strict=True):
        torch.testing.assert_close(t1, t2, rtol=0, atol=0)
    if "labels" in k1 and "input_ids" in k1:
        assert k1["labels"] is not k1["input_ids"]


def test_tiny_batch_and_seq_overrides(example):
    _, args, kwargs = example.build("tiny", batch_size=2, seq_len=8)
    first = (args or tuple(kwargs.values()))[0]
    assert first.shape[0] == 2
    if "input_ids" in kwargs:
        assert kwargs["input_ids"].shape == (2, 8)


def test_tiny_exports(example):
    model, args, kwargs = example.build("tiny")
    ep = torch.export.export(model, args, kwargs, strict=False)
    out = ep.module()(*args, **kwargs)
    torch.testing.assert_close(_loss(out), _loss(model(*args, **kwargs)))


def test_llama_7b_on_meta_allocates_nothing():
    from examples import llama

    t0 = time.monotonic()
    model, args, kwargs = llama.build("7b", device="meta")
    assert time.monotonic() - t0 < 30
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert all(t.device.type == "meta" for t in kwargs.values())
    assert 6.5e9 < sum(p.numel() for p in params) < 7e9
    assert kwargs["input_ids"].shape == (8, 2048)


@pytest.mark.parametrize(
    "name,size",
    [(n, s) for n in EXAMPLES for s in importlib.import_module(f"examples.{n}").SIZES],
)
def test_every_size_builds_on_meta(name, size):
    model, args, kwargs = importlib.import_module(f"examples.{name}").build(size, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" for t in [*args, *kwargs.values()])
