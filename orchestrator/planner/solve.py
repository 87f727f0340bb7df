"""solve(profile, network, options) -> Plan: the exact fast path where it is exact, else the integer program.

Pure: no I/O. Every plan's predicted latency is the cost model's evaluation of its assignment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.costmodel import check_constraints
from orchestrator.network import NetworkState
from orchestrator.plan import Objective, Plan
from orchestrator.planner import fastpath
from orchestrator.planner.backends import BACKENDS, solve_model
from orchestrator.planner.baselines import greedy_assignment
from orchestrator.planner.infeasible import InfeasibleError, explain, explain_or_generic
from orchestrator.planner.model import LinearModel, build_model
from orchestrator.planner.problem import Instance, build_instance
from orchestrator.planner.result import make_plan
from profiler.errors import InputError
from profiler.profile import Profile


@dataclass(frozen=True)
class PlanOptions:
    objective: Objective = "latency"
    solver: str = "cbc"                       # cbc | highs | cpsat
    time_limit_s: float | None = None         # None: until proven optimal
    threads: int | None = None                # None: the solver's default
    fast_path: bool = True                    # use the exact DP when it applies (latency only)
    warm_start: Sequence[str] | None = None   # an assignment (node names) to start from, e.g. the current plan
    auto_warm_start: bool = True              # start from the greedy placement when no warm_start is given
    symmetry: bool = True                     # order interchangeable nodes
    naive: bool = False                       # the weak linearisation, for benchmarks only


@dataclass
class SolveReport:
    """What the solve did, beside the plan (for tests, the benchmark and `--json` diagnostics)."""

    plan: Plan
    method: str                    # "dp" or the backend name
    objective_value: float | None  # the solver's (or DP's) own objective value
    bound: float | None
    n_vars: int = 0
    n_rows: int = 0
    solver_time_s: float = 0.0


class NoPlanFound(InputError):
    """The solver stopped (time limit) before finding any plan."""


def solve(profile: Profile, network: NetworkState, options: PlanOptions | None = None) -> Plan:
    return solve_report(profile, network, options).plan


def solve_report(profile: Profile, network: NetworkState, options: PlanOptions | None = None) -> SolveReport:
    opts = options or PlanOptions()
    if opts.solver not in BACKENDS:
        raise InputError(f"--solver: unknown solver {opts.solver!r} (choose from {', '.join(BACKENDS)})")
    if opts.time_limit_s is not None and not opts.time_limit_s > 0:
        raise InputError(f"--time-limit: must be positive, got {opts.time_limit_s}")
    t0 = time.perf_counter()
    inst = build_instance(profile, network, with_loads=opts.objective == "throughput")
    reasons = explain(inst)
    if reasons:
        raise InfeasibleError(reasons)

    if opts.fast_path and opts.objective == "latency" and not opts.naive:
        found = fastpath.solve_chain(inst)
        if found is not None and inst.mem_ok(found[0]):
            plan = make_plan(profile, network, inst.names(found[0]), status="optimal", solver="dp",
                             solve_time_s=time.perf_counter() - t0)
            return SolveReport(plan, "dp", found[1], found[1])

    for margin in (0.0, 1e-6):
        model = build_model(inst, opts.objective, naive=opts.naive, symmetry=opts.symmetry, mem_margin=margin)
        start = _warm_start(inst, model, opts)
        # The limit covers the whole solve: what building the model took is the solver's less.
        limit = None if opts.time_limit_s is None else max(0.5, opts.time_limit_s - (time.perf_counter() - t0))
        res = solve_model(model, opts.solver, time_limit_s=limit, threads=opts.threads, warm_start=start)
        if res.status == "infeasible":
            raise InfeasibleError(explain_or_generic(inst))
        if res.status == "no_solution" or res.values is None:
            raise NoPlanFound(f"--time-limit: {opts.solver} found no plan within {opts.time_limit_s} s; "
                              "allow more time")
        assign = model.assignment(res.values, inst.n_units)
        if inst.mem_ok(assign):
            break
        # The solver let a memory row slip by its feasibility tolerance (a few hundred bytes of GBs):
        # solve once more with a margin of a millionth of each node's memory kept free.
    else:
        raise RuntimeError("the solver keeps returning plans over a memory limit")
    plan = make_plan(profile, network, inst.names(assign), status=res.status, solver=res.solver,
                     objective=opts.objective, solve_time_s=time.perf_counter() - t0,
                     gap=None if res.status == "optimal" else res.gap)
    return SolveReport(plan, opts.solver, res.objective, res.bound, model.n_vars, len(model.rows), res.solve_time_s)


def _warm_start(inst: Instance, model: LinearModel, opts: PlanOptions) -> list[float] | None:
    """A feasible start for the solver: the given assignment if it is feasible, else the greedy one."""
    assign: list[int] | None = None
    if opts.warm_start is not None:
        names = list(opts.warm_start)
        if len(names) == inst.n_units and not check_constraints(inst.profile, inst.net, names):
            idx = [inst.nodes.index(n) for n in names]
            if all(n in inst.allowed[u] for u, n in enumerate(idx)):
                assign = idx
    if assign is None and opts.auto_warm_start:
        assign = greedy_assignment(inst)
    if assign is None or not math.isfinite(inst.latency(assign)):
        return None
    if model.symmetry_classes:
        assign = _canonical(assign, model.symmetry_classes)
    return model.start_values(inst, assign)


def _canonical(assign: list[int], classes: list[list[int]]) -> list[int]:
    """Relabel interchangeable nodes in order of first use, so a start obeys the symmetry rows."""
    out = list(assign)
    for cls in classes:
        order = list(dict.fromkeys(n for n in assign if n in cls))
        relabel = {old: cls[k] for k, old in enumerate(order)}
        out = [relabel.get(n, n) if n in cls else n for n in out]
    return out
