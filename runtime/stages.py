"""Stage plans: which unit ranges each node runs, and the route a request takes.

A StagePlan is the runtime's view of a plan: for every phase, the contiguous runs of units on one
node ("segments", in execution order; a node may host several disjoint segments, as in a plan
that goes A, A, B, B, A, A), the shared edges (encoder output -> cross-attention units), the
nodes with their addresses, hardware and slowdown, the links, and the emulation settings. It is
plain data, serialised as JSON inside a `plan` frame so every worker holds the same one.

This module imports nothing from `orchestrator/`: it reads networks and profiles by their fields
(duck typing), so the runtime stays usable without the planner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from profiler.adapters.base import EdgeInfo, PhaseInfo, UnitInfo
from runtime.routes import fastest_link, route_table


@dataclass(frozen=True)
class Segment:
    node: str
    first: int
    last: int


@dataclass(frozen=True)
class PhaseRoute:
    name: str
    first: int
    last: int
    input: str                         # "source" | "none" | "loop"
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    hardware: str = "local"
    slowdown: float = 1.0
    address: str | None = None


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    bandwidth_bps: float
    latency_s: float = 0.0
    directed: bool = False
    trace: tuple[tuple[float, float], ...] | None = None   # (seconds, Mbit/s) samples
    trace_start_s: float = 0.0                             # where in the trace the replay starts
    kernel_rate: bool = False        # the kernel shapes the rate (runtime.netns); the transport adds latency only


@dataclass(frozen=True)
class StagePlan:
    version: int
    model: str
    assignment: tuple[str, ...]
    phases: tuple[PhaseRoute, ...]
    edges: tuple[tuple[int, tuple[int, ...]], ...]        # (from unit, reader units)
    reads_edge: tuple[int, ...]                            # units that read an edge value
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...] = ()
    source: str = ""
    sink: str = ""
    emulate: bool = False
    dilation: float = 1.0
    # unit -> phase -> profiled seconds of one pass on the hardware of the unit's node (emulation targets)
    unit_latency_s: tuple[dict[str, float] | None, ...] = ()
    compression: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------------
    def phase(self, name: str) -> PhaseRoute:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def segment_at(self, phase: str, unit: int) -> Segment:
        for s in self.phase(phase).segments:
            if s.first <= unit <= s.last:
                return s
        raise KeyError(f"phase {phase} has no unit {unit}")

    def next_segment(self, phase: str, last: int) -> Segment | None:
        """The segment after the one ending at `last` within the phase (None at the phase's end)."""
        p = self.phase(phase)
        return None if last >= p.last else self.segment_at(phase, last + 1)

    def hosting_nodes(self) -> list[str]:
        """Nodes that run at least one unit, in the order of their first unit."""
        return list(dict.fromkeys(self.assignment))

    def segments_of(self, node: str) -> list[tuple[str, Segment]]:
        return [(p.name, s) for p in self.phases for s in p.segments if s.node == node]

    def edge_readers(self, src_unit: int) -> list[str]:
        """Distinct nodes hosting a unit that reads the edge made by `src_unit`."""
        for src, dst in self.edges:
            if src == src_unit:
                return list(dict.fromkeys(self.assignment[u] for u in dst))
        return []

    def target_compute_s(self, phase: str, first: int, last: int) -> float | None:
        """Profiled seconds of units first..last in `phase` on their node, or None if any is unknown."""
        if not self.unit_latency_s:
            return None
        total = 0.0
        for u in range(first, last + 1):
            lat = self.unit_latency_s[u]
            if lat is None or phase not in lat:
                return None
            total += lat[phase]
        return total

    # -- routing (the same rule as the planning model: cheapest store-and-forward path) -----------
    def route(self, src: str, dst: str, nbytes: float) -> list[tuple[str, str]]:
        return route(self.nodes, self.links, src, dst, nbytes)

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> StagePlan:
        try:
            phases = tuple(PhaseRoute(p["name"], int(p["first"]), int(p["last"]), p["input"],
                                      tuple(Segment(s["node"], int(s["first"]), int(s["last"]))
                                            for s in p["segments"])) for p in d["phases"])
            links = tuple(LinkSpec(lk["a"], lk["b"], float(lk["bandwidth_bps"]), float(lk["latency_s"]),
                                   bool(lk["directed"]),
                                   tuple((float(t), float(r)) for t, r in lk["trace"]) if lk.get("trace") else None,
                                   float(lk.get("trace_start_s", 0.0)), bool(lk.get("kernel_rate", False)))
                          for lk in d.get("links", []))
            lat = tuple(None if x is None else {str(k): float(v) for k, v in x.items()}
                        for x in d.get("unit_latency_s", []))
            return StagePlan(
                version=int(d["version"]), model=str(d["model"]), assignment=tuple(d["assignment"]),
                phases=phases, edges=tuple((int(s), tuple(int(x) for x in t)) for s, t in d.get("edges", [])),
                reads_edge=tuple(int(u) for u in d.get("reads_edge", [])),
                nodes=tuple(NodeSpec(n["name"], n.get("hardware", "local"), float(n.get("slowdown", 1.0)),
                                     n.get("address")) for n in d["nodes"]),
                links=links, source=str(d.get("source", "")), sink=str(d.get("sink", "")),
                emulate=bool(d.get("emulate", False)), dilation=float(d.get("dilation", 1.0)),
                unit_latency_s=lat, compression=str(d.get("compression", "none")), extra=dict(d.get("extra", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"stage plan: malformed: {type(exc).__name__}: {exc}") from None


def contiguous_segments(assignment: Sequence[str], first: int, last: int) -> tuple[Segment, ...]:
    """Runs of consecutive units on one node within first..last."""
    out: list[Segment] = []
    start = first
    for u in range(first + 1, last + 2):
        if u > last or assignment[u] != assignment[start]:
            out.append(Segment(assignment[start], start, u - 1))
            start = u
    return tuple(out)


def route(nodes: Sequence[NodeSpec], links: Sequence[LinkSpec], src: str, dst: str,
          nbytes: float) -> list[tuple[str, str]]:
    """Hops (from, to) of the cheapest path for `nbytes` (runtime.routes, as the prediction takes)."""
    if src == dst:
        return []
    table = route_table([n.name for n in nodes], links, nbytes)
    index = {name: i for i, name in enumerate(table.names)}
    return table.hops(index[src], index[dst])


def best_link(links: Sequence[LinkSpec], a: str, b: str, nbytes: float) -> LinkSpec:
    """The direct link a -> b a hop uses: the fastest for this message size (as hop_time picks)."""
    choice = fastest_link(links, a, b, nbytes)
    if choice is None:
        raise ValueError(f"no link from {a} to {b}")
    return choice


# -- building a stage plan from a network, an assignment and (optionally) a profile --------------------
def nodes_from_network(network: Any) -> tuple[NodeSpec, ...]:
    return tuple(NodeSpec(n.name, n.hardware, float(n.slowdown), n.address) for n in network.nodes)


def links_from_network(network: Any, traces: dict[str, tuple[tuple[float, float], ...]] | None = None
                       ) -> tuple[LinkSpec, ...]:
    """LinkSpecs of a NetworkState-like object; `traces` maps a link's trace field to its samples."""
    traces = traces or {}
    return tuple(LinkSpec(lk.a, lk.b, float(lk.bandwidth_bps), float(lk.latency_s), bool(lk.directed),
                          traces.get(lk.trace) if getattr(lk, "trace", None) else None,
                          float(getattr(lk, "trace_start_s", 0.0))) for lk in network.links)


def unit_latencies(profile: Any, network: Any, assignment: Sequence[str],
                   native_hardware: str | None = None) -> tuple[dict[str, float] | None, ...]:
    """Per unit: the profile's per-phase latency on the hardware class of the unit's node (None for a
    node of `native_hardware`, this machine's own class: its compute runs at native speed)."""
    hw = {n.name: n.hardware for n in network.nodes}
    out = []
    for u, node in enumerate(assignment):
        native = native_hardware is not None and hw[node] == native_hardware
        lat = profile.units[u].latency_s.get(hw[node]) if u < len(profile.units) and not native else None
        out.append(dict(lat) if lat is not None else None)
    return tuple(out)


def build_stage_plan(*, version: int, model: str, units: Sequence[UnitInfo], phases: Sequence[PhaseInfo],
                     edges: Sequence[EdgeInfo], assignment: Sequence[str], network: Any,
                     profile: Any | None = None, emulate: bool = False, dilation: float = 1.0,
                     compression: str | None = None,
                     traces: dict[str, tuple[tuple[float, float], ...]] | None = None,
                     native_hardware: str | None = None) -> StagePlan:
    """A StagePlan for an adapter's structure placed by `assignment` on a NetworkState-like `network`.
    Units on nodes of `native_hardware` get no compute target: under emulation they run at this
    machine's own speed (times the node's slowdown and K), while links are still played."""
    if len(assignment) != len(units):
        raise ValueError(f"the plan assigns {len(assignment)} units but the model has {len(units)}")
    names = {n.name for n in network.nodes}
    for u, node in enumerate(assignment):
        if node not in names:
            raise ValueError(f"unit {units[u].name} is assigned to {node!r}, which the network does not have")
    routes = tuple(PhaseRoute(p.name, p.first, p.last, p.input, contiguous_segments(assignment, p.first, p.last))
                   for p in phases)
    lat = unit_latencies(profile, network, assignment, native_hardware) if profile is not None else ()
    return StagePlan(
        version=version, model=model, assignment=tuple(assignment), phases=routes,
        edges=tuple((e.src, tuple(e.dst)) for e in edges),
        reads_edge=tuple(i for i, u in enumerate(units) if u.reads_edge),
        nodes=nodes_from_network(network), links=links_from_network(network, traces),
        source=network.source, sink=network.sink or network.source, emulate=emulate, dilation=dilation,
        unit_latency_s=lat, compression=compression or "none")


def dilation_factor(profile: Any, network: Any, local_hardware: str, headroom: float = 1.25) -> float:
    """K so that no unit on any node of the network computes faster than this machine can play it.

    For every node n and every unit and active phase with a latency on both this machine's class
    and hw(n): ratio = latency_here / (latency_on_hw(n) * slowdown(n)). K is the largest ratio times
    `headroom` (real compute jitters by tens of percent between runs, and a target the real compute
    overruns cannot be met), and at least 1. Per unit rather than per whole model, because a range
    of units is stretched on its own: one unit 10x faster on a GPU needs K >= 10 even if the model
    as a whole is only 2x faster there. K depends on the network and profile, not on the plan, so
    every plan compared on one network runs under the same stretch.
    """
    active = [p for p in profile.phases if p.repeat > 0]
    worst = 0.0
    for node in network.nodes:
        for p in active:
            for u in range(p.first, p.last + 1):
                lat = profile.units[u].latency_s
                here, there = lat.get(local_hardware, {}).get(p.name), lat.get(node.hardware, {}).get(p.name)
                if here is None or there is None:
                    continue
                if there * node.slowdown > 0:
                    worst = max(worst, here / (there * node.slowdown))
    return max(1.0, worst * headroom)
