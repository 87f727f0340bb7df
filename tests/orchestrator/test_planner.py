"""The planner on hand-made instances: fast path, infeasibility explanations, explain, diff, time limits."""

from __future__ import annotations

import math

import pytest

from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState, parse_network
from orchestrator.planner import InfeasibleError, PlanOptions, solve, solve_report
from orchestrator.planner import baselines as bl
from orchestrator.planner.backends import _cbc_bound
from orchestrator.planner.diff import diff_plans
from orchestrator.planner.explain import explain_plan
from orchestrator.planner.fastpath import applicable
from orchestrator.planner.problem import build_instance
from profiler.errors import InputError
from profiler.profile import Profile, parse_profile
from tests.orchestrator.test_planner_properties import brute_force


def chain(n: int = 6, *, mem: int = 10, loop: bool = True, edge: bool = False) -> Profile:
    """A small LLM-like chain: prefill, and a decode loop of 4 tokens."""
    units = [{"name": f"u{i}", "param_bytes": mem, "mem_bytes": mem,
              "out_bytes": {"prefill": 4000.0, "decode": 40.0},
              "latency_s": {"cpu": {"prefill": 0.02, "decode": 0.01}, "gpu": {"prefill": 0.002, "decode": 0.001}}}
             for i in range(n)]
    phases = [{"name": "prefill", "first": 0, "last": n - 1, "repeat": 1, "input": "source", "in_bytes": 100}]
    if loop:
        phases.append({"name": "decode", "first": 0, "last": n - 1, "repeat": 4, "input": "loop", "in_bytes": 8})
    edges = [{"from": 0, "to": [2, 4], "bytes": 1000}] if edge else []
    return parse_profile({"format": "aiflow.profile/v1", "model": "chain", "units": units, "phases": phases,
                          "edges": edges, "result_bytes": 8})


def three(dev_mem: float = 1e9, gpu_mem: float = 1e9, **constraints: object) -> NetworkState:
    return parse_network({
        "format": "aiflow.network/v1", "source": "dev",
        "nodes": [{"name": "dev", "hardware": "cpu", "mem_bytes": dev_mem},
                  {"name": "edge", "hardware": "cpu", "mem_bytes": 1e9},
                  {"name": "gpu", "hardware": "gpu", "mem_bytes": gpu_mem}],
        "links": [{"a": "dev", "b": "edge", "bandwidth_bps": 1e6, "latency_s": 0.001},
                  {"a": "edge", "b": "gpu", "bandwidth_bps": 1e7, "latency_s": 0.002}],
        "constraints": constraints,
    })


def test_fast_path_is_used_when_exact_and_agrees_with_the_ilp() -> None:
    prof, net = chain(), three()
    report = solve_report(prof, net)
    assert report.method == "dp" and report.plan.status == "optimal" and report.plan.solver == "dp"
    ilp = solve(prof, net, PlanOptions(fast_path=False))
    assert report.plan.predicted_latency_s == pytest.approx(ilp.predicted_latency_s, rel=1e-12)
    assert report.plan.predicted_latency_s == pytest.approx(brute_force(prof, net), rel=1e-12)


def test_fast_path_declines_shared_edges_and_binding_memory() -> None:
    assert not applicable(build_instance(chain(edge=True), three()))
    # The GPU holds 2 of 6 units: the unconstrained DP answer breaks memory, so the ILP decides.
    prof, net = chain(), three(gpu_mem=20)
    report = solve_report(prof, net)
    assert report.method == "cbc"
    assert report.plan.predicted_latency_s == pytest.approx(brute_force(prof, net), rel=1e-9)
    assert sum(n == "gpu" for n in report.plan.assignment) <= 2


def test_pins_and_raw_input_are_honoured() -> None:
    net = three(raw_input_stays_on_source=True, pins={"u5": ["edge"]})
    plan = solve(chain(), net)
    assert plan.assignment[0] == "dev" and plan.assignment[5] == "edge"
    assert plan.predicted_latency_s == pytest.approx(brute_force(chain(), net), rel=1e-9)


@pytest.mark.parametrize(("net", "needle"), [
    # The only node with the hardware is pinned away from.
    (three(pins={"u2": ["gpu"]}, raw_input_stays_on_source=True), None),
    (three().model_copy(update={"nodes": [n.model_copy(update={"mem_bytes": 15.0}) for n in three().nodes]}),
     "units need"),
    (three(pins={"u0": ["gpu"]}, raw_input_stays_on_source=True), "raw input"),
    (three(pins={"u1": ["gpu"], "u2": ["gpu"]}, gpu_mem=15), "short by"),
])
def test_infeasible_problems_are_explained(net: NetworkState, needle: str | None) -> None:
    prof = chain()
    if needle is None:  # feasible: a pin to a node that has the hardware is fine
        solve(prof, net)
        return
    with pytest.raises(InfeasibleError) as info:
        solve(prof, net, PlanOptions(fast_path=False))
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    assert math.isinf(brute_force(prof, net))


