"""The latency L of one request under an assignment, exactly as docs/planning-model.md defines it.

This evaluator is the single source of truth: the planner's objective, every baseline, `plan
explain` and the runtime's predicted-vs-measured comparison all use it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.compression import WIRE_RATIO, sends_compressed
from orchestrator.network import NetworkState
from profiler.profile import Profile
from runtime.routes import fastest_link

TermKind = Literal["input", "compute", "transfer", "loop", "edge", "result", "request", "pass"]
OVERHEAD_KINDS = ("request", "pass")     # terms that are the runtime's own cost and move no bytes


@dataclass(frozen=True)
class Term:
    """One addend of L, already multiplied by its phase's repeat count."""

    kind: TermKind
    phase: str | None
    seconds: float
    node: str | None = None          # compute terms
    src: str | None = None           # transfer terms
    dst: str | None = None
    nbytes: float = 0.0
    units: tuple[int, ...] = ()
    repeat: int = 1
    overhead_s: float = 0.0          # the part of `seconds` the runtime itself costs (hops, codec, request)


@dataclass(frozen=True)
class Evaluation:
    latency_s: float
    terms: tuple[Term, ...]
    compute_s: dict[str, float]
    transfer_s: dict[str, float]          # per hop "a->b", multi-hop paths split over their hops
    violations: tuple[str, ...] = field(default=())
    overhead_s: float = 0.0               # the runtime's own costs: per request, per hop, codec

    @property
    def feasible(self) -> bool:
        return not self.violations and math.isfinite(self.latency_s)


def compute_time(profile: Profile, net: NetworkState, unit: int, node: str, phase: str) -> float:
    """c(u, p) on a node: the unit's latency on the node's hardware class times its slowdown."""
    n = net.node(node)
    lat = profile.units[unit].latency_s.get(n.hardware)
    if lat is None or phase not in lat:
        return math.inf
    return lat[phase] * n.slowdown


def hop_overhead(profile: Profile, net: NetworkState, src: str, dst: str, nbytes: float, *,
                 compressed: bool = False) -> float:
    """The runtime's fixed cost of one transfer src -> dst (the sender's class's `hop_s`), plus, for a
    compressed activation, encoding on the sender and decoding on the receiver per raw byte."""
    if src == dst or not profile.overheads:
        return 0.0
    sender = profile.overheads.get(net.node(src).hardware)
    receiver = profile.overheads.get(net.node(dst).hardware)
    t = sender.hop_s if sender is not None else 0.0
    if compressed and profile.wire is not None:
        raw = nbytes / WIRE_RATIO[profile.wire]
        enc = sender.codec.get(profile.wire) if sender is not None else None
        dec = receiver.codec.get(profile.wire) if receiver is not None else None
        t += (enc.enc_s_per_byte if enc is not None else 0.0) * raw
        t += (dec.dec_s_per_byte if dec is not None else 0.0) * raw
    return t


def transfer_matrix(profile: Profile, net: NetworkState, nbytes: float, *,
                    compressed: bool = False) -> list[list[float]]:
    """tau(i, j, nbytes) for all node pairs with the runtime's overheads (inf where no path exists)."""
    base = [list(row) for row in net.transfer_matrix(nbytes)]
    if not profile.overheads:
        return base
    names = net.node_names
    for i, row in enumerate(base):
        for j, t in enumerate(row):
            if i != j and math.isfinite(t):
                row[j] = t + hop_overhead(profile, net, names[i], names[j], nbytes, compressed=compressed)
    return base


def pass_overhead(profile: Profile, net: NetworkState, node: str) -> float:
    """The fixed cost of one pass on `node` (a segment of a phase: receive, dispatch, hand on)."""
    o = profile.overheads.get(net.node(node).hardware) if profile.overheads else None
    return o.pass_s if o is not None else 0.0


