"""Plans with token reduction: the planner chooses, per plan, whether to reduce the encoder output
before it crosses a link and to how many tokens (docs/planner.md, "Token reduction").

A reduction option o of the profile's `reductions` section changes two things in L:
- the edge's bytes become o.bytes (the k merged tokens and their log sizes) for every copy of it;
- the edge's source unit u_e also runs the reduction: c(u_e, p) gains o.reduce_s[hw] * slowdown on
  its node (the runtime reduces whenever the plan names a reduction, wherever the edge goes).
Options whose measured quality_loss exceeds the cap (points of scene accuracy) are not considered.
For each remaining option (and "none") the profile is rewritten that way and solved exactly; the
plan with the least L wins, "none" on a tie. So the result is optimal over placements x options.
Pure: no I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from orchestrator.planner.solve import PlanOptions, solve
from profiler.profile import Profile
from profiler.reduction_profile import ReductionOption, Reductions, reductions_of

DEFAULT_MAX_QUALITY_LOSS = 1.0        # points of scene accuracy (issue 15's goal)


@dataclass(frozen=True)
class ReductionCandidate:
    option: ReductionOption | None       # None: no reduction
    plan: Plan | None                    # None when excluded by the cap
    excluded: str | None = None

    @property
    def label(self) -> str:
        return "none" if self.option is None else self.option.label


def reduced_profile(profile: Profile, section: Reductions, option: ReductionOption | None) -> Profile:
    """The profile as L sees it under `option`: the edge's bytes and the reduction's compute."""
    if option is None:
        return profile
    edges = [e.model_copy(update={"bytes": float(option.bytes)}) if e.from_ == section.edge else e
             for e in profile.edges]
    phase = next((p.name for p in profile.active_phases if p.first <= section.edge <= p.last), None)
    unit = profile.units[section.edge]
    lat: dict[str, dict[str, float]] = {}
    for hw, per in unit.latency_s.items():
        if phase is None or phase not in per:
            lat[hw] = dict(per)
        elif hw in option.reduce_s:
            lat[hw] = {**per, phase: per[phase] + option.reduce_s[hw]}
        # a class without a reduce cost cannot host the reducing unit under this option
    units = list(profile.units)
    units[section.edge] = unit.model_copy(update={"latency_s": lat})
    return profile.model_copy(update={"edges": edges, "units": units})


def plan_reductions(section: Reductions, option: ReductionOption | None) -> list[dict[str, object]]:
    """The plan's `reductions` field: [] for none, else the one reduced edge."""
    if option is None:
        return []
    return [{"edge": section.edge, "method": option.method, "keep": option.keep, "tokens": section.tokens,
             "bytes": option.bytes, "bytes_in": section.bytes, "quality_loss": option.quality_loss}]


def profile_for_plan(profile: Profile, plan: Plan) -> Profile:
    """The profile L is evaluated on for a plan that may name a reduction (explain, run)."""
    chosen = [r for r in (plan.reductions or []) if r.get("method") not in (None, "none")]
    if not chosen:
        return profile
    section = reductions_of(profile)
    if section is None:
        raise ValueError("plan: it reduces tokens but the profile has no `reductions` section")
    r = chosen[0]
    opt = next((o for o in section.options if o.method == r["method"] and o.keep == int(r["keep"])), None)  # type: ignore[arg-type]
    if opt is None:
        raise ValueError(f"plan: reduction {r['method']}-{r['keep']} is not among the profile's options")
    return reduced_profile(profile, section, opt)


def solve_with_reductions(profile: Profile, net: NetworkState, options: PlanOptions | None = None, *,
                          max_quality_loss: float = DEFAULT_MAX_QUALITY_LOSS,
                          reduce: bool = True) -> tuple[Plan, list[ReductionCandidate]]:
    """The best plan over placements and the profile's reduction options within the quality cap.
    Without a `reductions` section (or with reduce=False) it is `solve`'s plan with `reductions: []`."""
    if not math.isfinite(max_quality_loss) or max_quality_loss < 0:
        raise ValueError(f"--max-quality-loss: must be a number of points >= 0, got {max_quality_loss}")
    opts = options or PlanOptions()
    t0 = time.perf_counter()
    section = reductions_of(profile) if reduce else None
    base = solve(profile, net, opts)
    cands = [ReductionCandidate(None, base)]
    if section is not None:
        for o in section.options:
            if o.quality_loss > max_quality_loss:
                cands.append(ReductionCandidate(o, None, f"loses {o.quality_loss:.2f} points > {max_quality_loss:g}"))
                continue
            cands.append(ReductionCandidate(o, solve(reduced_profile(profile, section, o), net, opts)))
    key = (lambda c: c.plan.bottleneck_s or 0.0) if opts.objective == "throughput" else (
        lambda c: c.plan.predicted_latency_s)
    best = min((c for c in cands if c.plan is not None), key=key)      # first minimum: "none" on a tie
    assert best.plan is not None
    update: dict[str, object] = {"reductions": plan_reductions(section, best.option) if section else []}
    if section is not None and len(cands) > 1:
        update["solve_time_s"] = time.perf_counter() - t0
        if any(c.plan is not None and c.plan.status != "optimal" for c in cands):
            update["status"] = "feasible" if best.plan.status != "heuristic" else "heuristic"
    return best.plan.model_copy(update=update), cands


def check_reduced(profile: Profile, net: NetworkState, plan: Plan) -> float:
    """L of a plan with its reduction, from the cost model (tests and explain)."""
    return evaluate(profile_for_plan(profile, plan), net, plan.assignment).latency_s
