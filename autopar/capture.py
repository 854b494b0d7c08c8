"""Capture: an nn.Module and example inputs -> an ATen-level torch.fx graph.

Contract: ``capture(model, args, kwargs)`` runs ``torch.export.export(strict=False)``
(fake tensors throughout, so a model built on the meta device captures without
allocating weights) and returns a ``Captured`` whose ``graph_module`` is the unlifted
program: parameters and buffers are ``get_attr`` nodes named by their original FQNs,
every tensor node has ``meta["val"]`` (shape, dtype) and ``meta["nn_module_stack"]``.
Runtime-only nodes (shape asserts, input guards) are removed; no node carries a
``meta["stack_trace"]`` (not recorded: it costs much of a deep model's export). A model
that cannot be traced raises ``CaptureError`` naming the source line and a fix.

Training-mode switches are handled here, never by editing the model or its config: when
``model.forward`` takes ``use_cache`` and the call does not set it, capture passes
``use_cache=False`` (a Hugging Face causal LM or T5 in train mode otherwise returns a KV
cache object, which torch.export rejects); and any KV cache object (``transformers``'
``Cache``) left in the output is dropped from it. The captured graph's outputs are the
model's other outputs (loss, logits, ...) unchanged, and its inputs are exactly ``args`` and
``kwargs`` as given.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

_DROP_TARGETS = ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")


class CaptureError(RuntimeError):
    """The model could not be turned into a graph."""


@dataclass
class Captured:
    graph_module: fx.GraphModule
    param_names: tuple[str, ...]  # trainable parameters (FQNs)
    buffer_names: tuple[str, ...]
    example_args: tuple[Any, ...]
    example_kwargs: dict[str, Any]
    # plan every output in the stage boundary layout (a pipeline stage sends them:
    # solve.graph.boundary_layout); False: only the loss (replicated)
    whole_outputs: bool = False
    # the inputs carry gradients back and arrive in the boundary layout (a pipeline stage
    # after the first)
    input_grads: bool = False
    # a pipeline stage's microbatch: the dim-0 size its boundary layout splits over "dp"
    stage_batch: int = 0


_LINE = re.compile(
    r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)\n\s+(?P<code>[^\n]+)'
)


def _user_frame(message: str) -> str:
    """The last frame of the user's code quoted in an export error, if any."""
    frames = [m for m in _LINE.finditer(message) if "site-packages/torch" not in m.group("file")]
    if not frames:
        return ""
    m = frames[-1]
    return f"{m.group('file')}:{m.group('line')} in {m.group('fn')}: {m.group('code').strip()}"


