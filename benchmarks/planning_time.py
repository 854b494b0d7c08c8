"""Planning-time benchmark: how long autopar takes to plan real models on an 8-device mesh.

For GPT-2 small, BERT-base and LLaMA 7B (32 layers), all built on the meta device, and the
meshes ``{"dp": 8}`` and ``{"dp": 2, "tp": 4}`` with strategy ``"auto"`` and the 8xH100
cost model, it reproduces ``autopar.solve.planner.make_plan`` step by step with separate
timers:

- capture:  ``autopar.capture.capture`` (torch.export on fake tensors)
- strategy: everything ``make_plan`` does before the solve -- ``build_graph`` (rule lookup
            and strategy enumeration), ``restrict``, ``canonical_map`` (layer merging) and
            ``build_problem`` (pricing every strategy and edge); sub-timings are shown
- solve:    ``autopar.solve.ilp.solve`` (model build in PuLP + HiGHS/CBC)
- expand:   ``_expand`` (canonical choice -> per-node Plan), part of ``make_plan`` too

``total = capture + strategy + solve + expand``. Targets (apply to the ``{"dp": 8}`` rows):
GPT-2 small and BERT-base <= 3 s, LLaMA 7B <= 30 s; ``{"dp": 2, "tp": 4}`` rows are "info".
The "3D" rows (``benchmarks.pipeline_search``; skip with ``--no-pipeline``, select with
``--models llama70b gpt3``) time the pipeline search: LLaMA 70B on 8x8xH100 <= 60 s and
a GPT-3 175B-shaped model on 128x8xA100-80GB <= 120 s; there "solve" is the whole 3D
search (ILP vars column: layer ILPs solved) and "expand" the plan assembly.
Capture is mesh-independent, so it runs once per model and its time is charged to both rows.

The "CLI" rows (skip with ``--no-cli``) time the whole command line, every node planned,
in a fresh process (``python -m autopar plan ...``: imports, model build, captures, the
3D search, the stage plans, the baselines, the summary), as a user runs it:

- ``autopar plan llama-70b --cluster 8x8xH100``                                <= 30 s
- ``autopar plan benchmarks/gpt3_175b.py:build --cluster 128x8xA100-80GB``       <= 60 s

(GPT-3 175B is not a bundled model: ``benchmarks/gpt3_175b.py`` builds the 96-layer
GPT-2-shaped model of ``benchmarks.pipeline_search`` at batch 1536 x 2048 on meta.)

Usage::

    python -m benchmarks.planning_time            # all three models
    python -m benchmarks.planning_time --quick    # GPT-2 small only
    python -m benchmarks.planning_time --profile out.prof   # cProfile everything, dump stats
    python -m benchmarks.planning_time --cli-only  # just the two CLI runs
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/planning_time.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cost_models  # noqa: E402
from autopar.capture import capture  # noqa: E402
from autopar.mesh import MeshSpec  # noqa: E402
from autopar.solve.graph import build_graph  # noqa: E402
from autopar.solve.ilp import solve  # noqa: E402
from autopar.solve.layers import canonical_map  # noqa: E402
from autopar.solve.planner import Pricing, _expand, build_problem  # noqa: E402
from autopar.solve.presets import restrict  # noqa: E402
from autopar.solve.saved import saved_values  # noqa: E402

STRATEGY = "auto"
CLUSTER = "8xH100"
MESHES: tuple[dict[str, int], ...] = ({"dp": 8}, {"dp": 2, "tp": 4})
TARGET_MESH = {"dp": 8}


@dataclass(frozen=True)
class ModelCase:
    label: str
    module: str  # autopar.zoo.<module>
    size: str
    target_s: float


MODELS = (
    ModelCase("GPT-2 small", "gpt2", "small", 3.0),
    ModelCase("BERT-base", "bert", "base", 3.0),
    ModelCase("LLaMA 7B", "llama", "7b", 30.0),
)


@dataclass
class Row:
    model: str
    mesh: str
    target_s: float | None  # None: info row
    build_s: float = 0.0  # model construction on meta (not part of the total)
    capture_s: float = 0.0
    graph_s: float = 0.0  # build_graph
    restrict_s: float = 0.0
    canon_s: float = 0.0  # canonical_map
    price_s: float = 0.0  # build_problem
    solve_s: float = 0.0
    expand_s: float = 0.0
    nodes: int = 0
    canonical: int = 0
    problem_nodes: int = 0  # nodes in the ILP problem (canonical ones)
    free_nodes: int = 0  # problem nodes with more than one strategy
    edges: int = 0
    variables: int = 0
    status: str = ""
    solver: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy_s(self) -> float:
        return self.graph_s + self.restrict_s + self.canon_s + self.price_s

    @property
    def total_s(self) -> float:
        return self.capture_s + self.strategy_s + self.solve_s + self.expand_s

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.target_s is None:
            return "info"
        return "PASS" if self.total_s <= self.target_s else "FAIL"


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _mesh_label(mesh: dict[str, int]) -> str:
    return "x".join(f"{k}{v}" for k, v in mesh.items())


def _build(case: ModelCase) -> tuple[Any, tuple, dict]:
    import importlib

    mod = importlib.import_module(f"autopar.zoo.{case.module}")
    return mod.build(case.size, device="meta")


def plan_rows(case: ModelCase, meshes: tuple[dict[str, int], ...], time_limit: float) -> list[Row]:
    rows = [
        Row(case.label, _mesh_label(m), case.target_s if m == TARGET_MESH else None) for m in meshes
    ]
    try:
        (model, args, kwargs), build_s = _timed(_build, case)
        captured, capture_s = _timed(capture, model, args, kwargs)
    except Exception as err:  # report and move on to the next model
        for r in rows:
            r.error = f"capture: {type(err).__name__}: {err}"[:200]
        return rows
    for row, mesh_dict in zip(rows, meshes, strict=True):
        row.build_s, row.capture_s = build_s, capture_s
        try:
            mesh = MeshSpec.of(mesh_dict)
            cm = cost_models.CostModel(cost_models.ClusterSpec.parse(CLUSTER), mesh)
            gc.collect()
            # --- make_plan, step by step ---
            graph, row.graph_s = _timed(build_graph, captured, mesh)
            _, row.restrict_s = _timed(restrict, graph, STRATEGY)
            canon, row.canon_s = _timed(canonical_map, graph)
            budget = cm.memory_budget_bytes()
            ctx, saved_s = _timed(lambda: Pricing(graph, cm, saved_values(graph), "adamw"))
            (problem, _, _), row.price_s = _timed(build_problem, ctx, canon, budget)
            row.price_s += saved_s
            solution, row.solve_s = _timed(solve, problem, time_limit=time_limit)
            plan, row.expand_s = _timed(
                _expand, ctx, canon, solution.choice, STRATEGY, solution, row.solve_s, budget
            )
            # --- sizes ---
            row.nodes = len(graph.nodes)
            row.canonical = len(set(canon.values()))
            row.problem_nodes = len(problem.costs)
            row.free_nodes = sum(1 for c in problem.costs.values() if len(c) > 1)
            row.edges = len(problem.edges)
            row.variables = solution.num_variables
            row.status = solution.status
            row.solver = solution.solver
            row.extra["unknown_ops"] = list(graph.unknown_ops)
            row.extra["step_ms"] = getattr(plan.predicted, "step_s", float("nan")) * 1e3
        except Exception as err:
            row.error = f"{type(err).__name__}: {err}"[:200]
    return rows


# ---------------------------------------------------------------------------------- output


def _fmt(x: float) -> str:
    return f"{x:.2f}"


COLUMNS = (
    ("model", "l"), ("mesh", "l"), ("capture", "r"), ("strategy", "r"), ("  graph", "r"),
    ("  canon", "r"), ("  price", "r"), ("solve", "r"), ("expand", "r"), ("total", "r"),
    ("target", "r"), ("nodes", "r"), ("canon.", "r"), ("free", "r"), ("ILP vars", "r"),
    ("status", "l"), ("result", "l"),
)  # fmt: skip


def _cells(r: Row) -> list[str]:
    if r.error and not r.nodes:
        return [r.model, r.mesh] + ["-"] * (len(COLUMNS) - 4) + ["error", "ERROR"]
    return [
        r.model, r.mesh, _fmt(r.capture_s), _fmt(r.strategy_s), _fmt(r.graph_s + r.restrict_s),
        _fmt(r.canon_s), _fmt(r.price_s), _fmt(r.solve_s), _fmt(r.expand_s), _fmt(r.total_s),
        f"<= {r.target_s:g}" if r.target_s is not None else "-", str(r.nodes), str(r.canonical),
        str(r.free_nodes), str(r.variables), f"{r.status} ({r.solver})", r.verdict,
    ]  # fmt: skip


def print_row(r: Row) -> None:
    if r.error and not r.nodes:
        print(f"  {r.model} {r.mesh}: ERROR {r.error}", flush=True)
        return
    print(
        f"  {r.model:<12} {r.mesh:<8} capture {r.capture_s:6.2f}s  strategy {r.strategy_s:6.2f}s "
        f"(graph {r.graph_s:.2f}, restrict {r.restrict_s:.2f}, canon {r.canon_s:.2f}, "
        f"price {r.price_s:.2f})  solve {r.solve_s:6.2f}s  expand {r.expand_s:.2f}s  "
        f"total {r.total_s:6.2f}s | nodes {r.nodes}, canonical {r.canonical}, "
        f"free {r.free_nodes}, edges {r.edges}, ILP vars {r.variables}, "
        f"{r.status} ({r.solver}), predicted step {r.extra.get('step_ms', float('nan')):.1f} ms "
        f"-> {r.verdict}",
        flush=True,
    )


def print_table(rows: list[Row]) -> None:
    title = (
        f"autopar planning time (strategy={STRATEGY!r}, cost model {CLUSTER}, meta device; "
        f"targets apply to {_mesh_label(TARGET_MESH)})"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # type: ignore[assignment,misc]
    if Console is not None:
        table = Table(title=title)
        for name, align in COLUMNS:
            table.add_column(name.strip(), justify="right" if align == "r" else "left")
        for r in rows:
            cells = _cells(r)
            style = {"PASS": "green", "FAIL": "bold red", "ERROR": "bold red"}.get(r.verdict)
            cells[-1] = f"[{style}]{cells[-1]}[/]" if style else cells[-1]
            table.add_row(*cells)
        Console(width=max(200, Console().width)).print(table)
    else:
        print(title)
        data = [[n.strip() for n, _ in COLUMNS]] + [_cells(r) for r in rows]
        widths = [max(len(row[i]) for row in data) for i in range(len(COLUMNS))]
        for row in data:
            print("  ".join(
                c.rjust(w) if a == "r" else c.ljust(w)
                for c, w, (_, a) in zip(row, widths, COLUMNS, strict=True)
            ))  # fmt: skip
    print(
        "times in seconds (wall clock, time.perf_counter). "
        "strategy = graph (build_graph + restrict) + canon (canonical_map) + price "
        "(build_problem); total = capture + strategy + solve + expand. nodes: planning-graph "
        "nodes; canon.: distinct canonical (merged) nodes; free: canonical nodes with > 1 "
        "strategy; ILP vars: Solution.num_variables."
    )
    for r in rows:
        if r.error:
            print(f"  {r.model} {r.mesh}: {r.error}")
        if r.extra.get("unknown_ops"):
            print(f"  {r.model} {r.mesh}: ops without a rule: {', '.join(r.extra['unknown_ops'])}")


def pipeline_rows(models: list[str] | None) -> list[Row]:
    """The 3D search's rows (``benchmarks.pipeline_search``): capture of the full-depth
    model, then search (charged as solve) and ``to_plan`` (charged as expand)."""
    from benchmarks.pipeline_search import CASES, report, time_case

    rows = []
    for case in CASES:
        if models and case.key not in models:
            continue
        row = Row(case.label, f"3D {case.cluster}", case.limit_s)
        try:
            t = time_case(case)
        except Exception as err:
            row.error = f"{type(err).__name__}: {err}"[:200]
            rows.append(row)
            continue
        report(t)
        best = t.ranked.best
        row.build_s, row.capture_s, row.solve_s, row.expand_s = (
            t.build_s, t.capture_s, t.search_s, t.plan_s,
        )  # fmt: skip
        row.nodes, row.variables = t.nodes, t.plans_solved
        row.status, row.solver = f"{best.mesh} m={best.microbatches}", best.schedule
        row.extra["step_ms"] = best.step_s * 1e3
        rows.append(row)
    return rows


ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CliCase:
    label: str
    argv: tuple[str, ...]  # after ``autopar``
    target_s: float


CLI_CASES = (
    CliCase("LLaMA 70B", ("plan", "llama-70b", "--cluster", "8x8xH100"), 30.0),
    CliCase("GPT-3 175B", ("plan", f"{ROOT / 'benchmarks' / 'gpt3_175b.py'}:build",
                           "--cluster", "128x8xA100-80GB"), 60.0),
)  # fmt: skip


def cli_rows(timeout_s: float = 1800.0) -> list[tuple[CliCase, float, int, str]]:
    """(case, wall seconds, exit status, last output line) of each whole CLI run."""
    import subprocess

    out = []
    for case in CLI_CASES:
        cmd = [sys.executable, "-m", "autopar", *case.argv]
        print(f"$ autopar {' '.join(case.argv)}", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  cwd=ROOT)  # fmt: skip
            rc, text = done.returncode, (done.stdout + done.stderr).strip()
        except subprocess.TimeoutExpired:
            rc, text = 124, f"timed out after {timeout_s:.0f} s"
        wall = time.perf_counter() - start
        last = text.splitlines()[-1] if text else ""
        verdict = "ERROR" if rc else ("PASS" if wall <= case.target_s else "FAIL")
        print(f"  {case.label}: {wall:.1f} s (target <= {case.target_s:g} s) {verdict}"
              + (f"; exit {rc}: {last[:200]}" if rc else ""), flush=True)  # fmt: skip
        out.append((case, wall, rc, last))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="GPT-2 small only")
    parser.add_argument("--models", nargs="*", help="subset by example module: gpt2 bert llama")
    parser.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit (s)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the run and dump stats")
    parser.add_argument(
        "--no-pipeline", action="store_true",
        help="skip the 3D-search rows (LLaMA 70B on 8x8xH100, GPT-3 175B on 128x8xA100-80GB)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="plan each model N times in this process and report the fastest total per row "
        "(the first capture in a process also pays torch.export's one-time warm-up)",
    )  # fmt: skip
    parser.add_argument("--no-cli", action="store_true",
                        help="skip timing the two whole CLI runs (LLaMA 70B, GPT-3 175B)")  # fmt: skip
    parser.add_argument("--cli-only", action="store_true", help="only the two whole CLI runs")
    opts = parser.parse_args(argv)
    if opts.cli_only:
        cli = cli_rows()
        return 1 if any(rc or wall > c.target_s for c, wall, rc, _ in cli) else 0
    cases = [m for m in MODELS if not opts.quick or m.module == "gpt2"]
    if opts.models:
        cases = [m for m in cases if m.module in opts.models]
    warnings.filterwarnings("ignore")
    profiler = cProfile.Profile() if opts.profile else None
    rows: list[Row] = []
    for case in cases:
        print(f"{case.label} ({case.module} {case.size!r}, meta):", flush=True)
        if profiler:
            profiler.enable()
        runs = [plan_rows(case, MESHES, opts.time_limit) for _ in range(max(1, opts.repeat))]
        case_rows = [
            min(versions, key=lambda r: (bool(r.error), r.total_s))
            for versions in zip(*runs, strict=True)
        ]
        if profiler:
            profiler.disable()
        for r in case_rows:
            print_row(r)
        rows += case_rows
    if not opts.quick and not opts.no_pipeline:
        rows += pipeline_rows(opts.models)
    print()
    print_table(rows)
    if profiler:
        profiler.dump_stats(opts.profile)
        print(f"profile written to {opts.profile}")
    failed = any(r.verdict in ("FAIL", "ERROR") for r in rows)
    if not opts.quick and not opts.no_cli:
        print("\nwhole CLI runs (fresh process, wall clock):")
        cli = cli_rows()
        failed = failed or any(rc or wall > c.target_s for c, wall, rc, _ in cli)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