def test_many_unplaceable_units_stay_one_short_line() -> None:
    net = three().model_copy(update={"nodes": [n.model_copy(update={"mem_bytes": 5.0}) for n in three().nodes]})
    with pytest.raises(InfeasibleError) as info:
        solve(chain(), net)
    assert "unit u0 cannot be placed" in str(info.value) and "and 3 more units" in str(info.value)
    assert len(info.value.reasons) == 4


def test_unit_without_hardware_anywhere_is_named() -> None:
    prof = chain()
    units = [u.model_dump(by_alias=True) for u in prof.units]
    units[3]["latency_s"] = {"tpu": {"prefill": 1.0, "decode": 1.0}}
    prof = parse_profile({**prof.model_dump(by_alias=True), "units": units})
    with pytest.raises(InfeasibleError, match=r"unit u3 cannot be placed on any node .*no latency"):
        solve(prof, three())


def test_pin_to_an_unknown_unit_is_bad_input() -> None:
    with pytest.raises(InputError, match=r"constraints.pins.nope"):
        solve(chain(), three(pins={"nope": ["dev"]}))


def test_unreachable_node_is_never_used() -> None:
    net = three().model_copy(update={"links": three().links[:1]})  # the GPU has no link at all
    plan = solve(chain(), net, PlanOptions(fast_path=False))
    assert "gpu" not in plan.assignment


def test_explain_lists_every_term_and_finds_binding_memory() -> None:
    prof, net = chain(), three(gpu_mem=20)
    plan = solve(prof, net)
    ex = explain_plan(prof, net, plan.assignment)
    phase_total = sum(p.total_s for p in ex.phases) + ex.result_s + sum(e["seconds"] for e in ex.edges)
    assert phase_total == pytest.approx(plan.predicted_latency_s, rel=1e-12)
    assert ex.optimum_s == pytest.approx(plan.predicted_latency_s)
    gpu = next(c for c in ex.constraints if c.constraint == "memory of gpu")
    assert gpu.binding and gpu.full and gpu.gain_s > 0
    # The same network without the limit gives exactly that gain.
    free = solve(prof, three())
    assert gpu.gain_s == pytest.approx(plan.predicted_latency_s - free.predicted_latency_s, rel=1e-9)


def test_explain_rejects_a_plan_that_breaks_the_constraints() -> None:
    with pytest.raises(InputError, match="pinned"):
        explain_plan(chain(), three(pins={"u0": ["dev"]}), ["gpu"] * 6, price=False)


def test_diff_lists_moves_and_the_latency_change() -> None:
    prof, net = chain(), three()
    a = bl.device_only(prof, net)
    b = solve(prof, net)
    d = diff_plans(a, b, prof, net)
    assert [m.name for m in d.moves] == [prof.units[u].name for u in range(6) if b.assignment[u] != "dev"]
    assert d.delta_s == pytest.approx(b.predicted_latency_s - a.predicted_latency_s)
    assert sorted(sum(d.load.values(), [])) == sorted(m.name for m in d.moves)
    with pytest.raises(InputError):
        diff_plans(a, a.model_copy(update={"assignment": ["dev"] * 5}))


def test_baselines_report_memory_violations_as_infeasible() -> None:
    prof, net = chain(), three(dev_mem=15)
    with pytest.raises(bl.BaselineInfeasible, match="node dev holds"):
        bl.device_only(prof, net)
    plan = bl.best_single_split(prof, net)
    assert plan.status == "heuristic" and evaluate(prof, net, plan.assignment).feasible
    k = next((i for i, n in enumerate(plan.assignment) if n != "dev"), 6)   # one cut: dev... then one node
    assert len(set(plan.assignment[k:])) <= 1
    assert plan.predicted_latency_s >= solve(prof, net).predicted_latency_s


def test_interior_best_split_cuts_inside_the_model_or_says_it_cannot() -> None:
    plan = bl.best_single_split(chain(), three(), interior=True)
    assert plan.assignment[0] == "dev" and plan.assignment[-1] != "dev"
    assert plan.predicted_latency_s >= bl.best_single_split(chain(), three()).predicted_latency_s
    with pytest.raises(bl.BaselineInfeasible, match="no interior cut"):
        bl.best_single_split(chain(1), three(), interior=True)


def test_time_limit_returns_a_plan_with_its_gap() -> None:
    from bench.planner_speed import instance

    prof, net = instance(0, 48, 6, "sharded")
    plan = solve(prof, net, PlanOptions(fast_path=False, time_limit_s=0.5))
    assert plan.status in ("optimal", "feasible")
    if plan.status == "feasible":
        assert plan.gap is not None and plan.gap >= 0
    assert plan.predicted_latency_s == evaluate(prof, net, plan.assignment).latency_s


def test_cbc_bound_is_read_from_its_log() -> None:
    log = "Result - Stopped on time limit\n\nObjective value:                1300.5\nLower bound:  1290.25\nGap: 0.01\n"
    assert _cbc_bound(log) == 1290.25
    assert _cbc_bound("nothing useful") is None


def test_unknown_solver_is_bad_input() -> None:
    with pytest.raises(InputError, match="--solver"):
        solve(chain(), three(), PlanOptions(solver="gurobi"))
