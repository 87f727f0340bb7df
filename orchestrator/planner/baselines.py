"""The placements others use, as plain functions returning Plans evaluated by the same cost model.

Each baseline honours the problem's constraints or says it cannot: a baseline whose placement breaks
a memory limit, a pin, the raw-input rule or has no network path raises BaselineInfeasible (an
InfeasibleError) instead of returning a plan that could not run.

- device_only: everything on the source.
- single_node(node): everything on one node, the raw input shipped there (edge-only, cloud-only).
- best_single_split (Neurosurgeon): units 0..k-1 on the source, units k..U-1 on one other node m,
  the best (k, m) of all, k = 0 (all on m) and k = U (device-only) included. With several phases
  "one cut" is a cut in unit order, not per phase: for an encoder-decoder the cut falls in the
  encoder (the encoder output and the decoder go to m) or in the decoder (the decode loop then
  crosses the cut twice per token, which is what Neurosurgeon's single split costs such a model).
- memory_proportional (exo, llama.cpp): the nodes that can run every unit, ordered by distance from
  the source (source first), each take a contiguous block of units in proportion to their memory.
- greedy: units in order, each on the node that adds least to L given the units placed before it
  (compute, input, transfers from placed partners, shared-edge copies, result), within memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from statistics import median

from orchestrator.costmodel import check_constraints
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from orchestrator.planner.infeasible import InfeasibleError
from orchestrator.planner.problem import Instance, build_instance
from orchestrator.planner.result import make_plan
from profiler.profile import Profile


class BaselineInfeasible(InfeasibleError):
    """The baseline's placement breaks a constraint of the problem."""


def _finish(profile: Profile, net: NetworkState, assignment: list[str], name: str, t0: float) -> Plan:
    problems = check_constraints(profile, net, assignment)
    if problems:
        raise BaselineInfeasible([f"{name}: {p}" for p in problems])
    inst = build_instance(profile, net)
    idx = [inst.nodes.index(n) for n in assignment]
    if not all(n in inst.allowed[u] for u, n in enumerate(idx)):
        bad = next(u for u, n in enumerate(idx) if n not in inst.allowed[u])
        raise BaselineInfeasible([f"{name}: unit {profile.units[bad].name} cannot run on {assignment[bad]}: "
                                  f"{inst.removed.get((bad, idx[bad]), 'no network path')}"])
    if not math.isfinite(inst.latency(idx)):
        raise BaselineInfeasible([f"{name}: some transfer of this placement has no network path"])
    return make_plan(profile, net, assignment, status="heuristic", solver=f"baseline:{name}",
                     solve_time_s=time.perf_counter() - t0)


def single_node(profile: Profile, net: NetworkState, node: str) -> Plan:
    t0 = time.perf_counter()
    label = "device-only" if node == net.source else f"{node}-only"
    return _finish(profile, net, [node] * len(profile.units), label, t0)


def device_only(profile: Profile, net: NetworkState) -> Plan:
    return single_node(profile, net, net.source)


def _feasible(inst: Instance, assign: list[int]) -> bool:
    return all(n in inst.allowed[u] for u, n in enumerate(assign)) and inst.mem_ok(assign)


def best_single_split(profile: Profile, net: NetworkState, *, interior: bool = False) -> Plan:
    """Neurosurgeon: the best cut between the source and one other node. `interior` keeps at least one
    unit on each side, so the plan sends an activation (the cut a compression study needs)."""
    t0 = time.perf_counter()
    inst = build_instance(profile, net)
    src = inst.nodes.index(net.source)
    U = inst.n_units
    best: tuple[float, list[int]] | None = None
    cuts = range(1, U) if interior else range(U + 1)
    for m in range(inst.n_nodes):
        if m == src:
            continue
        for k in cuts:
            assign = [src] * k + [m] * (U - k)
            if _feasible(inst, assign):
                value = inst.latency(assign)
                if best is None or value < best[0]:
                    best = (value, assign)
    if best is None:
        what = "no interior cut" if interior else "no cut"
        raise BaselineInfeasible([f"best-single-split: {what} between the source and one other node satisfies "
                                  "the constraints"])
    return _finish(profile, net, inst.names(best[1]), "best-single-split", t0)


