"""Check a compiled model against the single-process model: compile, train, compare.

``train_parity(rank, world, example, strategy, mesh, optimizer, steps)`` (run on every rank,
e.g. by ``GlooPool.run``) builds the example's tiny model (``build_tiny``: a bundled module
name such as ``gpt2``, or a model-zoo sweep architecture such as ``hf-t5``, dropout-free)
twice from the same seed, trains the reference in this process and the compiled model over
the process group on the same global batch, and returns the per-step losses and the largest
differences of the final parameters, plus the collectives the compiled model issued in one
step (counted by CommCounter) with what the program's structure says it issues, and the
plan's mesh (``mesh``: axis -> size; a pipeline's is ``pipeline["mesh"]``). ``check(result)`` asserts parity within ``TOLERANCE``.
``recompute`` ("selective" | "full") plans with every layer recomputed
(``recompute_plan``: ``make_plan(..., recompute=)`` on rank 0, the plan sent to every rank)
and compiles that plan.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch

import autopar
from autopar.runtime.comm_count import CommCounter


def build_tiny(
    example: str, shape: tuple[int, int] | None = None
) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    """The tiny model and batch of a bundled module (``mlp``, ``gpt2``, ``bert``, ``llama``)
    or of a sweep architecture (``autopar.zoo.hf``), the latter with dropout set to 0;
    ``shape`` = (batch, sequence) overrides a bundled language model's default batch."""
    from autopar import zoo
    from autopar.zoo import hf

    if example in zoo.MODULES:
        sizes = {} if shape is None else {"batch_size": shape[0], "seq_len": shape[1]}
        return zoo.module(example).build("tiny", **sizes)  # type: ignore[no-any-return]
    if example in hf.NAMES:
        return hf.build(example, dropout=False)
    raise ValueError(
        f"unknown example {example!r}; expected one of {', '.join((*zoo.MODULES, *hf.NAMES))}"
    )


def _loss(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.loss


def _run_one(
    example: str,
    strategy: str,
    mesh: Any,
    optimizer: str,
    steps: int,
    cluster: str | None,
    memory_budget: float | None = None,
    recompute: str | None = None,
    plan_json: str | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    model, args, kwargs = build_tiny(example, shape)
    ref = copy.deepcopy(model)
    plan = None if recompute is None else recompute_plan(
        model, args, kwargs, strategy, recompute, memory_budget=memory_budget,
        optimizer="sgd" if optimizer == "sgd" else "adamw",
    )  # fmt: skip
    if plan_json is not None:
        import json

        from autopar.plan import Plan

        plan = Plan.from_json(json.loads(plan_json))
    compiled = autopar.compile(
        model, args, kwargs, strategy=strategy, mesh=mesh, cluster=cluster,
        memory_budget=memory_budget, optimizer="sgd" if optimizer == "sgd" else "adamw",
        plan=plan,
    )  # fmt: skip

    def make(params: Any) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1)
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False)

    opt_ref, opt = make(ref.parameters()), make(compiled.parameters())
    losses, ref_losses, comms = [], [], {}
    for step in range(steps):
        opt_ref.zero_grad()
        loss_ref = _loss(ref(*args, **kwargs))
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        with CommCounter() as counter:
            loss = compiled.step(*args, **kwargs)  # forward + backward; reads only the loss
        if step == 0:
            comms = dict(counter.counts)
        opt.step()
        losses.append(float(loss.detach()))
        ref_losses.append(float(loss_ref.detach()))
    diffs, missing = state_diffs(compiled.full_state_dict(), ref.state_dict())
    if hasattr(compiled, "_models"):  # auto chose a pipeline: it trains through step only
        return {
            "losses": losses, "ref_losses": ref_losses, "diffs": diffs, "missing": missing,
            "comms": comms, "pipeline": dict(compiled.plan.pipeline or {}),
            "stages": len(compiled.plan.stages), "modes": compiled.plan.param_modes(),
            "sharded": sum(1 for n in compiled.plan.nodes if n.kind == "op" and n.outs and any(
                str(p) != "R" for p in n.outs[0])),
            "memory": dict(compiled.plan.predicted.memory),
            "recompute": list(getattr(compiled.plan, "recompute", ())),
        }  # fmt: skip
    held = held_bytes(compiled, opt)
    with torch.no_grad():  # the forward path: every output made whole, equal to the model's
        outputs = output_diffs(compiled(*args, **kwargs), ref(*args, **kwargs))
    return {
        "losses": losses, "ref_losses": ref_losses, "diffs": diffs,
        "missing": missing, "comms": comms,
        "expected": compiled.expected_collectives(),
        "planned": planned_explicit(compiled),
        "explicit": dict(sum((Counter(c) for c in compiled._explicit.values()), Counter())),
        "program_modes": {k: v.mode for k, v in compiled.params_spec.items()},
        "outputs": outputs,
        "sharded": sum(1 for n in compiled.plan.nodes if n.kind == "op" and n.outs and any(
            str(p) != "R" for p in n.outs[0])),
        "modes": compiled.plan.param_modes(),
        "mesh": dict(zip(compiled.plan.mesh.names, compiled.plan.mesh.sizes)),
        "memory": dict(compiled.plan.predicted.memory),
        "held": held,
        "recompute": list(compiled.plan.recompute),
        "recomputed": dict(getattr(compiled.module, "RECOMPUTED", {})),
    }  # fmt: skip


