"""The model-zoo sweep: every ``autopar.zoo.hf`` architecture under every plan kind.

Contract: ``run_arch(rank, world, arch, kinds, steps)`` runs on every rank of a 2-rank gloo
group (``GlooPool(2).run(run_arch, arch)``). It builds the architecture's dropout-free tiny
model once and, for each plan kind in ``kinds`` (default ``KINDS``), checks parity with the
single-process model over ``steps`` SGD steps on the same global batch:

- ``dp``, ``tp``, ``fsdp``, ``zero``, ``auto``: ``autopar.testing.parity.train_parity`` and
  ``check`` (loss every step, every parameter after the steps within rtol 1e-5 / atol 4e-5,
  collectives issued equal to the program's, the program's explicit collectives equal to
  the plan's, forward outputs equal);
- ``pp``: ``autopar.testing.pipeline_parity`` on mesh ``{"pp": 2}`` (1F1B schedule) and its
  ``check`` (loss every step and every parameter; a pipeline trains only through ``step``).

The five single-program kinds compile the SAME model object, and its capture is made once
and reused (capture is a function of the model and its inputs alone; it is most of a
tiny model's compile time). Each kind is also checked to leave the user's model as it was.
It returns ``{kind: outcome}``, an outcome being ``{"status": "ok" | "mismatch" | "error",
"detail": str, "seconds": float, "cpu_seconds": float}`` (wall and this rank's CPU time):
"mismatch" is a failed parity assertion, "error" an exception raised by autopar (its type
and message). ``cell(outcome)`` is its short text for the support table,
``markdown(results)`` the table (architectures × plan kinds), and ``python -m
autopar.zoo.sweep --markdown`` runs the sweep on 2 local gloo ranks and prints it
(``--archs``/``--kinds`` restrict it; ``--json PATH`` writes the outcomes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from unittest import mock

KINDS = ("dp", "tp", "fsdp", "zero", "pp", "auto")
STEPS = 3
PP_MESH = {"pp": 2}
PP_SCHEDULE = "1f1b"


@contextlib.contextmanager
def _shared_model(built: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> Iterator[None]:
    """``train_parity`` builds ``built``'s model (the same object every time), and
    ``autopar.compile`` captures it once: later compiles of that model reuse the capture."""
    import autopar.api as api
    import autopar.testing.parity as parity

    real = api.capture
    kept: list[Any] = []

    def capture(model: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if model is not built[0]:
            return real(model, args, kwargs)
        if not kept:
            kept.append(real(model, args, kwargs))
        return kept[0]

    with (
        mock.patch.object(parity, "build_tiny", lambda example, shape=None: built),
        mock.patch.object(api, "capture", capture),
    ):
        yield


def _parity(rank: int, world: int, arch: str, kind: str, steps: int) -> None:
    """Raise AssertionError when ``arch`` under ``kind`` is not at parity."""
    if kind == "pp":
        from autopar.testing.pipeline_parity import check as pipeline_check
        from autopar.testing.pipeline_parity import pipeline_parity

        pipeline_check(pipeline_parity(rank, world, arch, PP_MESH, PP_SCHEDULE, steps=steps))
        return
    from autopar.testing.parity import check, train_parity

    check(train_parity(rank, world, arch, kind, None, ("sgd",), steps))


def _unchanged(model: Any, before: Mapping[str, Any]) -> list[str]:
    import torch

    now = model.state_dict()
    return [k for k, v in before.items() if not torch.equal(now[k], v)]


def run_arch(
    rank: int, world: int, arch: str, kinds: Sequence[str] = KINDS, steps: int = STEPS
) -> dict[str, dict[str, Any]]:
    """Every plan kind of ``arch`` on this rank (see the module docstring)."""
    from autopar.zoo import hf

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown plan kinds {unknown}; the sweep knows {', '.join(KINDS)}")
    built = hf.build(arch, dropout=False)
    before = {k: v.detach().clone() for k, v in built[0].state_dict().items()}
    out: dict[str, dict[str, Any]] = {}
    with _shared_model(built):
        for kind in kinds:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                _parity(rank, world, arch, kind, steps)
                status, detail = "ok", ""
            except AssertionError as err:
                status, detail = "mismatch", str(err)
            except Exception as err:  # noqa: BLE001 - recorded: the sweep reports every kind
                status, detail = "error", f"{type(err).__name__}: {err}"
            changed = _unchanged(built[0], before)
            if changed and status == "ok":
                status, detail = "mismatch", f"the user's model changed: {changed[:3]}"
            out[kind] = {"status": status, "detail": detail,
                         "seconds": round(time.perf_counter() - start, 2),
                         "cpu_seconds": round(time.process_time() - cpu, 2)}  # fmt: skip
    return out


def cell(outcome: Mapping[str, Any], width: int = 60) -> str:
    """The support-table text of one outcome: "ok", or the short reason."""
    if outcome["status"] == "ok":
        return "ok"
    first = str(outcome["detail"]).strip().splitlines()[0] if outcome["detail"] else ""
    first = first.split(". ")[0].replace("|", "/")
    text = f"{outcome['status']}: {first}"
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The support table: one row per architecture (with what it exercises), one column
    per plan kind."""
    from autopar.zoo import hf

    kinds = [k for k in KINDS if any(k in r for r in results.values())]
    head = ["| architecture | model class | " + " | ".join(f"`{k}`" for k in kinds) + " |",
            "|---|---|" + "---|" * len(kinds)]  # fmt: skip
    rows = []
    for name, outcomes in results.items():
        a = hf.arch(name)
        cells = [cell(outcomes[k]) if k in outcomes else "" for k in kinds]
        rows.append(f"| {name} | {a.model_class} | " + " | ".join(cells) + " |")
    return "\n".join(head + rows)


