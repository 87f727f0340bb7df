"""The five ways to place a model that the demo and the experiment compare, as plans.

device-only, edge-only and cloud-only run everything on one tier (the raw input shipped there),
best-split is Neurosurgeon's single cut between the device and one other node, and optimal is the
planner's integer program. All are evaluated by the same cost model. A sixth, best-cut, is the best
single cut that keeps units on both sides: the experiment's compression study uses it so that some
plan always sends an activation, whether or not splitting wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.compression import compressed_profile
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from orchestrator.planner import PlanOptions, solve
from orchestrator.planner.baselines import best_single_split, single_node
from profiler.errors import InputError
from profiler.profile import Profile

STRATEGIES: tuple[str, ...] = ("device-only", "edge-only", "cloud-only", "best-split", "optimal")
EXTRA_STRATEGIES: tuple[str, ...] = ("best-cut",)


@dataclass(frozen=True)
class Strategy:
    name: str
    plan: Plan | None
    why_not: str | None = None       # why there is no plan (a tier missing, a constraint broken)


def tier_node(net: NetworkState, tier: str) -> str | None:
    """The node of a tier (the source for "device" when no node says its tier)."""
    for node in net.nodes:
        if node.tier == tier:
            return node.name
    return net.source if tier == "device" else None


def strategy_plans(profile: Profile, net: NetworkState, *, solver: str = "cbc", compression: str | None = None,
                   names: Sequence[str] = STRATEGIES) -> list[Strategy]:
    """A plan per strategy in `names` (or why there is none). With `compression` ("fp16", "int8") every
    plan is made for the bytes the runtime will send and asks the runtime to compress."""
    unknown = [n for n in names if n not in STRATEGIES + EXTRA_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES + EXTRA_STRATEGIES)}")
    out: list[Strategy] = []
    if compression not in (None, "none"):
        profile = compressed_profile(profile, compression)
    for name in names:
        try:
            if name == "optimal":
                plan = solve(profile, net, PlanOptions(solver=solver))
            elif name in ("best-split", "best-cut"):
                plan = best_single_split(profile, net, interior=name == "best-cut")
            else:
                node = net.source if name == "device-only" else tier_node(net, name.removesuffix("-only"))
                if node is None:
                    out.append(Strategy(name, None, f"the network has no {name.removesuffix('-only')} node"))
                    continue
                plan = single_node(profile, net, node)
        except InputError as exc:
            out.append(Strategy(name, None, str(exc)))
            continue
        update = {"strategy": name} | ({"compression": compression} if compression not in (None, "none") else {})
        out.append(Strategy(name, plan.model_copy(update=update)))
    return out


def describe_assignment(assignment: list[str]) -> str:
    """Runs of one node, e.g. "phone x7 | cloud x5"."""
    runs: list[tuple[str, int]] = []
    for node in assignment:
        if runs and runs[-1][0] == node:
            runs[-1] = (node, runs[-1][1] + 1)
        else:
            runs.append((node, 1))
    return " | ".join(f"{n} x{k}" for n, k in runs)


SINGLE_TIERS = ("device-only", "edge-only", "cloud-only")


def why_optimal(strategies: list[Strategy]) -> str | None:
    """One line on why the optimal plan wins: what it saves against the best single tier (predicted)."""
    by_name = {s.name: s.plan for s in strategies if s.plan is not None}
    best = by_name.get("optimal")
    singles = {n: p for n, p in by_name.items() if n in SINGLE_TIERS}
    if best is None or not singles:
        return None
    tier, tier_plan = min(singles.items(), key=lambda kv: kv[1].predicted_latency_s)
    opt, alone = best.predicted_latency_s, tier_plan.predicted_latency_s
    where = describe_assignment(best.assignment)
    device = singles.get("device-only")
    vs_device = (f"; {device.predicted_latency_s / opt:.2f}x faster than device-only"
                 if device is not None and tier != "device-only" and opt > 0 else "")
    if len(set(best.assignment)) == 1 and best.assignment == tier_plan.assignment:
        if tier == "device-only":
            return (f"why: keeping everything on the device ({opt * 1e3:.1f} ms) is best here: no other tier "
                    "is faster once the transfers are counted")
        return f"why: {tier} ({where}, {opt * 1e3:.1f} ms) is the fastest placement{vs_device}"
    saved = alone - opt
    return (f"why: for the profiled request the optimum ({where}) predicts {opt * 1e3:.1f} ms, {saved * 1e3:.1f} ms "
            f"({saved / alone:.0%}) less than the best single tier ({tier}, {alone * 1e3:.1f} ms){vs_device}")