def request_overhead(profile: Profile, net: NetworkState) -> float:
    """The fixed cost of one request, counted with the source node's hardware class."""
    o = profile.overheads.get(net.node(net.source).hardware)
    return o.request_s if o is not None else 0.0


def check_constraints(profile: Profile, net: NetworkState, assignment: Sequence[str]) -> list[str]:
    """Every constraint of the planning model the assignment breaks, as readable sentences."""
    problems: list[str] = []
    if len(assignment) != len(profile.units):
        return [f"assignment has {len(assignment)} entries for {len(profile.units)} units"]
    names = set(net.node_names)
    for u, node in enumerate(assignment):
        if node not in names:
            problems.append(f"unit {profile.units[u].name} is assigned to unknown node {node!r}")
            continue
        hw = net.node(node).hardware
        if hw not in profile.units[u].latency_s:
            problems.append(f"unit {profile.units[u].name} has no latency for hardware {hw!r} (node {node})")
    if problems:
        return problems
    used: dict[str, int] = defaultdict(int)
    for u, node in enumerate(assignment):
        used[node] += profile.units[u].mem_bytes
    for node, total in used.items():
        cap = net.node(node).mem_bytes
        if total > cap:
            problems.append(f"node {node} holds {total:.4g} bytes of units but has {cap:.4g}")
    for unit_name, allowed in net.constraints.pins.items():
        try:
            u = profile.unit_index(unit_name)
        except KeyError:
            continue
        if assignment[u] not in allowed:
            problems.append(f"unit {unit_name} is pinned to {allowed} but placed on {assignment[u]}")
    if net.constraints.raw_input_stays_on_source:
        for ph in profile.active_phases:
            if ph.input == "source" and assignment[ph.first] != net.source:
                problems.append(
                    f"phase {ph.name} takes raw input but its first unit runs on {assignment[ph.first]}, "
                    f"not the source {net.source}"
                )
    return problems


def evaluate(profile: Profile, net: NetworkState, assignment: Sequence[str]) -> Evaluation:
    """L of the assignment with every term; infeasible assignments get their violations listed."""
    violations = check_constraints(profile, net, assignment)
    names = set(net.node_names)
    if violations and (len(assignment) != len(profile.units) or any(n not in names for n in assignment)):
        # Nothing can be evaluated on a node that does not exist.
        return Evaluation(math.inf, (), {}, {}, tuple(violations))
    terms: list[Term] = []

    def transfer(kind: TermKind, phase: str | None, src: str, dst: str, nbytes: float, repeat: int,
                 units: tuple[int, ...] = (), compressed: bool = False) -> None:
        if src == dst:
            return
        # Float activations inside a phase and shared edges travel compressed on a `wire` profile.
        extra = hop_overhead(profile, net, src, dst, nbytes, compressed=compressed)
        t = net.transfer_time(src, dst, nbytes) + extra
        terms.append(Term(kind, phase, repeat * t, src=src, dst=dst, nbytes=nbytes, units=units, repeat=repeat,
                          overhead_s=repeat * extra))

    req = request_overhead(profile, net)
    if req > 0:
        terms.append(Term("request", None, req, node=net.source, overhead_s=req))

    for ph in profile.active_phases:
        r = ph.repeat
        first_node = assignment[ph.first]
        if ph.input == "source":
            transfer("input", ph.name, net.source, first_node, ph.in_bytes, r, (ph.first,))
        elif ph.input == "loop":
            transfer("loop", ph.name, assignment[ph.last], first_node, ph.in_bytes, r, (ph.last, ph.first))
        for u in range(ph.first, ph.last + 1):
            if u == ph.first or assignment[u] != assignment[u - 1]:     # a segment starts: one pass there
                ps = pass_overhead(profile, net, assignment[u])
                if ps > 0:
                    terms.append(Term("pass", ph.name, r * ps, node=assignment[u], units=(u,), repeat=r,
                                      overhead_s=r * ps))
            c = compute_time(profile, net, u, assignment[u], ph.name)
            terms.append(Term("compute", ph.name, r * c, node=assignment[u], units=(u,), repeat=r))
            if u < ph.last:
                nbytes = profile.units[u].out_bytes.get(ph.name, 0.0)
                transfer("transfer", ph.name, assignment[u], assignment[u + 1], nbytes, r, (u, u + 1),
                         compressed=sends_compressed(profile, u))
    for e in profile.edges:
        src = assignment[e.from_]
        for m in dict.fromkeys(assignment[t] for t in e.to):
            transfer("edge", None, src, m, e.bytes, 1, (e.from_,), compressed=True)
    active = profile.active_phases
    if active:
        transfer("result", None, assignment[active[-1].last], net.sink_node, profile.result_bytes, 1,
                 (active[-1].last,))

    compute: dict[str, float] = defaultdict(float)
    hops: dict[str, float] = defaultdict(float)
    for t in terms:
        if t.kind == "compute":
            compute[t.node] += t.seconds  # type: ignore[index]
        elif t.kind in OVERHEAD_KINDS:
            continue
        elif math.isfinite(t.seconds):
            for a, b in net.route(t.src, t.dst, t.nbytes):  # type: ignore[arg-type]
                hops[f"{a}->{b}"] += t.repeat * net.hop_time(a, b, t.nbytes)
    total = math.fsum(t.seconds for t in terms)
    if not math.isfinite(total):
        violations.append("some transfer has no network path or some unit has no latency on its node")
    overhead = math.fsum(t.overhead_s for t in terms if math.isfinite(t.overhead_s))
    return Evaluation(total, tuple(terms), dict(compute), dict(hops), tuple(violations), overhead)


