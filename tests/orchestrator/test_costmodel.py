"""The evaluator of L against hand-computed numbers from planning-model.md's definition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.costmodel import (
    check_constraints,
    evaluate,
    latency_for_steps,
    throughput_bottleneck,
    with_decode_steps,
)
from orchestrator.network import NetworkState, load_network, parse_network
from profiler.profile import load_profile, parse_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _profile(**overrides):
    units = []
    for i in range(4):
        units.append({
            "name": f"u{i}", "param_bytes": 10, "mem_bytes": 100,
            "out_bytes": {"enc": 1000.0, "pre": 500.0, "dec": 10.0},
            "latency_s": {"slow": {"enc": 1.0, "pre": 0.5, "dec": 0.1},
                          "fast": {"enc": 0.1, "pre": 0.05, "dec": 0.01}},
        })
    doc = {
        "format": "aiflow.profile/v1", "model": "toy", "units": units,
        "phases": [
            {"name": "enc", "first": 0, "last": 1, "repeat": 1, "input": "source", "in_bytes": 2000},
            {"name": "pre", "first": 2, "last": 3, "repeat": 1, "input": "none", "in_bytes": 0},
            {"name": "dec", "first": 2, "last": 3, "repeat": 3, "input": "loop", "in_bytes": 8},
        ],
        "edges": [{"from": 1, "to": [2, 3], "bytes": 4000}],
        "result_bytes": 100,
    }
    doc.update(overrides)
    return parse_profile(doc)


def _network(**constraints):
    return parse_network({
        "format": "aiflow.network/v1", "source": "a",
        "nodes": [{"name": "a", "hardware": "slow", "mem_bytes": 1000, "slowdown": 2.0},
                  {"name": "b", "hardware": "slow", "mem_bytes": 1000},
                  {"name": "c", "hardware": "fast", "mem_bytes": 150}],
        # 8000 bit/s: 1000 bytes take exactly one second; a-c has no direct link (two hops via b).
        "links": [{"a": "a", "b": "b", "bandwidth_bps": 8000, "latency_s": 0.5},
                  {"a": "b", "b": "c", "bandwidth_bps": 80000, "latency_s": 0.25}],
        "constraints": constraints,
    })


def tau_ab(nbytes: float) -> float:
    return 0.5 + nbytes / 1000


def tau_bc(nbytes: float) -> float:
    return 0.25 + nbytes / 10000


def test_all_on_source_is_compute_times_slowdown_plus_nothing() -> None:
    ev = evaluate(_profile(), _network(), ["a"] * 4)
    expected = 2.0 * (1.0 + 1.0) + 2.0 * (0.5 + 0.5) + 3 * 2.0 * (0.1 + 0.1)
    assert ev.latency_s == pytest.approx(expected)
    assert ev.feasible
    assert ev.transfer_s == {}


def test_split_counts_every_term_of_the_definition() -> None:
    # encoder on a, decoder unit 2 on b, unit 3 on c (two hops from a).
    ev = evaluate(_profile(), _network(), ["a", "a", "b", "c"])
    compute = 2.0 * 2 * 1.0 + (0.5 + 0.05) + 3 * (0.1 + 0.01)
    transfers = (
        tau_bc(500)                       # pre: unit 2 (b) -> unit 3 (c)
        + 3 * tau_bc(10)                  # dec: unit 2 (b) -> unit 3 (c), three times
        + 3 * tau_bc(8)                   # dec loop: the token from n(last)=c back to n(first)=b
    )
    edge = tau_ab(4000) + (tau_ab(4000) + tau_bc(4000))  # from a to b, and from a to c via b
    result = tau_bc(100) + tau_ab(100)                   # c -> a via b
    assert ev.latency_s == pytest.approx(compute + transfers + edge + result)
    assert set(ev.transfer_s) == {"b->c", "c->b", "a->b", "b->a"}
    # The edge crosses a->b twice (once for b, once on the way to c): store and forward per destination.
    assert ev.transfer_s["a->b"] == pytest.approx(2 * tau_ab(4000))


def test_raw_input_to_other_node_costs_the_input_transfer() -> None:
    ev = evaluate(_profile(), _network(), ["b", "b", "b", "b"])
    assert [t for t in ev.terms if t.kind == "input"][0].seconds == pytest.approx(tau_ab(2000))
    assert [t for t in ev.terms if t.kind == "result"][0].seconds == pytest.approx(tau_ab(100))


def test_constraints_are_reported() -> None:
    net = _network(raw_input_stays_on_source=True, pins={"u3": ["b"]})
    problems = check_constraints(_profile(), net, ["c", "c", "a", "a"])
    text = " ".join(problems)
    assert "node c holds 200 bytes" in text
    assert "pinned" in text and "raw input" in text
    assert not evaluate(_profile(), net, ["c", "c", "a", "a"]).feasible


def test_unknown_hardware_is_infeasible() -> None:
    prof = _profile()
    units = [u.model_dump(by_alias=True) for u in prof.units]
    units[0]["latency_s"] = {"slow": units[0]["latency_s"]["slow"]}
    prof2 = _profile(units=units)
    ev = evaluate(prof2, _network(), ["c", "a", "a", "a"])
    assert not ev.feasible and math.isinf(ev.latency_s)


def test_throughput_bottleneck_is_busiest_resource() -> None:
    net = _network()
    # all on b: compute 1+1 + .5+.5 + 3*(.1+.1) = 3.6 s; the input crosses a->b: 2000*8/8000 = 2 s.
    assert throughput_bottleneck(_profile(), net, ["b"] * 4) == pytest.approx(3.6)


# ---- per-request decode counts (the captioner stops at EOS) --------------------------------------
# phone: vision; edge: text.embed, blocks 0-1; cloud: block 2 and the head. Every decode step crosses
# edge -> cloud and loops back cloud -> edge.
SPLIT3 = ["phone"] * 5 + ["edge"] * 3 + ["cloud"] * 2


def _captioner():  # noqa: ANN202 - (Profile, NetworkState)
    return load_profile(EXAMPLES / "tiny-captioner.profile.json"), load_network(EXAMPLES / "three-tier.network.yaml")


def test_with_decode_steps_changes_only_the_decode_repeat() -> None:
    prof, _ = _captioner()
    decode = next(p for p in prof.phases if p.name == "decode")
    assert decode.repeat == 15
    for passes, repeat in ((24, 23), (1, 0), (0, 0)):
        changed = with_decode_steps(prof, passes)
        assert [p.name for p in changed.phases] == [p.name for p in prof.phases]
        for old, new in zip(prof.phases, changed.phases, strict=True):
            if old.name == "decode":
                assert new.repeat == repeat and new.model_dump(exclude={"repeat"}) == old.model_dump(exclude={"repeat"})
            else:
                assert new == old
        assert changed.units == prof.units and changed.edges == prof.edges
    assert decode.repeat == 15                      # the original is untouched
    assert [p.name for p in with_decode_steps(prof, 1).active_phases] == ["encode", "prefill"]


@pytest.mark.parametrize("assignment", [["phone"] * 10, SPLIT3], ids=["device-only", "three-way"])
def test_latency_for_steps_at_the_profiled_count_is_evaluate(assignment: list[str]) -> None:
    prof, net = _captioner()
    assert latency_for_steps(prof, net, assignment, 16) == evaluate(prof, net, assignment).latency_s
    assert latency_for_steps(prof, net, assignment, 24) > evaluate(prof, net, assignment).latency_s


def test_latency_for_steps_grows_linearly_in_passes() -> None:
    prof, net = _captioner()
    lat = [latency_for_steps(prof, net, SPLIT3, p) for p in (10, 11, 12, 30)]
    step = lat[1] - lat[0]
    assert lat[2] - lat[1] == pytest.approx(step, rel=1e-9)
    assert lat[3] - lat[0] == pytest.approx(20 * step, rel=1e-9)
    # each step pays at least the two edge<->cloud crossings (25 ms latency each way)
    assert step > 2 * 0.025
    ev = evaluate(with_decode_steps(prof, 11), net, SPLIT3)
    assert step == pytest.approx(sum(t.seconds for t in ev.terms if t.phase == "decode") / 10, rel=1e-9)


def test_latency_for_steps_is_none_when_infeasible() -> None:
    prof, net = _captioner()
    kept = NetworkState.model_validate(net.model_dump() | {"constraints": {"raw_input_stays_on_source": True}})
    assert latency_for_steps(prof, kept, ["edge"] * 10, 16) is None
    assert latency_for_steps(prof, kept, SPLIT3, 16) is not None
    assert latency_for_steps(prof, net, ["phone"] * 9, 16) is None          # one unit short
    assert latency_for_steps(prof, net, ["mars"] * 10, 16) is None
