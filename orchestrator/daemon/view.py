"""What the dashboard draws of a plan: the units each node runs and the bytes each link carries per
request. Pure functions of the profile, a network and an assignment, over the cost model's terms, so
the picture says what the planner priced. And what the status says of a plan's mode (plan_mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from orchestrator.costmodel import OVERHEAD_KINDS, evaluate
from orchestrator.daemon.snapshot import link_key
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from profiler.profile import Profile


def unit_spans(units: Sequence[int]) -> str:
    """Runs of consecutive unit indices: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" ("" for none)."""
    out: list[str] = []
    ordered = sorted(units)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def plan_view(profile: Profile, net: NetworkState, assignment: Sequence[str]) -> dict[str, Any]:
    """Per node: its units (indices, spans, names), compute seconds and parameter bytes. Per link ("a~b", as the
    daemon names links): the bytes one request sends over it (each direction and in all, a decoder phase counted
    as often as it repeats), the messages, and the transfer seconds the cost model gives it."""
    ev = evaluate(profile, net, assignment)
    nodes: dict[str, dict[str, Any]] = {}
    for u, node in enumerate(assignment):
        entry = nodes.setdefault(node, {"units": [], "unit_names": [], "param_bytes": 0})
        entry["units"].append(u)
        entry["unit_names"].append(profile.units[u].name)
        entry["param_bytes"] += int(profile.units[u].param_bytes)
    for node, entry in nodes.items():
        entry["spans"] = unit_spans(entry["units"])
        entry["compute_s"] = ev.compute_s.get(node, 0.0)
    links: dict[str, dict[str, Any]] = {}
    for t in ev.terms:
        if t.kind == "compute" or t.kind in OVERHEAD_KINDS or t.src is None or t.dst is None:
            continue
        if not math.isfinite(t.seconds):
            continue
        for a, b in net.route(t.src, t.dst, t.nbytes):
            entry = links.setdefault(link_key(a, b), {"bytes": 0.0, "messages": 0, "directions": {},
                                                      "transfer_s": 0.0})
            sent = t.repeat * t.nbytes
            entry["bytes"] += sent
            entry["messages"] += t.repeat
            entry["directions"][f"{a}->{b}"] = entry["directions"].get(f"{a}->{b}", 0.0) + sent
    for hop, seconds in ev.transfer_s.items():
        a, b = hop.split("->", 1)
        if link_key(a, b) in links:
            links[link_key(a, b)]["transfer_s"] += seconds
    return {"predicted_latency_s": ev.latency_s if ev.feasible else None, "nodes": nodes, "links": links}


def finite(value: Any) -> Any:
    """The value with every NaN or infinity made None: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def plan_mode(plan: Plan) -> dict[str, Any]:
    """What a status, decision or switch says of a plan's mode: split, or cooperative with its draft and k;
    and its token reduction when it has one."""
    out: dict[str, Any] = {"mode": plan.mode or "split", "k": plan.k}
    if plan.mode == "cooperative":
        out.update(draft_model=plan.draft_model, draft_assignment=list(plan.draft_assignment or []))
    if plan.reductions:
        out["reductions"] = [f"{r.get('method')}-{r.get('keep')}" for r in plan.reductions]
    return out


def describe_mode(plan: Plan) -> str:
    return f"cooperative, k={plan.k}" if plan.mode == "cooperative" else "split"

