"""The bundled models (autopar.zoo) build, train (forward/backward) and export; every
bundled name and a user's ``file.py:function`` resolve; the examples/ scripts are
user-facing (they import autopar and transformers, never each other or a helper)."""

import ast
import math
import time
from pathlib import Path

import pytest
import torch

from autopar import zoo
from autopar.models import resolve

EXAMPLES = list(zoo.MODULES)
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def _loss(out):
    return out if isinstance(out, torch.Tensor) else out.loss


@pytest.fixture(params=EXAMPLES)
def example(request):
    return zoo.module(request.param)


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
    from autopar.zoo import llama

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
    [(n, s) for n in EXAMPLES for s in zoo.module(n).SIZES],
)
def test_every_size_builds_on_meta(name, size):
    model, args, kwargs = zoo.module(name).build(size, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" for t in [*args, *kwargs.values()])


@pytest.mark.parametrize("name", zoo.names())
def test_every_bundled_name_resolves_on_meta(name):
    model, args, kwargs = resolve(name, "meta")
    assert isinstance(model, torch.nn.Module)
    assert all(t.device.type == "meta" for t in [*args, *kwargs.values()])


def test_unknown_name_lists_the_bundled_models():
    with pytest.raises(ValueError, match="gpt2-tiny.*file.py:function"):
        resolve("no-such-model")


def test_a_users_file_resolves(tmp_path, monkeypatch):
    (tmp_path / "my_model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Linear(3, 2), (torch.randn(4, 3),)\n"
        "def wrong():\n"
        "    return 1\n"
    )
    model, args, kwargs = resolve(f"{tmp_path / 'my_model.py'}:build")
    assert isinstance(model, torch.nn.Linear) and args[0].shape == (4, 3) and kwargs == {}
    monkeypatch.chdir(tmp_path)  # relative to the working directory
    assert isinstance(resolve("my_model.py:build")[0], torch.nn.Linear)
    with pytest.raises(ValueError, match="no function 'nope'"):
        resolve("my_model.py:nope")
    with pytest.raises(ValueError, match="must return"):
        resolve("my_model.py:wrong")
    with pytest.raises(ValueError, match="does not exist"):
        resolve("missing.py:build")


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES_DIR.glob("*.py")))
def test_example_scripts_import_only_installed_packages(script):
    tree = ast.parse((EXAMPLES_DIR / script).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{script}: relative import"
            imported.add((node.module or "").split(".")[0])
    local = {p.stem for p in EXAMPLES_DIR.glob("*.py")} | {"examples", "_common"}
    assert not imported & local, f"{script} imports {imported & local} from the checkout"


def test_the_custom_model_example_resolves_and_captures():
    from autopar.capture import capture

    model, args, kwargs = resolve(f"{EXAMPLES_DIR / 'custom_model.py'}:build")
    loss = model(*args, **kwargs)
    assert loss.dim() == 0
    torch.testing.assert_close(capture(model, args, kwargs).graph_module(*args, **kwargs), loss)
