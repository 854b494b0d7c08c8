"""The strategy ILP: pick one strategy per node to minimise compute + communication.

Math. Nodes u have strategies i in S_u with cost c_{u,i}; binary x_{u,i} with
    sum_i x_{u,i} = 1.
Each edge (u -> v) prices the pair of u's output layout group a = g_u(i) and v's input
(layout, gradient layout) group b = h_v(j) as r_{ab}. With continuous e_{ab} >= 0 and
    sum_b e_{ab} = sum_{i: g_u(i)=a} x_{u,i},   sum_a e_{ab} = sum_{j: h_v(j)=b} x_{v,j},
e is the product of the two one-hot choices (the transportation polytope with 0/1
margins has only integral vertices), so the objective
    min  sum_{u,i} c_{u,i} x_{u,i} + sum_{edges} sum_{a,b} r_{ab} e_{ab}
is exact. Edges with a one-strategy end are folded into the other end's costs, and an
edge whose ends share one variable (a node reading its own copy in the previous merged
layer) is folded into that node's costs. Optional linear constraints (memory budgets)
are ``sum_{u,i} w_{u,i} x_{u,i} <= limit``. A follower v tied to its producer u by a
map f (v runs strategy f(i) whenever u runs i) has no variables of its own:
x_{v,f(i)} = x_{u,i}, so its costs and edges are re-indexed onto u before the solve.
Edges may also carry memory: a constraint's ``edges`` add sum_{ab} m_{ab} e_{ab} to its
left side (a gathered parameter copy held for backward depends on both ends).

Overlap. Edges marked ``hidden`` (parameter collectives: gradient reductions and FSDP
gathers) may run under compute. With overlap fraction g, interference d (the share of a
hidden collective's time it still costs by slowing the compute it overlaps) and
per-strategy compute k_{u,i}, their total H is charged d*H plus what exceeds g of the
compute:
    min  sum c x + sum_{not hidden} r e + d H + T,
    T >= H - g sum_{u,i} k_{u,i} x_{u,i},  T >= 0,
which is exact for step = compute + comm + d H + max(0, H - g * compute).
Costs are scaled to microseconds. HiGHS is used when highspy is installed, CBC
otherwise; a solve cut short by the time limit is reported as such, never as optimal.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pulp


@dataclass
class EdgeTerm:
    u: str
    v: str
    u_group: list[int]
    v_group: list[int]
    cost: list[list[float]]  # [u group][v group], seconds
    hidden: bool = False  # may overlap with compute (see the module docstring)


@dataclass
class Constraint:
    name: str
    weights: dict[str, list[float]]  # node -> per strategy
    limit: float
    edges: dict[int, list[list[float]]] = field(default_factory=dict)  # edge index -> [a][b]


@dataclass
class Problem:
    costs: dict[str, list[float]]  # node -> per strategy, seconds
    edges: list[EdgeTerm]
    constraints: list[Constraint] = field(default_factory=list)
    # follower v tied to producer u: v takes strategy f[i] whenever u takes i
    ties: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    compute: dict[str, list[float]] = field(default_factory=dict)  # node -> compute seconds
    overlap: float = 0.0  # fraction of compute that hidden edges may run under
    interference: float = 0.0  # share of hidden time still charged (see the docstring)


def _root(problem: Problem, v: str) -> tuple[str, list[int]]:
    """The untied node deciding v, and v's strategy for each of its strategies."""
    if v not in problem.ties:
        return v, list(range(len(problem.costs[v])))
    u, f = problem.ties[v]
    root, g = _root(problem, u)
    return root, [f[i] for i in g]


