"""The dtypes a captured graph computes in under a precision, for pricing.

Contract: ``with_precision(captured, precision) -> Captured``:
- "fp32": ``captured`` unchanged;
- "bf16-mixed": a copy whose every op node's ``meta["val"]`` carries the dtype the op
  produces under ``torch.autocast(dtype=torch.bfloat16)`` (found by re-running each op on
  fake tensors under autocast; parameters stay fp32, the master weights), so the planner
  prices matmuls at the bf16 rate and activations, their collectives and the bytes
  autograd saves at their real size;
- "bf16": a copy with every floating parameter, buffer and op value in bf16.
The copy shares parameters and buffers with ``captured`` (its graph is new); the program
generated from it is the same as from ``captured`` (shapes are unchanged).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from autopar.capture import Captured
from autopar.precision import check


def with_precision(captured: Captured, precision: str) -> Captured:
    check(precision)
    if precision == "fp32":
        return captured
    gm = captured.graph_module
    graph = copy.deepcopy(gm.graph)
    new = fx.GraphModule(gm, graph)
    if precision == "bf16":
        for node in graph.nodes:
            node.meta["val"] = _cast(node.meta.get("val"), torch.bfloat16)
    else:
        _propagate(graph, set(captured.param_names))
    return dataclasses.replace(captured, graph_module=new)


def _cast(val: Any, dtype: torch.dtype) -> Any:
    if isinstance(val, (list, tuple)):
        return type(val)(_cast(v, dtype) for v in val)
    if isinstance(val, torch.Tensor) and val.is_floating_point():
        return torch.empty(val.shape, dtype=dtype, device="meta")
    return val


def _propagate(graph: fx.Graph, params: set[str]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    env: dict[str, Any] = {}
    memo: dict[Any, Any] = {}  # repeated layers repeat their ops: run each signature once

    def fake(val: Any) -> Any:
        if isinstance(val, (list, tuple)):
            return type(val)(fake(v) for v in val)
        if isinstance(val, torch.Tensor):
            with mode:
                return torch.empty(val.shape, dtype=val.dtype, device="cpu")
        return val

    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            env[node.name] = fake(node.meta.get("val"))
            continue
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            src = env[node.args[0].name]  # type: ignore[union-attr]
            env[node.name] = src[node.args[1]]  # type: ignore[index]
        else:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: env[a.name])
            kwargs = {k: (torch.device("cpu") if isinstance(v, torch.device) else v)
                      for k, v in kwargs.items()}  # fmt: skip
            key = (node.target, _signature(args), _signature(kwargs))
            if key not in memo:
                try:
                    with mode, torch.autocast("cpu", dtype=torch.bfloat16):
                        memo[key] = node.target(*args, **kwargs)  # type: ignore[operator]
                except Exception:  # an op fake tensors cannot run: keep its captured dtype
                    memo[key] = fake(node.meta.get("val"))
            env[node.name] = memo[key]
        node.meta["val"] = _as_meta(env[node.name])


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _signature(v)) for k, v in value.items()))
    return repr(value)


def _as_meta(val: Any) -> Any:
    if isinstance(val, (list, tuple)):
        return type(val)(_as_meta(v) for v in val)
    if isinstance(val, torch.Tensor):
        return torch.empty(val.shape, dtype=val.dtype, device="meta")
    return val
