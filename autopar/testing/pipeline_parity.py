"""Check a pipeline-compiled model against the single-process model.

``pipeline_parity(rank, world, example, mesh, schedule, strategy, steps, layers)`` builds the
example's tiny model (``parity.build_tiny``; ``layers`` blocks instead of its 2 when given)
twice from the same seed, trains the reference in this process with SGD and
the pipeline-compiled model (``autopar.compile(..., mesh=mesh, pipeline=...)`` and its
``step``) on the same global batch, and returns the per-step losses, the largest
parameter differences after the steps and the pipeline record of the plan.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch

import autopar
from autopar.testing.parity import build_tiny, state_diffs

TOLERANCE = (1e-5, 4e-5)  # (rtol, atol)


def pipeline_parity(
    rank: int,
    world: int,
    example: str,
    mesh: dict[str, int],
    schedule: str,
    strategy: str = "pp",
    steps: int = 3,
    layers: int | None = None,
) -> dict[str, Any]:
    from autopar import zoo
    from autopar.zoo import hf

    if layers is not None and example in hf.NAMES:  # the same size fields, more blocks
        model, args, kwargs = hf.build(example, dropout=False, layers=layers)
    else:
        model, args, kwargs = build_tiny(example)
    if layers is not None and example not in hf.NAMES:
        # the same tiny config, deeper (interleaving needs >= 2 pp units)
        cfg = zoo.module(example).config("tiny")
        setattr(cfg, "n_layer" if example == "gpt2" else "num_hidden_layers", layers)
        torch.manual_seed(0)
        model = type(model)(cfg)
        cast(Any, model).loss_type = getattr(model, "loss_type", None) or "ForCausalLM"
    ref = copy.deepcopy(model)
    compiled = autopar.compile(
        model, args, kwargs, strategy=strategy, mesh=mesh, pipeline={"schedule": schedule}
    )
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    losses, ref_losses = [], []
    for _ in range(steps):
        opt_ref.zero_grad()
        loss_ref = ref(*args, **kwargs).loss
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        loss = compiled.step(*args, **kwargs)
        opt.step()
        losses.append(float(loss))
        ref_losses.append(float(loss_ref.detach()))
    full = compiled.full_state_dict()
    diffs, missing = state_diffs(full, ref.state_dict())
    return {
        "losses": losses, "ref_losses": ref_losses, "diffs": diffs,
        "missing": missing, "pipeline": compiled.plan.pipeline,
        "submesh": compiled.plan.mesh.to_json(),
        "sharded": sum(1 for n in compiled.plan.nodes if n.kind == "op" and n.outs and any(
            str(p) != "R" for p in n.outs[0])),
        "moved": max(float((full[k] - v).abs().max()) for k, v in model.state_dict().items()
                     if k in full),
    }  # fmt: skip


def check(result: dict[str, Any]) -> None:
    rtol, atol = TOLERANCE
    assert not result["missing"], f"full_state_dict misses {result['missing']}"
    for step, (a, b) in enumerate(zip(result["losses"], result["ref_losses"])):
        assert abs(a - b) <= atol + rtol * abs(b), f"step {step}: loss {a} vs reference {b}"
    for key, (diff, scale) in result["diffs"].items():
        assert diff <= atol + rtol * scale, f"{key} differs by {diff} (max |ref| {scale})"
    assert result["moved"] > 1e-4, "the parameters did not train"
