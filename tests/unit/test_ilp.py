"""The strategy ILP (autopar.solve.ilp) against exhaustive search on small random problems."""

from __future__ import annotations

import random
import warnings

import pytest

from autopar.solve.ilp import (
    Constraint,
    EdgeTerm,
    InfeasibleError,
    Problem,
    brute_force,
    constraint_value,
    objective,
    solve,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _groups(rng: random.Random, n: int) -> list[int]:
    """A random grouping of n strategies, numbered 0..g-1 with every group used."""
    g = rng.randint(1, n)
    labels = [rng.randrange(g) for _ in range(n)]
    ids: dict[int, int] = {}
    return [ids.setdefault(x, len(ids)) for x in labels]


def _random_problem(seed: int) -> Problem:
    rng = random.Random(seed)
    n_nodes = rng.randint(3, 6)
    names = [f"v{i}" for i in range(n_nodes)]
    costs = {u: [rng.uniform(0.0, 1e-3) for _ in range(rng.randint(1, 4))] for u in names}
    edges = []
    for j in range(1, n_nodes):
        for i in range(j):
            if rng.random() < 0.55:
                u, v = names[i], names[j]
                ug, vg = _groups(rng, len(costs[u])), _groups(rng, len(costs[v]))
                cost = [
                    [rng.choice([0.0, rng.uniform(0.0, 2e-3)]) for _ in range(max(vg) + 1)]
                    for _ in range(max(ug) + 1)
                ]
                hidden = seed % 2 == 1 and rng.random() < 0.5
                edges.append(EdgeTerm(u, v, ug, vg, cost, hidden))
    constraints = []
    if seed % 3 == 0 or seed % 5 == 0:
        weights = {u: [rng.uniform(0.0, 10.0) for _ in cs] for u, cs in costs.items()}
        edge_mem = {}
        if seed % 5 == 0:  # memory that depends on both ends of an edge
            for k, e in enumerate(edges):
                if rng.random() < 0.5:
                    edge_mem[k] = [
                        [
                            rng.choice([0.0, rng.uniform(0.0, 5.0)])
                            for _ in range(max(e.v_group) + 1)
                        ]
                        for _ in range(max(e.u_group) + 1)
                    ]
        lo = sum(min(w) for w in weights.values())
        hi = sum(max(w) for w in weights.values()) + sum(
            max(max(r) for r in m) for m in edge_mem.values()
        )
        # between the cheapest and the dearest assignment: some choices become infeasible
        constraints.append(Constraint("mem", weights, lo + 0.4 * (hi - lo), edge_mem))
    compute = {u: [rng.uniform(0.0, 1e-3) for _ in cs] for u, cs in costs.items()}
    overlap = 0.8 if seed % 2 == 1 else 0.0
    return Problem(costs, edges, constraints, {}, compute, overlap, 0.1 if seed % 4 == 1 else 0.0)


def _feasible(problem: Problem, choice: dict[str, int]) -> bool:
    return all(constraint_value(problem, c, choice) <= c.limit + 1e-9 for c in problem.constraints)


@pytest.mark.parametrize("seed", range(40))
def test_solve_matches_brute_force(seed):
    problem = _random_problem(seed)
    _, best = brute_force(problem)
    sol = solve(problem)
    assert set(sol.choice) == set(problem.costs)
    assert all(0 <= sol.choice[u] < len(cs) for u, cs in problem.costs.items())
    assert _feasible(problem, sol.choice)
    assert sol.objective == pytest.approx(objective(problem, sol.choice), rel=1e-12, abs=0)
    assert sol.objective == pytest.approx(best, rel=1e-9, abs=1e-15)
    if any(len(cs) > 1 for cs in problem.costs.values()):
        assert sol.status == "optimal"


def test_constraint_excludes_the_unconstrained_optimum():
    # independent reasoning: a alone prefers strategy 0 (cost 0), but 0 weighs 5 > limit 3
    problem = Problem(
        costs={"a": [0.0, 1.0], "b": [0.0, 0.5]},
        edges=[EdgeTerm("a", "b", [0, 1], [0, 1], [[0.0, 4.0], [4.0, 0.0]])],
        constraints=[Constraint("mem", {"a": [5.0, 1.0]}, 3.0)],
    )
    sol = solve(problem)
    # a=1 forced; b=0 costs 0+4, b=1 costs 0.5+0 -> b=1, total 1.5
    assert sol.choice == {"a": 1, "b": 1}
    assert sol.objective == pytest.approx(1.5)
    assert brute_force(problem)[1] == pytest.approx(1.5)


def test_self_edge():
    # a node reading its own copy (merged layers): the edge prices (g_u(i), g_v(i)) of the
    # same choice i.  Strategy 0: 1 + 10; strategy 1: 2 + 0; strategy 2: 0 + 5.
    problem = Problem(
        costs={"a": [1.0, 2.0, 0.0], "b": [0.0, 0.3]},
        edges=[
            EdgeTerm("a", "a", [0, 1, 1], [0, 1, 2], [[10.0, 7.0, 7.0], [7.0, 0.0, 5.0]]),
            EdgeTerm("a", "b", [0, 1, 2], [0, 0], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        ],
    )
    sol = solve(problem)
    assert sol.choice["a"] == 1 and sol.choice["b"] == 0
    assert sol.objective == pytest.approx(2.0)
    assert brute_force(problem)[1] == pytest.approx(2.0)
    assert sol.status == "optimal"


def test_single_strategy_nodes_fold_into_neighbours():
    # "fixed" has one strategy; its edges fold into the free end's costs.
    problem = Problem(
        costs={"fixed": [0.25], "x": [0.0, 1.0], "y": [0.5, 0.0], "lone": [3.0]},
        edges=[
            EdgeTerm("fixed", "x", [0], [0, 1], [[5.0, 0.0]]),  # x=0 costs 5 extra
            EdgeTerm("y", "fixed", [0, 1], [0], [[0.0], [2.0]]),  # y=1 costs 2 extra
            EdgeTerm("fixed", "lone", [0], [0], [[0.125]]),  # constant
        ],
    )
    sol = solve(problem)
    assert sol.choice == {"fixed": 0, "x": 1, "y": 0, "lone": 0}
    # 0.25 + 1.0 + 0.5 + 3.0 + 0.125
    assert sol.objective == pytest.approx(4.875)
    assert sol.status == "optimal"


def test_all_single_strategy_is_trivial():
    problem = Problem(costs={"a": [1.0], "b": [2.0]}, edges=[EdgeTerm("a", "b", [0], [0], [[0.5]])])
    sol = solve(problem)
    assert sol.choice == {"a": 0, "b": 0}
    assert sol.objective == pytest.approx(3.5)


def test_infeasible_constraint_raises():
    problem = Problem(
        costs={"a": [0.0, 1.0], "b": [0.0, 1.0]},
        edges=[EdgeTerm("a", "b", [0, 1], [0, 1], [[0.0, 1.0], [1.0, 0.0]])],
        constraints=[Constraint("mem", {"a": [2.0, 3.0], "b": [2.0, 3.0]}, 3.0)],
    )
    with pytest.raises(InfeasibleError):
        solve(problem)


def test_node_without_strategies_raises():
    with pytest.raises(InfeasibleError, match="no valid strategy"):
        solve(Problem(costs={"a": [], "b": [1.0, 2.0]}, edges=[]))


def test_infeasible_constraint_on_fixed_nodes_raises():
    problem = Problem(
        costs={"a": [0.0], "b": [0.0]},
        edges=[],
        constraints=[Constraint("mem", {"a": [2.0], "b": [2.0]}, 3.0)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InfeasibleError):
            solve(problem)
