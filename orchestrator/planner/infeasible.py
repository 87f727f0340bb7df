"""Why no plan exists, in words, without asking a solver.

The checks run on the reduced domains of the instance (hardware, memory of a node for one unit,
pins, the raw-input rule, network reachability), then on memory as a whole: a set of units whose
allowed nodes together hold less memory than the units need can never be placed (a Hall-type
condition over the distinct domains).
"""

from __future__ import annotations

from orchestrator.planner.problem import Instance
from profiler.errors import InputError


class InfeasibleError(InputError):
    """No assignment satisfies the constraints; `reasons` says which ones, one sentence each."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("no plan exists: " + "; ".join(reasons))


def _fmt(b: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} bytes"


def explain(inst: Instance) -> list[str]:
    """Every reason found that the instance has no feasible assignment ([] when none is found)."""
    reasons: list[str] = []
    profile, net = inst.profile, inst.net
    names = [u.name for u in profile.units]
    raw_first = {ph.first for ph in profile.active_phases if ph.input == "source"}
    pins = {profile.unit_index(k): v for k, v in net.constraints.pins.items() if k in set(names)}

    for u, dom in enumerate(inst.allowed):
        if dom:
            continue
        if (u in raw_first and net.constraints.raw_input_stays_on_source and u in pins
                and net.source not in pins[u]):
            reasons.append(f"unit {names[u]} is pinned to {pins[u]} but takes the raw input, which stays on the "
                           f"source {net.source} (constraints.raw_input_stays_on_source)")
            continue
        if u in pins:
            why = [inst.removed[(u, inst.nodes.index(n))] for n in pins[u]]
            reasons.append(f"unit {names[u]} is pinned to {pins[u]}, which cannot host it: " + "; ".join(why))
            continue
        why = [f"{inst.nodes[n]}: {inst.removed[(u, n)]}" for n in range(inst.n_nodes) if (u, n) in inst.removed]
        reasons.append(f"unit {names[u]} cannot be placed on any node ({'; '.join(why)})")
    if len(reasons) > 3:
        reasons = reasons[:3] + [f"and {len(reasons) - 3} more units for the same kind of reason"]
    if reasons:
        return reasons

    # Memory: every distinct domain D must hold the units confined to it.
    seen: set[tuple[int, ...]] = set()
    for dom in sorted({tuple(d) for d in inst.allowed}, key=len):
        if dom in seen:
            continue
        seen.add(dom)
        confined = [u for u in range(inst.n_units) if set(inst.allowed[u]) <= set(dom)]
        need = sum(inst.mem[u] for u in confined)
        have = sum(inst.cap[n] for n in dom)
        if need > have:
            nodes = [inst.nodes[n] for n in dom]
            if len(confined) == inst.n_units:
                reasons.append(f"the reachable nodes {nodes} hold {_fmt(have)} but the units need {_fmt(need)}: "
                               f"short by {_fmt(need - have)}")
            else:
                pinned = [names[u] for u in confined if u in pins]
                what = f"units {[names[u] for u in confined]}" if len(confined) <= 6 else f"{len(confined)} units"
                via = f" (pinned: {pinned})" if pinned else ""
                reasons.append(f"{what} can only run on {nodes}{via}, which hold {_fmt(have)} but they need "
                               f"{_fmt(need)}: short by {_fmt(need - have)}")
    if reasons:
        return reasons

    # Units with a single possible node take their memory first; does every other unit still fit somewhere?
    free = list(inst.cap)
    placed: dict[int, list[str]] = {}
    for u, dom in enumerate(inst.allowed):
        if len(dom) == 1:
            free[dom[0]] -= inst.mem[u]
            placed.setdefault(dom[0], []).append(names[u])
    for u, dom in enumerate(inst.allowed):
        if len(dom) > 1 and all(inst.mem[u] > free[n] for n in dom):
            where = ", ".join(f"{inst.nodes[n]} has {_fmt(max(free[n], 0))} left"
                              + (f" after {placed[n]}" if n in placed else "") for n in dom)
            reasons.append(f"unit {names[u]} needs {_fmt(inst.mem[u])} but {where}")
    return reasons


def explain_or_generic(inst: Instance) -> list[str]:
    """`explain`, or the one reason left when it finds nothing: the units do not pack into memory."""
    reasons = explain(inst)
    if reasons:
        return reasons
    biggest = sorted(range(inst.n_units), key=lambda u: -inst.mem[u])[:3]
    return ["the units fit the nodes' memory in total but cannot be packed into it together with the pins and "
            "network reachability (largest units: "
            + ", ".join(f"{inst.profile.units[u].name} {_fmt(inst.mem[u])}" for u in biggest) + ")"]