def untie(problem: Problem) -> tuple[Problem, dict[str, tuple[str, list[int]]]]:
    """Fold tied followers into their roots: costs, edges and constraints re-indexed."""
    if not problem.ties:
        return problem, {}
    roots = {v: _root(problem, v) for v in problem.costs}
    costs = {u: list(c) for u, c in problem.costs.items() if u not in problem.ties}
    for v, (r, f) in roots.items():
        if v != r:
            for i in range(len(costs[r])):
                costs[r][i] += problem.costs[v][f[i]]
    edges = []
    for e in problem.edges:
        (ru, fu), (rv, fv) = roots[e.u], roots[e.v]
        ug = [e.u_group[fu[i]] for i in range(len(fu))]
        vg = [e.v_group[fv[j]] for j in range(len(fv))]
        edges.append(EdgeTerm(ru, rv, ug, vg, e.cost, e.hidden))

    def fold(per_node: dict[str, list[float]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for v, w in per_node.items():
            r, f = roots[v]
            acc = out.setdefault(r, [0.0] * len(f))
            for i in range(len(f)):
                acc[i] += w[f[i]]
        return out

    constraints = [
        Constraint(c.name, fold(c.weights), c.limit, c.edges) for c in problem.constraints
    ]
    reduced = Problem(
        costs, edges, constraints, {}, fold(problem.compute), problem.overlap, problem.interference
    )
    return reduced, {v: rf for v, rf in roots.items() if v != rf[0]}


@dataclass(frozen=True)
class Solution:
    choice: dict[str, int]
    objective: float  # seconds
    status: str  # optimal | feasible (time limit) | trivial
    solver: str
    seconds: float
    num_variables: int


class InfeasibleError(RuntimeError):
    pass


def objective(problem: Problem, choice: dict[str, int]) -> float:
    total = sum(c[choice[u]] for u, c in problem.costs.items())
    hidden = 0.0
    for e in problem.edges:
        r = e.cost[e.u_group[choice[e.u]]][e.v_group[choice[e.v]]]
        if e.hidden and problem.overlap > 0:
            hidden += r
        else:
            total += r
    if hidden:
        compute = sum(k[choice[u]] for u, k in problem.compute.items())
        total += problem.interference * hidden + max(0.0, hidden - problem.overlap * compute)
    return total


def constraint_value(problem: Problem, c: Constraint, choice: dict[str, int]) -> float:
    used = sum(w[choice[u]] for u, w in c.weights.items())
    for k, m in c.edges.items():
        e = problem.edges[k]
        used += m[e.u_group[choice[e.u]]][e.v_group[choice[e.v]]]
    return used


def brute_force(problem: Problem) -> tuple[dict[str, int], float]:
    names = [n for n in problem.costs if n not in problem.ties]
    best: tuple[dict[str, int], float] = ({}, float("inf"))
    for combo in itertools.product(*(range(len(problem.costs[n])) for n in names)):
        choice = dict(zip(names, combo))
        for v in problem.costs:
            if v in problem.ties:
                r, f = _root(problem, v)
                choice[v] = f[choice[r]]
        ok = all(
            constraint_value(problem, c, choice) <= c.limit + 1e-12 for c in problem.constraints
        )
        if ok:
            value = objective(problem, choice)
            if value < best[1]:
                best = (choice, value)
    return best


def _backend(time_limit: float) -> tuple[pulp.LpSolver, str]:
    try:
        highs = pulp.HiGHS(msg=False, timeLimit=time_limit)
        if highs.available():
            return highs, "highs"
    except Exception:  # pragma: no cover - pulp without HiGHS support
        pass
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit), "cbc"


def solve(problem: Problem, time_limit: float = 60.0, tie_break: float = 1e-6) -> Solution:
    reduced, tied = untie(problem)
    sol = _solve(reduced, time_limit, tie_break)
    if not tied:
        return sol
    choice = dict(sol.choice)
    for v, (r, f) in tied.items():
        choice[v] = f[choice[r]]
    return Solution(
        choice, objective(problem, choice), sol.status, sol.solver, sol.seconds, sol.num_variables
    )


def _solve(problem: Problem, time_limit: float, tie_break: float) -> Solution:
    start = time.perf_counter()
    scale = 1e6
    overlap = problem.overlap > 0
    costs = {
        u: [c * scale + tie_break * i for i, c in enumerate(cs)] for u, cs in problem.costs.items()
    }
    hidden = {u: [0.0] * len(cs) for u, cs in costs.items()}  # hidden comm folded onto nodes
    free = {u for u, cs in costs.items() if len(cs) > 1}
    for u, cs in costs.items():
        if not cs:
            raise InfeasibleError(f"node {u} has no valid strategy")
    # constraint left sides: node weights, with edges that have a fixed end folded in
    cweights = [{u: list(w) for u, w in c.weights.items()} for c in problem.constraints]
    cfixed = [0.0 for _ in problem.constraints]
    pair_terms: list[tuple[int, EdgeTerm]] = []
    for k, e in enumerate(problem.edges):
        target = hidden if (e.hidden and overlap) else costs
        if e.u == e.v or e.u not in free or e.v not in free:
            for ci, c in enumerate(problem.constraints):
                if k in c.edges:
                    _fold_edge(e, c.edges[k], cweights[ci], free, ci, cfixed)
            _fold_edge(e, [[x * scale for x in row] for row in e.cost], target, free, -1, None)
        else:
            pair_terms.append((k, e))
    if not free:
        choice = {u: 0 for u in costs}
        for c in problem.constraints:
            used = constraint_value(problem, c, choice)
            if used > c.limit + 1e-12:
                raise InfeasibleError(
                    f"constraint {c.name} needs {used:g} but the limit is {c.limit:g}"
                )
        return Solution(choice, objective(problem, choice), "trivial", "none", 0.0, 0)

    prob = pulp.LpProblem("autopar", pulp.LpMinimize)

    def var(name: str, binary: bool) -> pulp.LpVariable:
        if hasattr(prob, "add_variable"):  # PuLP >= 3.3
            if binary:
                return prob.add_variable(name, 0, 1, cat="Binary")
            return prob.add_variable(name, 0)
        return pulp.LpVariable(name, lowBound=0, cat="Binary" if binary else "Continuous")

    names = {u: f"n{k}" for k, u in enumerate(sorted(free))}
    x = {u: [var(f"x_{names[u]}_{i}", True) for i in range(len(costs[u]))] for u in free}
    terms = [(x[u][i], costs[u][i]) for u in free for i in range(len(costs[u]))]
    hidden_terms = [(x[u][i], hidden[u][i]) for u in free for i in range(len(costs[u]))]
    hidden_const = sum(hidden[u][0] for u in costs if u not in free)
    for u in free:
        prob += pulp.lpSum(x[u]) == 1
    num_vars = sum(len(v) for v in x.values())
    cedge_terms: list[list[tuple[pulp.LpVariable, float]]] = [[] for _ in problem.constraints]
    for k, e in pair_terms:
        ga, gb = max(e.u_group) + 1, max(e.v_group) + 1
        ev = [[var(f"e{k}_{a}_{b}", False) for b in range(gb)] for a in range(ga)]
        num_vars += ga * gb
        u_members: list[list[pulp.LpVariable]] = [[] for _ in range(ga)]
        for i, a in enumerate(e.u_group):
            u_members[a].append(x[e.u][i])
        v_members: list[list[pulp.LpVariable]] = [[] for _ in range(gb)]
        for j, b in enumerate(e.v_group):
            v_members[b].append(x[e.v][j])
        for a in range(ga):
            prob += pulp.lpSum(ev[a]) == pulp.lpSum(u_members[a])
        for b in range(gb):
            prob += pulp.lpSum(ev[a][b] for a in range(ga)) == pulp.lpSum(v_members[b])
        bucket = hidden_terms if (e.hidden and overlap) else terms
        bucket += [
            (ev[a][b], e.cost[a][b] * scale) for a in range(ga) for b in range(gb) if e.cost[a][b]
        ]
        for ci, c in enumerate(problem.constraints):
            if k in c.edges:
                m = c.edges[k]
                cedge_terms[ci] += [(ev[a][b], m[a][b]) for a in range(ga) for b in range(gb)]
    for ci, c in enumerate(problem.constraints):
        w = cweights[ci]
        fixed = cfixed[ci] + sum(w[u][0] for u in w if u not in free)
        prob += (
            pulp.lpSum(x[u][i] * wi[i] for u, wi in w.items() if u in free for i in range(len(wi)))
            + pulp.lpSum(v * m for v, m in cedge_terms[ci] if m)
            <= c.limit - fixed,
            c.name,
        )
    objective_terms = pulp.lpSum(v * coef for v, coef in terms)
    if overlap and (any(c for _, c in hidden_terms) or hidden_const):
        t = var("t_exposed", False)
        num_vars += 1
        compute = problem.compute
        budget = [
            (x[u][i], problem.overlap * compute[u][i] * scale)
            for u in free if u in compute for i in range(len(compute[u]))
        ]  # fmt: skip
        budget_const = sum(
            problem.overlap * compute[u][0] * scale for u in compute if u not in free
        )
        prob += (
            t >= pulp.lpSum(v * c for v, c in hidden_terms if c) + hidden_const
            - pulp.lpSum(v * c for v, c in budget if c) - budget_const
        )  # fmt: skip
        objective_terms = objective_terms + t
        if problem.interference:
            d = problem.interference
            objective_terms += (
                pulp.lpSum(v * (c * d) for v, c in hidden_terms if c) + d * hidden_const
            )
    prob += objective_terms
    solver, solver_name = _backend(time_limit)
    with _quiet_stdout():  # highspy prints a banner from C++ before it reads output_flag
        prob.solve(solver)
    sol_status = prob.sol_status
    if sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise InfeasibleError(
            f"the strategy ILP has no feasible solution ({pulp.LpStatus[prob.status]})"
        )
    choice = {}
    for u in costs:
        if u in free:
            vals = [v.value() or 0.0 for v in x[u]]
            choice[u] = max(range(len(vals)), key=lambda i: vals[i])
        else:
            choice[u] = 0
    status = "optimal" if sol_status == pulp.LpSolutionOptimal else "feasible (time limit)"
    return Solution(
        choice,
        objective(problem, choice),
        status,
        solver_name,
        time.perf_counter() - start,
        num_vars,
    )


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _fold_edge(
    e: EdgeTerm,
    matrix: list[list[float]],
    into: dict[str, list[float]],
    free: set[str],
    ci: int,
    fixed: list[float] | None,
) -> None:
    """Add an edge's matrix to per-node weights when at most one end is free."""
    if e.u == e.v:
        for i in range(len(e.u_group)):
            into.setdefault(e.u, [0.0] * len(e.u_group))[i] += matrix[e.u_group[i]][e.v_group[i]]
    elif e.u not in free and e.v not in free:
        if fixed is not None:
            fixed[ci] += matrix[e.u_group[0]][e.v_group[0]]
        else:  # a constant cost: charge it to u's only strategy
            into[e.u][0] += matrix[e.u_group[0]][e.v_group[0]]
    elif e.u not in free:
        acc = into.setdefault(e.v, [0.0] * len(e.v_group))
        for j in range(len(e.v_group)):
            acc[j] += matrix[e.u_group[0]][e.v_group[j]]
    else:
        acc = into.setdefault(e.u, [0.0] * len(e.u_group))
        for i in range(len(e.u_group)):
            acc[i] += matrix[e.u_group[i]][e.v_group[0]]
