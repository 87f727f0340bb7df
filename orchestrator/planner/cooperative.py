"""Cooperative plans: the best (verifier node, target encoder placement, k), and the choice between
the best split plan of the target and the best cooperative plan (docs/planner.md, "Cooperative mode").

For a fixed verifier v and k, L_coop splits into a part that depends on where the target's
encoder-only units run (their compute, the input's and activations' transfers, the encoder output's
copy to v) and a part that does not (the draft on the source, the rounds). The first is a chain, so
a shortest path over (unit, node) gives its exact minimum; the solver runs it for every v and takes
the best k. Memory is checked on the result (both models count), not optimised: a verifier whose
best chain overflows a node is skipped (`skipped` says why). Pure: no I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from orchestrator.cooperative import (
    CooperativeUnsupported,
    CoopEvaluation,
    decoder_units,
    evaluate_cooperative,
    measured_ks,
)
from orchestrator.costmodel import compute_time, pass_overhead, transfer_matrix
from orchestrator.network import NetworkState
from orchestrator.plan import Breakdown, Plan
from profiler.profile import Profile


@dataclass(frozen=True)
class CoopChoice:
    assignment: list[str]
    draft_assignment: list[str]
    k: int
    evaluation: CoopEvaluation


@dataclass
class CoopSearch:
    best: CoopChoice | None
    per_k: dict[int, CoopChoice] = field(default_factory=dict)   # the best plan for each measured k
    skipped: list[str] = field(default_factory=list)


def check_pair(target: Profile, draft: Profile) -> None:
    """The draft can serve this target: measured against it, same token size and decoder input."""
    if draft.speculative is None:
        raise CooperativeUnsupported(f"{draft.model}: the draft profile has no `speculative` section "
                                     "(measure it with `aiflow profile speculative`)")
    if draft.speculative.target != target.model:
        raise CooperativeUnsupported(f"{draft.model}: acceptance was measured against "
                                     f"{draft.speculative.target}, not {target.model}")
    decoder_units(target)
    decoder_units(draft)
    encoder = [u for u in range(len(target.units)) if u not in decoder_units(target)]
    if encoder != list(range(len(encoder))):
        raise CooperativeUnsupported(f"{target.model}: the units outside the decode loop must come first")


def _encoder_chain(target: Profile, net: NetworkState, v: str, n_enc: int) -> list[str] | None:
    """The placement of units 0..n_enc-1 that minimises their once-cost plus the edge copy to v:
    a shortest path over (unit, node). None when no placement reaches v. As the runtime runs a
    cooperative plan (runtime.cooperative.coop_route), the target's units are on the source, then on v:
    no third node, and no way back to the source."""
    names = net.node_names
    src = names.index(net.source)
    vi = names.index(v)
    phases = [p for p in target.active_phases if p.input == "source" and p.last < n_enc]
    if n_enc == 0 or not phases:
        return [] if n_enc == 0 else None
    ph = phases[0]
    allowed: list[list[int]] = []
    for u in range(n_enc):
        nodes = [i for i, n in enumerate(names) if i in (src, vi)
                 and math.isfinite(compute_time(target, net, u, n, ph.name))
                 and target.units[u].mem_bytes <= net.node(n).mem_bytes]
        pins = net.constraints.pins.get(target.units[u].name)
        if pins is not None:
            nodes = [i for i in nodes if names[i] in pins]
        if u == ph.first and net.constraints.raw_input_stays_on_source:
            nodes = [i for i in nodes if i == src]
        allowed.append(nodes)
    tau_in = transfer_matrix(target, net, ph.in_bytes)
    cost = {i: tau_in[src][i] + pass_overhead(target, net, names[i]) + compute_time(target, net, 0, names[i], ph.name)
            for i in allowed[0]}
    back: list[dict[int, int]] = []
    for u in range(1, n_enc):
        tau = transfer_matrix(target, net, target.units[u - 1].out_bytes.get(ph.name, 0.0))
        nxt: dict[int, float] = {}
        arg: dict[int, int] = {}
        for j in allowed[u]:
            c = compute_time(target, net, u, names[j], ph.name)
            for i, before in cost.items():
                if i == vi and j != vi:
                    continue                  # once on the verifier, the target stays there
                t = before + c + (0.0 if i == j else tau[i][j] + pass_overhead(target, net, names[j]))
                if t < nxt.get(j, math.inf):
                    nxt[j], arg[j] = t, i
        cost = nxt
        back.append(arg)
    edge_bytes = [e.bytes for e in target.edges if e.from_ < n_enc]
    tau_edge = [transfer_matrix(target, net, b) for b in edge_bytes]
    finals = {i: c + sum(0.0 if i == vi else t[i][vi] for t in tau_edge) for i, c in cost.items()}
    finals = {i: c for i, c in finals.items() if math.isfinite(c)}
    if not finals:
        return None
    last = min(finals, key=lambda i: (finals[i], i))
    path = [last]
    for arg in reversed(back):
        path.append(arg[path[-1]])
    return [names[i] for i in reversed(path)]


def search_cooperative(target: Profile, draft: Profile, net: NetworkState,
                       ks: list[int] | None = None, *, no_verifier: Collection[str] = ()) -> CoopSearch:
    """The best cooperative plan over verifiers, encoder placements and the measured k. `no_verifier`:
    nodes that cannot verify now (the daemon's: a remote verifier that does not answer, or none named)."""
    check_pair(target, draft)
    ks = ks or measured_ks(draft)
    dec = decoder_units(target)
    n_enc = dec[0]
    draft_assignment = [net.source] * len(draft.units)
    out = CoopSearch(best=None)
    for v in net.node_names:
        if v == net.source:
            continue                      # the source runs the draft; the target verifies elsewhere
        if v in no_verifier:
            out.skipped.append(f"{v}: no verifier answers there")
            continue
        chain = _encoder_chain(target, net, v, n_enc)
        if chain is None:
            out.skipped.append(f"{v}: no placement of the encoder reaches it")
            continue
        assignment = chain + [v] * (len(target.units) - n_enc)
        for k in ks:
            ev = evaluate_cooperative(target, draft, net, assignment, draft_assignment, k)
            if not ev.feasible:
                out.skipped.append(f"{v}, k={k}: {'; '.join(ev.violations)}")
                break
            choice = CoopChoice(assignment, draft_assignment, k, ev)
            if k not in out.per_k or ev.latency_s < out.per_k[k].evaluation.latency_s:
                out.per_k[k] = choice
            if out.best is None or ev.latency_s < out.best.evaluation.latency_s:
                out.best = choice
    return out


def coop_plan(target: Profile, draft: Profile, choice: CoopChoice, solve_time_s: float = 0.0, *,
              exact: bool = True) -> Plan:
    ev = choice.evaluation
    compute: dict[str, float] = {}
    transfer: dict[str, float] = {}
    for t in ev.terms:
        if t.kind in ("draft-pass", "verify") and t.node:
            compute[t.node] = compute.get(t.node, 0.0) + t.seconds
        elif t.kind in ("uplink", "downlink"):
            transfer[t.label.split(" ", 1)[1]] = t.seconds
    return Plan(model=target.model, assignment=choice.assignment, predicted_latency_s=ev.latency_s,
                status="optimal" if exact else "heuristic", solver="cooperative-dp", solve_time_s=solve_time_s,
                breakdown=Breakdown(compute_s=compute, transfer_s=transfer), mode="cooperative",
                draft_model=draft.model, draft_assignment=choice.draft_assignment, k=choice.k)


def choose_plan(split: Plan, target: Profile, draft: Profile, net: NetworkState, *,
                no_verifier: Collection[str] = ()) -> tuple[Plan, CoopSearch]:
    """The faster of the split plan and the best cooperative plan (split on a tie: one model is
    simpler to run); no cooperative plan verifies on a node of `no_verifier`."""
    t0 = time.perf_counter()
    search = search_cooperative(target, draft, net, no_verifier=no_verifier)
    if search.best is not None and search.best.evaluation.latency_s < split.predicted_latency_s:
        exact = not any("memory" in s for s in search.skipped)
        return coop_plan(target, draft, search.best, time.perf_counter() - t0, exact=exact), search
    return split.model_copy(update={"mode": "split"}), search
