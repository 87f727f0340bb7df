"""The planning problem as numbers: per-unit domains, unary and pairwise costs, shared edges, memory.

Everything the planning model's latency L is made of, regrouped so that the integer program, the
dynamic programme and the baselines read the same data:

    L(n) = const + sum_u unary[u][n(u)] + sum_pairs cost[n(a)][n(b)] + sum_edges edge_cost(n)

- unary: compute of every phase (times repeat), the raw input shipped from the source to the first
  unit of a `source` phase, the result shipped from the last unit to the sink;
- pairs: every transfer between two units whose cost depends on both nodes: consecutive units of a
  phase (summed over phases that share the pair) and the loop token last -> first; a shared edge
  with a single receiving unit is a pair too;
- edges: shared edges with several receiving units (one transfer per distinct receiving node).

Domains are reduced before anything is built: a unit's node must have its hardware, fit the unit
alone, honour pins and the raw-input rule, and reach the nodes its neighbours can use. The reason for
every removal is kept so infeasible problems can be explained without a solver.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from orchestrator.compression import sends_compressed
from orchestrator.costmodel import pass_overhead, request_overhead, serialisation_s, transfer_matrix
from orchestrator.network import NetworkState
from profiler.errors import InputError
from profiler.profile import Profile

Matrix = list[list[float]]
Loads = dict[str, float]  # resource ("node" or "a->b") -> busy seconds per request


@dataclass
class Pair:
    """A cost that depends on the nodes of two units a < b: cost[i][j] with i = node of a, j = node of b."""

    a: int
    b: int
    cost: Matrix
    # Throughput: serialisation seconds per link direction for (i, j), only where i != j.
    loads: dict[tuple[int, int], Loads] = field(default_factory=dict)


@dataclass
class SharedEdge:
    """A value unit `src` makes once and sends to every distinct node hosting one of `dsts`."""

    src: int
    dsts: tuple[int, ...]
    tau: Matrix                        # tau[s][m]: from the node of src to a receiving node m
    loads: dict[tuple[int, int], Loads] = field(default_factory=dict)


@dataclass
class Instance:
    profile: Profile
    net: NetworkState
    nodes: list[str]
    allowed: list[list[int]]           # node indices each unit may use, after domain reduction
    unary: Matrix                      # unary[u][n] seconds (inf outside the domain)
    pairs: list[Pair]
    edges: list[SharedEdge]
    mem: list[int]
    cap: list[float]
    node_load: Matrix                  # compute seconds of unit u on node n (throughput)
    unary_loads: list[dict[int, Loads]]  # link loads of a unit's input/result transfers on node n
    removed: dict[tuple[int, int], str]  # (unit, node) -> why the node is not in the unit's domain

    @property
    def n_units(self) -> int:
        return len(self.unary)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def latency(self, assign: list[int]) -> float:
        """L of an assignment of node indices, from the instance's own numbers (fast, for heuristics)."""
        total = math.fsum(self.unary[u][n] for u, n in enumerate(assign))
        total += math.fsum(p.cost[assign[p.a]][assign[p.b]] for p in self.pairs)
        for e in self.edges:
            s = assign[e.src]
            total += math.fsum(e.tau[s][m] for m in {assign[t] for t in e.dsts} if m != s)
        return total

    def mem_ok(self, assign: list[int]) -> bool:
        used = [0.0] * self.n_nodes
        for u, n in enumerate(assign):
            used[n] += self.mem[u]
        return all(used[n] <= self.cap[n] for n in range(self.n_nodes))

    def names(self, assign: list[int]) -> list[str]:
        return [self.nodes[n] for n in assign]


def _add(a: Matrix, b: Matrix, scale: float = 1.0) -> None:
    for i, row in enumerate(b):
        for j, v in enumerate(row):
            a[i][j] += scale * v


def _merge_loads(into: dict, key: tuple[int, int], loads: Loads, scale: float) -> None:
    slot = into.setdefault(key, {})
    for res, s in loads.items():
        slot[res] = slot.get(res, 0.0) + scale * s


