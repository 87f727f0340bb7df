"""The best plan for a profile on a network, as `aiflow plan` and the daemon's re-solve both answer it,
and the latency of any plan (split, reduced or cooperative) on a network.

`best_plan`: the best split plan over placements and the profile's token-reduction options
(orchestrator.reductions.solve_with_reductions), then, when a draft profile is given, the faster of
that and the best cooperative plan over verifiers and k (orchestrator.planner.cooperative.choose_plan).
`plan_latency`: L of a split plan (its reduction applied) or L_coop of a cooperative plan, so two
plans of different modes are compared on one snapshot. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from orchestrator.cooperative import CooperativeUnsupported, evaluate_cooperative
from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from orchestrator.planner.cooperative import CoopSearch, choose_plan
from orchestrator.planner.solve import PlanOptions
from orchestrator.reductions import DEFAULT_MAX_QUALITY_LOSS, profile_for_plan, solve_with_reductions
from profiler.profile import Profile


def best_plan(profile: Profile, net: NetworkState, options: PlanOptions | None = None, *,
              draft: Profile | None = None, max_quality_loss: float = DEFAULT_MAX_QUALITY_LOSS,
              reduce: bool = True, no_verifier: Collection[str] = ()) -> tuple[Plan, CoopSearch | None]:
    """The best split plan (token reductions considered), or the best cooperative plan when `draft` is
    given and it is faster (verifying on no node of `no_verifier`); with the cooperative search (None
    without a draft). Raises the planner's InfeasibleError / NoPlanFound, CooperativeUnsupported and
    ValueError (a bad quality cap)."""
    plan, _ = solve_with_reductions(profile, net, options, max_quality_loss=max_quality_loss, reduce=reduce)
    if draft is None:
        return plan, None
    return choose_plan(plan, profile, draft, net, no_verifier=no_verifier)


def same_plan(a: Plan, b: Plan) -> bool:
    """Whether two plans run the same way: mode, placements, k, token reduction and compression."""
    return ((a.mode or "split") == (b.mode or "split") and list(a.assignment) == list(b.assignment)
            and (a.draft_assignment or []) == (b.draft_assignment or []) and a.k == b.k
            and (a.reductions or []) == (b.reductions or []) and a.compression == b.compression)


@dataclass(frozen=True)
class PlanLatency:
    latency_s: float                  # inf when the plan cannot run on the network
    problem: str | None = None        # why it cannot, in one line

    @property
    def feasible(self) -> bool:
        return self.problem is None and math.isfinite(self.latency_s)


def plan_latency(plan: Plan, profile: Profile, net: NetworkState, draft: Profile | None = None) -> PlanLatency:
    """L of `plan` on `net`: L_coop for a cooperative plan (needs the draft profile), else L with the
    plan's token reduction applied to the profile."""
    if plan.mode == "cooperative":
        if draft is None or plan.draft_assignment is None or plan.k is None:
            return PlanLatency(math.inf, "a cooperative plan without its draft")
        try:
            ev = evaluate_cooperative(profile, draft, net, plan.assignment, plan.draft_assignment, plan.k)
        except CooperativeUnsupported as exc:
            return PlanLatency(math.inf, str(exc))
        if not ev.feasible:
            return PlanLatency(math.inf, ev.violations[0] if ev.violations else "a node it uses is unreachable")
        return PlanLatency(ev.latency_s)
    try:
        prof = profile_for_plan(profile, plan)
    except ValueError as exc:
        return PlanLatency(math.inf, str(exc))
    ev = evaluate(prof, net, plan.assignment)
    if not ev.feasible:
        return PlanLatency(math.inf, ev.violations[0] if ev.violations else "a node it uses is unreachable")
    return PlanLatency(ev.latency_s)