def with_decode_steps(profile: Profile, passes: int) -> Profile:
    """The profile for a request that made `passes` decoder passes (prefill + decode steps): generation
    stops at EOS, so a request's real decode repeat is passes - 1, not the profiled count."""
    phases = [p.model_copy(update={"repeat": max(passes - 1, 0)}) if p.name == "decode" else p
              for p in profile.phases]
    return profile.model_copy(update={"phases": phases})


def latency_for_steps(profile: Profile, net: NetworkState, assignment: Sequence[str], passes: int) -> float | None:
    """L of the assignment for a request that made `passes` decoder passes; None when infeasible."""
    ev = evaluate(with_decode_steps(profile, passes), net, assignment)
    return ev.latency_s if ev.feasible else None


def serialisation_s(net: NetworkState, src: str, dst: str, nbytes: float) -> dict[str, float]:
    """Seconds one message of `nbytes` occupies each hop "a->b" of its route src -> dst: 8 * bytes over the
    bandwidth of the link that hop uses (the one `hop_time` picks; propagation latency occupies no link)."""
    out: dict[str, float] = {}
    for a, b in net.route(src, dst, nbytes):
        link = fastest_link(net.links, a, b, nbytes)      # never None: a route only takes hops that have a link
        key = f"{a}->{b}"
        out[key] = out.get(key, 0.0) + 8.0 * nbytes / link.bandwidth_bps  # type: ignore[union-attr]
    return out


def throughput_bottleneck(profile: Profile, net: NetworkState, assignment: Sequence[str]) -> float:
    """The busiest resource's seconds per request: a node's compute, or one direction of a link's
    serialisation time (8 * bytes / bandwidth; propagation latency does not occupy the link)."""
    ev = evaluate(profile, net, assignment)
    busy: dict[str, float] = defaultdict(float, ev.compute_s)
    for t in ev.terms:
        if t.kind == "compute" or t.src is None or not math.isfinite(t.seconds):
            continue
        for hop, s in serialisation_s(net, t.src, t.dst, t.nbytes).items():  # type: ignore[arg-type]
            busy[hop] += t.repeat * s
    return max(busy.values(), default=0.0)
