"""The planner: where every unit of a model runs so that a request finishes soonest (docs/planner.md).

    from orchestrator.planner import solve, PlanOptions
    plan = solve(profile, network, PlanOptions(objective="latency", solver="cbc", time_limit_s=None))
"""

from orchestrator.planner.infeasible import InfeasibleError
from orchestrator.planner.solve import NoPlanFound, PlanOptions, SolveReport, solve, solve_report

__all__ = ["InfeasibleError", "NoPlanFound", "PlanOptions", "SolveReport", "solve", "solve_report"]
