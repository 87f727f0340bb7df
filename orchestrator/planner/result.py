"""Turning an assignment into a Plan: always re-evaluated by the cost model, the single source of L."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.costmodel import evaluate, throughput_bottleneck
from orchestrator.network import NetworkState
from orchestrator.plan import Breakdown, Objective, Plan, PlanStatus
from profiler.profile import Profile


def make_plan(profile: Profile, net: NetworkState, assignment: Sequence[str], *, status: PlanStatus, solver: str,
              objective: Objective = "latency", solve_time_s: float = 0.0, gap: float | None = None) -> Plan:
    ev = evaluate(profile, net, assignment)
    if not ev.feasible:
        raise ValueError(f"internal error: {solver} produced an infeasible assignment: {'; '.join(ev.violations)}")
    return Plan(
        model=profile.model,
        assignment=list(assignment),
        objective=objective,
        predicted_latency_s=ev.latency_s,
        status=status,
        solver=solver,
        solve_time_s=solve_time_s,
        breakdown=Breakdown(compute_s=ev.compute_s, transfer_s=ev.transfer_s),
        gap=gap,
        bottleneck_s=throughput_bottleneck(profile, net, assignment),
    )
