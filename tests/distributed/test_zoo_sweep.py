"""The model-zoo sweep on 2 gloo ranks: every ``autopar.zoo.hf`` architecture (13, built
exactly as their users build them) under every plan kind (dp, tp, fsdp, zero, pp on
{"pp": 2}, auto), each at parity with the single-process model as
``autopar.testing.parity.check`` (and, for pp, ``pipeline_parity.check``) defines it over
3 SGD steps: ``autopar.zoo.sweep.run_arch``. One task per architecture runs its six kinds
(one build, one capture for the five single-program kinds); each (architecture, kind) is
its own test reading that task's outcome, and both ranks must report the same outcome.

Regressions of bugs the sweep found:
- ``test_pipeline_sends_noncontiguous``: a pipeline stage whose output is a non-contiguous
  view (a transpose; its input is read transposed too) trains at parity; the stage's send
  used to die in gloo with "input tensor has to be contiguous" (T5 and BART on pp=2).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from autopar.testing.parity import state_diffs
from autopar.testing.pipeline_parity import check as pipeline_check
from autopar.zoo import hf, sweep

KINDS = sweep.KINDS


@pytest.fixture(scope="module")
def outcomes(pool2) -> Any:
    """arch -> per-rank {kind: outcome}, each architecture run once, on first use."""
    done: dict[str, list[dict[str, dict[str, Any]]]] = {}

    def get(arch: str) -> list[dict[str, dict[str, Any]]]:
        if arch not in done:
            done[arch] = pool2.run(sweep.run_arch, arch, KINDS, 3, timeout_s=400)
        return done[arch]

    return get


def _params() -> list[Any]:
    out = []
    for arch in hf.NAMES:
        for kind in KINDS:
            out.append(pytest.param(arch, kind, id=f"{arch}-{kind}"))
    return out


@pytest.mark.timeout(450)
@pytest.mark.parametrize(("arch", "kind"), _params())
def test_zoo(outcomes, arch: str, kind: str) -> None:
    ranks = [r[kind] for r in outcomes(arch)]
    assert ranks[0]["status"] == ranks[1]["status"], f"the ranks disagree: {ranks}"
    r = ranks[0]
    assert r["status"] == "ok", f"{arch} under {kind}: {r['status']}: {r['detail']}"


def test_every_architecture_and_kind_is_swept() -> None:
    assert len(hf.NAMES) >= 10 and set(KINDS) == {"dp", "tp", "fsdp", "zero", "pp", "auto"}


class Block(torch.nn.Module):
    """Reads its input transposed and returns its output transposed: the stage's output
    and the gradient of its input are both non-contiguous views."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x.transpose(1, 2))).transpose(1, 2)


class Transposing(torch.nn.Module):
    def __init__(self, d: int = 6, n: int = 2) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x.pow(2).mean()


def transposing_pp2(rank: int, world: int, steps: int) -> dict[str, Any]:
    import autopar

    torch.manual_seed(0)
    model = Transposing()
    ref = copy.deepcopy(model)
    x = torch.randn(4, 6, 6)
    compiled = autopar.compile(model, (x,), mesh={"pp": 2}, pipeline={"schedule": "gpipe"})
    opt = torch.optim.SGD(compiled.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    losses, ref_losses = [], []
    for _ in range(steps):
        opt_ref.zero_grad()
        loss_ref = ref(x)
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        losses.append(float(compiled.step(x)))
        opt.step()
        ref_losses.append(float(loss_ref.detach()))
    full = compiled.full_state_dict()
    diffs, missing = state_diffs(full, ref.state_dict())
    moved = max(float((full[k] - v).abs().max()) for k, v in model.state_dict().items())
    return {"losses": losses, "ref_losses": ref_losses, "diffs": diffs, "missing": missing,
            "moved": moved, "stages": compiled.plan.pipeline["num_stages"]}  # fmt: skip


@pytest.mark.timeout(150)
def test_pipeline_sends_noncontiguous(pool2) -> None:
    result = pool2.run(transposing_pp2, 3, timeout_s=120)[0]
    assert result["stages"] == 2
    pipeline_check(result)
