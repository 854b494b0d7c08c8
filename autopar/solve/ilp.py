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
Costs are scaled to microseconds. HiGHS is used when highspy is installed, CBC
otherwise; a solve cut short by the time limit is reported as such, never as optimal.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import pulp


@dataclass
class EdgeTerm:
    u: str
    v: str
    u_group: list[int]
    v_group: list[int]
    cost: list[list[float]]  # [u group][v group], seconds


@dataclass
class Constraint:
    name: str
    weights: dict[str, list[float]]  # node -> per strategy
    limit: float


@dataclass
class Problem:
    costs: dict[str, list[float]]  # node -> per strategy, seconds
    edges: list[EdgeTerm]
    constraints: list[Constraint] = field(default_factory=list)
    # follower v tied to producer u: v takes strategy f[i] whenever u takes i
    ties: dict[str, tuple[str, list[int]]] = field(default_factory=dict)


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
        edges.append(EdgeTerm(ru, rv, ug, vg, e.cost))
    constraints = []
    for c in problem.constraints:
        weights: dict[str, list[float]] = {}
        for v, w in c.weights.items():
            r, f = roots[v]
            acc = weights.setdefault(r, [0.0] * len(f))
            for i in range(len(f)):
                acc[i] += w[f[i]]
        constraints.append(Constraint(c.name, weights, c.limit))
    return Problem(costs, edges, constraints), {v: rf for v, rf in roots.items() if v != rf[0]}


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
    for e in problem.edges:
        total += e.cost[e.u_group[choice[e.u]]][e.v_group[choice[e.v]]]
    return total


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
            sum(w[choice[u]] for u, w in c.weights.items()) <= c.limit + 1e-12
            for c in problem.constraints
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
    costs = {
        u: [c * scale + tie_break * i for i, c in enumerate(cs)] for u, cs in problem.costs.items()
    }
    free = {u for u, cs in costs.items() if len(cs) > 1}
    for u, cs in costs.items():
        if not cs:
            raise InfeasibleError(f"node {u} has no valid strategy")
    pair_terms: list[EdgeTerm] = []
    for e in problem.edges:
        if e.u == e.v:
            for i in range(len(costs[e.u])):
                costs[e.u][i] += e.cost[e.u_group[i]][e.v_group[i]] * scale
        elif e.u not in free and e.v not in free:
            continue  # constant
        elif e.u not in free:
            for j in range(len(costs[e.v])):
                costs[e.v][j] += e.cost[e.u_group[0]][e.v_group[j]] * scale
        elif e.v not in free:
            for i in range(len(costs[e.u])):
                costs[e.u][i] += e.cost[e.u_group[i]][e.v_group[0]] * scale
        else:
            pair_terms.append(e)
    if not free:
        choice = {u: 0 for u in costs}
        for c in problem.constraints:
            used = sum(w[0] for w in c.weights.values())
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
    for u in free:
        prob += pulp.lpSum(x[u]) == 1
    num_vars = sum(len(v) for v in x.values())
    for k, e in enumerate(pair_terms):
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
        terms += [
            (ev[a][b], e.cost[a][b] * scale) for a in range(ga) for b in range(gb) if e.cost[a][b]
        ]
    for c in problem.constraints:
        fixed = sum(w[0] for u, w in c.weights.items() if u not in free)
        prob += (
            pulp.lpSum(
                x[u][i] * w[i] for u, w in c.weights.items() if u in free for i in range(len(w))
            )
            <= c.limit - fixed,
            c.name,
        )
    prob += pulp.lpSum(var * coef for var, coef in terms)
    solver, solver_name = _backend(time_limit)
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