def pinned_nodes(profile: Profile, net: NetworkState) -> dict[int, list[str]]:
    """Pins by unit index; a pin naming a unit the profile lacks is bad input."""
    out: dict[int, list[str]] = {}
    for name, nodes in net.constraints.pins.items():
        try:
            out[profile.unit_index(name)] = list(nodes)
        except KeyError:
            raise InputError(
                f"network: field constraints.pins.{name}: no unit named {name!r} in model {profile.model}"
            ) from None
    return out


def build_instance(profile: Profile, net: NetworkState, *, with_loads: bool = False) -> Instance:
    """Precompute every cost of L as arrays over node indices and reduce the domains."""
    nodes = net.node_names
    N, U = len(nodes), len(profile.units)
    src, sink = net.index(net.source), net.index(net.sink_node)
    inf = math.inf
    removed: dict[tuple[int, int], str] = {}
    unary = [[0.0] * N for _ in range(U)]
    node_load = [[0.0] * N for _ in range(U)]
    unary_loads: list[dict[int, Loads]] = [defaultdict(dict) for _ in range(U)]
    pins = pinned_nodes(profile, net)

    def loads_of(i: int, j: int, nbytes: float) -> Loads:
        if i == j or not with_loads:
            return {}
        return serialisation_s(net, nodes[i], nodes[j], nbytes)

    # Domains from hardware, memory, pins and the raw-input rule.
    allowed: list[set[int]] = []
    raw_first = {ph.first for ph in profile.active_phases if ph.input == "source"}
    for u, unit in enumerate(profile.units):
        dom = set()
        for n, node in enumerate(net.nodes):
            if node.hardware not in unit.latency_s:
                removed[(u, n)] = f"node {node.name} ({node.hardware}) has no latency for it"
            elif unit.mem_bytes > node.mem_bytes:
                removed[(u, n)] = f"node {node.name} has {node.mem_bytes:.4g} bytes, it needs {unit.mem_bytes:.4g}"
            elif u in pins and node.name not in pins[u]:
                removed[(u, n)] = f"it is pinned to {pins[u]}"
            elif u in raw_first and net.constraints.raw_input_stays_on_source and n != src:
                removed[(u, n)] = f"raw input stays on the source {net.source}"
            else:
                dom.add(n)
        allowed.append(dom)

    # Unary costs: compute, raw input, result.
    for ph in profile.active_phases:
        r = ph.repeat
        for u in range(ph.first, ph.last + 1):
            for n, node in enumerate(net.nodes):
                lat = profile.units[u].latency_s.get(node.hardware)
                c = r * lat[ph.name] * node.slowdown if lat is not None and ph.name in lat else inf
                unary[u][n] += c
                node_load[u][n] += c
                if u == ph.first:          # every phase pass starts a segment on the first unit's node
                    unary[u][n] += r * pass_overhead(profile, net, node.name)
        if ph.input == "source":
            tau = transfer_matrix(profile, net, ph.in_bytes)
            for n in range(N):
                unary[ph.first][n] += r * tau[src][n]
                if math.isfinite(tau[src][n]):
                    _merge_loads(unary_loads[ph.first], n, loads_of(src, n, ph.in_bytes), r)
    active = profile.active_phases
    if active:
        last = active[-1].last
        tau = transfer_matrix(profile, net, profile.result_bytes)
        request = request_overhead(profile, net)   # the same on every node: kept so that L is exact
        for n in range(N):
            unary[last][n] += tau[n][sink] + request
            if math.isfinite(tau[n][sink]):
                _merge_loads(unary_loads[last], n, loads_of(n, sink, profile.result_bytes), 1.0)
    for u in range(U):
        for n in list(allowed[u]):
            if not math.isfinite(unary[u][n]):
                allowed[u].discard(n)
                removed[(u, n)] = f"node {nodes[n]} cannot exchange its input or result with the source/sink"

    # Pairwise costs, merged per unordered pair of units.
    pair_map: dict[tuple[int, int], Pair] = {}

    def add_pair(a: int, b: int, nbytes: float, scale: float, compressed: bool, starts_pass: bool = False) -> None:
        """A transfer of nbytes from the node of a to the node of b, `scale` times; with `starts_pass`
        the receiving node runs a new pass (a segment boundary inside a phase) when the nodes differ."""
        if a == b:
            return
        key = (min(a, b), max(a, b))
        p = pair_map.get(key)
        if p is None:
            p = pair_map[key] = Pair(key[0], key[1], [[0.0] * N for _ in range(N)])
        tau = transfer_matrix(profile, net, nbytes, compressed=compressed)
        if starts_pass:
            tau = [[t + (pass_overhead(profile, net, nodes[j]) if i != j else 0.0) for j, t in enumerate(row)]
                   for i, row in enumerate(tau)]
        flip = a > b  # the pair's rows are the nodes of the lower unit, here the receiver
        for i in range(N):          # node of the sender a
            for j in range(N):      # node of the receiver b
                key_ij = (j, i) if flip else (i, j)
                p.cost[key_ij[0]][key_ij[1]] += scale * tau[i][j]
                if with_loads and i != j and math.isfinite(tau[i][j]):
                    _merge_loads(p.loads, key_ij, loads_of(i, j, nbytes), scale)

    for ph in active:
        r = ph.repeat
        for u in range(ph.first, ph.last):
            add_pair(u, u + 1, profile.units[u].out_bytes.get(ph.name, 0.0), r, sends_compressed(profile, u),
                     starts_pass=True)
        if ph.input == "loop":
            add_pair(ph.last, ph.first, ph.in_bytes, r, False)

    # Shared edges: one receiving unit is a pair; several are merged per (src, receivers).
    edge_map: dict[tuple[int, tuple[int, ...]], SharedEdge] = {}
    for e in profile.edges:
        dsts = tuple(sorted({t for t in e.to if t != e.from_}))
        if not dsts:
            continue
        if len(dsts) == 1:
            add_pair(e.from_, dsts[0], e.bytes, 1.0, True)
            continue
        tau = transfer_matrix(profile, net, e.bytes, compressed=True)
        se = edge_map.get((e.from_, dsts))
        if se is None:
            se = edge_map[(e.from_, dsts)] = SharedEdge(e.from_, dsts, [[0.0] * N for _ in range(N)])
        _add(se.tau, [list(r) for r in tau])
        if with_loads:
            for i in range(N):
                for j in range(N):
                    if i != j and math.isfinite(tau[i][j]):
                        _merge_loads(se.loads, (i, j), loads_of(i, j, e.bytes), 1.0)

    pairs = sorted(pair_map.values(), key=lambda p: (p.a, p.b))
    edges = list(edge_map.values())
    _arc_consistency(allowed, pairs, edges, nodes, removed, [u.name for u in profile.units])

    for u in range(U):
        for n in range(N):
            if n not in allowed[u]:
                unary[u][n] = inf
    return Instance(
        profile=profile, net=net, nodes=nodes,
        allowed=[sorted(a) for a in allowed], unary=unary, pairs=pairs, edges=edges,
        mem=[u.mem_bytes for u in profile.units], cap=[n.mem_bytes for n in net.nodes],
        node_load=node_load, unary_loads=[dict(d) for d in unary_loads], removed=removed,
    )


def _arc_consistency(allowed: list[set[int]], pairs: list[Pair], edges: list[SharedEdge], nodes: list[str],
                     removed: dict[tuple[int, int], str], unit_names: list[str]) -> None:
    """Drop a node from a unit's domain when no node of a partner unit can exchange data with it."""
    links: list[tuple[int, int, Matrix]] = [(p.a, p.b, p.cost) for p in pairs]
    for e in edges:
        links += [(e.src, t, e.tau) for t in e.dsts]
    changed = True
    while changed:
        changed = False
        for a, b, cost in links:
            for n in list(allowed[a]):
                if allowed[b] and not any(math.isfinite(cost[n][j]) for j in allowed[b]):
                    allowed[a].discard(n)
                    removed[(a, n)] = f"no network path from {nodes[n]} to any node unit {unit_names[b]} can use"
                    changed = True
            for n in list(allowed[b]):
                if allowed[a] and not any(math.isfinite(cost[i][n]) for i in allowed[a]):
                    allowed[b].discard(n)
                    removed[(b, n)] = f"no network path to {nodes[n]} from any node unit {unit_names[a]} can use"
                    changed = True
