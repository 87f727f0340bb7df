"""Thin adapters that load a LinearModel into a solver and read the answer back.

- "cbc":   PuLP with its bundled CBC (the default);
- "highs": PuLP with HiGHS through highspy, in process;
- "cpsat": OR-Tools CP-SAT. CP-SAT takes integer coefficients only, so every coefficient that is
  seconds (the objective, throughput rows) is scaled to integer nanoseconds and rounded; every other
  coefficient (0/1, bytes) is already an integer. The optimum is then proven for the rounded
  coefficients: within 0.5 ns per term of the true optimum. The planner re-evaluates every plan with
  the cost model, so the reported latency is exact either way.

Never use OR-Tools' own HiGHS (pywraplp) here: it and highspy in one process crash it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.planner.model import LinearModel

BACKENDS = ("cbc", "highs", "cpsat")
Backend = Literal["cbc", "highs", "cpsat"]
SolveStatus = Literal["optimal", "feasible", "infeasible", "no_solution"]

# A solver may call a plan optimal when its bound is this close (relative): proof, not a shortcut.
# (HiGHS stops at 1e-4 by default.)
GAP_REL = 1e-9
NS_PER_UNIT = 1e3  # CP-SAT counts integer nanoseconds; the model counts microseconds


@dataclass
class SolverResult:
    status: SolveStatus
    values: list[float] | None
    objective: float | None          # seconds, including the model's constant
    bound: float | None              # seconds: the solver's proven lower bound
    solve_time_s: float
    solver: str

    @property
    def gap(self) -> float | None:
        if self.objective is None or self.bound is None:
            return None
        if self.objective <= 0:
            return 0.0
        return max(0.0, (self.objective - self.bound) / abs(self.objective))


def solve_model(model: LinearModel, backend: str, *, time_limit_s: float | None = None, threads: int | None = None,
                warm_start: list[float] | None = None) -> SolverResult:
    if backend == "cbc":
        return _solve_pulp(model, "cbc", time_limit_s, threads, warm_start)
    if backend == "highs":
        return _solve_pulp(model, "highs", time_limit_s, threads, warm_start)
    if backend == "cpsat":
        return _solve_cpsat(model, time_limit_s, threads, warm_start)
    raise ValueError(f"unknown solver {backend!r} (choose from {', '.join(BACKENDS)})")


# -- PuLP ---------------------------------------------------------------------------------------------
def _pulp_problem(model: LinearModel):  # noqa: ANN202 - pulp has no types
    import pulp

    prob = pulp.LpProblem("aiflow_plan", pulp.LpMinimize)
    lp_vars = [
        prob.add_variable(name, lowBound=lb, upBound=None if math.isinf(ub) else ub,
                          cat=pulp.LpInteger if integer else pulp.LpContinuous)
        for name, lb, ub, integer in zip(model.names, model.lb, model.ub, model.integer, strict=True)
    ]
    prob.setObjective(pulp.LpAffineExpression(
        [(lp_vars[i], c) for i, c in enumerate(model.obj) if c != 0.0]))  # the constant is added back after
    senses = {"<=": pulp.LpConstraintLE, ">=": pulp.LpConstraintGE, "==": pulp.LpConstraintEQ}
    for k, r in enumerate(model.rows):
        expr = pulp.LpAffineExpression([(lp_vars[i], c) for i, c in zip(r.idx, r.coef, strict=True)])
        prob.addConstraint(pulp.LpConstraint(expr, senses[r.sense], rhs=r.rhs), name=f"r{k}")
    return prob, lp_vars


def _solve_pulp(model: LinearModel, backend: str, time_limit_s: float | None, threads: int | None,
                warm_start: list[float] | None) -> SolverResult:
    import pulp

    t0 = time.perf_counter()
    prob, lp_vars = _pulp_problem(model)
    if warm_start is not None:
        for v, val in zip(lp_vars, warm_start, strict=True):
            v.setInitialValue(round(val) if v.cat != pulp.LpContinuous else val)
    bound: float | None = None
    if backend == "cbc":
        with tempfile.TemporaryDirectory(prefix="aiflow-cbc-") as tmp:
            log = Path(tmp) / "cbc.log"
            with warnings.catch_warnings():
                # PuLP 3.3 deprecates its bundled CBC for 4.0; it is the CBC every install has today.
                warnings.simplefilter("ignore", DeprecationWarning)
                solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=threads, gapRel=GAP_REL,
                                           warmStart=warm_start is not None, logPath=str(log))
            prob.solve(solver)
            bound = _cbc_bound(log.read_text(errors="replace") if log.exists() else "")
        name = "pulp-cbc"
    else:
        # No MIP start for HiGHS: with one (setSolution) and the symmetry rows, HiGHS 1.16's presolve
        # proved a worse plan optimal on a 6-unit instance of the property tests (right without it).
        solver = _quiet_highs(msg=False, timeLimit=time_limit_s, threads=threads, gapRel=GAP_REL)
        prob.solve(solver)
        info = prob.solverModel.getInfo()
        bound = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else None
        name = "pulp-highs"
    elapsed = time.perf_counter() - t0
    sol = prob.sol_status
    # CBC's preprocessing can prove infeasibility with no solution status (status -1, sol_status 0).
    if sol == pulp.LpSolutionInfeasible or prob.status == pulp.LpStatusInfeasible:
        return SolverResult("infeasible", None, None, None, elapsed, name)
    if sol not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return SolverResult("no_solution", None, None, bound, elapsed, name)
    values = [v.varValue if v.varValue is not None else 0.0 for v in lp_vars]
    obj = model.obj_const + math.fsum(c * values[i] for i, c in enumerate(model.obj) if c)
    status: SolveStatus = "optimal" if sol == pulp.LpSolutionOptimal else "feasible"
    bound = obj if status == "optimal" else (None if bound is None else bound + model.obj_const)
    k = model.time_scale
    return SolverResult(status, values, obj / k, None if bound is None else bound / k, elapsed, name)


def _cbc_bound(log: str) -> float | None:
    """CBC prints its best bound as 'Lower bound:' when stopped (objective constant already included)."""
    found = re.findall(r"Lower bound:\s*([-+0-9.eE]+)", log)
    if not found:
        found = re.findall(r"best possible\s*([-+0-9.eE]+)", log)
    try:
        return float(found[-1]) if found else None
    except ValueError:
        return None


def _highs_class():  # noqa: ANN202
    import pulp

    class QuietHighs(pulp.HiGHS):
        """PuLP's HiGHS adapter, without the banner HiGHS prints from its constructor."""

        def createAndConfigureSolver(self, lp) -> None:  # noqa: ANN001, N802 - PuLP's name
            with _quiet_stdout():  # printed before any option applies
                super().createAndConfigureSolver(lp)

    return QuietHighs


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (C code's printf) for a moment: `--json` output must stay pure JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _quiet_highs(**kw: object):  # noqa: ANN202 - built lazily: importing pulp loads highspy
    return _highs_class()(**kw)


# -- CP-SAT -------------------------------------------------------------------------------------------
def _solve_cpsat(model: LinearModel, time_limit_s: float | None, threads: int | None,
                 warm_start: list[float] | None) -> SolverResult:
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    cp = cp_model.CpModel()
    cvars = []
    for name, lb, ub, _integer in zip(model.names, model.lb, model.ub, model.integer, strict=True):
        if lb >= 0 and ub <= 1:
            v = cp.NewBoolVar(name)
            if lb >= 1:
                cp.Add(v == 1)
            cvars.append(v)
        else:
            # Only T (seconds, in nanoseconds here) is not 0/1.
            hi = int(math.ceil(ub * NS_PER_UNIT)) if math.isfinite(ub) else _max_load_ns(model)
            cvars.append(cp.NewIntVar(int(math.floor(lb * NS_PER_UNIT)), hi, name))
    scale_var = [1.0 if (0 <= lb and ub <= 1) else 1.0 / NS_PER_UNIT for lb, ub in zip(model.lb, model.ub, strict=True)]
    for r in model.rows:
        if r.timed:
            coefs = [round(c * NS_PER_UNIT * scale_var[i]) for i, c in zip(r.idx, r.coef, strict=True)]
            rhs = r.rhs * NS_PER_UNIT
        elif r.int_scale is not None:  # memory: integer bytes against the node's (floored) capacity
            coefs = [round(c * r.int_scale) for c in r.coef]
            rhs = math.floor(r.rhs * r.int_scale)
        else:
            coefs = [_as_int(c) for c in r.coef]
            rhs = r.rhs
        expr = sum(c * cvars[i] for i, c in zip(r.idx, coefs, strict=True) if c)
        if r.sense == "<=":
            cp.Add(expr <= math.floor(rhs + 1e-9))
        elif r.sense == ">=":
            cp.Add(expr >= math.ceil(rhs - 1e-9))
        else:
            cp.Add(expr == round(rhs))
    obj_coefs = [round(c * NS_PER_UNIT * scale_var[i]) for i, c in enumerate(model.obj)]
    cp.Minimize(sum(c * cvars[i] for i, c in enumerate(obj_coefs) if c))
    if warm_start is not None:
        for i, (v, val) in enumerate(zip(cvars, warm_start, strict=True)):
            cp.AddHint(v, round(val) if scale_var[i] == 1.0 else round(val * NS_PER_UNIT))
    solver = cp_model.CpSolver()
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = threads or min(8, os.cpu_count() or 1)
    # OR-Tools 9.15's inclusion presolve certifies wrong optima on some all-linear models
    # (google/or-tools#5293); our throughput tests hit it. Switching that one step off is the fix.
    solver.parameters.presolve_inclusion_work_limit = 0
    code = solver.Solve(cp)
    elapsed = time.perf_counter() - t0
    if code == cp_model.INFEASIBLE:
        return SolverResult("infeasible", None, None, None, elapsed, "ortools-cpsat")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolverResult("no_solution", None, None, None, elapsed, "ortools-cpsat")
    values = [solver.Value(v) * scale_var[i] for i, v in enumerate(cvars)]
    k = model.time_scale
    obj = (model.obj_const + math.fsum(c * values[i] for i, c in enumerate(model.obj) if c)) / k
    if code == cp_model.OPTIMAL:
        return SolverResult("optimal", values, obj, obj, elapsed, "ortools-cpsat")
    bound = (model.obj_const + solver.BestObjectiveBound() / NS_PER_UNIT) / k
    return SolverResult("feasible", values, obj, bound, elapsed, "ortools-cpsat")


def _as_int(c: float) -> int:
    if c != int(c):
        raise ValueError(f"CP-SAT needs integer coefficients, got {c}")
    return int(c)


def _max_load_ns(model: LinearModel) -> int:
    """An upper bound on T: every timed row's total load."""
    total = 0.0
    for r in model.rows:
        if r.timed:
            total = max(total, r.rhs + sum(-c for c in r.coef if c < 0))
    return int(math.ceil(total * NS_PER_UNIT)) + 1