def memory_proportional(profile: Profile, net: NetworkState) -> Plan:
    t0 = time.perf_counter()
    inst = build_instance(profile, net)
    src = inst.nodes.index(net.source)
    every_hw = [n for n, node in enumerate(net.nodes)
                if all(node.hardware in u.latency_s for u in profile.units)]
    out_sizes = [b for u in profile.units for b in u.out_bytes.values()] or [0.0]
    dist = net.transfer_matrix(median(out_sizes))[src]
    order = sorted((n for n in every_hw if dist[n] < float("inf")), key=lambda n: (n != src, dist[n], n))
    if not order:
        raise BaselineInfeasible(["memory-proportional: no node reachable from the source can run every unit"])
    caps = [inst.cap[n] for n in order]
    total_cap, total_mem = sum(caps), sum(inst.mem) or 1
    bounds, acc = [], 0.0
    for c in caps:
        acc += c / total_cap
        bounds.append(acc)
    assign, acc_mem = [], 0.0
    for u in range(inst.n_units):
        mid = (acc_mem + inst.mem[u] / 2) / total_mem  # where the unit's memory sits in the model
        acc_mem += inst.mem[u]
        k = next((i for i, b in enumerate(bounds) if mid <= b + 1e-12), len(order) - 1)
        assign.append(order[k])
    return _finish(profile, net, inst.names(assign), "memory-proportional", t0)


def greedy_assignment(inst: Instance) -> list[int] | None:
    """Node indices of the greedy placement, or None when it runs out of options."""
    U, N = inst.n_units, inst.n_nodes
    assign: list[int] = []
    used = [0.0] * N
    pairs_to: dict[int, list] = {}
    for p in inst.pairs:
        pairs_to.setdefault(p.b, []).append(p)
    for u in range(U):
        best: tuple[float, int] | None = None
        for n in inst.allowed[u]:
            if used[n] + inst.mem[u] > inst.cap[n]:
                continue
            cost = inst.unary[u][n]
            for p in pairs_to.get(u, []):
                cost += p.cost[assign[p.a]][n]
            for e in inst.edges:
                placed_dst = {assign[t] for t in e.dsts if t < u}
                if u in e.dsts and e.src < u and n != assign[e.src] and n not in placed_dst:
                    cost += e.tau[assign[e.src]][n]
                if u == e.src:
                    cost += sum(e.tau[n][m] for m in placed_dst if m != n)
            if cost < float("inf") and (best is None or cost < best[0]):
                best = (cost, n)
        if best is None:
            return None
        assign.append(best[1])
        used[best[1]] += inst.mem[u]
    return assign


def greedy(profile: Profile, net: NetworkState) -> Plan:
    t0 = time.perf_counter()
    assign = greedy_assignment(build_instance(profile, net))
    if assign is None:
        raise BaselineInfeasible(["greedy: ran out of nodes with memory and a network path for some unit"])
    return _finish(profile, net, [net.node_names[n] for n in assign], "greedy", t0)


def all_baselines(net: NetworkState) -> list[tuple[str, Callable[[Profile, NetworkState], Plan]]]:
    """(label, function) for every baseline on this network, single-node ones per node."""
    out: list[tuple[str, Callable[[Profile, NetworkState], Plan]]] = [("device-only", device_only)]
    for node in net.nodes:
        if node.name != net.source:
            label = f"{node.tier}-only ({node.name})" if node.tier else f"{node.name}-only"
            out.append((label, lambda p, n, name=node.name: single_node(p, n, name)))
    out += [("best-single-split", best_single_split), ("memory-proportional", memory_proportional),
            ("greedy", greedy)]
    return out
