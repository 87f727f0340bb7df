"""Property tests: on random small instances every way of planning finds the brute-force optimum of L.

The brute force below enumerates every assignment and scores it with orchestrator.costmodel alone,
so it shares no code with the planner.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.costmodel import evaluate, throughput_bottleneck
from orchestrator.network import NetworkState, parse_network
from orchestrator.planner import InfeasibleError, PlanOptions, solve, solve_report
from orchestrator.planner import baselines as bl
from orchestrator.planner.model import build_model, identical_nodes
from orchestrator.planner.problem import build_instance
from profiler.profile import Profile, parse_profile

EXAMPLES = int(os.environ.get("AIFLOW_PLANNER_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HW = ("slow", "fast")


@st.composite
def instances(draw: st.DrawFn) -> tuple[Profile, NetworkState]:
    """A model of 2-6 units in one of three shapes, on 1-3 nodes with links, memory, pins and rules."""
    n_units = draw(st.integers(2, 6))
    shape = draw(st.sampled_from(["single", "llm", "encdec"]))
    small = st.sampled_from([0.0, 10.0, 300.0, 2000.0])
    units = []
    for u in range(n_units):
        hws = draw(st.sampled_from([HW, HW, HW, ("slow",), ("fast",)]))
        lat = {hw: {ph: draw(st.sampled_from([0.01, 0.05, 0.2, 0.5, 1.3])) * (1 if hw == "slow" else 0.3)
                    for ph in ("encode", "prefill", "decode")} for hw in hws}
        mem = draw(st.integers(1, 10))
        units.append({"name": f"u{u}", "param_bytes": mem, "mem_bytes": mem,
                      "out_bytes": {ph: draw(small) for ph in ("encode", "prefill", "decode")},
                      "latency_s": lat})
    edges = []
    if shape == "single" or n_units < 3 and shape == "encdec":
        phases = [{"name": "encode", "first": 0, "last": n_units - 1, "repeat": draw(st.integers(1, 3)),
                   "input": "source", "in_bytes": draw(small)}]
    elif shape == "llm":
        phases = [{"name": "prefill", "first": 0, "last": n_units - 1, "repeat": 1,
                   "input": draw(st.sampled_from(["source", "none"])), "in_bytes": draw(small)},
                  {"name": "decode", "first": 0, "last": n_units - 1, "repeat": draw(st.integers(0, 4)),
                   "input": "loop", "in_bytes": draw(st.sampled_from([8.0, 500.0]))}]
    else:
        k = draw(st.integers(1, n_units - 2))
        phases = [{"name": "encode", "first": 0, "last": k - 1, "repeat": 1, "input": "source",
                   "in_bytes": draw(small)},
                  {"name": "prefill", "first": k, "last": n_units - 1, "repeat": 1, "input": "none", "in_bytes": 0},
                  {"name": "decode", "first": k, "last": n_units - 1, "repeat": draw(st.integers(1, 4)),
                   "input": "loop", "in_bytes": 8}]
        dec = list(range(k, n_units))
        to = draw(st.lists(st.sampled_from(dec), min_size=1, max_size=len(dec), unique=True))
        edges.append({"from": k - 1, "to": to, "bytes": draw(small)})
    doc = {"format": "aiflow.profile/v1", "model": "random", "units": units, "phases": phases,
           "edges": edges, "result_bytes": draw(small)}
    if draw(st.booleans()):   # the runtime's own costs: per hop (by sender), per request, codec per byte
        doc["overheads"] = {hw: {"hop_s": draw(st.sampled_from([0.0, 0.02, 0.4])),
                                 "request_s": draw(st.sampled_from([0.0, 0.1])),
                                 "pass_s": draw(st.sampled_from([0.0, 0.05, 0.3])),
                                 "codec": {"int8": {"enc_s_per_byte": draw(st.sampled_from([0.0, 1e-3])),
                                                    "dec_s_per_byte": draw(st.sampled_from([0.0, 2e-4]))}}}
                            for hw in HW if draw(st.booleans())}
        doc["wire"] = draw(st.sampled_from([None, "int8"]))
    profile = parse_profile(doc)

    n_nodes = draw(st.integers(1, 3))
    total = sum(u["mem_bytes"] for u in units)
    nodes = []
    for n in range(n_nodes):
        nodes.append({"name": f"n{n}", "hardware": draw(st.sampled_from(HW)),
                      "mem_bytes": float(draw(st.integers(max(5, total // 3), total + 5))),
                      "slowdown": draw(st.sampled_from([1.0, 1.0, 2.5]))})
    links = []
    bws = st.sampled_from([8e3, 8e4, 1e6])
    lats = st.sampled_from([0.0, 0.01, 0.1])
    twins = n_nodes == 3 and draw(st.booleans())
    if twins:  # n2 mirrors n1 exactly: the symmetry rows must not cut off the optimum
        nodes[2] = {**nodes[1], "name": "n2"}
        bw, lat = draw(bws), draw(lats)
        links += [{"a": "n0", "b": "n1", "bandwidth_bps": bw, "latency_s": lat},
                  {"a": "n0", "b": "n2", "bandwidth_bps": bw, "latency_s": lat}]
        if draw(st.booleans()):
            links.append({"a": "n1", "b": "n2", "bandwidth_bps": draw(bws), "latency_s": draw(lats)})
    else:
        for a, b in itertools.combinations(range(n_nodes), 2):
            if draw(st.integers(0, 3)) > 0:
                links.append({"a": f"n{a}", "b": f"n{b}", "bandwidth_bps": draw(bws), "latency_s": draw(lats),
                              "directed": draw(st.integers(0, 5)) == 0})
    constraints: dict = {"raw_input_stays_on_source": draw(st.booleans())}
    pins = {}
    for u in draw(st.lists(st.integers(0, n_units - 1), max_size=2, unique=True)):
        pins[f"u{u}"] = draw(st.lists(st.sampled_from([n["name"] for n in nodes]), min_size=1, max_size=2,
                                      unique=True))
    if pins and not twins:
        constraints["pins"] = pins
    net = parse_network({"format": "aiflow.network/v1", "source": "n0",
                         "sink": draw(st.sampled_from([None] + [n["name"] for n in nodes])),
                         "nodes": nodes, "links": links, "constraints": constraints})
    return profile, net


def brute_force(profile: Profile, net: NetworkState, score: str = "latency") -> float:
    """The minimum over every assignment the cost model calls feasible (inf when there is none)."""
    best = math.inf
    for assign in itertools.product(net.node_names, repeat=len(profile.units)):
        ev = evaluate(profile, net, assign)
        if ev.feasible:
            best = min(best, ev.latency_s if score == "latency" else throughput_bottleneck(profile, net, assign))
    return best


def close(a: float, b: float) -> bool:
    # CP-SAT rounds coefficients to nanoseconds: within 0.5 ns per term of the optimum.
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-7)


@SETTINGS
@given(instances())
def test_every_method_finds_the_brute_force_optimum(case: tuple[Profile, NetworkState]) -> None:
    profile, net = case
    best = brute_force(profile, net)
    methods = [PlanOptions(), PlanOptions(fast_path=False), PlanOptions(solver="highs", fast_path=False),
               PlanOptions(solver="cpsat", fast_path=False),
               PlanOptions(fast_path=False, naive=True, auto_warm_start=False),
               PlanOptions(fast_path=False, symmetry=False, auto_warm_start=False)]
    if math.isinf(best):
        for opts in methods[:2]:
            with pytest.raises(InfeasibleError) as info:
                solve(profile, net, opts)
            assert info.value.reasons and "\n" not in str(info.value)
        return
    for opts in methods:
        report = solve_report(profile, net, opts)
        plan = report.plan
        assert plan.status == "optimal"
        again = evaluate(profile, net, plan.assignment)
        assert again.feasible
        assert plan.predicted_latency_s == again.latency_s
        assert close(plan.predicted_latency_s, best), (opts, plan.assignment, plan.predicted_latency_s, best)
        # The solver's own objective is the same number (not just the re-evaluation).
        assert report.objective_value is not None and close(report.objective_value, best)

    # No baseline beats the optimum; infeasible baselines say so instead of returning a plan.
    for _, fn in bl.all_baselines(net):
        try:
            plan = fn(profile, net)
        except bl.BaselineInfeasible as exc:
            assert exc.reasons
            continue
        assert evaluate(profile, net, plan.assignment).feasible
        assert plan.predicted_latency_s >= best - 1e-12


@SETTINGS
@given(instances())
def test_throughput_objective_is_the_brute_force_minimum_bottleneck(case: tuple[Profile, NetworkState]) -> None:
    profile, net = case
    best = brute_force(profile, net, "throughput")
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve(profile, net, PlanOptions(objective="throughput"))
        return
    for solver in ("cbc", "highs", "cpsat"):
        report = solve_report(profile, net, PlanOptions(objective="throughput", solver=solver))
        plan = report.plan
        assert plan.objective == "throughput" and plan.status == "optimal"
        assert close(plan.bottleneck_s, best), (solver, plan.assignment, plan.bottleneck_s, best)
        assert close(report.objective_value, plan.bottleneck_s)
        assert plan.predicted_latency_s == evaluate(profile, net, plan.assignment).latency_s


@SETTINGS
@given(instances(), st.randoms(use_true_random=False))
def test_warm_start_from_any_plan_keeps_the_optimum(case: tuple[Profile, NetworkState], rnd) -> None:
    profile, net = case
    start = [rnd.choice(net.node_names) for _ in profile.units]
    try:
        cold = solve(profile, net, PlanOptions(fast_path=False, auto_warm_start=False))
    except InfeasibleError:
        return
    for solver in ("cbc", "highs", "cpsat"):
        for warm in (start, cold.assignment):
            plan = solve(profile, net, PlanOptions(solver=solver, fast_path=False, warm_start=warm))
            assert close(plan.predicted_latency_s, cold.predicted_latency_s)


def test_twin_nodes_are_found_and_ordered() -> None:
    profile = parse_profile({
        "format": "aiflow.profile/v1", "model": "m", "result_bytes": 10,
        "units": [{"name": f"u{i}", "param_bytes": 4, "mem_bytes": 4, "out_bytes": {"p": 100.0},
                   "latency_s": {"cpu": {"p": 1.0}, "gpu": {"p": 0.1}}} for i in range(6)],
        "phases": [{"name": "p", "first": 0, "last": 5, "repeat": 1, "input": "source", "in_bytes": 100}],
    })
    net = parse_network({
        "format": "aiflow.network/v1", "source": "dev",
        "nodes": [{"name": "dev", "hardware": "cpu", "mem_bytes": 100},
                  {"name": "g1", "hardware": "gpu", "mem_bytes": 8},
                  {"name": "g2", "hardware": "gpu", "mem_bytes": 8},
                  {"name": "g3", "hardware": "gpu", "mem_bytes": 8}],
        "links": [{"a": "dev", "b": g, "bandwidth_bps": 1e6, "latency_s": 0.001} for g in ("g1", "g2", "g3")]
        + [{"a": "g1", "b": "g2", "bandwidth_bps": 1e9}, {"a": "g2", "b": "g3", "bandwidth_bps": 1e9},
           {"a": "g1", "b": "g3", "bandwidth_bps": 1e9}],
    })
    inst = build_instance(profile, net)
    assert identical_nodes(inst) == [[1, 2, 3]]
    assert build_model(inst).symmetry_classes == [[1, 2, 3]]
    # Memory forces all three GPUs into use; with the symmetry rows g1 takes the first GPU unit.
    plan = solve(profile, net, PlanOptions(fast_path=False))
    first_gpu = [n for n in plan.assignment if n != "dev"]
    assert first_gpu[0] == "g1" and plan.status == "optimal"
    assert plan.predicted_latency_s == pytest.approx(brute_force(profile, net))
