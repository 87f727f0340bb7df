"""The cooperative mode of the planning model: L_coop by hand on a small case, the planner's search
against brute force over every placement and k, and the split-or-cooperative choice."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from orchestrator.cooperative import CooperativeUnsupported, evaluate_cooperative
from orchestrator.network import NetworkState
from orchestrator.planner import PlanOptions, solve
from orchestrator.planner.cooperative import choose_plan, search_cooperative
from profiler.profile import Profile

HW = ("slow", "mid", "fast")


def _profile(model: str, n_enc: int, n_dec: int, rng: random.Random, scale: float, new_tokens: int,
             speculative: dict | None = None) -> Profile:
    units = []
    for u in range(n_enc + n_dec):
        phases = ("encode",) if u < n_enc else ("prefill", "decode")
        lat = {hw: {p: scale * f * rng.uniform(0.5, 1.5) * 1e-3 for p in phases}
               for hw, f in zip(HW, (8.0, 3.0, 1.0), strict=True)}
        units.append({"name": f"{'enc' if u < n_enc else 'dec'}.{u}", "param_bytes": 1000, "mem_bytes": 1000,
                      "out_bytes": {p: rng.choice((2e3, 4e4, 3e5)) for p in phases}, "latency_s": lat})
    last = n_enc + n_dec - 1
    doc = {"model": model, "units": units,
           "phases": [{"name": "encode", "first": 0, "last": n_enc - 1, "repeat": 1, "input": "source",
                       "in_bytes": 12288},
                      {"name": "prefill", "first": n_enc, "last": last, "repeat": 1, "input": "none", "in_bytes": 0},
                      {"name": "decode", "first": n_enc, "last": last, "repeat": new_tokens - 1, "input": "loop",
                       "in_bytes": 8}],
           "edges": [{"from": n_enc - 1, "to": list(range(n_enc, last + 1)), "bytes": 3e4}],
           "result_bytes": 64}
    if speculative:
        doc["speculative"] = speculative
    return Profile.model_validate(doc)


def _stats(rng: random.Random, ks: tuple[int, ...], tokens: float) -> dict:
    out = {}
    for k in ks:
        acc = rng.uniform(0.3, 0.95)
        per_round = 1 + sum(acc ** i for i in range(1, k + 1))
        rounds = tokens / per_round
        out[str(k)] = {"acceptance": acc, "rounds": rounds, "draft_passes": k * rounds, "tokens": tokens,
                       "verify_ratio": 1 + 0.05 * k}
    return {"target": "T", "samples": 10, "new_tokens": 16, "k": out}


def _network(rng: random.Random, raw_input: bool = False) -> NetworkState:
    return NetworkState.model_validate({
        "source": "dev", "nodes": [{"name": "dev", "hardware": "slow", "mem_bytes": 1e9},
                                   {"name": "edge", "hardware": "mid", "mem_bytes": 1e9},
                                   {"name": "cloud", "hardware": "fast", "mem_bytes": 1e9}],
        "links": [{"a": "dev", "b": "edge", "bandwidth_bps": rng.choice((5e6, 5e7)),
                   "latency_s": rng.uniform(0.001, 0.02)},
                  {"a": "edge", "b": "cloud", "bandwidth_bps": 1e9, "latency_s": rng.uniform(0.005, 0.04)},
                  {"a": "dev", "b": "cloud", "bandwidth_bps": 2e6, "latency_s": 0.06}],
        "constraints": {"raw_input_stays_on_source": raw_input}})


def _case(seed: int, raw_input: bool = False) -> tuple[Profile, Profile, NetworkState]:
    rng = random.Random(seed)
    target = _profile("T", rng.choice((1, 2, 3)), 2, rng, 4.0, 16)
    draft = _profile("D", 1, 1, rng, 0.5, 16, _stats(rng, (1, 2, 3, 5), 14.0))
    return target, draft, _network(rng, raw_input)


def runnable(assignment: tuple[str, ...], source: str) -> bool:
    """The runtime's rule for a cooperative target (runtime.cooperative.coop_route): units on the source
    first, then all on one verifier."""
    rest = [n for n in assignment if n != source]
    return len(set(rest)) <= 1 and list(assignment) == [source] * (len(assignment) - len(rest)) + rest


def _brute_force(target: Profile, draft: Profile, net: NetworkState) -> float:
    best = math.inf
    names = net.node_names
    for assignment in itertools.product(names, repeat=len(target.units)):
        if not runnable(assignment, net.source):
            continue
        for draft_assignment in itertools.product(names, repeat=len(draft.units)):
            for k in (1, 2, 3, 5):
                ev = evaluate_cooperative(target, draft, net, list(assignment), list(draft_assignment), k)
                if ev.feasible:
                    best = min(best, ev.latency_s)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_search_equals_brute_force(seed: int) -> None:
    target, draft, net = _case(seed, raw_input=seed % 3 == 0)
    found = search_cooperative(target, draft, net)
    assert found.best is not None
    assert found.best.evaluation.latency_s == pytest.approx(_brute_force(target, draft, net), rel=1e-12)
    ev = evaluate_cooperative(target, draft, net, found.best.assignment, found.best.draft_assignment, found.best.k)
    assert ev.latency_s == found.best.evaluation.latency_s


def test_latency_by_hand() -> None:
    """Target: one encoder unit on the device, decoder on the edge; draft all on the device; k=2."""
    rng = random.Random(5)
    target = _profile("T", 1, 2, rng, 4.0, 16)
    draft = _profile("D", 1, 1, rng, 0.5, 16, {"target": "T", "samples": 4, "new_tokens": 16, "k": {
        "2": {"acceptance": 0.5, "rounds": 6.0, "draft_passes": 10.0, "tokens": 12.0, "verify_ratio": 1.2}}})
    net = _network(rng)
    link = next(x for x in net.links if {x.a, x.b} == {"dev", "edge"})

    def tau(b: float) -> float:
        return link.latency_s + 8 * b / link.bandwidth_bps

    lat = lambda p, u, hw, ph: p.units[u].latency_s[hw][ph]  # noqa: E731
    want = (lat(draft, 0, "slow", "encode") + lat(target, 0, "slow", "encode")
            + tau(3e4)                                                   # the encoder output, once
            + 10.0 * lat(draft, 1, "slow", "decode")                     # draft passes
            + 6.0 * (tau(8 * 10.0 / 6.0) + 1.2 * (lat(target, 1, "mid", "decode") + lat(target, 2, "mid", "decode"))
                     + tau(16)))                                         # rounds: up, verify, down
    ev = evaluate_cooperative(target, draft, net, ["dev", "edge", "edge"], ["dev", "dev"], 2)
    assert ev.latency_s == pytest.approx(want, rel=1e-12)
    assert ev.total("verify") == pytest.approx(6.0 * 1.2 * (lat(target, 1, "mid", "decode")
                                                            + lat(target, 2, "mid", "decode")))


def test_rules_are_enforced() -> None:
    target, draft, net = _case(1)
    ev = evaluate_cooperative(target, draft, net, ["dev"] * (len(target.units) - 1) + ["edge"],
                              ["edge"] * len(draft.units), 1)
    assert not ev.feasible
    assert any("decoder" in v for v in ev.violations) and any("draft runs on the source" in v for v in ev.violations)
    with pytest.raises(CooperativeUnsupported, match="k=4"):
        evaluate_cooperative(target, draft, net, ["dev"] * len(target.units), ["dev"] * len(draft.units), 4)


def test_pair_must_match() -> None:
    target, draft, net = _case(2)
    other = target.model_copy(update={"model": "other"})
    with pytest.raises(CooperativeUnsupported, match="measured against T"):
        search_cooperative(other, draft, net)
    with pytest.raises(CooperativeUnsupported, match="no `speculative`"):
        search_cooperative(target, target, net)


def test_choice_takes_the_faster_mode() -> None:
    for seed in range(6):
        target, draft, net = _case(seed)
        split = solve(target, net, PlanOptions())
        plan, search = choose_plan(split, target, draft, net)
        best = search.best.evaluation.latency_s
        assert plan.predicted_latency_s == pytest.approx(min(best, split.predicted_latency_s), rel=1e-12)
        assert plan.mode == ("cooperative" if best < split.predicted_latency_s else "split")
        if plan.mode == "cooperative":
            assert plan.k == search.best.k and plan.draft_assignment == ["dev"] * len(draft.units)


def test_perfect_draft_on_a_slow_link_beats_split() -> None:
    """A draft the target always agrees with, k=5: one round trip per six tokens instead of one per
    token through the slow link (an independent check that the mode can win)."""
    rng = random.Random(9)
    target = _profile("T", 2, 2, rng, 20.0, 16)
    spec = {"target": "T", "samples": 4, "new_tokens": 16,
            "k": {"5": {"acceptance": 1.0, "rounds": 16 / 6, "draft_passes": 5 * 16 / 6, "tokens": 16.0}}}
    draft = _profile("D", 1, 1, rng, 0.2, 16, spec)
    net = _network(rng)
    split = solve(target, net, PlanOptions())
    plan, _ = choose_plan(split, target, draft, net)
    assert plan.mode == "cooperative" and plan.k == 5
    assert plan.predicted_latency_s < split.predicted_latency_s
