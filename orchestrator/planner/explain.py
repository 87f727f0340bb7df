"""Every term of L for a plan, per phase, node and link, and which constraints bind.

A constraint binds when dropping it alone would let the planner find a faster plan: the explanation
re-solves without it (memory of a node, a pin, the raw-input rule) and reports the gain. A node whose
memory is full without binding is reported as full but not binding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from orchestrator.costmodel import check_constraints, evaluate
from orchestrator.network import NetworkState
from orchestrator.planner.infeasible import InfeasibleError
from orchestrator.planner.solve import PlanOptions, solve
from profiler.errors import InputError
from profiler.profile import Profile

TOL = 1e-9


@dataclass
class PhaseTerms:
    phase: str
    repeat: int
    input_s: float = 0.0
    loop_s: float = 0.0
    compute_s: dict[str, float] = field(default_factory=dict)      # node -> seconds (all passes)
    transfer_s: dict[str, float] = field(default_factory=dict)     # "a->b" (end to end) -> seconds
    passes_s: float = 0.0      # the runtime's fixed cost of every pass (segment) of the phase
    total_s: float = 0.0


@dataclass
class ConstraintUse:
    constraint: str            # "memory of edge", "pin text.head", "raw input on phone"
    detail: str
    full: bool                 # the constraint is at its limit in this plan
    gain_s: float | None       # how much faster the best plan gets without it (None: not priced)
    binding: bool


@dataclass
class Explanation:
    latency_s: float
    phases: list[PhaseTerms]
    edges: list[dict]
    result_s: float
    constraints: list[ConstraintUse]
    optimum_s: float | None    # the best L under every constraint (None: not solved)
    request_s: float = 0.0     # the runtime's fixed cost per request (profile overheads)
    overhead_s: float = 0.0    # all the runtime's own costs in L: per request, per hop, codec

    def to_dict(self) -> dict:
        return asdict(self)


def explain_plan(profile: Profile, net: NetworkState, assignment: list[str], *, price: bool = True,
                 options: PlanOptions | None = None) -> Explanation:
    """The terms of L for `assignment`; with `price`, each constraint's gain when dropped (re-solves)."""
    problems = check_constraints(profile, net, assignment)
    if problems:
        raise InputError("plan: field assignment: " + "; ".join(problems))
    ev = evaluate(profile, net, assignment)
    phases: dict[str, PhaseTerms] = {}
    for ph in profile.active_phases:
        phases[ph.name] = PhaseTerms(ph.name, ph.repeat)
    edges, result, request = [], 0.0, 0.0
    for t in ev.terms:
        if t.kind == "edge":
            edges.append({"from": t.src, "to": t.dst, "bytes": t.nbytes, "seconds": t.seconds})
            continue
        if t.kind == "result":
            result += t.seconds
            continue
        if t.kind == "request":
            request += t.seconds
            continue
        pt = phases[t.phase]  # type: ignore[index]
        if t.kind == "compute":
            pt.compute_s[t.node] = pt.compute_s.get(t.node, 0.0) + t.seconds  # type: ignore[index]
        elif t.kind == "input":
            pt.input_s += t.seconds
        elif t.kind == "loop":
            pt.loop_s += t.seconds
        elif t.kind == "pass":
            pt.passes_s += t.seconds
        else:
            key = f"{t.src}->{t.dst}"
            pt.transfer_s[key] = pt.transfer_s.get(key, 0.0) + t.seconds
    for pt in phases.values():
        pt.total_s = (pt.input_s + pt.loop_s + pt.passes_s + math.fsum(pt.compute_s.values())
                      + math.fsum(pt.transfer_s.values()))

    opts = options or PlanOptions()
    optimum = None
    if price:
        try:
            optimum = solve(profile, net, opts).predicted_latency_s
        except InfeasibleError:
            optimum = None
    return Explanation(ev.latency_s, list(phases.values()), edges, result,
                       _constraints(profile, net, assignment, optimum, opts, price), optimum,
                       request_s=request, overhead_s=ev.overhead_s)


def _constraints(profile: Profile, net: NetworkState, assignment: list[str], optimum: float | None,
                 opts: PlanOptions, price: bool) -> list[ConstraintUse]:
    used: dict[str, int] = defaultdict(int)
    for u, n in enumerate(assignment):
        used[n] += profile.units[u].mem_bytes
    out: list[ConstraintUse] = []

    def gain(relaxed: NetworkState) -> float | None:
        if not price or optimum is None:
            return None
        try:
            return max(0.0, optimum - solve(profile, relaxed, opts).predicted_latency_s)
        except InfeasibleError:
            return None

    for node in net.nodes:
        total = sum(u.mem_bytes for u in profile.units)
        if total <= node.mem_bytes:
            continue  # the whole model fits: this limit can never bind
        hosted = used.get(node.name, 0)
        others = [u.mem_bytes for u, n in zip(profile.units, assignment, strict=True) if n != node.name]
        full = bool(others) and hosted + min(others) > node.mem_bytes
        nodes = [n.model_copy(update={"mem_bytes": math.inf}) if n.name == node.name else n for n in net.nodes]
        g = gain(net.model_copy(update={"nodes": nodes}))
        out.append(ConstraintUse(f"memory of {node.name}", f"{hosted:.4g} of {node.mem_bytes:.4g} bytes used", full,
                                 g, bool(g and g > TOL)))
    for unit, allowed in net.constraints.pins.items():
        pins = {k: v for k, v in net.constraints.pins.items() if k != unit}
        g = gain(net.model_copy(update={"constraints": net.constraints.model_copy(update={"pins": pins})}))
        out.append(ConstraintUse(f"pin {unit}", f"allowed on {allowed}", True, g, bool(g and g > TOL)))
    if net.constraints.raw_input_stays_on_source and any(p.input == "source" for p in profile.active_phases):
        relaxed = net.constraints.model_copy(update={"raw_input_stays_on_source": False})
        g = gain(net.model_copy(update={"constraints": relaxed}))
        out.append(ConstraintUse(f"raw input on {net.source}", "phases with raw input start on the source", True, g,
                                 bool(g and g > TOL)))
    return out