def sweep(
    archs: Sequence[str], kinds: Sequence[str] = KINDS, steps: int = STEPS
) -> dict[str, dict[str, dict[str, Any]]]:
    """Run the sweep on 2 local gloo ranks; {arch: {kind: rank 0's outcome}}."""
    from autopar.testing import GlooPool

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with GlooPool(2) as pool:
        for arch in archs:
            try:
                results[arch] = pool.run(run_arch, arch, tuple(kinds), steps, timeout_s=600)[0]
            except (AssertionError, TimeoutError) as err:  # a rank died or hung
                first = str(err).strip().splitlines()[0]
                results[arch] = {k: {"status": "error", "detail": first, "seconds": 0.0,
                                     "cpu_seconds": 0.0} for k in kinds}  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from autopar.zoo import hf

    p = argparse.ArgumentParser(
        prog="python -m autopar.zoo.sweep",
        description="Run the model-zoo sweep on 2 local gloo ranks and print the support table.",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--archs", default=",".join(hf.NAMES), help="comma-separated architectures")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated plan kinds")
    p.add_argument("--json", metavar="PATH", help="also write the outcomes as JSON")
    a = p.parse_args(argv)
    archs = [x for x in a.archs.split(",") if x]
    kinds = [x for x in a.kinds.split(",") if x]
    bad = [x for x in archs if x not in hf.NAMES] + [x for x in kinds if x not in KINDS]
    if bad:
        p.error(f"unknown {', '.join(bad)}; architectures: {', '.join(hf.NAMES)}; "
                f"plan kinds: {', '.join(KINDS)}")  # fmt: skip
    results = sweep(archs, kinds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if a.markdown:
        print(markdown(results))
    else:
        for arch, outcomes in results.items():
            for kind, o in outcomes.items():
                print(f"{arch:14} {kind:5} {o['seconds']:6.1f}s  {cell(o, 200)}")
    return 0 if all(o["status"] == "ok" for r in results.values() for o in r.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
