"""The network as measured now: the configured network with estimated links and loads, minus nodes
that do not answer. Pure: the probe job gathers estimates, this turns them into a NetworkState."""

from __future__ import annotations

from collections.abc import Mapping, Set

from orchestrator.daemon.estimate import LinkEstimate
from orchestrator.network import NetworkState

# A node that is down but must stay in the network (the source or sink, where requests enter and
# leave) gets this hardware class: no profile has latencies for it, so no unit can be placed there.
UNAVAILABLE = "unavailable"


def link_key(a: str, b: str) -> str:
    """One name for a link in either direction: the two ends in sorted order, "a~b"."""
    return "~".join(sorted((a, b)))


def take_snapshot(base: NetworkState, links: Mapping[str, LinkEstimate], slowdown: Mapping[str, float],
                  down: Set[str]) -> NetworkState:
    """`base` with each link's bandwidth and latency replaced by its estimate (keyed by link_key), each
    node's slowdown by its estimate, and the nodes in `down` removed (the source and sink kept, unable
    to compute) with their links."""
    keep_anyway = {base.source, base.sink_node}
    nodes = []
    for n in base.nodes:
        d = n.model_dump(exclude_none=True)
        if n.name in down:
            if n.name not in keep_anyway:
                continue
            d["hardware"] = UNAVAILABLE
        if n.name in slowdown:
            d["slowdown"] = max(1.0, float(slowdown[n.name]))
        nodes.append(d)
    names = {d["name"] for d in nodes}
    out_links = []
    for lk in base.links:
        if lk.a not in names or lk.b not in names or {lk.a, lk.b} & (down - keep_anyway):
            continue
        d = lk.model_dump(exclude_none=True)
        est = links.get(link_key(lk.a, lk.b))
        if est is not None:
            d["bandwidth_bps"], d["latency_s"] = est.bandwidth_bps, est.latency_s
        d.pop("trace", None)           # a snapshot is what was measured, not what is replayed
        d.pop("trace_start_s", None)
        out_links.append(d)
    pins = {u: [n for n in ns if n in names and n not in down] for u, ns in base.constraints.pins.items()}
    doc = base.model_dump(exclude_none=True) | {"nodes": nodes, "links": out_links,
                                                "constraints": base.constraints.model_dump() | {"pins": pins}}
    return NetworkState.model_validate(doc)