def recompute_plan(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], strategy: str,
    recompute: Any, memory_budget: float | None = None, optimizer: str = "adamw",
    precision: str = "fp32",
) -> Any:
    """The plan of ``strategy`` (a preset) on this process group's ranks with the layers
    recomputed as ``recompute`` says (``make_plan(recompute=)``); rank 0 plans."""
    import torch.distributed as dist

    from autopar.api import plan_on_rank0
    from autopar.capture import capture
    from autopar.planning import default_mesh
    from autopar.solve.planner import make_plan
    from cost_models import ClusterSpec, CostModel

    cluster = ClusterSpec.cpu(dist.get_world_size())
    spec = default_mesh(strategy, cluster)
    return plan_on_rank0(lambda: make_plan(
        capture(model, args, kwargs), spec, strategy, CostModel(cluster, spec),
        memory_budget=memory_budget, optimizer=optimizer, precision=precision,
        recompute=recompute,
    ))  # fmt: skip


def planned_explicit(compiled: Any) -> dict[str, int]:
    """The plan's collectives that the program writes out as statements: every reshard of
    a non-parameter value (the loss included), custom-kernel collectives, and the reshards
    of parameters the program moves at each use ("explicit" mode). The others (gradient
    reductions and FSDP gathers) are issued per bucket and per layer instead of per edge."""
    plan = compiled.plan
    kind = {n.name: (n.kind, n.module) for n in plan.nodes}
    out: Counter[str] = Counter()
    for r in plan.reshards:
        k, module = kind[r.src]
        if k == "param" and compiled.params_spec[module].mode != "explicit":
            continue
        out.update(c.kind for c in r.collectives)
    out.update(c.kind for n in plan.nodes for c in n.collectives)
    return dict(out)


def output_diffs(out: Any, ref: Any) -> dict[str, float]:
    """Max |difference| of every tensor leaf of the two outputs, by position.

    Only tensors count: the model's own call may return inference objects besides (a
    Hugging Face causal LM left at ``use_cache=True`` returns its KV cache, a
    ``DynamicCache``), which capture switches off and the compiled model does not return."""
    import torch.utils._pytree as pytree

    def tensors(tree: Any) -> list[torch.Tensor]:
        return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]

    a, b = tensors(out), tensors(ref)
    return {
        str(i): float((x.float() - y.float()).abs().max())
        for i, (x, y) in enumerate(zip(a, b))
        if x.shape == y.shape
    } | ({"count": float(len(a) != len(b))} if len(a) != len(b) else {})


def state_diffs(
    full: dict[str, torch.Tensor], ref_sd: dict[str, torch.Tensor]
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per key (max |full - ref|, max |ref|), and the reference keys ``full`` lacks."""
    diffs = {
        k: (float((full[k] - v).abs().max()), float(v.abs().max()))
        for k, v in ref_sd.items()
        if k in full
    }
    return diffs, sorted(set(ref_sd) - set(full))


def local_nbytes(t: Any) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return int(t.numel() * t.element_size())


def held_bytes(compiled: Any, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters (and buffers), gradients and optimizer state,
    counted from the local tensors."""
    params = list(compiled.parameters())
    return {
        "params": sum(local_nbytes(p) for p in params)
        + sum(local_nbytes(b) for b in compiled.buffers()),
        "grads": sum(local_nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer_state": sum(
            local_nbytes(v) for st in opt.state.values() for v in st.values()
            if isinstance(v, torch.Tensor)
        ),
    }  # fmt: skip


def train_parity(
    rank: int,
    world: int,
    example: str,
    strategy: str,
    mesh: dict[str, int] | None,
    optimizers: tuple[str, ...] = ("sgd", "adamw"),
    steps: int = 3,
    cluster: str | None = None,
    memory_budget: float | None = None,
    recompute: str | None = None,
    plan_json: str | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``plan_json`` (a saved plan, made in the caller's process) is compiled as it is;
    ``shape`` sets the (batch, sequence) of a bundled language model."""
    return {
        opt: _run_one(example, strategy, mesh, opt, steps, cluster, memory_budget, recompute,
                      plan_json, shape)  # fmt: skip
        for opt in optimizers
    }


TOLERANCE = {"sgd": (1e-5, 4e-5), "adamw": (1e-4, 1e-4)}  # (rtol, atol)


def check(result: dict[str, Any]) -> None:
    """Assert parity of one train_parity result (rank 0's)."""
    for opt, r in result.items():
        rtol, atol = TOLERANCE[opt]
        assert not r["missing"], f"{opt}: full_state_dict misses {r['missing']}"
        for step, (a, b) in enumerate(zip(r["losses"], r["ref_losses"])):
            assert abs(a - b) <= atol + rtol * abs(b), (
                f"{opt} step {step}: loss {a} vs reference {b}"
            )
        for key, (diff, scale) in r["diffs"].items():
            assert diff <= atol + rtol * scale, (
                f"{opt}: {key} differs by {diff} (max |ref| {scale})"
            )
        if "stages" in r:  # a pipeline (see pipeline_parity for its schedules' tests)
            assert r["stages"] >= 2 and r["stages"] == r["pipeline"]["num_stages"], r["pipeline"]
            continue
        assert r["comms"] == r["expected"], (
            f"{opt}: collectives issued {r['comms']} differ from the program's {r['expected']}"
        )
        assert r["explicit"] == r["planned"], (
            f"{opt}: the program's explicit collectives {r['explicit']} differ from the "
            f"plan's {r['planned']}"
        )
        assert r["outputs"] and all(d <= atol + rtol for d in r["outputs"].values()), (
            f"{opt}: outputs of forward differ {r['outputs']}"
        )
