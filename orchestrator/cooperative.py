"""The expected latency of a cooperative (speculative) plan, term by term (docs/planner.md,
"Cooperative mode").

A cooperative plan runs two models of one family: the draft, every unit on one node d (the source:
the loop runs where the request starts), and the target, whose decoder (the units of its decode
loop) sits on one node v and whose other units (the encoder) are placed unit by unit. The draft
proposes k tokens, one draft pass each; the target checks them in one pass over k + 1 positions on v
and sends back how many it keeps and its own next token. With R_k verification rounds and D_k draft
passes per request (means measured by the profiler on sample inputs, per k: the draft profile's
`speculative` section):

    L_coop = request_s
           + once(draft on d) + once(target on its assignment)            encoder passes, prompt prefill
           + edge copies of the target's encoder output to v (once)
           + D_k * (sum of the draft's decode-unit times on d + pass_s(d))
           + R_k * (tau(d, v, tok * D_k / R_k) + r_k * sum of the target's decode-unit times on v
                    + pass_s(v) + tau(v, d, 2 tok))
           + tau(d, sink, result_bytes)

`tok` is the decode phase's `in_bytes` (one token id); r_k the measured cost of a target pass over
k + 1 new positions relative to a one-token pass. `once(model)` is L's own sum for the phases whose
input is the source (each unit's compute, the input's and every activation's transfer, pass_s per
segment); a prefill whose input is `none` (a captioner's start token) is the first round's work.
Pure functions: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.costmodel import compute_time, pass_overhead, request_overhead, transfer_matrix
from orchestrator.network import NetworkState
from profiler.profile import Phase, Profile, SpecStats


class CooperativeUnsupported(ValueError):
    """The pair cannot run cooperatively (no measured acceptance, a different tokenizer, ...)."""


@dataclass(frozen=True)
class CoopTerm:
    kind: str                 # request, draft-once, target-once, edge, draft-pass, uplink, verify, downlink, result
    label: str
    seconds: float            # already multiplied by its count
    count: float = 1.0
    node: str | None = None


@dataclass(frozen=True)
class CoopEvaluation:
    latency_s: float
    k: int
    verifier: str
    terms: tuple[CoopTerm, ...]
    violations: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return not self.violations and math.isfinite(self.latency_s)

    def total(self, kind: str) -> float:
        return sum(t.seconds for t in self.terms if t.kind == kind)


def loop_phase(profile: Profile) -> Phase:
    loops = [p for p in profile.active_phases if p.input == "loop"]
    if len(loops) != 1:
        raise CooperativeUnsupported(f"{profile.model}: cooperative decoding needs one decode loop phase, "
                                     f"found {len(loops)}")
    return loops[0]


def decoder_units(profile: Profile) -> range:
    ph = loop_phase(profile)
    return range(ph.first, ph.last + 1)


def spec_stats(draft: Profile, k: int) -> SpecStats:
    if draft.speculative is None:
        raise CooperativeUnsupported(f"{draft.model}: the draft profile has no `speculative` section "
                                     "(measure it with `aiflow profile speculative`)")
    stats = draft.speculative.k.get(str(k))
    if stats is None:
        raise CooperativeUnsupported(f"{draft.model}: no acceptance measured for k={k} "
                                     f"(measured: {', '.join(draft.speculative.k)})")
    return stats


def measured_ks(draft: Profile) -> list[int]:
    return sorted(int(k) for k in draft.speculative.k) if draft.speculative else []


def _tau(profile: Profile, net: NetworkState, src: str, dst: str, nbytes: float) -> float:
    if src == dst:
        return 0.0
    names = net.node_names
    return transfer_matrix(profile, net, nbytes)[names.index(src)][names.index(dst)]


def once_terms(profile: Profile, net: NetworkState, assignment: Sequence[str], kind: str) -> list[CoopTerm]:
    """The phases a request runs once from its input (input `source`), as L counts them."""
    out: list[CoopTerm] = []
    for ph in profile.active_phases:
        if ph.input != "source":
            continue
        first = assignment[ph.first]
        t = _tau(profile, net, net.source, first, ph.in_bytes) + pass_overhead(profile, net, first)
        for u in range(ph.first, ph.last + 1):
            t += compute_time(profile, net, u, assignment[u], ph.name)
            if u < ph.last and assignment[u] != assignment[u + 1]:
                nbytes = profile.units[u].out_bytes.get(ph.name, 0.0)
                t += (_tau(profile, net, assignment[u], assignment[u + 1], nbytes)
                      + pass_overhead(profile, net, assignment[u + 1]))
        out.append(CoopTerm(kind, f"{profile.model} {ph.name}", ph.repeat * t, ph.repeat))
    return out


def edge_terms(profile: Profile, net: NetworkState, assignment: Sequence[str]) -> list[CoopTerm]:
    out: list[CoopTerm] = []
    for e in profile.edges:
        src = assignment[e.from_]
        for m in sorted({assignment[t] for t in e.to} - {src}):
            out.append(CoopTerm("edge", f"{profile.model} unit {e.from_} output {src}->{m}",
                                _tau(profile, net, src, m, e.bytes), node=m))
    return out


def check_cooperative(target: Profile, draft: Profile, net: NetworkState, assignment: Sequence[str],
                      draft_assignment: Sequence[str]) -> list[str]:
    """The structural and memory rules a cooperative plan must keep, as sentences."""
    problems: list[str] = []
    if len(assignment) != len(target.units):
        return [f"assignment: {len(assignment)} nodes for {len(target.units)} target units"]
    if len(draft_assignment) != len(draft.units):
        return [f"draft_assignment: {len(draft_assignment)} nodes for {len(draft.units)} draft units"]
    known = set(net.node_names)
    for name in {*assignment, *draft_assignment} - known:
        problems.append(f"node {name!r} is not in the network")
    if problems:
        return problems
    if set(draft_assignment) != {net.source}:
        problems.append(f"the draft runs on the source ({net.source}) in a cooperative plan")
    verifiers = {assignment[u] for u in decoder_units(target)}
    if len(verifiers) != 1:
        problems.append("the target's decoder units must all run on one node (the verifier)")
    elif verifiers == {net.source}:
        problems.append(f"the target verifies on another node than the source ({net.source})")
    for model, assign in ((target, assignment), (draft, draft_assignment)):
        for u, node in enumerate(assign):
            hw = net.node(node).hardware
            if hw not in model.units[u].latency_s:
                problems.append(f"{model.model} unit {model.units[u].name}: no latency for {hw} ({node})")
    if net.constraints.raw_input_stays_on_source:
        for ph in target.active_phases:
            if ph.input == "source" and assignment[ph.first] != net.source:
                problems.append(f"raw input: {target.model} unit {target.units[ph.first].name} must run on "
                                f"{net.source}")
    for unit, nodes in net.constraints.pins.items():
        for model, assign in ((target, assignment), (draft, draft_assignment)):
            names = [u.name for u in model.units]
            if unit in names and assign[names.index(unit)] not in nodes:
                problems.append(f"pin: {model.model} unit {unit} must run on one of {', '.join(nodes)}")
    used: dict[str, int] = {}
    for model, assign in ((target, assignment), (draft, draft_assignment)):
        for u, node in enumerate(assign):
            used[node] = used.get(node, 0) + model.units[u].mem_bytes
    for node, mem in used.items():
        cap = net.node(node).mem_bytes
        if mem > cap:
            problems.append(f"memory: {node} holds {mem:.4g} bytes of both models, more than its {cap:.4g}")
    return problems


def evaluate_cooperative(target: Profile, draft: Profile, net: NetworkState, assignment: Sequence[str],
                         draft_assignment: Sequence[str], k: int) -> CoopEvaluation:
    """L_coop of a cooperative plan (module docstring), with every term and the rules it breaks."""
    stats = spec_stats(draft, k)
    violations = tuple(check_cooperative(target, draft, net, assignment, draft_assignment))
    d = net.source
    v = assignment[decoder_units(target)[0]] if len(assignment) == len(target.units) else d
    if violations:
        return CoopEvaluation(math.inf, k, v, (), violations)
    loop_t, loop_d = loop_phase(target), loop_phase(draft)
    tok = loop_t.in_bytes
    draft_pass = sum(compute_time(draft, net, u, d, loop_d.name) for u in decoder_units(draft))
    draft_pass += pass_overhead(draft, net, d)
    target_pass = sum(compute_time(target, net, u, v, loop_t.name) for u in decoder_units(target))
    verify = stats.verify_ratio * target_pass + pass_overhead(target, net, v)
    rounds, passes = stats.rounds, stats.draft_passes
    up = _tau(target, net, d, v, tok * passes / rounds) if rounds else 0.0
    down = _tau(target, net, v, d, 2 * tok)
    terms = [CoopTerm("request", "per request", request_overhead(target, net)),
             *once_terms(draft, net, draft_assignment, "draft-once"),
             *once_terms(target, net, assignment, "target-once"),
             *edge_terms(target, net, assignment),
             CoopTerm("draft-pass", f"{draft.model} decode pass on {d}", passes * draft_pass, passes, d),
             CoopTerm("uplink", f"proposals {d}->{v}", rounds * up, rounds),
             CoopTerm("verify", f"{target.model} verify pass (k+1={k + 1} positions) on {v}", rounds * verify,
                      rounds, v),
             CoopTerm("downlink", f"verdict {v}->{d}", rounds * down, rounds),
             CoopTerm("result", f"result {d}->{net.sink_node}",
                      _tau(target, net, d, net.sink_node, target.result_bytes))]
    return CoopEvaluation(sum(t.seconds for t in terms), k, v, tuple(terms))


def latency_for_rounds(target: Profile, draft: Profile, net: NetworkState, assignment: Sequence[str],
                       draft_assignment: Sequence[str], k: int, rounds: int, draft_passes: int) -> float:
    """L_coop of one request that took `rounds` verifications and `draft_passes` draft passes (what
    the runtime's measured latency is compared with)."""
    stats = spec_stats(draft, k).model_copy(update={"rounds": max(rounds, 1), "draft_passes": draft_passes})
    assert draft.speculative is not None
    spec = draft.speculative.model_copy(update={"k": {**draft.speculative.k, str(k): stats}})
    one = draft.model_copy(update={"speculative": spec})
    return evaluate_cooperative(target, one, net, assignment, draft_assignment, k).latency_s