def _explain(model: torch.nn.Module, err: Exception) -> CaptureError:
    text = str(err)
    where = _user_frame(text)
    where = f" at {where}" if where else ""
    name = type(model).__name__
    if "data-dependent" in text or "GuardOnDataDependent" in type(err).__name__:
        hint = (
            "the forward branches on a tensor's value (e.g. `if x.sum() > 0:`). Make the branch "
            "depend on shapes or Python flags, or use torch.cond / torch.where"
        )
    elif "DynamicCache" in text or "Cache" in type(err).__name__:
        hint = (
            "the model returns a KV cache object that torch.export cannot carry; autopar drops "
            "transformers' Cache objects from the output and passes use_cache=False when the "
            "forward takes it, so this cache is of another kind: return the tensors it holds, "
            "or nothing, from forward"
        )
    else:
        hint = (
            "check that the forward is traceable by torch.export.export(model, args, kwargs, "
            "strict=False) and that example inputs match the real ones"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CaptureError(f"cannot capture {name}{where}: {first[:300]}. Fix: {hint}.")


def capture(
    model: torch.nn.Module, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> Captured:
    kwargs = dict(kwargs or {})
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"autopar needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(args, tuple):
        raise TypeError(
            f"example_inputs must be a tuple of positional inputs, got {type(args).__name__}; "
            "wrap a single tensor as (x,)"
        )
    try:
        with warnings.catch_warnings(), _training_switches(model, args, kwargs), _no_traces():
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, args, kwargs, strict=False)
    except Exception as err:  # export raises many error types; all become one message
        raise _explain(model, err) from err
    gm = exported.module()
    _clean(gm)
    sig = exported.graph_signature
    params = tuple(
        spec.target
        for spec in sig.input_specs
        if spec.kind.name == "PARAMETER" and spec.target is not None
    )
    used = _drop_unused_params(gm, params)
    trainable = tuple(p for p in params if p in used and _get(gm, p).requires_grad)
    buffers = tuple(
        spec.target
        for spec in sig.input_specs
        if spec.kind.name in ("BUFFER", "CONSTANT_TENSOR") and spec.target is not None
    )
    return Captured(gm, trainable, buffers, args, kwargs)


@contextlib.contextmanager
def _no_traces() -> Iterator[None]:
    """torch.fx records no Python stack trace per node while exporting (a large share of
    the export's time on a deep model; autopar never reads ``meta["stack_trace"]``)."""
    import torch.fx.config as fx_config

    before = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = before


@contextlib.contextmanager
def _training_switches(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[None]:
    """Hooks on ``model`` for the duration of the export (see the module docstring)."""
    handles = []
    if _takes_unset(model, "use_cache", args, kwargs):
        handles.append(model.register_forward_pre_hook(_no_cache, with_kwargs=True))
    handles.append(model.register_forward_hook(_drop_caches))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _takes_unset(model: torch.nn.Module, name: str, args: tuple[Any, ...], kwargs: dict) -> bool:
    """Whether ``model.forward`` has a parameter ``name`` that this call leaves unset."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    param = sig.parameters.get(name)
    if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        return False
    try:
        return name not in sig.bind_partial(*args, **kwargs).arguments
    except TypeError:  # the call does not fit the signature: export will say so
        return False


def _no_cache(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, {**kwargs, "use_cache": False}


def _cache_types() -> tuple[type, ...]:
    utils = sys.modules.get("transformers.cache_utils")  # loaded if the model is an HF one
    cache = getattr(utils, "Cache", None) if utils is not None else None
    return (cache,) if isinstance(cache, type) else ()


def _drop_caches(module: torch.nn.Module, args: Any, output: Any) -> Any:
    """The output without KV cache objects (None: keep it as it is)."""
    kinds = _cache_types()
    if not kinds:
        return None
    if isinstance(output, dict) and any(isinstance(v, kinds) for v in output.values()):
        kept = {k: v for k, v in output.items() if not isinstance(v, kinds)}
        return kept if type(output) is dict else type(output)(**kept)
    if type(output) in (tuple, list) and any(isinstance(v, kinds) for v in output):
        return type(output)(None if isinstance(v, kinds) else v for v in output)
    return None


def _drop_unused_params(gm: fx.GraphModule, params: tuple[str, ...]) -> set[str]:
    """Remove parameters no op reads (the second name of a tied weight: the graph reads
    the tensor under one name) so the compiled model holds each tensor once."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr" and n.users}
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users and str(node.target) in params:
            gm.graph.erase_node(node)
    for fqn in params:
        if fqn not in used:
            *path, leaf = fqn.split(".")
            owner = _get(gm, ".".join(path)) if path else gm
            owner._parameters.pop(leaf, None)
    gm.recompile()
    return used


def _get(gm: torch.nn.Module, fqn: str) -> Any:
    obj: Any = gm
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj


def _clean(gm: fx.GraphModule) -> None:
    graph = gm.graph
    for node in list(graph.nodes):
        name = getattr(node.target, "__name__", str(node.target))
        drop = node.op == "call_function" and any(t in name for t in _DROP_TARGETS)
        drop |= node.op == "call_module" and str(node.target) == "_guards_fn"
        if drop and not node.users:
            graph.erase_node(node)
    for node in graph.nodes:
        if node.op == "get_attr" and "val" not in node.meta:
            value = _get(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                node.meta["val"] = value
    graph.lint()
    gm.recompile()
