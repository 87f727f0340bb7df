"""The five strategies the demo compares: one plan each, all priced by the same cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState, load_network
from orchestrator.strategies import STRATEGIES, Strategy, describe_assignment, strategy_plans, tier_node
from profiler.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
NETWORK = ROOT / "examples" / "three-tier.network.yaml"


@pytest.fixture(scope="module")
def profile() -> Profile:
    prof = load_profile(PROFILE)
    assert prof.model == "tiny-captioner" and len(prof.units) == 10
    return prof


def shipped() -> NetworkState:
    return load_network(NETWORK)


def fast_links() -> NetworkState:
    """Every link 100 Mbit/s, 2 ms: sending the image to the cloud pays, and the best single cut moves."""
    net = shipped()
    for a, b in (("phone", "edge"), ("edge", "cloud"), ("phone", "cloud")):
        net = net.with_link(a, b, bandwidth_bps=1e8, latency_s=0.002)
    return net


def with_doc(net: NetworkState, **changes: object) -> NetworkState:
    """A validated copy (model_copy(update=) would not turn dicts into models)."""
    return NetworkState.model_validate(net.model_dump() | changes)


NETWORKS = {"shipped": shipped, "fast-links": fast_links}


@pytest.fixture(scope="module", params=list(NETWORKS))
def planned(request: pytest.FixtureRequest, profile: Profile) -> tuple[NetworkState, list[Strategy]]:
    net = NETWORKS[request.param]()
    return net, strategy_plans(profile, net)


def test_five_strategies_in_order_each_named_and_planned(planned: tuple[NetworkState, list[Strategy]]) -> None:
    _, strategies = planned
    assert STRATEGIES == ("device-only", "edge-only", "cloud-only", "best-split", "optimal")
    assert [s.name for s in strategies] == list(STRATEGIES)
    for s in strategies:
        assert s.plan is not None and s.why_not is None, s
        assert s.plan.strategy == s.name


def test_single_tier_strategies_put_every_unit_on_their_node(profile: Profile,
                                                             planned: tuple[NetworkState, list[Strategy]]) -> None:
    _, strategies = planned
    by_name = {s.name: s.plan for s in strategies}
    for name, node in (("device-only", "phone"), ("edge-only", "edge"), ("cloud-only", "cloud")):
        assert by_name[name].assignment == [node] * len(profile.units)


def test_optimal_is_never_worse_and_best_split_cuts_once(planned: tuple[NetworkState, list[Strategy]]) -> None:
    net, strategies = planned
    optimal = strategies[-1].plan
    for s in strategies:
        assert optimal.predicted_latency_s <= s.plan.predicted_latency_s * (1 + 1e-9), s.name
    split = strategies[STRATEGIES.index("best-split")].plan.assignment
    k = next((i for i, n in enumerate(split) if n != net.source), len(split))
    assert all(n == net.source for n in split[:k])
    assert len(set(split[k:])) <= 1                       # the rest on one other node


def test_best_split_really_splits_on_fast_links(profile: Profile) -> None:
    """Guards the previous test against only ever seeing unsplit plans."""
    best = {s.name: s.plan for s in strategy_plans(profile, fast_links())}["best-split"]
    assert best.assignment[0] == "phone" and best.assignment[-1] == "cloud"


def test_predictions_are_the_cost_model(profile: Profile, planned: tuple[NetworkState, list[Strategy]]) -> None:
    net, strategies = planned
    for s in strategies:
        assert s.plan.predicted_latency_s == evaluate(profile, net, s.plan.assignment).latency_s, s.name


def test_no_cloud_node_means_no_cloud_only_plan(profile: Profile) -> None:
    net = with_doc(shipped(), nodes=[n.model_dump() | {"tier": None if n.name == "cloud" else n.tier}
                                     for n in shipped().nodes])
    assert tier_node(net, "cloud") is None and tier_node(net, "edge") == "edge"
    by_name = {s.name: s for s in strategy_plans(profile, net)}
    assert list(by_name) == list(STRATEGIES)
    assert by_name["cloud-only"].plan is None and "cloud" in by_name["cloud-only"].why_not
    assert by_name["edge-only"].plan is not None and by_name["optimal"].plan is not None


def test_raw_input_on_source_rules_out_shipping_the_image(profile: Profile) -> None:
    net = with_doc(shipped(), constraints={"raw_input_stays_on_source": True})
    by_name = {s.name: s for s in strategy_plans(profile, net)}
    for name in ("edge-only", "cloud-only"):
        assert by_name[name].plan is None and by_name[name].why_not, name
        assert "raw input" in by_name[name].why_not
    for name in ("device-only", "best-split", "optimal"):
        plan = by_name[name].plan
        assert plan is not None and plan.assignment[0] == "phone", name


def test_tier_node_falls_back_to_the_source_for_device() -> None:
    net = with_doc(shipped(), nodes=[n.model_dump() | {"tier": None} for n in shipped().nodes])
    assert tier_node(net, "device") == "phone"
    assert tier_node(net, "edge") is None


def test_describe_assignment_runs() -> None:
    assert describe_assignment(["a", "a", "b", "a"]) == "a x2 | b x1 | a x1"
    assert describe_assignment(["phone"] * 7 + ["cloud"] * 5) == "phone x7 | cloud x5"
    assert describe_assignment([]) == ""


def test_best_cut_keeps_units_on_both_sides_even_where_not_cutting_wins(profile: Profile) -> None:
    """On the shipped network the best single split does not cut; best-cut still does, at the best place."""
    net = shipped()
    by_name = {s.name: s.plan for s in strategy_plans(profile, net, names=("best-split", "best-cut"))}
    assert list(by_name) == ["best-split", "best-cut"]
    cut = by_name["best-cut"].assignment
    k = next(i for i, n in enumerate(cut) if n != net.source)
    assert 0 < k < len(cut) and len(set(cut[k:])) == 1
    assert by_name["best-cut"].strategy == "best-cut"
    # brute force over every interior cut to every other node: best-cut is the cheapest of them
    others = [n.name for n in net.nodes if n.name != net.source]
    brute = min(evaluate(profile, net, [net.source] * j + [m] * (len(cut) - j)).latency_s
                for m in others for j in range(1, len(cut)))
    assert by_name["best-cut"].predicted_latency_s == pytest.approx(brute)
    assert by_name["best-split"].predicted_latency_s <= by_name["best-cut"].predicted_latency_s


def test_unknown_strategy_names_are_refused(profile: Profile) -> None:
    with pytest.raises(ValueError, match="best-cut"):
        strategy_plans(profile, shipped(), names=("fastest",))


def _plan(assignment: list[str], latency: float):  # noqa: ANN202 - a Plan
    from orchestrator.plan import Plan
    return Plan(model="m", assignment=assignment, predicted_latency_s=latency, status="optimal", solver="test")


def test_why_optimal_names_the_saving_against_the_best_single_tier() -> None:
    from orchestrator.strategies import why_optimal
    strategies = [Strategy("optimal", _plan(["phone", "edge", "edge"], 0.080)),
                  Strategy("device-only", _plan(["phone"] * 3, 0.200)),
                  Strategy("edge-only", _plan(["edge"] * 3, 0.100)),
                  Strategy("cloud-only", None, "no cloud")]
    line = why_optimal(strategies)
    assert line is not None
    assert "20.0 ms (20%) less than the best single tier (edge-only, 100.0 ms)" in line
    assert "2.50x faster than device-only" in line


def test_why_optimal_when_the_device_alone_is_best() -> None:
    from orchestrator.strategies import why_optimal
    strategies = [Strategy("optimal", _plan(["phone"] * 3, 0.05)), Strategy("device-only", _plan(["phone"] * 3, 0.05)),
                  Strategy("cloud-only", _plan(["cloud"] * 3, 0.09))]
    assert "keeping everything on the device" in (why_optimal(strategies) or "")
    assert why_optimal([Strategy("optimal", None, "infeasible")]) is None
